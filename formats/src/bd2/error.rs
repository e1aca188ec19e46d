use crate::quant::QuantError;
use std::path::PathBuf;

/// Everything that can be wrong with a `.bd2` file or a write. Each message names the part concerned.
#[derive(Debug, thiserror::Error)]
pub enum Bd2Error {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("not a .bd2 file: bad magic bytes {found:02x?}")]
    BadMagic { found: Vec<u8> },
    #[error(".bd2 version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u32),
    #[error("file is truncated: {what} needs {need} bytes, the file has {have}")]
    Truncated { what: String, need: u64, have: u64 },
    #[error("file length {actual} does not match the {declared} bytes its preamble declares")]
    FileLenMismatch { declared: u64, actual: u64 },
    #[error("preamble: reserved bytes are not zero")]
    ReservedNonZero,
    #[error("header length {0} exceeds the 64 MiB limit")]
    HeaderTooLarge(u64),
    #[error("data section offset {data_offset} is invalid (must be {min}, the first multiple of 64 after the header)")]
    BadDataOffset { data_offset: u64, min: u64 },
    #[error("header checksum mismatch (stored {stored:08x}, computed {computed:08x}): the header is corrupt")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("header is not valid: {0}")]
    HeaderJson(String),
    #[error("model config in header is invalid: {0}")]
    BadConfig(String),
    #[error("{what}: offset {offset} is not a multiple of 64")]
    Misaligned { what: String, offset: u64 },
    #[error("{what}: bytes {offset}..{offset}+{len} lie outside the data section ({data_offset}..{file_len})")]
    OutOfBounds { what: String, offset: u64, len: u64, data_offset: u64, file_len: u64 },
    #[error("{a} and {b} overlap")]
    Overlap { a: String, b: String },
    #[error("padding before {before} is not zero: the file is corrupt")]
    NonZeroPadding { before: String },
    #[error("tensor {0:?} appears more than once")]
    DuplicateTensor(String),
    #[error("tensor {0:?} is not part of a {1} model")]
    UnexpectedTensor(String, String),
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {tensor:?}: unknown dtype {dtype:?}")]
    UnknownDType { tensor: String, dtype: String },
    #[error("tensor {tensor:?}: {problem}")]
    BadTensor { tensor: String, problem: String },
    #[error("tensor {tensor:?}: length {got} does not match the {expected} bytes its shape and dtype imply")]
    LengthMismatch { tensor: String, expected: u64, got: u64 },
    #[error("{what}: checksum mismatch (stored {stored:08x}, computed {computed:08x}): the data is corrupt")]
    Checksum { what: String, stored: u32, computed: u32 },
    #[error("tensor {tensor:?}: {source}")]
    Quant { tensor: String, source: QuantError },
    #[error("writer: {0}")]
    Write(String),
}

impl Bd2Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Bd2Error::Io { path: path.into(), err: source }
    }
}
