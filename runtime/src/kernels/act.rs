//! Activation quantization for the integer kernels of the INT formats, and the scalar twin of
//! that scheme.
//!
//! # The scheme
//!
//! An input vector `x` (`cols` values) is cut into blocks of 128 (the code chunks of the packed
//! layout). Block `b` gets one f32 scale `d_b = amax_b / XMAX` and every element an integer
//! `X_i = round(x_i / d_b)` (half to even) with `|X_i| <= XMAX = 32639`: 16-bit activations, so the dot product
//! keeps about 15 bits of each activation (int8 activations lose ~5e-3 of the dot product on
//! N(0,1) data; these lose ~3e-5). `XMAX = 127 * 256 + 127` so that `X = 256 * hi + lo` splits
//! into two signed bytes (`hi = (X + 128) >> 8`, `lo = X - 256 * hi`), which the NEON dot-product
//! kernel multiplies with `sdot`.
//!
//! A *segment* is where one group meets one block: a whole chunk when `G >= 128`, a group when
//! `G < 128`. With `S = sum q_i X_i` over a segment (an exact integer), the dot product of one row
//! of an INT matrix with `x` is
//!
//! ```text
//! y = sum_seg (s_g * d_b) * S_seg  -  sum_g s_g * z_g * GX_g,     GX_g = sum_{i in g} d_b(i) * X_i
//! ```
//!
//! Every kernel (scalar twin, AVX2, AVX-512, NEON) computes the integer sums exactly; they differ
//! only in the order of the f32 sums that combine them.
//!
//! # 8-bit activations (`act8`, opt-in)
//!
//! `X_i = 256 * round(x_i / d8_b)` with `d8_b = amax_b / 127` (and `d_b = d8_b / 256`): the same
//! scheme with a zero low byte, so every kernel and the twin stay correct unchanged, and kernels
//! that know the low plane is zero skip it (AVX2 and NEON `sdot`; on AVX2 that halves the
//! multiplies: 16-bit activations need two `vpmaddubsw` per 32 weights, and Zen 3 retires two per
//! cycle). It is what llama.cpp
//! does (Q8_K); it costs ~4e-3 of the dot product (normwise, the test data below) instead of 7e-5.

use super::aligned::AlignedBuf;
use super::reference::decode_chunk;
use bd_formats::quant::{GroupParams, PackedMatrix, CHUNK};
use rayon::prelude::*;

/// Largest magnitude of a quantized activation.
pub(crate) const XMAX: f32 = 32639.0;
/// Largest magnitude of an 8-bit activation (before the factor 256 that puts it in the high byte).
pub(crate) const XMAX8: f32 = 127.0;

/// Blocks whose largest magnitude is below this quantize to zero (their contribution is far below
/// f32 resolution of any realistic output, and `XMAX / amax` would overflow).
const TINY: f32 = 1e-30;

/// Segments per 128-weight chunk for group size `g` (1 when a group covers whole chunks).
pub(crate) fn segs_per_chunk(group: usize) -> usize {
    if group >= CHUNK {
        1
    } else {
        CHUNK / group
    }
}

/// Round `n` up to a multiple of 16 plus 16 spare lanes (vector code reads whole registers).
pub(crate) fn vec_len(n: usize) -> usize {
    n.div_ceil(16) * 16 + 16
}

/// Quantized activations of up to `cap_n` inputs of up to `cap_cols` values.
pub(crate) struct ActBuf {
    pub xq: AlignedBuf<i16>,
    /// `xq` in the element order of the integer NF kernels (`nf_int::pair_order`, `unpack_order`).
    pub xp: AlignedBuf<i16>,
    pub dseg: Vec<f32>,
    pub gx: Vec<f32>,
    /// High and low signed bytes of `xq`.
    pub hi: AlignedBuf<i8>,
    pub lo: AlignedBuf<i8>,
    pub cap_cols: usize,
    pub cap_n: usize,
}

/// A view of the quantized activations of `n` inputs for one matrix shape.
#[derive(Clone, Copy)]
pub(crate) struct ActQ<'a> {
    /// `[n][pcols]`, zero past `cols`.
    pub xq: &'a [i16],
    /// `[n][pcols]`: `xq` in the NF kernels' order, or empty when not asked for.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xp: &'a [i16],
    /// `[n][sstride]`: block scale of each segment, zero past the last one.
    pub dseg: &'a [f32],
    /// `[n][gstride]`: `GX_g` of each group, zero past the last one.
    pub gx: &'a [f32],
    pub hi: &'a [i8],
    pub lo: &'a [i8],
    pub pcols: usize,
    pub sstride: usize,
    pub gstride: usize,
}

impl<'a> ActQ<'a> {
    pub fn xq(&self, k: usize) -> &'a [i16] {
        &self.xq[k * self.pcols..(k + 1) * self.pcols]
    }
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn xp(&self, k: usize) -> &'a [i16] {
        &self.xp[k * self.pcols..(k + 1) * self.pcols]
    }
    pub fn dseg(&self, k: usize) -> &'a [f32] {
        &self.dseg[k * self.sstride..(k + 1) * self.sstride]
    }
    pub fn gx(&self, k: usize) -> &'a [f32] {
        &self.gx[k * self.gstride..(k + 1) * self.gstride]
    }
    pub fn hi(&self, k: usize) -> &'a [i8] {
        &self.hi[k * self.pcols..(k + 1) * self.pcols]
    }
    pub fn lo(&self, k: usize) -> &'a [i8] {
        &self.lo[k * self.pcols..(k + 1) * self.pcols]
    }
}

fn strides(cols: usize, group: usize) -> (usize, usize, usize) {
    let pcols = cols.div_ceil(CHUNK) * CHUNK;
    let nseg = pcols / CHUNK * segs_per_chunk(group);
    (pcols, vec_len(nseg), vec_len(cols.div_ceil(group)))
}

impl ActBuf {
    pub fn new(cap_cols: usize, cap_n: usize) -> Self {
        let mut b = Self {
            xq: AlignedBuf::new(),
            xp: AlignedBuf::new(),
            dseg: Vec::new(),
            gx: Vec::new(),
            hi: AlignedBuf::new(),
            lo: AlignedBuf::new(),
            cap_cols: 0,
            cap_n: 0,
        };
        b.reserve(cap_cols, cap_n);
        b
    }

    /// Make room for `n` inputs of `cols` values (allocates only when the session's sizes are
    /// exceeded).
    pub fn reserve(&mut self, cols: usize, n: usize) {
        let (cols, n) = (cols.max(self.cap_cols).max(1), n.max(self.cap_n).max(1));
        // Segments and groups are at most one per 16 columns.
        let (pcols, sstride, _) = strides(cols, 16);
        if self.xq.len() < n * pcols {
            self.xq.resize(n * pcols);
            self.xp.resize(n * pcols);
        }
        if self.dseg.len() < n * sstride {
            self.dseg.resize(n * sstride, 0.0);
            self.gx.resize(n * sstride, 0.0);
        }
        if self.hi.len() < n * pcols {
            self.hi.resize(n * pcols);
            self.lo.resize(n * pcols);
        }
        self.cap_cols = cols;
        self.cap_n = n;
    }

    /// Quantize `n` inputs (`x` is `[n][cols]`) for a matrix with group size `group`; `order`:
    /// also fill `xp` in that order (the integer NF kernels); `act8`: 8-bit activations (module
    /// docs).
    pub fn quantize(
        &mut self,
        x: &[f32],
        n: usize,
        cols: usize,
        group: usize,
        order: Option<super::nf_int::XpOrder>,
        act8: bool,
    ) -> ActQ<'_> {
        assert_eq!(x.len(), n * cols);
        self.reserve(cols, n);
        let (pcols, sstride, gstride) = strides(cols, group);
        let one = |k: usize, xq: &mut [i16], dseg: &mut [f32], gx: &mut [f32], hi: &mut [i8], lo: &mut [i8]| {
            let xk = &x[k * cols..(k + 1) * cols];
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // The same code compiled for AVX2 (identical results: no operation is fused).
                return unsafe { quantize_one_avx2(xk, group, act8, xq, dseg, gx, hi, lo) };
            }
            quantize_one(xk, group, act8, xq, dseg, gx, hi, lo)
        };
        let (xq, dseg, gx) = (&mut self.xq[..n * pcols], &mut self.dseg[..n * sstride], &mut self.gx[..n * gstride]);
        let (hi, lo) = (&mut self.hi[..n * pcols], &mut self.lo[..n * pcols]);
        if n >= 8 && rayon::current_num_threads() > 1 {
            // Prefill: the inputs are independent.
            xq.par_chunks_mut(pcols)
                .zip(dseg.par_chunks_mut(sstride))
                .zip(gx.par_chunks_mut(gstride))
                .zip(hi.par_chunks_mut(pcols).zip(lo.par_chunks_mut(pcols)))
                .enumerate()
                .for_each(|(k, (((xq, dseg), gx), (hi, lo)))| one(k, xq, dseg, gx, hi, lo));
        } else {
            for (k, (((xq, dseg), gx), (hi, lo))) in xq
                .chunks_mut(pcols)
                .zip(dseg.chunks_mut(sstride))
                .zip(gx.chunks_mut(gstride))
                .zip(hi.chunks_mut(pcols).zip(lo.chunks_mut(pcols)))
                .enumerate()
            {
                one(k, xq, dseg, gx, hi, lo);
            }
        }
        if let Some(order) = order {
            order(&self.xq[..n * pcols], &mut self.xp[..n * pcols]);
        }
        ActQ {
            xq: &self.xq[..n * pcols],
            xp: if order.is_some() { &self.xp[..n * pcols] } else { &[] },
            dseg: &self.dseg[..n * sstride],
            gx: &self.gx[..n * gstride],
            hi: &self.hi[..n * pcols],
            lo: &self.lo[..n * pcols],
            pcols,
            sstride,
            gstride,
        }
    }
}

/// Round half to even: adding 1.5 * 2^23 leaves the integer in the low mantissa bits (for
/// |v| < 2^22), read back with integer arithmetic, so the loop vectorizes on any x86-64 or
/// aarch64 without a rounding or saturating conversion instruction. NaN gives an arbitrary value in range.
#[inline(always)]
fn round_to_int(v: f32) -> i16 {
    const MAGIC: f32 = 12582912.0;
    let v = v.clamp(-XMAX, XMAX);
    ((v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i16
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn quantize_one_avx2(
    x: &[f32],
    group: usize,
    act8: bool,
    xq: &mut [i16],
    dseg: &mut [f32],
    gx: &mut [f32],
    hi: &mut [i8],
    lo: &mut [i8],
) {
    quantize_one(x, group, act8, xq, dseg, gx, hi, lo)
}

/// Quantize one input: `xq` and the byte planes `hi`, `lo` get `pcols` values,
/// `dseg` and `gx` their strides (zero padded).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn quantize_one(
    x: &[f32],
    group: usize,
    act8: bool,
    xq: &mut [i16],
    dseg: &mut [f32],
    gx: &mut [f32],
    hi: &mut [i8],
    lo: &mut [i8],
) {
    let cols = x.len();
    let spc = segs_per_chunk(group);
    let seg_len = CHUNK / spc;
    dseg.fill(0.0);
    gx.fill(0.0);
    for (b, xqb) in xq.chunks_exact_mut(CHUNK).enumerate() {
        let lo_e = b * CHUNK;
        let hi_e = (lo_e + CHUNK).min(cols);
        let mut xb = [0f32; CHUNK];
        xb[..hi_e - lo_e].copy_from_slice(&x[lo_e..hi_e]);
        // 16 partial maxima so the loop vectorizes.
        let mut m16 = [0f32; 16];
        for c in xb.chunks_exact(16) {
            for (m, v) in m16.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = m16.iter().fold(0f32, |m, &v| m.max(v));
        let xqb: &mut [i16; CHUNK] = xqb.try_into().expect("whole chunk");
        // 8 bits: X = 256 * round(x / d8), so the high byte carries the value and the low byte is zero.
        let (xmax, unit) = if act8 { (XMAX8, 256) } else { (XMAX, 1) };
        let (d, inv) = if amax >= TINY { (amax / xmax, xmax / amax) } else { (0.0, 0.0) };
        for (q, &v) in xqb.iter_mut().zip(&xb) {
            *q = round_to_int((v * inv).clamp(-xmax, xmax)) * unit;
        }
        let d = d / unit as f32;
        {
            let hb: &mut [i8; CHUNK] = (&mut hi[b * CHUNK..(b + 1) * CHUNK]).try_into().expect("whole chunk");
            let lb: &mut [i8; CHUNK] = (&mut lo[b * CHUNK..(b + 1) * CHUNK]).try_into().expect("whole chunk");
            for ((h, l), &v) in hb.iter_mut().zip(lb.iter_mut()).zip(xqb.iter()) {
                let v = v as i32;
                let hv = (v + 128) >> 8;
                *h = hv as i8;
                *l = (v - 256 * hv) as i8;
            }
        }
        for s in 0..spc {
            dseg[b * spc + s] = d;
            // This segment's share of its group's GX.
            let seg = &xqb[s * seg_len..(s + 1) * seg_len];
            let sum: i32 = seg.iter().map(|&v| v as i32).sum();
            let g = (lo_e + s * seg_len) / group;
            if lo_e + s * seg_len < cols {
                gx[g] += d * sum as f32;
            }
        }
    }
}

/// The scalar twin of the integer kernels: the same integer sums, combined in row order.
pub(crate) fn int_row_twin(p: &PackedMatrix, r: usize, act: &ActQ, k: usize) -> f32 {
    let l = p.layout;
    let spc = segs_per_chunk(l.group);
    let seg_len = CHUNK / spc;
    let (xq, dseg, gx) = (act.xq(k), act.dseg(k), act.gx(k));
    let codes = p.row_codes(r);
    let cb = codes.len() / (l.padded_cols() / CHUNK);
    let mut q = [0u8; CHUNK];
    let mut y = 0f32;
    for c in 0..l.padded_cols() / CHUNK {
        decode_chunk(l.format, &codes[c * cb..(c + 1) * cb], &mut q);
        for s in 0..spc {
            let e0 = s * seg_len;
            let sum: i32 = (e0..e0 + seg_len).map(|i| q[i] as i32 * xq[c * CHUNK + i] as i32).sum();
            let g = ((c * CHUNK + e0) / l.group).min(l.groups - 1);
            let GroupParams::Int { scale, .. } = p.params(r, g) else { unreachable!("INT format") };
            y += scale.to_f32() * dseg[c * spc + s] * sum as f32;
        }
    }
    for (g, &gxg) in gx.iter().enumerate().take(l.groups) {
        let GroupParams::Int { scale, zero } = p.params(r, g) else { unreachable!("INT format") };
        y -= scale.to_f32() * zero as f32 * gxg;
    }
    y
}
