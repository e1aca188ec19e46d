//! `bd-trainer`: BitDistiller's trainer (clip init, teacher data, CAKLD QAT, evaluation, export).
//!
//! - [`model`]: the LLaMA teacher/student on candle (training forward, KV-cache forward).
//! - [`fake_quant`]: fake quantization bit-identical to bd-formats, and the STE.
//! - [`data`]: tokenizer, calibration documents and blocks.
//! - [`teacher`]: self-distillation data: the teacher samples continuations of prompts (`gen-data`).
//! - [`dataset`]: training sequences, the held-out split and the micro-batch of every step.
//! - [`distill`]: the distillation losses (CAKLD and its ablations) and gamma.
//! - [`qat`]: the quantization-aware training step (AdamW, clipping, schedule, accumulation).
//! - [`train`]: the training run: gamma, held-out evaluation, best and resumable checkpoints,
//!   metrics and the loss curve ([`checkpoint`], [`plot`]).
//! - [`clip`]: the asymmetric clipping search and the clip file.
//! - [`eval`]: perplexity (the runtime's convention) and multiple-choice scoring.
//! - [`convert`]: `.bd2` export (`bd-train quantize`), optionally of clipped weights.

pub mod atomic;
pub mod causal_softmax;
pub mod checkpoint;
pub mod clip;
pub mod convert;
pub mod data;
pub mod dataset;
pub mod demo;
pub mod distill;
pub mod eval;
pub mod fake_quant;
pub mod model;
pub mod pipeline;
pub mod plot;
pub mod qat;
pub mod rng;
pub mod teacher;
pub mod train;
