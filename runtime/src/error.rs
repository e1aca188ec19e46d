//! The runtime's one error type. Every message names the flag, token or limit concerned, because the
//! CLI prints them as they are.

use bd_formats::bd2::Bd2Error;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Model(#[from] Bd2Error),
    #[error("tensor {tensor:?}: {problem}")]
    BadTensor { tensor: String, problem: String },
    #[error("context is full: {needed} positions needed, the session holds {ctx} (use a larger --ctx or shorter input)")]
    ContextOverflow { needed: usize, ctx: usize },
    #[error("token id {id} is out of range (vocabulary of {vocab})")]
    BadToken { id: u32, vocab: usize },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("cannot start the thread pool: {0}")]
    ThreadPool(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
