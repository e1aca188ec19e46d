//! The scalar reference: every weight dequantized exactly as `bd_formats::quant` defines it, and
//! the dot product summed in f64. This is the definition every other kernel is tested against,
//! and what `BD_KERNELS=reference` runs.

use super::{Weight, WeightData};
use bd_formats::quant::{dequantize_group, PackedMatrix, QuantFormat, CHUNK};
use half::{bf16, f16};

/// Unpack one 128-weight chunk of codes (docs/FORMAT.md section 3) into one code per byte.
pub(crate) fn decode_chunk(format: QuantFormat, b: &[u8], out: &mut [u8; CHUNK]) {
    match format.bits() {
        2 => unpack2(&b[..32], out),
        3 => {
            unpack2(&b[..32], out);
            let hb = &b[32..48];
            for m in 0..4 {
                for k in 0..16 {
                    out[32 * m + k] |= ((hb[k] >> (2 * m)) & 1) << 2;
                    out[32 * m + 16 + k] |= ((hb[k] >> (2 * m + 1)) & 1) << 2;
                }
            }
        }
        _ => {
            for h in 0..2 {
                for i in 0..32 {
                    let v = b[32 * h + i];
                    out[64 * h + i] = v & 15;
                    out[64 * h + 32 + i] = v >> 4;
                }
            }
        }
    }
}

fn unpack2(lane: &[u8], out: &mut [u8; CHUNK]) {
    for (i, &v) in lane.iter().enumerate() {
        for j in 0..4 {
            out[32 * j + i] = (v >> (2 * j)) & 3;
        }
    }
}

/// Row `r` of a quantized matrix dotted with `x` (`cols` values), exactly.
pub(crate) fn quant_row(p: &PackedMatrix, r: usize, x: &[f32]) -> f32 {
    let l = p.layout;
    let codes = p.row_codes(r);
    let cb = codes.len() / (l.padded_cols() / CHUNK);
    let mut q = [0u8; CHUNK];
    let mut w = [0f32; 256];
    let mut acc = 0f64;
    let mut c = usize::MAX;
    for g in 0..l.groups {
        let (lo, hi) = (g * l.group, ((g + 1) * l.group).min(l.cols));
        // Codes of the group, chunk by chunk.
        let mut gc = [0u8; 256];
        for e in lo..hi {
            if e / CHUNK != c {
                c = e / CHUNK;
                decode_chunk(l.format, &codes[c * cb..(c + 1) * cb], &mut q);
            }
            gc[e - lo] = q[e % CHUNK];
        }
        dequantize_group(l.format, p.params(r, g), &gc[..hi - lo], &mut w[..hi - lo]);
        acc += w[..hi - lo].iter().zip(&x[lo..hi]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
    }
    acc as f32
}

/// Row `r` of any weight dotted with `x`, exactly.
pub(crate) fn row(w: &Weight, r: usize, x: &[f32]) -> f32 {
    let c = w.cols;
    let dot = |vals: &mut dyn Iterator<Item = f32>| vals.zip(x).map(|(a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
    match w.data {
        WeightData::F32(b) => {
            dot(&mut b[r * c * 4..(r + 1) * c * 4].chunks_exact(4).map(|v| f32::from_le_bytes([v[0], v[1], v[2], v[3]])))
        }
        WeightData::F16(b) => {
            dot(&mut b[r * c * 2..(r + 1) * c * 2].chunks_exact(2).map(|v| f16::from_le_bytes([v[0], v[1]]).to_f32()))
        }
        WeightData::Bf16(b) => {
            dot(&mut b[r * c * 2..(r + 1) * c * 2].chunks_exact(2).map(|v| bf16::from_le_bytes([v[0], v[1]]).to_f32()))
        }
        WeightData::Quant(p) => quant_row(&p, r, x),
    }
}

/// Rows `r0..r1` for `n` inputs: `y[k * ystride + r] = row(r) . x[k]`.
///
/// # Safety
/// `y` must be valid for those writes and no other thread may write them.
pub(crate) unsafe fn rows(w: &Weight, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ystride: usize) {
    for k in 0..n {
        let xk = &x[k * w.cols..(k + 1) * w.cols];
        for r in r0..r1 {
            *y.add(k * ystride + r) = row(w, r, xk);
        }
    }
}
