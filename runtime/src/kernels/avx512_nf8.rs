//! AVX-512 byte kernel for the NF formats with 8-bit activations (`act8`), groups of 64 and
//! more: byte level tables (`nf_int::TMAX8`) looked up with `vpermb` (AVX512-VBMI), times the
//! activations' signed bytes with `vpdpbusd`.
//!
//! A 512-bit `vpermb` looks up 64 consecutive weights at once, so the activations stay in their
//! natural order (the `hi` plane of `act`), a chunk takes 2 lookups and 2 `vpdpbusd` per row where
//! the word kernel (`avx512_nf.rs`) takes 4 of each, and NF3's 3-bit codes are unpacked once per
//! 64 weights instead of once per 32. `vpdpbusd` multiplies unsigned bytes by signed ones, so the
//! tables hold each entry plus 128, and each segment's sums start from `-128 * sum h` (per input,
//! shared by the rows): the integer sums stay exact, equal to the twin's (`nf_int::nf_row_twin`).
//! That correction is computed per lane (each lane's own bytes): a single total in one lane would
//! cancel the other lanes' sums only in f32, leaving a residue where a row's tables are ~0.
//!
//! This loop is bound by the number of vector operations (the pipes, not the front end: 16 `nop`s
//! per row and chunk cost ~1.2 cycles), so the per-group work is done for 16 groups of a row at
//! once (`Window`): one conversion, division and factor computation per 16 groups instead of one
//! per group, and the segment factors `fac * d` multiplied ahead for the epilogue's FMA.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::{segs_per_chunk, ActQ};
use super::nf_int::{levels16, TMAX8};
use super::x86_int::{prefetch, prefetch_range};
use bd_formats::quant::{PackedMatrix, QuantFormat, CHUNK};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Rows `r0..r1`, inputs `k0..k1` of `act` (8-bit activations): `y[k * ys + r]`. Groups of 64
/// and more (`avx512_nf::uses_pair_order` sends the others to the word kernel).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows<const B: u32, const G: usize>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
    _tmax: f32,
) {
    // `nf_dispatch!` instantiates every group size; this one is never called.
    if G < 64 {
        unreachable!("byte NF kernel for groups of {G}");
    }
    let mut k = k0;
    while k + 2 <= k1 {
        let mut r = r0;
        while r + 2 <= r1 {
            block::<B, G, 2, 2>(p, act, r, k, y, ys);
            r += 2;
        }
        if r < r1 {
            block::<B, G, 1, 2>(p, act, r, k, y, ys);
        }
        k += 2;
    }
    if k < k1 {
        let mut r = r0;
        while r + 4 <= r1 {
            block::<B, G, 4, 1>(p, act, r, k, y, ys);
            r += 4;
        }
        while r < r1 {
            block::<B, G, 1, 1>(p, act, r, k, y, ys);
            r += 1;
        }
    }
}

/// Groups per window.
const TW: usize = 16;

/// The byte permute that repeats the low bytes of dword lanes `base..base + n` over 64 bytes
/// (NF4: the code in index bits 0-3, bits 4-5 ignored).
#[inline(always)]
unsafe fn expand(base: usize, n: usize) -> __m512i {
    let idx: [i8; 64] = from_fn(|j| (4 * (base + j % n)) as i8);
    _mm512_loadu_si512(idx.as_ptr() as *const __m512i)
}

/// The byte permute that builds an NF3 table from the low bytes of dword lanes `base..base + 8`,
/// for `index`'s layout: code bits 0-1 in index bits 0-1, code bit 2 in index bit 3, the other
/// index bits ignored.
#[inline(always)]
unsafe fn expand3(base: usize) -> __m512i {
    let idx: [i8; 64] = from_fn(|j| (4 * (base + (j & 3) + 4 * ((j >> 3) & 1))) as i8);
    _mm512_loadu_si512(idx.as_ptr() as *const __m512i)
}

/// The lookup indices of weights `64h..64h + 63` of the chunk at `cp`, in order. NF4: the code in
/// bits 0-3 (the lane's low nibbles, then its high nibbles). NF3: the low code bits in bits 0-1
/// and the high bit in bit 3 (bit 2 and bits 4-5 are garbage, `expand3`): at that position the
/// high plane needs only left shifts for `h = 0` and only right shifts for `h = 1`.
#[inline(always)]
unsafe fn index<const B: u32>(cp: *const u8, h: usize) -> __m512i {
    let c = |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
    if B == 4 {
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(cp.add(32 * h) as *const __m256i));
        _mm512_srlv_epi32(v, c(0, 4))
    } else {
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(cp as *const __m256i));
        let s = 4 * h as i32;
        let a = _mm512_srlv_epi32(v, c(s, s + 2));
        // Weight 32t + i's high bit is bit 2t of high byte i (i < 16) or bit 2t + 1 of byte
        // i - 16; the quarters of the register hold (t, i < 16), (t, i >= 16) for t = 2h, 2h + 1.
        let hb = _mm512_broadcast_i32x4(_mm_loadu_si128(cp.add(32) as *const __m128i));
        let q = |a: i32, b: i32, c: i32, d: i32| _mm512_setr_epi32(a, a, a, a, b, b, b, b, c, c, c, c, d, d, d, d);
        let hs = if h == 0 { _mm512_sllv_epi32(hb, q(3, 2, 1, 0)) } else { _mm512_srlv_epi32(hb, q(1, 2, 3, 4)) };
        // Bit 3 from hs, the others from a.
        _mm512_ternarylogic_epi32::<0xD8>(a, hs, _mm512_set1_epi8(8))
    }
}

/// A format's levels (NF3's 8 twice), and per level the lane of its side's scale among the
/// `[pos, neg]` pairs of groups 0 and 1 (NF3: lanes 0-7 and 8-15) or of group 0 (NF4); group `j`
/// adds `2j`.
struct Levels {
    levels: [f32; 16],
    side0: [i32; 16],
}

impl Levels {
    fn new(format: QuantFormat) -> Self {
        let levels = levels16(format);
        let side0 = from_fn(|l| (levels[l] < 0.0) as i32 + if format.bits() == 3 { 2 * (l / 8) as i32 } else { 0 });
        Self { levels, side0 }
    }
}

/// The tables of `TW` groups of `R` rows, and their segment factors for `C` inputs, built a row
/// at a time for all the window's groups (the arithmetic of `nf_int::group_factors` and
/// `nf_int::table_entry`).
struct Window<const R: usize, const C: usize> {
    tab: [[__m512i; R]; TW],
    /// Per input and row, each group's `fac * 256 d` (groups of 64 and 128: one segment per
    /// group, so one block scale `d`), or `fac` (groups of 256, two segments per group).
    fd: [[[f32; TW]; R]; C],
    g0: usize,
    g1: usize,
}

impl<const R: usize, const C: usize> Window<R, C> {
    #[inline(always)]
    unsafe fn new() -> Self {
        Self { tab: [[_mm512_setzero_si512(); R]; TW], fd: [[[0.0; TW]; R]; C], g0: 0, g1: 0 }
    }

    /// Fill the window from group `g` (of `groups`) if `g` is past it; return `g`'s index in it.
    /// `sc[r]`: row `r`'s `[pos, neg]` f16 scales; `dseg[k]`: input `k`'s segment scales.
    #[inline(always)]
    unsafe fn at<const B: u32, const G: usize>(
        &mut self,
        lv: &Levels,
        sc: &[*const u8; R],
        dseg: &[*const f32; C],
        g: usize,
        groups: usize,
    ) -> usize {
        if g >= self.g1 {
            (self.g0, self.g1) = (g, (g + TW).min(groups));
            self.fill::<B, G>(lv, sc, dseg, g, self.g1 - g);
        }
        let i = g - self.g0;
        // `g0 <= g < g1 <= g0 + TW`: lets the kernel index the window without bounds checks.
        if i >= TW {
            std::hint::unreachable_unchecked();
        }
        i
    }

    /// Not inlined: inside the chunk loop its registers pushed the loop's accumulators onto the
    /// stack (measured 20% slower); a call per 16 groups costs nothing.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    unsafe fn fill<const B: u32, const G: usize>(
        &mut self,
        lv: &Levels,
        sc: &[*const u8; R],
        dseg: &[*const f32; C],
        g: usize,
        n: usize,
    ) {
        let (levels, side0) = (_mm512_loadu_ps(lv.levels.as_ptr()), _mm512_loadu_si512(lv.side0.as_ptr() as *const __m512i));
        // fma(L, s inv, 1.5 * 2^23 + 128) rounds the exact product half to even and leaves the
        // entry plus 128 in the lane's low byte (as `avx512_nf::tables`).
        let magic = _mm512_set1_ps(12582912.0 + 128.0);
        let gmask: __mmask16 = ((1u32 << n) - 1) as __mmask16;
        for r in 0..R {
            let raw = _mm512_maskz_loadu_epi16(((1u64 << (2 * n)) - 1) as __mmask32, sc[r].add(4 * g) as *const i16);
            let mut fac = [_mm512_setzero_ps(); 2];
            for half in 0..2 {
                if 8 * half >= n {
                    break;
                }
                // Groups 8 half .. 8 half + 7 as [pos, neg] pairs.
                let s =
                    _mm512_cvtph_ps(if half == 0 { _mm512_castsi512_si256(raw) } else { _mm512_extracti64x4_epi64::<1>(raw) });
                let a = _mm512_abs_ps(s);
                let m = _mm512_max_ps(a, _mm512_permute_ps::<0b10_11_00_01>(a));
                let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, _mm512_setzero_ps());
                let inv = _mm512_maskz_div_ps(pos, _mm512_set1_ps(TMAX8), m);
                let sinv = _mm512_mul_ps(s, inv);
                fac[half] = _mm512_maskz_mul_ps(pos, m, _mm512_set1_ps(1.0 / TMAX8));
                let ng = (n - 8 * half).min(8);
                if B == 3 {
                    // Two groups per FMA: group j in lanes 0-7, j + 1 in lanes 8-15.
                    for j in (0..ng).step_by(2) {
                        let side = _mm512_permutexvar_ps(_mm512_add_epi32(side0, _mm512_set1_epi32(2 * j as i32)), sinv);
                        let t = _mm512_castps_si512(_mm512_fmadd_ps(levels, side, magic));
                        self.tab[8 * half + j][r] = _mm512_permutexvar_epi8(expand3(0), t);
                        if j + 1 < ng {
                            self.tab[8 * half + j + 1][r] = _mm512_permutexvar_epi8(expand3(8), t);
                        }
                    }
                } else {
                    for j in 0..ng {
                        let side = _mm512_permutexvar_ps(_mm512_add_epi32(side0, _mm512_set1_epi32(2 * j as i32)), sinv);
                        let t = _mm512_castps_si512(_mm512_fmadd_ps(levels, side, magic));
                        self.tab[8 * half + j][r] = _mm512_permutexvar_epi8(expand(0, 16), t);
                    }
                }
            }
            // The groups' factors in lanes 0-15 (the even lanes of both halves).
            let even: [i32; 16] = from_fn(|l| 2 * l as i32);
            let f16 = _mm512_permutex2var_ps(fac[0], _mm512_loadu_si512(even.as_ptr() as *const __m512i), fac[1]);
            for k in 0..C {
                let fd = if G <= CHUNK {
                    // One segment per group: its index is the group's.
                    let d = _mm512_maskz_loadu_ps(gmask, dseg[k].add(g));
                    _mm512_mul_ps(f16, _mm512_mul_ps(d, _mm512_set1_ps(256.0)))
                } else {
                    f16
                };
                _mm512_storeu_ps(self.fd[k][r].as_mut_ptr(), fd);
            }
        }
    }
}

/// `R` rows from `r0`, `C` inputs from `k0`.
#[inline(always)]
unsafe fn block<const B: u32, const G: usize, const R: usize, const C: usize>(
    p: &PackedMatrix,
    act: &ActQ,
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
) {
    let l = &p.layout;
    let nch = l.padded_cols() / CHUNK;
    let cb = if B == 3 { 48 } else { 64 };
    let spc = segs_per_chunk(G);
    // Weights per segment: 64 or 128.
    let seg_len = G.min(CHUNK);
    let base = p.bytes().as_ptr();
    let codes: [*const u8; R] = from_fn(|r| base.add((r0 + r) * l.row_code_bytes));
    let scales: [*const u8; R] = from_fn(|r| base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes));
    let hp: [*const i8; C] = from_fn(|k| act.hi(k0 + k).as_ptr());
    let dseg: [*const f32; C] = from_fn(|k| act.dseg(k0 + k).as_ptr());
    prefetch_range(scales[0].wrapping_add(R * l.row_scale_bytes), R * l.row_scale_bytes);
    // Unsigned 128 in every byte.
    let c128 = _mm512_set1_epi8(-128);

    let mut facc = [[_mm512_setzero_ps(); C]; R];
    let mut acc = [[_mm512_setzero_si512(); C]; R];
    let lv = Levels::new(l.format);
    let mut win = Window::<R, C>::new();
    let mut gi = 0;
    for cc in 0..nch {
        for r in 0..R {
            let cp = codes[r].add(cc * cb);
            // The same chunk of the next block of rows (see x86_int::prefetch).
            prefetch(cp.wrapping_add(R * l.row_code_bytes));
            prefetch(cp.wrapping_add(R * l.row_code_bytes + cb - 1));
        }
        let xv: [[__m512i; 2]; C] =
            from_fn(|k| from_fn(|h| _mm512_loadu_si512(hp[k].add(cc * CHUNK + 64 * h) as *const __m512i)));
        unroll!(h in [0, 1] {
            let e = cc * CHUNK + 64 * h;
            if e.is_multiple_of(G) {
                gi = win.at::<B, G>(&lv, &scales, &dseg, (e / G).min(l.groups - 1), l.groups);
            }
            if (64 * h).is_multiple_of(seg_len) {
                // A segment starts: its sums start from -128 * sum h over the segment.
                for k in 0..C {
                    let mut s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, xv[k][h]);
                    if seg_len == CHUNK {
                        s = _mm512_dpbusd_epi32(s, c128, xv[k][1]);
                    }
                    let s = _mm512_sub_epi32(_mm512_setzero_si512(), s);
                    for r in 0..R {
                        acc[r][k] = s;
                    }
                }
            }
            for r in 0..R {
                let lk = _mm512_permutexvar_epi8(index::<B>(codes[r].add(cc * cb), h), win.tab[gi][r]);
                for k in 0..C {
                    acc[r][k] = _mm512_dpbusd_epi32(acc[r][k], lk, xv[k][h]);
                }
            }
            // A segment ends with its group or its chunk.
            if (64 * h + 64).is_multiple_of(seg_len) {
                for k in 0..C {
                    for r in 0..R {
                        // The factor as a broadcast memory operand: no shuffle.
                        let f = _mm512_set1_ps(win.fd[k][r][gi]);
                        let s = _mm512_cvtepi32_ps(acc[r][k]);
                        facc[r][k] = if G <= CHUNK {
                            _mm512_fmadd_ps(s, f, facc[r][k])
                        } else {
                            // X = 256 h (act.rs): the factor 256 goes with the block scale.
                            let d = _mm512_set1_ps(*dseg[k].add(cc * spc) * 256.0);
                            _mm512_fmadd_ps(_mm512_mul_ps(s, f), d, facc[r][k])
                        };
                    }
                }
            }
        });
    }
    for r in 0..R {
        for k in 0..C {
            *y.add((k0 + k) * ys + r0 + r) = _mm512_reduce_add_ps(facc[r][k]);
        }
    }
}
