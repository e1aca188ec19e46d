//! Packing codes and group parameters into the `.bd2` blob layout, and a zero-copy view to read them.

use super::layout::{chunk_bytes, PackedLayout, CHUNK};
use super::{dequantize_group, quantize_matrix, GroupParams, QuantError, QuantFormat};
use half::f16;

/// Where the `b`-bit code of weight `e` (index within its row) lives: (byte, shift) of its low bits
/// and, for 3-bit formats, (byte, bit) of its high bit.
#[inline]
fn code_position(format: QuantFormat, e: usize) -> ((usize, u32), Option<(usize, u32)>) {
    let (chunk, w) = (e / CHUNK, e % CHUNK);
    let base = chunk * chunk_bytes(format);
    match format.bits() {
        2 => ((base + w % 32, 2 * (w / 32) as u32), None),
        3 => ((base + w % 32, 2 * (w / 32) as u32), Some((base + 32 + w % 16, (w / 16) as u32))),
        _ => {
            let (lane, wl) = (w / 64, w % 64);
            ((base + 32 * lane + wl % 32, 4 * (wl / 32) as u32), None)
        }
    }
}

fn put_code(format: QuantFormat, row: &mut [u8], e: usize, code: u8) {
    let ((byte, shift), high) = code_position(format, e);
    let low_mask = if format.bits() == 4 { 0xF } else { 0x3 };
    row[byte] |= (code & low_mask) << shift;
    if let Some((hb, bit)) = high {
        row[hb] |= ((code >> 2) & 1) << bit;
    }
}

fn get_code(format: QuantFormat, row: &[u8], e: usize) -> u8 {
    let ((byte, shift), high) = code_position(format, e);
    let low_mask = if format.bits() == 4 { 0xF } else { 0x3 };
    let mut c = (row[byte] >> shift) & low_mask;
    if let Some((hb, bit)) = high {
        c |= ((row[hb] >> bit) & 1) << 2;
    }
    c
}

/// Quantize a row-major `[rows, cols]` f32 matrix and pack it into the `.bd2` blob layout.
pub fn pack_matrix(format: QuantFormat, group: usize, rows: usize, cols: usize, w: &[f32]) -> Result<Vec<u8>, QuantError> {
    let layout = PackedLayout::new(format, group, rows, cols)?;
    let (codes, params) = quantize_matrix(format, group, rows, cols, w)?;
    let mut blob = vec![0u8; layout.len];
    let bits = format.bits() as usize;
    for r in 0..rows {
        let row = &mut blob[r * layout.row_code_bytes..(r + 1) * layout.row_code_bytes];
        for e in 0..layout.padded_cols() {
            let code =
                if e < cols { codes[r * cols + e] } else { params[r * layout.groups + layout.groups - 1].zero_code(format) };
            put_code(format, row, e, code);
        }
        let scales_at = layout.scales_offset + r * layout.row_scale_bytes;
        let zeros_at = layout.zeros_offset + r * layout.row_zero_bytes;
        for g in 0..layout.groups {
            match params[r * layout.groups + g] {
                GroupParams::Int { scale, zero } => {
                    blob[scales_at + 2 * g..][..2].copy_from_slice(&scale.to_le_bytes());
                    put_bits(&mut blob[zeros_at..zeros_at + layout.row_zero_bytes], g * bits, bits, zero);
                }
                GroupParams::Nf { pos, neg } => {
                    blob[scales_at + 4 * g..][..2].copy_from_slice(&pos.to_le_bytes());
                    blob[scales_at + 4 * g + 2..][..2].copy_from_slice(&neg.to_le_bytes());
                }
            }
        }
    }
    Ok(blob)
}

fn put_bits(stream: &mut [u8], at: usize, bits: usize, value: u8) {
    for b in 0..bits {
        if (value >> b) & 1 == 1 {
            stream[(at + b) / 8] |= 1 << ((at + b) % 8);
        }
    }
}

fn get_bits(stream: &[u8], at: usize, bits: usize) -> u8 {
    (0..bits).fold(0u8, |v, b| v | (((stream[(at + b) / 8] >> ((at + b) % 8)) & 1) << b))
}

/// A zero-copy view of one packed quantized tensor.
#[derive(Clone, Copy, Debug)]
pub struct PackedMatrix<'a> {
    pub layout: PackedLayout,
    bytes: &'a [u8],
}

impl<'a> PackedMatrix<'a> {
    /// A view over `bytes`, which must be exactly the layout's length.
    pub fn new(layout: PackedLayout, bytes: &'a [u8]) -> Result<Self, QuantError> {
        if bytes.len() != layout.len {
            return Err(QuantError::ShapeMismatch {
                rows: layout.rows,
                cols: layout.cols,
                expected: layout.len,
                got: bytes.len(),
            });
        }
        Ok(Self { layout, bytes })
    }

    pub fn format(&self) -> QuantFormat {
        self.layout.format
    }

    /// The whole blob.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The packed codes of row `r` (`row_code_bytes` long).
    pub fn row_codes(&self, r: usize) -> &'a [u8] {
        let n = self.layout.row_code_bytes;
        &self.bytes[r * n..(r + 1) * n]
    }

    /// The raw little-endian f16 scales of row `r`.
    pub fn row_scales(&self, r: usize) -> &'a [u8] {
        let n = self.layout.row_scale_bytes;
        &self.bytes[self.layout.scales_offset + r * n..][..n]
    }

    /// The packed zero points of row `r` (empty for NF formats).
    pub fn row_zeros(&self, r: usize) -> &'a [u8] {
        let n = self.layout.row_zero_bytes;
        &self.bytes[self.layout.zeros_offset + r * n..][..n]
    }

    /// Code of weight `c` of row `r` (`c` may point into the row's padding).
    pub fn code(&self, r: usize, c: usize) -> u8 {
        get_code(self.format(), self.row_codes(r), c)
    }

    /// Parameters of group `g` of row `r`.
    pub fn params(&self, r: usize, g: usize) -> GroupParams {
        let s = self.row_scales(r);
        let h = |i: usize| f16::from_le_bytes([s[2 * i], s[2 * i + 1]]);
        if self.format().is_nf() {
            GroupParams::Nf { pos: h(2 * g), neg: h(2 * g + 1) }
        } else {
            let bits = self.format().bits() as usize;
            GroupParams::Int { scale: h(g), zero: get_bits(self.row_zeros(r), g * bits, bits) }
        }
    }

    /// Dequantize row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let PackedLayout { cols, group, groups, .. } = self.layout;
        assert_eq!(out.len(), cols);
        let mut codes = [0u8; 256];
        for g in 0..groups {
            let (lo, hi) = (g * group, ((g + 1) * group).min(cols));
            for (i, c) in (lo..hi).enumerate() {
                codes[i] = self.code(r, c);
            }
            dequantize_group(self.format(), self.params(r, g), &codes[..hi - lo], &mut out[lo..hi]);
        }
    }

    /// Dequantize the whole matrix, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let cols = self.layout.cols;
        let mut out = vec![0f32; self.layout.rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }
}

#[cfg(test)]
pub(super) fn put_code_for_test(format: QuantFormat, row: &mut [u8], e: usize, code: u8) {
    put_code(format, row, e, code)
}
