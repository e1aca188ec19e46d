//! Bridge to ggml's quantized kernels for benchmarks and cross-checks.
//!
//! Empty until the runtime issue fills it (ggml-sys-bleedingedge: quantize, vec_dot and threaded
//! mul_mat for Q2_K, Q3_K, Q4_0, IQ2_XXS). It lives in the workspace now so that the layout of the
//! project is the design's from the first commit.
