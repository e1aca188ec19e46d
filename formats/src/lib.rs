//! `bd-formats`: the one definition of BitDistiller's quantized formats and of the `.bd2` file.
//!
//! - [`quant`]: INT-k and NF-k asymmetric group quantizers (`quantize`, `dequantize`, `fake_quant`)
//!   and the packed layout the runtime's kernels read (docs/FORMAT.md, section 3).
//! - [`bd2`]: the streaming, atomic writer and the validating, memory-mapped reader.
//! - [`hf`]: reading a Hugging Face LLaMA checkpoint directory.
//! - [`config`]: the model configuration shared by all of them.
//!
//! The trainer and the runtime both call this crate, so they cannot disagree about what a code means.

pub mod bd2;
pub mod config;
pub mod dtype;
pub mod hf;
pub mod quant;

pub use config::ModelConfig;
pub use dtype::DType;
pub use quant::{GroupParams, QuantFormat};
