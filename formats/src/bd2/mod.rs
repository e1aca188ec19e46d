//! The `.bd2` file (docs/FORMAT.md): one streaming atomic writer, one validating zero-copy reader.

mod error;
mod header;
mod reader;
mod writer;

pub use error::Bd2Error;
pub use header::{BlobEntry, Header, Provenance, QuantRecipe, TensorEntry};
pub use reader::{Bd2File, ReadOptions, TensorInfo};
pub use writer::{encode_tensor, Bd2Writer, TensorDecl};

/// `B D 2 \0 \r \n 0x1a \n`.
pub const MAGIC: [u8; 8] = *b"BD2\0\r\n\x1a\n";
pub const VERSION: u32 = 1;
pub const PREAMBLE_LEN: usize = 64;
/// Every blob starts on this boundary.
pub const ALIGN: usize = 64;
/// A header larger than this is refused before it is parsed.
pub const MAX_HEADER_LEN: u64 = 64 << 20;

pub(crate) fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN as u64 - 1).map(|v| v & !(ALIGN as u64 - 1))
}

#[cfg(test)]
mod tests;
