//! The `bitdistiller` root package: end-to-end tests (`tests/`), benchmarks (`benches/`), examples and
//! the C ABI checks (`build.rs`). The code lives in the member crates, re-exported here.

pub use bd_formats as formats;
