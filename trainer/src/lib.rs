//! `bd-trainer`: BitDistiller's trainer (clip init, teacher data, CAKLD QAT, evaluation, export).
//!
//! - [`model`]: the LLaMA teacher/student on candle (training forward, KV-cache forward).
//! - [`fake_quant`]: fake quantization bit-identical to bd-formats, and the STE.
//! - [`data`]: tokenizer, calibration documents and blocks.
//! - [`distill`]: the distillation losses (CAKLD and its ablations) and gamma.
//! - [`qat`]: the quantization-aware training step (AdamW, clipping, schedule, accumulation).
//! - [`clip`]: the asymmetric clipping search and the clip file.
//! - [`eval`]: perplexity (the runtime's convention) and multiple-choice scoring.
//! - [`convert`]: `.bd2` export (`bd-train quantize`), optionally of clipped weights.

pub mod clip;
pub mod convert;
pub mod data;
pub mod distill;
pub mod eval;
pub mod fake_quant;
pub mod model;
pub mod qat;
pub mod rng;
