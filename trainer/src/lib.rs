//! `bd-trainer`: BitDistiller's trainer (clip init, teacher data, CAKLD QAT, evaluation, export).
//!
//! So far: [`convert`], round-to-nearest conversion of a Hugging Face checkpoint to `.bd2`
//! (`bd-train quantize`). The candle model, clipping and distillation arrive with the trainer issues.

pub mod convert;
