//! Tensor element types of a `.bd2` file.

use crate::quant::QuantFormat;
use std::fmt;

/// A tensor's stored type: a float type, or a quantized format (whose group size the tensor
/// entry carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    Quant(QuantFormat),
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Quant(q) => q.name(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(DType::F32),
            "f16" => Some(DType::F16),
            "bf16" => Some(DType::Bf16),
            other => QuantFormat::parse(other).map(DType::Quant),
        }
    }

    /// Bytes per element of a float type, `None` for quantized formats.
    pub fn float_size(self) -> Option<usize> {
        match self {
            DType::F32 => Some(4),
            DType::F16 | DType::Bf16 => Some(2),
            DType::Quant(_) => None,
        }
    }

    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            DType::Quant(q) => Some(q),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
