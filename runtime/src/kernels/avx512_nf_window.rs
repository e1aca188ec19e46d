//! The level tables of the AVX-512 integer NF kernels (`avx512_nf.rs` words, `avx512_nf8.rs`
//! bytes): for a window of 16 groups, built a row at a time.
//!
//! Per row, one masked load and conversion of the 16 groups' `[pos, neg]` scales, one division
//! for `inv = tmax / m` and one product for the factors `m / tmax`, then per group (two groups per
//! FMA for NF3's 8 levels) `fma(L, s inv, 1.5 * 2^23)`, which rounds the exact product half to
//! even and leaves the integer in the lane's low bits, and a permute that repeats those low
//! words (or bytes) over a register: the arithmetic of `nf_int::group_factors` and
//! `nf_int::table_entry`. Building one group at a time for all rows instead (one division, one
//! conversion per group) cost ~4% more in the byte kernel's loop, which is bound by its number of
//! vector operations.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::nf_int::levels16;
use bd_formats::quant::{QuantFormat, CHUNK};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Groups per window.
pub(super) const TW: usize = 16;

/// The dword lane a table permute takes index `j` from, for a table whose levels start at lane
/// `base`: the levels repeated (`j % n`; NF4, and NF's codes in the low index bits), or for NF3's
/// layout (`nf3`: code bits 0-1 in index bits 0-1 and code bit 2 in index bit 3, the other index
/// bits ignored; the kernels' `code_block`, `indices`).
const fn lane(j: usize, base: usize, n: usize, nf3: bool) -> usize {
    base + if nf3 { (j & 3) + 4 * ((j >> 3) & 1) } else { j % n }
}

/// A byte permute (`vpermb`) that builds a table from the low bytes of the FMA result's lanes.
/// `const`, as is `words`: built at run time with `from_fn`, the index arrays were not always
/// folded into constants (where the build was not inlined, it spent 7x the kernel's time on them).
const fn bytes(base: usize, n: usize, nf3: bool) -> [i8; 64] {
    let mut idx = [0i8; 64];
    let mut j = 0;
    while j < 64 {
        idx[j] = (4 * lane(j, base, n, nf3)) as i8;
        j += 1;
    }
    idx
}

/// A word permute (`vpermw`) that builds a table from the low words of the FMA result's lanes.
const fn words(base: usize, n: usize, nf3: bool) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut j = 0;
    while j < 32 {
        idx[j] = (2 * lane(j, base, n, nf3)) as i16;
        j += 1;
    }
    idx
}

const NF4_B: [i8; 64] = bytes(0, 16, false);
const NF3_B: [[i8; 64]; 2] = [bytes(0, 8, true), bytes(8, 8, true)];
const NF4_W: [i16; 32] = words(0, 16, false);
const NF3_W: [[i16; 32]; 2] = [words(0, 8, true), words(8, 8, true)];

#[inline(always)]
unsafe fn load<T>(a: &T) -> __m512i {
    _mm512_loadu_si512(a as *const T as *const __m512i)
}

/// A format's levels (NF3's 8 twice), and per level the lane of its side's scale among the
/// `[pos, neg]` pairs of groups 0 and 1 (NF3: lanes 0-7 and 8-15) or of group 0 (NF4); group `j`
/// adds `2j`.
pub(super) struct Levels {
    levels: [f32; 16],
    side0: [i32; 16],
}

impl Levels {
    pub(super) fn new(format: QuantFormat) -> Self {
        let levels = levels16(format);
        let side0 = from_fn(|l| (levels[l] < 0.0) as i32 + if format.bits() == 3 { 2 * (l / 8) as i32 } else { 0 });
        Self { levels, side0 }
    }
}

/// The tables of `TW` groups of `R` rows, and their segment factors for `C` inputs. `BYTES`: byte
/// tables of each entry plus 128 for `vpermb` and 8-bit
/// activations (`X = 256 h`); otherwise word tables for `vpermw`.
pub(super) struct Window<const R: usize, const C: usize, const BYTES: bool> {
    pub tab: [[__m512i; R]; TW],
    /// Per input and row, each group's `fac * d` (`fac * 256 d` for bytes) where a group has one
    /// segment, so one block scale `d` (groups of 128 and less), or `fac` (groups of 256, two
    /// segments per group).
    pub fd: [[[f32; TW]; R]; C],
    g0: usize,
    g1: usize,
}

impl<const R: usize, const C: usize, const BYTES: bool> Window<R, C, BYTES> {
    #[inline(always)]
    pub(super) unsafe fn new() -> Self {
        Self { tab: [[_mm512_setzero_si512(); R]; TW], fd: [[[0.0; TW]; R]; C], g0: 0, g1: 0 }
    }

    /// Fill the window from group `g` (of `groups`) if `g` is past it; return `g`'s index in it.
    /// `sc[r]`: row `r`'s `[pos, neg]` f16 scales; `dseg[k]`: input `k`'s segment scales.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn at<const B: u32, const G: usize>(
        &mut self,
        lv: &Levels,
        sc: &[*const u8; R],
        dseg: &[*const f32; C],
        g: usize,
        groups: usize,
        tmax: f32,
    ) -> usize {
        if g >= self.g1 {
            (self.g0, self.g1) = (g, (g + TW).min(groups));
            if BYTES {
                self.fill_vbmi::<B, G>(lv, sc, dseg, g, self.g1 - g, tmax);
            } else {
                self.fill_base::<B, G>(lv, sc, dseg, g, self.g1 - g, tmax);
            }
        }
        let i = g - self.g0;
        // `g0 <= g < g1 <= g0 + TW`: lets the kernel index the window without bounds checks.
        if i >= TW {
            std::hint::unreachable_unchecked();
        }
        i
    }

    /// The byte tables need VBMI (`vpermb`); the word tables must run without it. Not inlined:
    /// inside the chunk loop the build's registers pushed the loop's accumulators onto the stack
    /// (measured 20% slower); a call per 16 groups costs nothing.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn fill_vbmi<const B: u32, const G: usize>(
        &mut self,
        lv: &Levels,
        sc: &[*const u8; R],
        dseg: &[*const f32; C],
        g: usize,
        n: usize,
        tmax: f32,
    ) {
        self.fill::<B, G>(lv, sc, dseg, g, n, tmax)
    }

    /// `fill_vbmi` for the word tables.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn fill_base<const B: u32, const G: usize>(
        &mut self,
        lv: &Levels,
        sc: &[*const u8; R],
        dseg: &[*const f32; C],
        g: usize,
        n: usize,
        tmax: f32,
    ) {
        self.fill::<B, G>(lv, sc, dseg, g, n, tmax)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn fill<const B: u32, const G: usize>(
        &mut self,
        lv: &Levels,
        sc: &[*const u8; R],
        dseg: &[*const f32; C],
        g: usize,
        n: usize,
        tmax: f32,
    ) {
        let (levels, side0) = (_mm512_loadu_ps(lv.levels.as_ptr()), _mm512_loadu_si512(lv.side0.as_ptr() as *const __m512i));
        // fma(L, s inv, 1.5 * 2^23) rounds the exact product to an integer (half to even: the
        // constant is even and its unit in the last place is 1 over the whole range) and leaves it
        // in the low 16 bits of its lane; byte tables add 128 to the constant (still even), which
        // puts the entry plus 128 in the lane's low byte.
        let magic = _mm512_set1_ps(if BYTES { 12582912.0 + 128.0 } else { 12582912.0 });
        // X = 256 h for 8-bit activations (act.rs): the factor 256 goes with the block scale.
        let unit = if BYTES { 256.0 } else { 1.0 };
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
                let inv = _mm512_maskz_div_ps(pos, _mm512_set1_ps(tmax), m);
                let sinv = _mm512_mul_ps(s, inv);
                fac[half] = _mm512_maskz_mul_ps(pos, m, _mm512_set1_ps(1.0 / tmax));
                let ng = (n - 8 * half).min(8);
                if B == 3 {
                    // Two groups per FMA: group j in lanes 0-7, j + 1 in lanes 8-15.
                    for j in (0..ng).step_by(2) {
                        let side = _mm512_permutexvar_ps(_mm512_add_epi32(side0, _mm512_set1_epi32(2 * j as i32)), sinv);
                        let t = _mm512_castps_si512(_mm512_fmadd_ps(levels, side, magic));
                        self.tab[8 * half + j][r] = if BYTES {
                            _mm512_permutexvar_epi8(load(&NF3_B[0]), t)
                        } else {
                            _mm512_permutexvar_epi16(load(&NF3_W[0]), t)
                        };
                        if j + 1 < ng {
                            self.tab[8 * half + j + 1][r] = if BYTES {
                                _mm512_permutexvar_epi8(load(&NF3_B[1]), t)
                            } else {
                                _mm512_permutexvar_epi16(load(&NF3_W[1]), t)
                            };
                        }
                    }
                } else {
                    for j in 0..ng {
                        let side = _mm512_permutexvar_ps(_mm512_add_epi32(side0, _mm512_set1_epi32(2 * j as i32)), sinv);
                        let t = _mm512_castps_si512(_mm512_fmadd_ps(levels, side, magic));
                        self.tab[8 * half + j][r] = if BYTES {
                            _mm512_permutexvar_epi8(load(&NF4_B), t)
                        } else {
                            _mm512_permutexvar_epi16(load(&NF4_W), t)
                        };
                    }
                }
            }
            // The groups' factors in lanes 0-15 (the even lanes of both halves).
            const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
            let f16 = _mm512_permutex2var_ps(fac[0], load(&EVEN), fac[1]);
            for k in 0..C {
                let fd = if G <= CHUNK {
                    // One segment per group: its index is the group's.
                    let d = _mm512_maskz_loadu_ps(gmask, dseg[k].add(g));
                    _mm512_mul_ps(f16, _mm512_mul_ps(d, _mm512_set1_ps(unit)))
                } else {
                    f16
                };
                _mm512_storeu_ps(self.fd[k][r].as_mut_ptr(), fd);
            }
        }
    }
}
