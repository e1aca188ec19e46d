//! Sizes and offsets of a packed quantized tensor (docs/FORMAT.md section 3).
//!
//! Every size is computed with checked 64-bit arithmetic, so a hostile shape in a file header gives an
//! error rather than an overflow.

use super::{check_group_size, QuantError, QuantFormat};

/// Weights per code chunk: codes are laid out in chunks of 128 whatever the group size.
pub const CHUNK: usize = 128;

/// Where codes, scales and zeros live inside one packed tensor blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedLayout {
    pub format: QuantFormat,
    pub group: usize,
    pub rows: usize,
    pub cols: usize,
    /// Groups per row, `ceil(cols / group)`.
    pub groups: usize,
    /// Bytes of codes per row (whole chunks).
    pub row_code_bytes: usize,
    /// Offset of the f16 scales, after the codes, 64-byte aligned.
    pub scales_offset: usize,
    /// Bytes of f16 scales per row.
    pub row_scale_bytes: usize,
    /// Offset of the INT zero points (equals `len` for NF formats, which have none).
    pub zeros_offset: usize,
    /// Bytes of packed k-bit zero points per row (0 for NF).
    pub row_zero_bytes: usize,
    /// Total blob length.
    pub len: usize,
}

/// Bytes of one 128-weight chunk of codes.
pub fn chunk_bytes(format: QuantFormat) -> usize {
    match format.bits() {
        2 => 32,
        3 => 48,
        _ => 64,
    }
}

fn align64(x: u64) -> Option<u64> {
    x.checked_add(63).map(|v| v & !63)
}

impl PackedLayout {
    pub fn new(format: QuantFormat, group: usize, rows: usize, cols: usize) -> Result<Self, QuantError> {
        check_group_size(group)?;
        if rows == 0 || cols == 0 {
            return Err(QuantError::Empty { rows, cols });
        }
        let too_big = || QuantError::ShapeMismatch { rows, cols, expected: usize::MAX, got: 0 };
        let (r, c) = (rows as u64, cols as u64);
        let groups = c.div_ceil(group as u64);
        let row_code_bytes = c.div_ceil(CHUNK as u64).checked_mul(chunk_bytes(format) as u64).ok_or_else(too_big)?;
        let codes = r.checked_mul(row_code_bytes).ok_or_else(too_big)?;
        let scales_offset = align64(codes).ok_or_else(too_big)?;
        let row_scale_bytes = groups.checked_mul(2 * format.scales_per_group() as u64).ok_or_else(too_big)?;
        let scales_end = r.checked_mul(row_scale_bytes).and_then(|v| v.checked_add(scales_offset)).ok_or_else(too_big)?;
        let (zeros_offset, row_zero_bytes, len) = if format.is_nf() {
            (scales_end, 0, scales_end)
        } else {
            let zo = align64(scales_end).ok_or_else(too_big)?;
            let rz = groups.checked_mul(format.bits() as u64).ok_or_else(too_big)?.div_ceil(8);
            let end = r.checked_mul(rz).and_then(|v| v.checked_add(zo)).ok_or_else(too_big)?;
            (zo, rz, end)
        };
        let to_usize = |v: u64| usize::try_from(v).map_err(|_| too_big());
        Ok(Self {
            format,
            group,
            rows,
            cols,
            groups: to_usize(groups)?,
            row_code_bytes: to_usize(row_code_bytes)?,
            scales_offset: to_usize(scales_offset)?,
            row_scale_bytes: to_usize(row_scale_bytes)?,
            zeros_offset: to_usize(zeros_offset)?,
            row_zero_bytes: to_usize(row_zero_bytes)?,
            len: to_usize(len)?,
        })
    }

    /// Weights per row once padded to whole chunks (the length kernels read activations at).
    pub fn padded_cols(&self) -> usize {
        self.cols.div_ceil(CHUNK) * CHUNK
    }

    /// Bits of real payload: `b` per weight plus the group parameters. Padding and alignment are
    /// left out, as docs/FORMAT.md section 5 defines bits per weight.
    pub fn payload_bits(&self) -> u64 {
        let (r, c, g) = (self.rows as u64, self.cols as u64, self.groups as u64);
        let bits = self.format.bits() as u64;
        let per_group = 16 * self.format.scales_per_group() as u64 + if self.format.is_nf() { 0 } else { bits };
        r * c * bits + r * g * per_group
    }
}
