//! `bd-runtime`: runs `.bd2` models on CPUs.
//!
//! So far: [`info`], the model report behind `bd-run info`. The forward pass, the kernels, the
//! sampler and the C ABI arrive with the runtime and C-library issues.

pub mod info;
pub mod kernels;

pub use bd_formats::bd2::{Bd2Error, Bd2File, ReadOptions};
