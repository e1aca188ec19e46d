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

    /// Decode little-endian float elements of this type into `out` (`out.len()` elements from
    /// `bytes`, which need not be aligned). Panics for quantized types, whose codes need a layout.
    pub fn decode_into(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            DType::F32 => {
                out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            DType::F16 => {
                out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            }
            DType::Bf16 => {
                out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            }
            DType::Quant(q) => panic!("{q} codes cannot be decoded element by element"),
        }
    }

    /// [`DType::decode_into`] into a new vector of every element in `bytes`.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; bytes.len() / self.float_size().expect("a float type")];
        self.decode_into(bytes, &mut out);
        out
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
