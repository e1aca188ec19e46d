//! The quantizers (ALGORITHM.md section 1, docs/FORMAT.md section 4).
//!
//! Everything here is a pure function of its inputs. Rounding is `f32::round` (half away from zero)
//! everywhere, and scales are rounded to f16 once and then used for every code, so a weight that the
//! trainer fake-quantizes and a weight that the runtime dequantizes from a `.bd2` are the same f32.

mod int;
mod layout;
mod nf;
mod pack;

pub use layout::{PackedLayout, CHUNK};
pub use nf::{NF3_LEVELS, NF4_LEVELS};
pub use pack::{pack_matrix, PackedMatrix};

use half::f16;
use std::fmt;

/// Group sizes the formats support (weights per group along a row).
pub const GROUP_SIZES: [usize; 5] = [16, 32, 64, 128, 256];

/// Smallest scale, so that an all-equal group does not divide by zero.
pub const SCALE_EPS: f32 = 1e-5;

/// A low-bit weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Int2,
    Int3,
    Int4,
    Nf3,
    Nf4,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 5] = [Self::Int2, Self::Int3, Self::Int4, Self::Nf3, Self::Nf4];

    /// Bits per code.
    pub fn bits(self) -> u32 {
        match self {
            Self::Int2 => 2,
            Self::Int3 | Self::Nf3 => 3,
            Self::Int4 | Self::Nf4 => 4,
        }
    }

    /// Largest code value.
    pub fn qmax(self) -> u8 {
        ((1u32 << self.bits()) - 1) as u8
    }

    pub fn is_nf(self) -> bool {
        matches!(self, Self::Nf3 | Self::Nf4)
    }

    /// f16 scales per group: one for INT, `[pos, neg]` for NF.
    pub fn scales_per_group(self) -> usize {
        if self.is_nf() {
            2
        } else {
            1
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Int2 => "int2",
            Self::Int3 => "int3",
            Self::Int4 => "int4",
            Self::Nf3 => "nf3",
            Self::Nf4 => "nf4",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The codebook of an NF format (levels in code order), `None` for INT.
    pub fn levels(self) -> Option<&'static [f32]> {
        match self {
            Self::Nf3 => Some(&NF3_LEVELS),
            Self::Nf4 => Some(&NF4_LEVELS),
            _ => None,
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The parameters of one group, exactly as stored in a `.bd2`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GroupParams {
    /// INT-k: dequantized value `(q - zero) * scale`.
    Int { scale: f16, zero: u8 },
    /// NF-k: `level * pos` for positive levels, `level * neg` for negative ones.
    Nf { pos: f16, neg: f16 },
}

impl GroupParams {
    /// The code that dequantizes to exactly 0 (used for row padding).
    pub fn zero_code(&self, format: QuantFormat) -> u8 {
        match self {
            GroupParams::Int { zero, .. } => *zero,
            GroupParams::Nf { .. } => nf::zero_index(format),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("weight at row {row}, column {col} is {value} (NaN or infinite weights cannot be quantized)")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("group {group} of row {row}: scale {scale} does not fit in f16 (weights above 65504 in magnitude)")]
    ScaleOverflow { row: usize, group: usize, scale: f32 },
    #[error("group size {0} is not supported (use one of 16, 32, 64, 128, 256)")]
    BadGroupSize(usize),
    #[error("matrix of {rows} x {cols} needs {expected} values, got {got}")]
    ShapeMismatch { rows: usize, cols: usize, expected: usize, got: usize },
    #[error("a quantized matrix needs at least one row and one column, got {rows} x {cols}")]
    Empty { rows: usize, cols: usize },
}

pub fn check_group_size(group: usize) -> Result<(), QuantError> {
    if GROUP_SIZES.contains(&group) {
        Ok(())
    } else {
        Err(QuantError::BadGroupSize(group))
    }
}

/// Quantize one group: writes one code per weight into `codes` and returns the group's parameters.
/// Errors name row 0 / group 0; matrix-level callers re-label them.
pub fn quantize_group(format: QuantFormat, w: &[f32], codes: &mut [u8]) -> Result<GroupParams, QuantError> {
    assert_eq!(w.len(), codes.len(), "one code per weight");
    if let Some((col, &value)) = w.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(QuantError::NonFinite { row: 0, col, value });
    }
    if format.is_nf() {
        nf::quantize(format, w, codes)
    } else {
        int::quantize(format, w, codes)
    }
}

/// Dequantize one group's codes with its parameters.
pub fn dequantize_group(format: QuantFormat, params: GroupParams, codes: &[u8], out: &mut [f32]) {
    assert_eq!(codes.len(), out.len(), "one value per code");
    match params {
        GroupParams::Int { scale, zero } => int::dequantize(scale, zero, codes, out),
        GroupParams::Nf { pos, neg } => nf::dequantize(format, pos, neg, codes, out),
    }
}

/// `dequantize(quantize(w))` of one group, in place of `out`.
pub fn fake_quant_group(format: QuantFormat, w: &[f32], out: &mut [f32]) -> Result<(), QuantError> {
    let mut codes = vec![0u8; w.len()];
    let params = quantize_group(format, w, &mut codes)?;
    dequantize_group(format, params, &codes, out);
    Ok(())
}

/// Quantize a row-major `[rows, cols]` matrix group by group along rows.
/// Returns one code per weight (row-major, unpacked) and the parameters `[rows][groups]`.
pub fn quantize_matrix(
    format: QuantFormat,
    group: usize,
    rows: usize,
    cols: usize,
    w: &[f32],
) -> Result<(Vec<u8>, Vec<GroupParams>), QuantError> {
    check_shape(group, rows, cols, w.len())?;
    let groups = cols.div_ceil(group);
    let mut codes = vec![0u8; w.len()];
    let mut params = Vec::with_capacity(rows * groups);
    for r in 0..rows {
        for g in 0..groups {
            let (lo, hi) = (r * cols + g * group, r * cols + ((g + 1) * group).min(cols));
            let p = quantize_group(format, &w[lo..hi], &mut codes[lo..hi]).map_err(|e| relabel(e, r, g, group))?;
            params.push(p);
        }
    }
    Ok((codes, params))
}

/// `dequantize(quantize(W))` of a whole `[rows, cols]` matrix.
pub fn fake_quant_matrix(format: QuantFormat, group: usize, rows: usize, cols: usize, w: &[f32]) -> Result<Vec<f32>, QuantError> {
    let (codes, params) = quantize_matrix(format, group, rows, cols, w)?;
    let groups = cols.div_ceil(group);
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        for g in 0..groups {
            let (lo, hi) = (r * cols + g * group, r * cols + ((g + 1) * group).min(cols));
            dequantize_group(format, params[r * groups + g], &codes[lo..hi], &mut out[lo..hi]);
        }
    }
    Ok(out)
}

pub(crate) fn check_shape(group: usize, rows: usize, cols: usize, len: usize) -> Result<(), QuantError> {
    check_group_size(group)?;
    if rows == 0 || cols == 0 {
        return Err(QuantError::Empty { rows, cols });
    }
    match rows.checked_mul(cols) {
        Some(n) if n == len => Ok(()),
        _ => Err(QuantError::ShapeMismatch { rows, cols, expected: rows.saturating_mul(cols), got: len }),
    }
}

fn relabel(e: QuantError, row: usize, group: usize, group_size: usize) -> QuantError {
    match e {
        QuantError::NonFinite { col, value, .. } => QuantError::NonFinite { row, col: group * group_size + col, value },
        QuantError::ScaleOverflow { scale, .. } => QuantError::ScaleOverflow { row, group, scale },
        other => other,
    }
}

/// Round a scale to f16, refusing one that does not fit.
fn to_f16_scale(s: f32) -> Result<f16, QuantError> {
    let h = f16::from_f32(s);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(QuantError::ScaleOverflow { row: 0, group: 0, scale: s })
    }
}

#[cfg(test)]
mod tests;
