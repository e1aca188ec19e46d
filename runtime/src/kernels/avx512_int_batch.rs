//! AVX-512 kernel for the INT formats at several inputs (the prompt's batched products).
//!
//! The arithmetic of `avx512_int::pair_block` (rows in pairs on 512-bit registers, `vpdpbusd` of
//! the unpacked codes with both byte planes of the 16-bit activations), with `C` inputs per
//! tile: each field is unpacked once and serves every input, and each activation load serves
//! every pair of rows. The 256-bit tile of `x86_int::block` (4 rows x 2 inputs) kept Zen 5's two
//! `vpdpbusd` pipes ~70% busy at half their width; Zen 5 runs 512-bit `vpdpbusd` at the same two
//! per cycle (4 cycles' latency, measured), so the same products take half the instructions.
//! Registers: 2 pairs x 4 inputs x 2 planes of accumulators and 8 f32 sums.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::ActQ;
use super::avx512_int::{factors, field, pair, prep512};
use super::x86_int::{chunk_bytes, hsum, load_raw, prefetch, prefetch_range, FB_SLOTS, WCH, WSEG};
use bd_formats::quant::{PackedMatrix, CHUNK};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Pairs of rows per tile at most.
const MAX_PAIRS: usize = 2;
/// Inputs per tile at most.
const MAX_INPUTS: usize = 4;

/// `R` rows (2 or 4) from `r0`, `C` inputs (at most 4) from `k0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block<const B: u32, const SEGS: usize, const R: usize, const C: usize, const GF: bool, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
    fbuf: &mut [f32; FB_SLOTS * WSEG],
) {
    const { assert!(R.is_multiple_of(2) && R / 2 <= MAX_PAIRS && C <= MAX_INPUTS && R * C <= FB_SLOTS) };
    let np = R / 2;
    let l = &p.layout;
    let nch = l.padded_cols() / CHUNK;
    let cb = chunk_bytes(B);
    let base = p.bytes().as_ptr();
    let codes: [*const u8; R] = from_fn(|r| base.add((r0 + r) * l.row_code_bytes));
    let scales: [*const u16; R] = from_fn(|r| base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes) as *const u16);
    let zeros: [*const u8; R] = from_fn(|r| base.add(l.zeros_offset + (r0 + r) * l.row_zero_bytes));
    let xh: [*const i8; C] = from_fn(|k| act.hi(k0 + k).as_ptr());
    let xl: [*const i8; C] = from_fn(|k| act.lo(k0 + k).as_ptr());
    let dseg: [*const f32; C] = from_fn(|k| act.dseg(k0 + k).as_ptr());
    let gx: [*const f32; C] = from_fn(|k| act.gx(k0 + k).as_ptr());
    let cpg_shift = (l.group > CHUNK) as usize;
    let fb = fbuf.as_mut_ptr();

    let mut facc = [[_mm512_setzero_ps(); MAX_INPUTS]; MAX_PAIRS];
    let mut w0 = 0;
    while w0 < nch {
        let wn = WCH.min(nch - w0);
        let seg0 = w0 * SEGS;
        let (g_lo, g_hi) =
            if SEGS == 1 { (w0 >> cpg_shift, (w0 + wn + cpg_shift) >> cpg_shift) } else { (seg0, seg0 + wn * SEGS) };
        let g_hi = g_hi.min(l.groups);
        let mut corr = [[_mm256_setzero_ps(); C]; R];
        prep512::<B, R, C>(&scales, &zeros, &dseg, &gx, (g_lo, g_hi), seg0, cpg_shift, fb, &mut corr);
        for i in 0..np {
            for k in 0..C {
                let c = _mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(corr[2 * i][k])),
                    _mm256_castps_pd(corr[2 * i + 1][k]),
                );
                facc[i][k] = _mm512_sub_ps(facc[i][k], _mm512_castpd_ps(c));
            }
        }
        if w0 == 0 {
            prefetch_range((scales[0] as *const u8).wrapping_add(R * l.row_scale_bytes), R * l.row_scale_bytes);
            prefetch_range(zeros[0].wrapping_add(R * l.row_zero_bytes), R * l.row_zero_bytes);
        }
        for c in 0..wn {
            let cc = w0 + c;
            let mut raw = [[_mm512_setzero_si512(); 2]; MAX_PAIRS];
            for i in 0..np {
                let (a, b) = (load_raw::<B>(codes[2 * i].add(cc * cb)), load_raw::<B>(codes[2 * i + 1].add(cc * cb)));
                raw[i] = [pair(a[0], b[0]), if B == 2 { _mm512_setzero_si512() } else { pair(a[1], b[1]) }];
            }
            for r in 0..R {
                // The same chunk of the next block of rows (see x86_int::block).
                if B != 2 || cc.is_multiple_of(2) {
                    prefetch(codes[r].wrapping_add(R * l.row_code_bytes + cc * cb));
                }
                if B != 2 {
                    prefetch(codes[r].wrapping_add(R * l.row_code_bytes + cc * cb + 32));
                }
            }
            let mut ah = [[_mm512_setzero_si512(); MAX_INPUTS]; MAX_PAIRS];
            let mut al = [[_mm512_setzero_si512(); MAX_INPUTS]; MAX_PAIRS];
            unroll!(j in [0, 1, 2, 3] {
                let mut f = [_mm512_setzero_si512(); MAX_PAIRS];
                for i in 0..np {
                    f[i] = field::<B, GF>(&raw[i], j);
                }
                let off = cc * CHUNK + 32 * j;
                for k in 0..C {
                    let h = _mm512_broadcast_i64x4(_mm256_loadu_si256(xh[k].add(off) as *const __m256i));
                    for i in 0..np {
                        ah[i][k] = _mm512_dpbusd_epi32(ah[i][k], f[i], h);
                    }
                    // 8-bit activations: the low plane is zero (act.rs).
                    if !A8 {
                        let lo = _mm512_broadcast_i64x4(_mm256_loadu_si256(xl[k].add(off) as *const __m256i));
                        for i in 0..np {
                            al[i][k] = _mm512_dpbusd_epi32(al[i][k], f[i], lo);
                        }
                    }
                }
                let ends = match SEGS {
                    1 => j == 3,
                    2 => j % 2 == 1,
                    _ => true,
                };
                if ends {
                    for i in 0..np {
                        for k in 0..C {
                            let fv = factors::<SEGS>(fb, 2 * i * C + k, (2 * i + 1) * C + k, c, j);
                            let s = _mm512_slli_epi32::<8>(ah[i][k]);
                            let s = _mm512_cvtepi32_ps(if A8 { s } else { _mm512_add_epi32(s, al[i][k]) });
                            facc[i][k] = _mm512_fmadd_ps(s, fv, facc[i][k]);
                            ah[i][k] = _mm512_setzero_si512();
                            al[i][k] = _mm512_setzero_si512();
                        }
                    }
                }
            });
        }
        w0 += wn;
    }
    for i in 0..np {
        for k in 0..C {
            let v = _mm512_castps_pd(facc[i][k]);
            *y.add((k0 + k) * ys + r0 + 2 * i) = hsum(_mm256_castpd_ps(_mm512_castpd512_pd256(v)));
            *y.add((k0 + k) * ys + r0 + 2 * i + 1) = hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(v)));
        }
    }
}
