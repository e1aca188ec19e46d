//! The integer scheme of the NF kernels (AVX-512, AVX2), and its scalar twin.
//!
//! # The scheme
//!
//! NF codes index a codebook, so their products cannot be split into code x activation sums the
//! way the INT formats' can. Instead each group of each row gets a 16-bit *level table*: with
//! `m = max(|s_pos|, |s_neg|)` and `inv = TMAX / m`,
//!
//! ```text
//! T_g[q] = round_half_even(L_q * (s_q * inv))        |T_g[q]| <= TMAX, product exact
//! y      = sum_seg (m_g / TMAX) * d_b * sum_i T_g[q_i] X_i
//! ```
//!
//! where `s_q` is the scale of code `q`'s side, and `X_i`, `d_b` are the 16-bit activations of
//! [`super::act`]. AVX-512 looks the table up with `vpermw` and multiplies 16-bit pairs with
//! `vpdpwssd`; AVX2 looks up the table's low and high bytes with two `vpshufb` and multiplies with
//! `vpmaddwd`. The integer sums are exact, so SIMD and this twin differ only in f32 summation order.
//!
//! `TMAX = 4095` is the largest table magnitude for which a 128-weight segment cannot overflow a
//! 32-bit lane: a lane sums 16 products, `16 * 4095 * 32639 < 2^31`.
//!
//! Error against the exact f32 product: the table rounding moves each weight by at most
//! `m_g / TMAX / 2` (1.2e-4 of the group's largest scale), the activation rounding each input by
//! at most `d_b / 2`; `nf_rounding_bound` in the tests states the per-row sum of both.

use super::act::{segs_per_chunk, ActQ};
use super::reference::decode_chunk;
use bd_formats::quant::{GroupParams, PackedMatrix, QuantFormat, CHUNK};

/// Largest table magnitude.
pub(crate) const TMAX: f32 = 4095.0;
/// Largest table magnitude with 8-bit activations (`act8`): tables of signed bytes.
pub(crate) const TMAX8: f32 = 127.0;

/// The table magnitude of the scheme with 8-bit (`act8`) or 16-bit activations.
pub(crate) fn tmax(act8: bool) -> f32 {
    if act8 {
        TMAX8
    } else {
        TMAX
    }
}

/// The smallest group the integer NF kernels take: a lookup register covers the even or the odd
/// elements of 32 consecutive weights, which must share one table.
pub(crate) const MIN_GROUP: usize = 32;

/// The levels of an NF format, 16 entries (NF3's 8 twice: the lookup's 4th index bit is not a
/// code bit).
pub(crate) fn levels16(format: QuantFormat) -> [f32; 16] {
    let l = format.levels().expect("NF format");
    std::array::from_fn(|i| l[i % l.len()])
}

/// `inv = tmax / m` and the segment factor `m / tmax` of a group's scales (both 0 when `m` is 0).
#[inline(always)]
pub(crate) fn group_factors(pos: f32, neg: f32, tmax: f32) -> (f32, f32) {
    let m = pos.abs().max(neg.abs());
    if m > 0.0 {
        (tmax / m, m * (1.0 / tmax))
    } else {
        (0.0, 0.0)
    }
}

/// The table entry of level `l` with side scale `s`: `s * inv` in f32, then its exact product
/// with `l` rounded half to even (the SIMD kernels get the same integer from one FMA, see
/// `avx512_nf_window`; the f64 product of two f32 values is exact).
#[inline(always)]
pub(crate) fn table_entry(l: f32, s: f32, inv: f32) -> i32 {
    (l as f64 * (s * inv) as f64).round_ties_even() as i32
}

/// Put the activations in the order the lookups produce. A 16-bit word of packed codes holds the
/// codes of an even and an odd element, so a lookup yields the 16 even or the 16 odd elements of a
/// 32-element block; a 512-bit lookup covers two neighbouring blocks. So each 64 elements are
/// stored as: evens of block 0, evens of block 1, odds of block 0, odds of block 1.
pub(crate) fn pair_order(xq: &[i16], xp: &mut [i16]) {
    for (src, dst) in xq.chunks_exact(64).zip(xp.chunks_exact_mut(64)) {
        for odd in 0..2 {
            for h in 0..2 {
                for k in 0..16 {
                    dst[32 * odd + 16 * h + k] = src[32 * h + 2 * k + odd];
                }
            }
        }
    }
}

/// An element order for the activations of the integer NF kernels (`act::ActBuf::quantize`).
pub(crate) type XpOrder = fn(&[i16], &mut [i16]);

/// The order of the AVX2 lookups: a 32-element block's low and high table bytes, interleaved by
/// `vpunpcklbw` / `vpunpckhbw` within 128-bit lanes, give elements 0-7 and 16-23, then 8-15 and
/// 24-31. So each 32 elements are stored as 0-7, 16-23, 8-15, 24-31.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn unpack_order(xq: &[i16], xp: &mut [i16]) {
    for (src, dst) in xq.chunks_exact(32).zip(xp.chunks_exact_mut(32)) {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = src[[0, 16, 8, 24][i / 8] + i % 8];
        }
    }
}

/// Where the 16 activations of the even (`odd` 0) or odd elements of 32-element block `t` of a
/// chunk start in `pair_order`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
pub(crate) fn pair_offset(t: usize, odd: usize) -> usize {
    64 * (t / 2) + 32 * odd + 16 * (t % 2)
}

/// The scalar twin of the integer NF kernels: the same tables (of magnitude `tmax`) and integer
/// sums, combined in row order.
pub(crate) fn nf_row_twin(p: &PackedMatrix, r: usize, act: &ActQ, k: usize, tmax: f32) -> f32 {
    let l = p.layout;
    let levels = levels16(l.format);
    let spc = segs_per_chunk(l.group);
    let seg_len = CHUNK / spc;
    let (xq, dseg) = (act.xq(k), act.dseg(k));
    let codes = p.row_codes(r);
    let cb = codes.len() / (l.padded_cols() / CHUNK);
    let mut q = [0u8; CHUNK];
    let mut y = 0f32;
    for c in 0..l.padded_cols() / CHUNK {
        decode_chunk(l.format, &codes[c * cb..(c + 1) * cb], &mut q);
        for s in 0..spc {
            let e0 = s * seg_len;
            let g = ((c * CHUNK + e0) / l.group).min(l.groups - 1);
            let GroupParams::Nf { pos, neg } = p.params(r, g) else { unreachable!("NF format") };
            let (pos, neg) = (pos.to_f32(), neg.to_f32());
            let (inv, fac) = group_factors(pos, neg, tmax);
            let t: [i32; 16] = std::array::from_fn(|i| table_entry(levels[i], if levels[i] < 0.0 { neg } else { pos }, inv));
            let sum: i64 = (e0..e0 + seg_len).map(|i| t[q[i] as usize] as i64 * xq[c * CHUNK + i] as i64).sum();
            y += fac * dseg[c * spc + s] * sum as f32;
        }
    }
    y
}
