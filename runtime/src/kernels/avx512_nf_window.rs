//! The level tables of the AVX-512 integer NF kernels (`avx512_nf.rs` words, `avx512_nf8.rs`
//! bytes): for a window of 16 groups, built a row at a time.
//!
//! Per row, one masked load and conversion of the 16 groups' `[pos, neg]` scales, one division for
//! `inv = tmax / m` and one product for the factors `m / tmax`, then per group (two groups per FMA
//! for NF3's 8 levels) `fma(L, s inv, 1.5 * 2^23)`, which rounds the exact product half to even and
//! leaves the integer in the lane's low bits, and a permute that packs those low words (or bytes)
//! of 2 or 4 groups into one store of their table patterns: the arithmetic of
//! `nf_int::group_factors` and `nf_int::table_entry`. The kernels broadcast a pattern over a
//! register as they load it. Building the tables was ~40% of the byte kernel's time when each
//! group's table was a permute and a 64-byte store of the whole replicated register; packed, nf3
//! g128 with 8-bit activations ran 1.14x faster (`kernel_speed --where l2,cache`, Zen 5). Building
//! one group at a time for all rows instead (one division, one conversion per group) cost ~4% more
//! in the byte kernel's loop, which is bound by its number of vector operations.

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

/// Byte tables are 16 bytes a group, word tables 16 words: a lookup reads 4 index bits for NF4 and
/// NF3's code in bits 0-1 and 3 (`lane`), so the rest of a register's table is that pattern
/// repeated, which a broadcast load makes (on Zen 5 a load and a shuffle: loading 64 bytes from the
/// pattern with the index bits above it cleared instead was slower). The windows hold the patterns
/// only, packed by a two-source permute: 4 groups a `vpermt2b` (NF3 bytes), 2 groups a `vpermw` /
/// `vpermt2w` (words) or a `vpermt2b` (NF4 bytes), where a replicated 64-byte table took a permute
/// and a 64-byte store per group. The index arrays are `const fn`s: built at run time with
/// `from_fn`, they were not always folded into constants (where the build was not inlined, it spent
/// 7x the kernel's time on them).
///
/// Byte `m` of a `vpermt2b` that packs the patterns of 4 groups from two FMA results of 2 groups
/// each (NF3: lanes 0-7 and 8-15), or of 2 groups from two results of one group each (NF4, bytes
/// 0-31; the rest repeats them): the low byte of the source lane of pattern byte `m % 16`.
const fn pack_bytes(n: usize, nf3: bool) -> [i8; 64] {
    let per = 16 / n; // groups per FMA result
    let mut idx = [0i8; 64];
    let mut m = 0;
    while m < 64 {
        let g = (m / 16) % (2 * per);
        idx[m] = (64 * (g / per) + 4 * lane(m % 16, 8 * (g % per), n, nf3)) as i8;
        m += 1;
    }
    idx
}

/// Word `m` of a `vpermw` (NF3: one source, 2 groups) or `vpermt2w` (NF4: group `m / 16` from
/// source `m / 16`): the low word of the source lane of pattern word `m % 16`.
const fn pack_words(n: usize, nf3: bool) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut m = 0;
    while m < 32 {
        let g = m / 16;
        idx[m] = if nf3 { 2 * lane(m % 16, 8 * g, n, true) } else { 32 * g + 2 * lane(m % 16, 0, n, false) } as i16;
        m += 1;
    }
    idx
}

const NF3_B: [i8; 64] = pack_bytes(8, true);
const NF4_B: [i8; 64] = pack_bytes(16, false);
const NF3_W: [i16; 32] = pack_words(8, true);
const NF4_W: [i16; 32] = pack_words(16, false);

/// Bytes a group in a window row (words; byte tables use the first half).
const TB: usize = 32;

#[repr(C, align(64))]
struct Tabs<const R: usize>([[[u8; TB]; TW]; R]);

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
    /// Row `r`'s table patterns, group after group (16 bytes or 32 bytes each).
    tab: Tabs<R>,
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
        Self { tab: Tabs([[[0; TB]; TW]; R]), fd: [[[0.0; TW]; R]; C], g0: 0, g1: 0 }
    }

    /// Row `r`'s byte table of window group `i` for a 512-bit `vpermb`.
    #[inline(always)]
    pub(super) unsafe fn bytes_z(&self, r: usize, i: usize) -> __m512i {
        _mm512_broadcast_i32x4(_mm_loadu_si128(self.tab.0[r].as_ptr().cast::<u8>().add(16 * i) as *const __m128i))
    }

    /// Row `r`'s word table of window group `i` for a 512-bit `vpermw`.
    #[inline(always)]
    pub(super) unsafe fn words_z(&self, r: usize, i: usize) -> __m512i {
        _mm512_broadcast_i64x4(self.words_y(r, i))
    }

    /// Row `r`'s word table of window group `i` for a 256-bit `vpermw`.
    #[inline(always)]
    pub(super) unsafe fn words_y(&self, r: usize, i: usize) -> __m256i {
        _mm256_loadu_si256(self.tab.0[r][i].as_ptr() as *const __m256i)
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
                // All 8 groups of the half, whether or not the window reaches them: the masked
                // load left zeros there, and the window has room for them.
                let row = self.tab.0[r].as_mut_ptr().cast::<u8>();
                // The entries of group j (and NF3's j + 1) in the low bytes or words of the lanes.
                // A macro, not a closure: see `avx512_nf8::block`.
                macro_rules! t {
                    ($j:expr) => {{
                        let side = _mm512_permutexvar_ps(_mm512_add_epi32(side0, _mm512_set1_epi32(2 * $j as i32)), sinv);
                        _mm512_castps_si512(_mm512_fmadd_ps(levels, side, magic))
                    }};
                }
                if B == 3 {
                    // Two groups per FMA: group j in lanes 0-7, j + 1 in lanes 8-15.
                    let tp = [t!(0), t!(2), t!(4), t!(6)];
                    if BYTES {
                        for q in 0..2 {
                            let v = _mm512_permutex2var_epi8(tp[2 * q], load(&NF3_B), tp[2 * q + 1]);
                            _mm512_storeu_si512(row.add(16 * (8 * half + 4 * q)) as *mut __m512i, v);
                        }
                    } else {
                        for q in 0..4 {
                            let v = _mm512_permutexvar_epi16(load(&NF3_W), tp[q]);
                            _mm512_storeu_si512(row.add(TB * (8 * half + 2 * q)) as *mut __m512i, v);
                        }
                    }
                } else {
                    for q in 0..4 {
                        let (a, b) = (t!(2 * q), t!(2 * q + 1));
                        if BYTES {
                            let v = _mm512_permutex2var_epi8(a, load(&NF4_B), b);
                            _mm256_storeu_si256(row.add(16 * (8 * half + 2 * q)) as *mut __m256i, _mm512_castsi512_si256(v));
                        } else {
                            let v = _mm512_permutex2var_epi16(a, load(&NF4_W), b);
                            _mm512_storeu_si512(row.add(TB * (8 * half + 2 * q)) as *mut __m512i, v);
                        }
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
