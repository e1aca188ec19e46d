//! AVX-512 kernel of the NF3 table scheme (`lut.rs`): per pair of columns and block of 32 rows,
//! one index register (a shift of the codes), two `vpermi2w` lookups and two 16-bit adds.

// Kernels index several parallel per-block arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::avx512_lut_int::{indices, prefetch_ahead, store_blocks};
use super::lut::{segment_scale, LutNf3, LutTables, TablesRaw, BLOCK, CODE_BYTES, COL_SEGS, SEG};
use bd_formats::quant::NF3_LEVELS;
use std::arch::x86_64::*;
use std::array::from_fn;

/// `LutTables::build_twin` with 16 entries a register: per pair of columns, per side, one product
/// and four FMAs on constant level patterns, rounded and narrowed to words. The same f32
/// operations as the twin, so the same tables.
///
/// # Safety
/// The CPU has AVX-512 F/BW.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
pub unsafe fn build(x: &[f32], t: &mut LutTables) {
    let segs = t.segs(x.len());
    build_segs(x, t.raw(), 0, segs);
}

/// [`build`] for segments `s0..s1` only: a thread's share of the columns.
///
/// # Safety
/// The CPU has AVX-512 F/BW; `t` points at tables for at least `s1` segments that no other thread
/// touches in these segments.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
pub(super) unsafe fn build_segs(x: &[f32], t: TablesRaw, s0: usize, s1: usize) {
    // Lane i of register v of a side's 64 entries: first code i % 8, second code 2v + i / 8.
    let side = |pos: bool, q: usize| if (pos && q >= 4) || (!pos && q <= 2) { NF3_LEVELS[q] } else { 0.0 };
    let mut a = [_mm512_setzero_ps(); 2];
    let mut bv = [[_mm512_setzero_ps(); 4]; 2];
    for sd in 0..2 {
        let l: [f32; 16] = std::array::from_fn(|i| side(sd == 0, i % 8));
        a[sd] = _mm512_loadu_ps(l.as_ptr());
        for v in 0..4 {
            let l: [f32; 16] = std::array::from_fn(|i| side(sd == 0, 2 * v + i / 8));
            bv[sd][v] = _mm512_loadu_ps(l.as_ptr());
        }
    }
    let xv = |c: usize| if c < x.len() { *x.get_unchecked(c) } else { 0.0 };
    for s in s0..s1 {
        let (d, inv) = segment_scale(x, s);
        *t.d.add(s) = d;
        for k in 0..SEG / 2 {
            let c = s * SEG + 2 * k;
            let x1 = _mm512_set1_ps(xv(c) * inv);
            let x2 = _mm512_set1_ps(xv(c + 1) * inv);
            let out = t.tabs.add(c / 2 * 128);
            for sd in 0..2 {
                let base = _mm512_mul_ps(x1, a[sd]);
                for v in 0..4 {
                    let e = _mm512_cvtps_epi32(_mm512_fmadd_ps(x2, bv[sd][v], base));
                    _mm256_storeu_si256(out.add(64 * sd + 16 * v) as *mut __m256i, _mm512_cvtepi32_epi16(e));
                }
            }
        }
    }
}

/// Blocks `b0..b1` of `m` times the input of `t`: `y[r]` for the rows of those blocks.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VBMI2; `y` has room for row `min(b1 * 32, m.rows) - 1`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vbmi2")]
pub unsafe fn blocks(m: &LutNf3, t: &LutTables, b0: usize, b1: usize, y: *mut f32) {
    blocks_segs(m, t.view(), b0, b1, 0, m.pcols / SEG, y)
}

/// [`blocks`] over segments `c0..c1` only (a thread's share of the columns): `y` gets that part of
/// each row's sum.
///
/// # Safety
/// As [`blocks`], with `t` built at least for segments `c0..c1`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vbmi2")]
pub(super) unsafe fn blocks_segs(m: &LutNf3, t: TablesRaw, b0: usize, b1: usize, c0: usize, c1: usize, y: *mut f32) {
    let block_bytes = (m.pcols / 16 * CODE_BYTES) as isize;
    // Column passes of `COL_SEGS` segments, so that one pass's tables stay in L2.
    for s0 in (c0..c1).step_by(COL_SEGS) {
        let s1 = (s0 + COL_SEGS).min(c1);
        let first = s0 == c0;
        let pass_bytes = ((s1 - s0) * SEG / 16 * CODE_BYTES) as isize;
        let ahead = |b: usize, r: usize| prefetch_ahead(b, r, b0, b1, block_bytes, pass_bytes);
        let mut b = b0;
        while b + 4 <= b1 {
            tile::<4>(m, t, b, s0, s1, first, ahead(b, 4), y);
            b += 4;
        }
        while b < b1 {
            tile::<1>(m, t, b, s0, s1, first, ahead(b, 1), y);
            b += 1;
        }
    }
}

/// One pair of columns for 4 blocks: the tables at `tp` loaded once, 8 lookups, 8 adds. In `asm!`
/// because LLVM otherwise hoists the tables of all 8 pairs of a code group and spills (measured
/// 3x slower).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn step4(tp: *const __m512i, idx: &[__m512i; 4], p: &mut [__m512i; 4], n: &mut [__m512i; 4]) {
    // Scratch registers: named outputs (`out(zmm_reg) _` formats as an invalid register name).
    let (_t0, _t1, _t2, _t3, _a, _i0, _i1, _i2, _i3): (
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
        __m512i,
    );
    std::arch::asm!(
        "vmovdqu64 {t0}, [{tp}]",
        "vmovdqu64 {t1}, [{tp} + 64]",
        "vmovdqu64 {t2}, [{tp} + 128]",
        "vmovdqu64 {t3}, [{tp} + 192]",
        "vmovdqa64 {a}, {i0}", "vpermi2w {a}, {t0}, {t1}", "vpermi2w {i0}, {t2}, {t3}", "vpaddw {p0}, {p0}, {a}", "vpaddw {n0}, {n0}, {i0}",
        "vmovdqa64 {a}, {i1}", "vpermi2w {a}, {t0}, {t1}", "vpermi2w {i1}, {t2}, {t3}", "vpaddw {p1}, {p1}, {a}", "vpaddw {n1}, {n1}, {i1}",
        "vmovdqa64 {a}, {i2}", "vpermi2w {a}, {t0}, {t1}", "vpermi2w {i2}, {t2}, {t3}", "vpaddw {p2}, {p2}, {a}", "vpaddw {n2}, {n2}, {i2}",
        "vmovdqa64 {a}, {i3}", "vpermi2w {a}, {t0}, {t1}", "vpermi2w {i3}, {t2}, {t3}", "vpaddw {p3}, {p3}, {a}", "vpaddw {n3}, {n3}, {i3}",
        tp = in(reg) tp,
        t0 = out(zmm_reg) _t0, t1 = out(zmm_reg) _t1, t2 = out(zmm_reg) _t2, t3 = out(zmm_reg) _t3, a = out(zmm_reg) _a,
        i0 = inout(zmm_reg) idx[0] => _i0, i1 = inout(zmm_reg) idx[1] => _i1, i2 = inout(zmm_reg) idx[2] => _i2, i3 = inout(zmm_reg) idx[3] => _i3,
        p0 = inout(zmm_reg) p[0], p1 = inout(zmm_reg) p[1], p2 = inout(zmm_reg) p[2], p3 = inout(zmm_reg) p[3],
        n0 = inout(zmm_reg) n[0], n1 = inout(zmm_reg) n[1], n2 = inout(zmm_reg) n[2], n3 = inout(zmm_reg) n[3],
        options(pure, readonly, nostack),
    );
}

// Prefetch: each block's codes are asked into L2 one tile ahead, at the same place in the next
// tile's blocks (`ahead` bytes from the codes being read), as in the INT table kernel; from a
// pass's last tile, the next pass's first tile. Until 2026-12-04 this kernel fetched 4 KiB ahead
// in each block's own stream (from DRAM, 1 thread, Zen 4: no prefetch 59-63% of the read
// bandwidth, 4 KiB ahead 61-78%, 8 KiB 67-81%, 1.5 KiB into L1 46-64%), which left the first
// 4 KiB of each block's share of a pass (24 KiB) unfetched and fetched 4 KiB past its end that
// the next pass, a whole matrix later, reads again. Interleaving a tile's 4 blocks into one
// stream measured 36-41%: four streams keep more lines in flight.

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(m: &LutNf3, t: TablesRaw, b: usize, s0: usize, s1: usize, first: bool, ahead: isize, y: *mut f32) {
    let n16 = m.pcols / 16;
    let codes = m.codes.as_ptr() as *const u8;
    let cb: [*const __m512i; R] = from_fn(|i| codes.add((b + i) * n16 * CODE_BYTES) as *const __m512i);
    let tabs = t.tabs as *const __m512i;
    let scales = m.scales.as_ptr();
    let spg = m.group / SEG;
    let mut yv = [[_mm512_setzero_ps(); 2]; R];
    for s in s0..s1 {
        let mut p = [_mm512_setzero_si512(); R];
        let mut n = [_mm512_setzero_si512(); R];
        unroll!(q in [0, 1] {
            let j16 = 2 * s + q;
            for i in 0..R {
                let c = (cb[i].add(j16 * 3) as *const u8).wrapping_offset(ahead);
                for l in 0..3 {
                    _mm_prefetch::<_MM_HINT_T2>(c.wrapping_add(64 * l) as *const i8);
                }
            }
            unroll!(k in [0, 1, 2, 3, 4, 5, 6, 7] {
                let tp = tabs.add((s * 16 + q * 8 + k) * 4);
                let idx: [__m512i; R] = from_fn(|i| indices(cb[i].add(j16 * 3), k));
                if R == 4 {
                    let four = |v: &mut [__m512i; R]| &mut *(v.as_mut_ptr() as *mut [__m512i; 4]);
                    step4(tp, &*(idx.as_ptr() as *const [__m512i; 4]), four(&mut p), four(&mut n));
                } else {
                    for i in 0..R {
                        let (t0, t1, t2, t3) = (
                            _mm512_loadu_si512(tp),
                            _mm512_loadu_si512(tp.add(1)),
                            _mm512_loadu_si512(tp.add(2)),
                            _mm512_loadu_si512(tp.add(3)),
                        );
                        p[i] = _mm512_add_epi16(p[i], _mm512_permutex2var_epi16(t0, idx[i], t1));
                        n[i] = _mm512_add_epi16(n[i], _mm512_permutex2var_epi16(t2, idx[i], t3));
                    }
                }
            });
        });
        let d = _mm512_set1_ps(*t.d.add(s));
        let g = s / spg;
        for i in 0..R {
            let sc = scales.add(((b + i) * m.groups + g) * 2 * BLOCK);
            unroll!(h in [0, 1] {
                let pos = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(16 * h) as *const __m256i));
                let neg = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(BLOCK + 16 * h) as *const __m256i));
                let pw = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<{ h as i32 }>(p[i]));
                let nw = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<{ h as i32 }>(n[i]));
                yv[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pw), _mm512_mul_ps(pos, d), yv[i][h]);
                yv[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(nw), _mm512_mul_ps(neg, d), yv[i][h]);
            });
        }
    }
    store_blocks(&yv, b, m.rows, first, y);
}
