//! The JSON header (docs/FORMAT.md section 1).

use crate::config::ModelConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub config: ModelConfig,
    pub quant: QuantRecipe,
    pub provenance: Provenance,
    pub tokenizer: BlobEntry,
    pub tensors: Vec<TensorEntry>,
}

/// How the block linears were quantized, and how the model was trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantRecipe {
    /// Format of the block linears: a dtype name.
    pub format: String,
    pub group_size: Option<usize>,
    /// "none", or a short description of the clipping recipe.
    pub clipping: String,
    /// Training summary (gamma, final loss, steps, ...) written by the trainer; null for RTN.
    pub training: Option<serde_json::Value>,
}

/// Free text for people; nothing reads meaning from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub source: String,
    pub tool: String,
    #[serde(default)]
    pub notes: String,
}

/// A blob in the data section. The CRC is 8 hex digits, so the header's length does not depend on it
/// and the writer can stream tensors after reserving the header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobEntry {
    pub offset: u64,
    pub len: u64,
    pub crc32: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub group_size: Option<usize>,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub len: u64,
    pub crc32: String,
}

pub(crate) fn crc_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

pub(crate) fn parse_crc(what: &str, s: &str) -> Result<u32, String> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).map_err(|e| format!("{what}: crc32 {s:?}: {e}"))
    } else {
        Err(format!("{what}: crc32 {s:?} is not 8 hex digits"))
    }
}
