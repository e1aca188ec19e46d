//! The level tables of the AVX-512 integer NF kernels (`avx512_nf.rs` words, `avx512_nf8.rs`
//! bytes): for a window of 16 groups, built a row at a time.
//!
//! Per row, one masked load and conversion of the 16 groups' `[pos, neg]` scales, a division for
//! `inv = tmax / m` and a product for the factors `m / tmax`, then `fma(L, s inv, 1.5 * 2^23)` per
//! level and group, which rounds the exact product half to even and leaves the integer in the
//! lane's low bits (the arithmetic of `nf_int::group_factors` and `nf_int::table_entry`), and
//! permutes that pack those low words (or bytes) into the groups' tables. NF3 (`fill3`) has the 16
//! groups in the lanes: one division, an FMA per level for all groups, three rounds of permutes.
//! NF4 (`fill4`) has the 16 levels in the lanes: an FMA per group, two groups a permute.
//!
//! The builds cost 10-15% of the NF3 kernels' time (measured by building each window's tables
//! only once per row block: wrong results, right timing). Packed instead of one replicated
//! 64-byte table per group, nf3 g128 with 8-bit activations ran 1.14x faster; NF3's transposed
//! build (a third fewer operations than two groups per FMA) 1-3% (`kernel_speed --where cache`,
//! Zen 5, 16 alternations). Building one group at a time for all rows instead cost ~4% more, and
//! building the next window's tables ahead, 2-5% more.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::nf_int::levels16;
use bd_formats::quant::{QuantFormat, CHUNK, NF3_LEVELS};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Groups per window.
pub(super) const TW: usize = 16;

// NF4's byte tables are 16 bytes a group and its word tables 16 words: a lookup reads the 4 code
// bits, so the rest of a register's table is that pattern repeated, which a broadcast load makes
// (on Zen 5 a load and a shuffle: loading 64 bytes from the pattern with the index bits above it
// cleared instead was slower). NF3's tables are 8 entries (8 bytes, 8 words): its lookup indices
// hold the code in bits 0-2 (`avx512_nf8::indices`). The windows hold the patterns only, packed
// by two-source permutes, where a replicated 64-byte table took a permute and a 64-byte store per
// group. The index arrays are `const fn`s: built at run time with `from_fn`, they were not always
// folded into constants (where the build was not inlined, it spent 7x the kernel's time on them).

/// Index `m` of a two-source permute (`vpermt2b/w/d/q`, `nn` elements a register) that interleaves
/// runs of `n` elements of its two sources: run `u0 + m / 2n` of the first source, then the same
/// run of the second, and so on; an element is `scale` elements of the source wide (the low byte
/// or word of a dword lane: 4 or 2). The index of every packing permute below.
const fn interleave_at(nn: usize, n: usize, u0: usize, scale: usize, m: usize) -> usize {
    let (run, src, j) = (u0 + m / (2 * n), (m / n) % 2, m % n);
    nn * src + scale * (n * (run % (nn / (scale * n))) + j)
}

/// The `[$t; $nn]` index array of `interleave_at`.
macro_rules! interleave {
    ($t:ty, $nn:expr, $n:expr, $u0:expr, $scale:expr) => {{
        let mut idx = [0 as $t; $nn];
        let mut m = 0;
        while m < $nn {
            idx[m] = interleave_at($nn, $n, $u0, $scale, m) as $t;
            m += 1;
        }
        idx
    }};
}

// NF4: two groups' patterns from two FMA results of one group each (bytes: 32, repeated).
const NF4_B: [i8; 64] = interleave!(i8, 64, 16, 0, 4);
const NF4_W: [i16; 32] = interleave!(i16, 32, 16, 0, 2);

// NF3 transposes: 8 FMA results, one per level, hold the entries of 16 groups in the low byte or
// word of their 16 lanes; three rounds of two-source permutes gather each group's 8 entries.
// Bytes: level pairs of each group (bytes 0-31), pairs of pairs (4 bytes a group), then groups
// 0-7 and 8-15 (8 bytes a group).
const B1: [i8; 64] = interleave!(i8, 64, 1, 0, 4);
const B2: [i8; 64] = interleave!(i8, 64, 2, 0, 1);
const B3: [[i8; 64]; 2] = [interleave!(i8, 64, 4, 0, 1), interleave!(i8, 64, 4, 8, 1)];
// Words: level pairs of each group (a dword a group), pairs of pairs for groups 0-7 and 8-15 (a
// qword a group), then 4 groups a register (16 bytes a group).
const W1: [i16; 32] = interleave!(i16, 32, 1, 0, 2);
const W2: [[i32; 16]; 2] = [interleave!(i32, 16, 1, 0, 1), interleave!(i32, 16, 1, 8, 1)];
const W3: [[i64; 8]; 2] = [interleave!(i64, 8, 1, 0, 1), interleave!(i64, 8, 1, 4, 1)];

/// The even and the odd lanes of two 16-lane registers (`vpermt2ps`): the first and the second of
/// each group's `[pos, neg]` pair.
const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];

/// Bytes a group in a window row (words; byte tables use the first half).
const TB: usize = 32;

#[repr(C, align(64))]
struct Tabs<const R: usize>([[[u8; TB]; TW]; R]);

#[inline(always)]
unsafe fn load<T>(a: &T) -> __m512i {
    _mm512_loadu_si512(a as *const T as *const __m512i)
}

/// A format's levels (NF3's 8 twice), and per level the lane of its side's scale in a group's
/// `[pos, neg]` pair: NF4's fill (NF3's takes its levels as constants).
pub(super) struct Levels {
    levels: [f32; 16],
    side0: [i32; 16],
}

impl Levels {
    pub(super) fn new(format: QuantFormat) -> Self {
        let levels = levels16(format);
        Self { levels, side0: from_fn(|l| (levels[l] < 0.0) as i32) }
    }
}

/// The tables of `TW` groups of `R` rows, and their segment factors for `C` inputs. `BYTES`: byte
/// tables of each entry plus 128 for `vpermb` and 8-bit activations (`X = 256 h`); otherwise word
/// tables for `vpermw`.
pub(super) struct Window<const R: usize, const C: usize, const BYTES: bool> {
    /// Row `r`'s table patterns, group after group: NF3 8 entries, NF4 16 (bytes or words).
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

    /// Where row `r`'s pattern of window group `i` starts.
    #[inline(always)]
    unsafe fn pattern<const B: u32>(&self, r: usize, i: usize) -> *const u8 {
        // Entries a group times their width.
        let bytes = (1 << B) * if BYTES { 1 } else { 2 };
        self.tab.0[r].as_ptr().cast::<u8>().add(bytes * i)
    }

    /// Row `r`'s byte table of window group `i` for a 512-bit `vpermb` (index bits 0-5).
    #[inline(always)]
    pub(super) unsafe fn bytes_z<const B: u32>(&self, r: usize, i: usize) -> __m512i {
        let p = self.pattern::<B>(r, i);
        if B == 3 {
            _mm512_set1_epi64((p as *const i64).read_unaligned())
        } else {
            _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i))
        }
    }

    /// Row `r`'s word table of window group `i` for a 512-bit `vpermw` (index bits 0-4).
    #[inline(always)]
    pub(super) unsafe fn words_z<const B: u32>(&self, r: usize, i: usize) -> __m512i {
        let p = self.pattern::<B>(r, i);
        if B == 3 {
            _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i))
        } else {
            _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i))
        }
    }

    /// Row `r`'s word table of window group `i` for a 256-bit `vpermw` (index bits 0-3).
    #[inline(always)]
    pub(super) unsafe fn words_y<const B: u32>(&self, r: usize, i: usize) -> __m256i {
        let p = self.pattern::<B>(r, i);
        if B == 3 {
            _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i))
        } else {
            _mm256_loadu_si256(p as *const __m256i)
        }
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
        // fma(L, s inv, 1.5 * 2^23) rounds the exact product to an integer (half to even: the
        // constant is even and its unit in the last place is 1 over the whole range) and leaves it
        // in the low 16 bits of its lane; byte tables add 128 to the constant (still even), which
        // puts the entry plus 128 in the lane's low byte.
        let magic = _mm512_set1_ps(if BYTES { 12582912.0 + 128.0 } else { 12582912.0 });
        let gmask: __mmask16 = ((1u32 << n) - 1) as __mmask16;
        for r in 0..R {
            let raw = _mm512_maskz_loadu_epi16(((1u64 << (2 * n)) - 1) as __mmask32, sc[r].add(4 * g) as *const i16);
            let fac = if B == 3 { self.fill3(r, raw, magic, tmax) } else { self.fill4(lv, r, raw, magic, tmax) };
            // X = 256 h for 8-bit activations (act.rs): the factor 256 goes with the block scale.
            let unit = if BYTES { 256.0 } else { 1.0 };
            for k in 0..C {
                let fd = if G <= CHUNK {
                    // One segment per group: its index is the group's.
                    let d = _mm512_maskz_loadu_ps(gmask, dseg[k].add(g));
                    _mm512_mul_ps(fac, _mm512_mul_ps(d, _mm512_set1_ps(unit)))
                } else {
                    fac
                };
                _mm512_storeu_ps(self.fd[k][r].as_mut_ptr(), fd);
            }
        }
    }

    /// NF3: row `r`'s tables of the 16 groups whose `[pos, neg]` f16 scales are `raw` (zeros past
    /// the window); returns the groups' factors `m / tmax`. Lanes are groups: one division, and one
    /// FMA per level for all 16 groups, then three rounds of permutes (`B1`-`B3`, `W1`-`W3`) turn
    /// the 8 levels x 16 groups into 16 tables of 8 entries.
    #[inline(always)]
    unsafe fn fill3(&mut self, r: usize, raw: __m512i, magic: __m512, tmax: f32) -> __m512 {
        let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(raw));
        let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(raw));
        let (pos, neg) = (_mm512_permutex2var_ps(lo, load(&EVEN), hi), _mm512_permutex2var_ps(lo, load(&ODD), hi));
        let m = _mm512_max_ps(_mm512_abs_ps(pos), _mm512_abs_ps(neg));
        let nz = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, _mm512_setzero_ps());
        let inv = _mm512_maskz_div_ps(nz, _mm512_set1_ps(tmax), m);
        let (sp, sn) = (_mm512_mul_ps(pos, inv), _mm512_mul_ps(neg, inv));
        // The levels as constants, so that each one's side is known when this is compiled (read
        // from `Levels`, the choice was a branch per level and a product per level).
        let mut t = [_mm512_setzero_si512(); 8];
        for q in 0..8 {
            let l = NF3_LEVELS[q];
            t[q] = _mm512_castps_si512(_mm512_fmadd_ps(_mm512_set1_ps(l), if l < 0.0 { sn } else { sp }, magic));
        }
        let row = self.tab.0[r].as_mut_ptr().cast::<u8>();
        if BYTES {
            // Loops, not `from_fn`: a closure is not always inlined (see `avx512_nf8::block`).
            let mut x = [_mm512_setzero_si512(); 4];
            for k in 0..4 {
                x[k] = _mm512_permutex2var_epi8(t[2 * k], load(&B1), t[2 * k + 1]);
            }
            let y = [_mm512_permutex2var_epi8(x[0], load(&B2), x[1]), _mm512_permutex2var_epi8(x[2], load(&B2), x[3])];
            for h in 0..2 {
                _mm512_storeu_si512(row.add(64 * h) as *mut __m512i, _mm512_permutex2var_epi8(y[0], load(&B3[h]), y[1]));
            }
        } else {
            let mut w = [_mm512_setzero_si512(); 4];
            for k in 0..4 {
                w[k] = _mm512_permutex2var_epi16(t[2 * k], load(&W1), t[2 * k + 1]);
            }
            for h in 0..2 {
                let z01 = _mm512_permutex2var_epi32(w[0], load(&W2[h]), w[1]);
                let z23 = _mm512_permutex2var_epi32(w[2], load(&W2[h]), w[3]);
                for q in 0..2 {
                    let v = _mm512_permutex2var_epi64(z01, load(&W3[q]), z23);
                    _mm512_storeu_si512(row.add(64 * (2 * h + q)) as *mut __m512i, v);
                }
            }
        }
        _mm512_maskz_mul_ps(nz, m, _mm512_set1_ps(1.0 / tmax))
    }

    /// NF4: as `fill3`, with lanes as levels (16 of them): per group one FMA, two groups a pack.
    #[inline(always)]
    unsafe fn fill4(&mut self, lv: &Levels, r: usize, raw: __m512i, magic: __m512, tmax: f32) -> __m512 {
        let (levels, side0) = (_mm512_loadu_ps(lv.levels.as_ptr()), _mm512_loadu_si512(lv.side0.as_ptr() as *const __m512i));
        let mut fac = [_mm512_setzero_ps(); 2];
        let row = self.tab.0[r].as_mut_ptr().cast::<u8>();
        for half in 0..2 {
            // Groups 8 half .. 8 half + 7 as [pos, neg] pairs (all 8, whether or not the window
            // reaches them: the masked load left zeros there, and the window has room for them).
            let s = _mm512_cvtph_ps(if half == 0 { _mm512_castsi512_si256(raw) } else { _mm512_extracti64x4_epi64::<1>(raw) });
            let a = _mm512_abs_ps(s);
            let m = _mm512_max_ps(a, _mm512_permute_ps::<0b10_11_00_01>(a));
            let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, _mm512_setzero_ps());
            let inv = _mm512_maskz_div_ps(pos, _mm512_set1_ps(tmax), m);
            let sinv = _mm512_mul_ps(s, inv);
            fac[half] = _mm512_maskz_mul_ps(pos, m, _mm512_set1_ps(1.0 / tmax));
            // The entries of group j in the low bytes or words of the lanes. A macro, not a
            // closure: see `avx512_nf8::block`.
            macro_rules! t {
                ($j:expr) => {{
                    let side = _mm512_permutexvar_ps(_mm512_add_epi32(side0, _mm512_set1_epi32(2 * $j as i32)), sinv);
                    _mm512_castps_si512(_mm512_fmadd_ps(levels, side, magic))
                }};
            }
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
        // The groups' factors in lanes 0-15 (the even lanes of both halves).
        _mm512_permutex2var_ps(fac[0], load(&EVEN), fac[1])
    }
}
