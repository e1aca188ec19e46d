//! `bd-runtime`: runs `.bd2` models on CPUs.
//!
//! - [`Model`]: a validated, memory-mapped `.bd2` file whose tensors the kernels read in place.
//! - [`Session`]: the run state (activations, KV cache, logits, scratch, thread pool), allocated once,
//!   and the forward pass: [`Session::decode`] for one token, [`Session::prefill`] for a prompt.
//! - [`Tokenizer`] and its streaming decoder, [`Sampler`], [`generate()`], [`perplexity()`].
//! - [`kernels`]: the matrix products, chosen once per CPU.
//! - [`bench`] and [`synthetic`]: speed measurement, at any scale without a download.

pub mod bench;
pub mod error;
pub mod ffi;
pub mod generate;
pub mod info;
pub mod kernels;
pub mod model;
pub mod perplexity;
pub mod probe;
pub mod sampler;
pub mod session;
pub mod synthetic;
pub mod tokenizer;

pub use bd_formats::bd2::{Bd2Error, Bd2File, ReadOptions};
pub use error::{Result, RuntimeError};
pub use generate::{generate, GenerateOptions, Generation, StopReason};
pub use model::Model;
pub use perplexity::{perplexity, Perplexity};
pub use sampler::{Sampler, SamplerConfig};
pub use session::{default_threads, Session, MAX_BATCH};
pub use tokenizer::{StreamDecoder, Tokenizer};
