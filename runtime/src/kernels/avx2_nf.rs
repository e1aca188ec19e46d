//! AVX2 kernel for the NF formats, groups of 32 and more: the integer scheme of `nf_int.rs`
//! (per-group 16-bit level tables, 16-bit activations), with the table looked up by bytes.
//!
//! AVX2 has no 16-bit permute, but a group's table of 8 (NF3) or 16 (NF4) 16-bit entries splits
//! into a 16-byte table of low bytes and one of high bytes, and `vpshufb` looks up 32 codes in
//! each at once. `vpunpcklbw` / `vpunpckhbw` pair the bytes back into entries (elements 0-7 and
//! 16-23, then 8-15 and 24-31 of the 32, which is the order `nf_int::unpack_order` stores the
//! activations in) and `vpmaddwd` multiplies them with the activations. The codes are unpacked to
//! bytes as for the INT formats (`x86_int::field`; NF3 two fields per register, `index`). This
//! replaces the exact f32 method (`vpermps` and an FMA per 8 weights), which ran NF3 at a quarter
//! of ggml Q3_K's speed on Zen 3.
//!
//! With 8-bit activations (`act8`) the entries are signed bytes (`nf_int::TMAX8`): one `vpshufb`
//! per 32 weights, `vpsignb` moves the activation's sign onto the entry, and `vpmaddubsw`
//! multiplies it with the activation's absolute value (the instructions ggml's Q3_K uses). Run
//! through the 16-bit code, the byte tables had cost the same as 16-bit ones; this way NF3 and
//! NF4 run ~1.2x faster (`kernel_speed --isa avx2 --plain`, Zen 5).
//!
//! With AVX-VNNI (Intel's client CPUs since Alder Lake have it without AVX-512) `vpdpbusd` and
//! `vpdpwssd` replace the multiply-and-widen pairs; with 8-bit activations the tables then hold
//! each entry plus 128 as an unsigned byte, so `vpdpbusd` multiplies them with the signed
//! activations directly (no `vpsignb`, no absolute values), and one more `vpdpbusd` per input sums
//! the activations for the correction.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::{segs_per_chunk, ActQ};
use super::nf_int::{levels16, tmax};
use super::x86_int::{chunk_bytes, field, hsum, load_codes, prefetch_chunk, prefetch_range};
use bd_formats::quant::{PackedMatrix, CHUNK};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Rows `r0..r1`, inputs `k0..k1` of `act`: `y[k * ys + r]`. The group must be at least
/// `nf_int::MIN_GROUP`. With 16-bit activations `act` must carry them in `nf_int::unpack_order`;
/// with 8-bit ones (`act8`) the kernel reads the high byte plane, in the INT kernels' order.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn nf_rows(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
    act8: bool,
    avxvnni: bool,
) {
    let tmax = tmax(act8);
    match (act8, avxvnni) {
        (true, true) => nf_dispatch!(rows_vx[true](p, act, k0, k1, r0, r1, y, ys, tmax)),
        (false, true) => nf_dispatch!(rows_vx[false](p, act, k0, k1, r0, r1, y, ys, tmax)),
        (true, false) => nf_dispatch!(rows[true](p, act, k0, k1, r0, r1, y, ys, tmax)),
        (false, false) => nf_dispatch!(rows[false](p, act, k0, k1, r0, r1, y, ys, tmax)),
    }
}

/// `rows` with AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_vx<const B: u32, const G: usize, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
    tmax: f32,
) {
    rows_impl::<B, G, A8, true>(p, act, k0, k1, r0, r1, y, ys, tmax)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<const B: u32, const G: usize, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
    tmax: f32,
) {
    rows_impl::<B, G, A8, false>(p, act, k0, k1, r0, r1, y, ys, tmax)
}

/// Tiles: 1 row x 2 inputs while two inputs remain; for one input, 16-bit activations take 1 row
/// (measured on Zen 3: 2 rows, each with its two table registers, ran 10% slower) and 8-bit ones 2
/// (their activations' loads, and absolute values or with AVX-VNNI sums, serve both rows; 1 row
/// measured the same).
/// `VX`: AVX-VNNI.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_impl<const B: u32, const G: usize, const A8: bool, const VX: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
    tmax: f32,
) {
    let mut k = k0;
    while k + 2 <= k1 {
        for r in r0..r1 {
            block::<B, G, 1, 2, A8, VX>(p, act, r, k, y, ys, tmax);
        }
        k += 2;
    }
    if k < k1 {
        let mut r = r0;
        while A8 && r + 2 <= r1 {
            block::<B, G, 2, 1, A8, VX>(p, act, r, k, y, ys, tmax);
            r += 2;
        }
        for r in r..r1 {
            block::<B, G, 1, 1, A8, VX>(p, act, r, k, y, ys, tmax);
        }
    }
}

/// The tables of groups `g..g + n` of one row (`sc`: the row's `[pos, neg]` f16 scales) into
/// `tab[i][r]`, `fac[i][r]`: the low bytes and the high bytes of each group's entries (`A8`: the
/// entries themselves, signed bytes, in `tab[i][r][0]`; with `VX` each plus 128, unsigned), each
/// repeated in both 128-bit halves, and the factor `m / tmax`. Four groups per step: one
/// conversion, division and product for their factors, then per group one permute of the scales
/// and one FMA (the arithmetic of `nf_int::group_factors` and `nf_int::table_entry`). Built a
/// group at a time with scalar factors, the tables took ~40% of the kernel's time (`--isa avx2`
/// on Zen 5).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn window<const B: u32, const R: usize, const A8: bool, const VX: bool>(
    levels: &[__m256; 2],
    side: &[[__m256i; 4]; 2],
    sc: *const u8,
    g: usize,
    n: usize,
    tmax: f32,
    r: usize,
    tab: &mut [[[__m256i; 2]; R]; TW],
    fac: &mut [[f32; R]; TW],
) {
    // Steps of four fill whole multiples of four groups: the window has room for them.
    const { assert!(TW.is_multiple_of(4)) };
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut q = 0;
    while q < n {
        // Groups q..q + 3 as [pos, neg] pairs; those past n read as zeros.
        let live = _mm_cmpgt_epi32(_mm_set1_epi32((n - q) as i32), _mm_setr_epi32(0, 1, 2, 3));
        let s = _mm256_cvtph_ps(_mm_maskload_epi32(sc.add(4 * (g + q)) as *const i32, live));
        let a = _mm256_and_ps(s, abs);
        let m = _mm256_max_ps(a, _mm256_permute_ps::<0b10_11_00_01>(a));
        let nz = _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_setzero_ps());
        let inv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(tmax), m), nz);
        let f = _mm256_and_ps(_mm256_mul_ps(m, _mm256_set1_ps(1.0 / tmax)), nz);
        let sinv = _mm256_mul_ps(s, inv);
        let mut fl = [0f32; 8];
        _mm256_storeu_ps(fl.as_mut_ptr(), f);
        for i in 0..4 {
            fac[q + i][r] = fl[2 * i];
            // A macro, not a closure: a closure that is not inlined turns its intrinsics into
            // calls (measured 6x slower here).
            macro_rules! entries {
                ($h:expr) => {{
                    let sd = _mm256_permutevar8x32_ps(sinv, side[$h][i]);
                    // fma(L, s inv, 1.5 * 2^23) rounds the exact product half to even into the
                    // low bits (see avx512_nf_window); subtracting the constant's bits leaves the
                    // integer.
                    let t = _mm256_fmadd_ps(levels[$h], sd, _mm256_set1_ps(12582912.0));
                    let t = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000));
                    _mm_packs_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t))
                }};
            }
            tab[q + i][r] = if A8 {
                // NF3: the 8 entries twice over (`vpshufb` reads 4 index bits), NF4: all 16.
                let a = entries!(0);
                let b = if B == 3 { _mm_packs_epi16(a, a) } else { _mm_packs_epi16(a, entries!(1)) };
                // AVX-VNNI: the entries plus 128, as unsigned bytes (see `block`).
                let b = if VX { _mm_xor_si128(b, _mm_set1_epi8(-128)) } else { b };
                [_mm256_broadcastsi128_si256(b), _mm256_setzero_si256()]
            } else {
                // Low bytes of the 8 entries in bytes 0-7, high bytes in 8-15.
                let split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
                let (lo, hi) = if B == 3 {
                    let a = _mm_shuffle_epi8(entries!(0), split);
                    (a, _mm_srli_si128::<8>(a))
                } else {
                    let (a, b) = (_mm_shuffle_epi8(entries!(0), split), _mm_shuffle_epi8(entries!(1), split));
                    (_mm_unpacklo_epi64(a, b), _mm_unpackhi_epi64(a, b))
                };
                [_mm256_broadcastsi128_si256(lo), _mm256_broadcastsi128_si256(hi)]
            };
        }
        q += 4;
    }
}

/// The lookup indices of field `j` (weights `32j..32j+31`) of a chunk from
/// `x86_int::load_codes`: NF3 from `x86_int::pairs3` unmasked, NF4 as `x86_int::field`. `vpshufb` reads index bits
/// 0-3 and 7 only, so NF3's fields 0 and 1 are the two registers as they are (bits 4-6 hold
/// another field) and fields 2 and 3 one shift away: 11 operations per chunk and row to unpack
/// the codes, where extracting each field's low bits and merging its high bit took 19.
#[inline(always)]
unsafe fn index<const B: u32>(raw: &[__m256i; 2], j: usize) -> __m256i {
    if B == 3 {
        // A 16-bit shift by 4 brings the next byte's bits 0-3 into bits 4-7: bit 7 is its bit 3,
        // which `pairs3` leaves clear.
        match j {
            0 => raw[0],
            1 => raw[1],
            2 => _mm256_srli_epi16::<4>(raw[0]),
            _ => _mm256_srli_epi16::<4>(raw[1]),
        }
    } else {
        field::<B>(raw, j)
    }
}

/// Groups per table window: the tables of the next groups are built together, ahead of the
/// lookups, so their dependent chains (conversion, division, FMA, packing) overlap instead of
/// stalling the lookups (as measured for the AVX-512 kernel).
const TW: usize = 16;

/// How many rows ahead the code and scale prefetches reach (a tile is one row).
const PF_ROWS: usize = 4;

/// `R` rows from `r0`, `C` inputs from `k0`; `A8`: 8-bit activations and byte tables; `VX`:
/// AVX-VNNI, whose `vpdpbusd` / `vpdpwssd` replace `vpmaddubsw` + `vpmaddwd` + `vpaddd` (8-bit)
/// and `vpmaddwd` + `vpaddd` (16-bit). (Two accumulators per row, to shorten the chains of
/// dependent dot products, measured the same or slower, `--isa avx2` on Zen 5.)
#[inline(always)]
unsafe fn block<const B: u32, const G: usize, const R: usize, const C: usize, const A8: bool, const VX: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
    tmax: f32,
) {
    let l = &p.layout;
    let nch = l.padded_cols() / CHUNK;
    let cb = chunk_bytes(B);
    let spc = segs_per_chunk(G);
    let base = p.bytes().as_ptr();
    let codes: [*const u8; R] = from_fn(|r| base.add((r0 + r) * l.row_code_bytes));
    let scales: [*const u8; R] = from_fn(|r| base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes));
    // 16-bit: the activations in `unpack_order`; 8-bit: their high byte plane (the 8-bit value,
    // `X = 256 hi`), in the order of `field`, which the table lookup keeps.
    let xp: [*const i16; C] = from_fn(|k| if A8 { std::ptr::null() } else { act.xp(k0 + k).as_ptr() });
    let xh: [*const i8; C] = from_fn(|k| if A8 { act.hi(k0 + k).as_ptr() } else { std::ptr::null() });
    // The 8-bit sums count `hi`, a 256th of `X`.
    let unit = if A8 { 256.0 } else { 1.0 };
    let ones = _mm256_set1_epi16(1);
    let dseg: [*const f32; C] = from_fn(|k| act.dseg(k0 + k).as_ptr());
    let lv = levels16(l.format);
    let levels = [_mm256_loadu_ps(lv.as_ptr()), _mm256_loadu_ps(lv.as_ptr().add(8))];
    // Per level, the lane of its side's scale among the [pos, neg] pairs of a step's group i.
    let mut side = [[_mm256_setzero_si256(); 4]; 2];
    for h in 0..2 {
        for i in 0..4 {
            let mut lanes = [0i32; 8];
            for q in 0..8 {
                lanes[q] = (lv[8 * h + q] < 0.0) as i32 + 2 * i as i32;
            }
            side[h][i] = _mm256_loadu_si256(lanes.as_ptr() as *const __m256i);
        }
    }
    prefetch_range(scales[0].wrapping_add(PF_ROWS * l.row_scale_bytes), R * l.row_scale_bytes);

    let mut facc = [[_mm256_setzero_ps(); C]; R];
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    // AVX-VNNI with 8-bit activations: 128 times the segment's sum of each input.
    let mut xsum = [_mm256_setzero_si256(); C];
    let mut tab = [[_mm256_setzero_si256(); 2]; R];
    let mut fac = [0f32; R];
    let mut wtab = [[[_mm256_setzero_si256(); 2]; R]; TW];
    let mut wfac = [[0f32; R]; TW];
    let (mut wg0, mut wg1) = (0, 0);
    for cc in 0..nch {
        let mut raw = [[_mm256_setzero_si256(); 2]; R];
        for r in 0..R {
            let cp = codes[r].add(cc * cb);
            raw[r] = load_codes::<B>(cp);
            // The same chunk 4 rows ahead (see x86_int::prefetch).
            prefetch_chunk(cp.wrapping_add(PF_ROWS * l.row_code_bytes), cc, cb);
        }
        unroll!(j in [0, 1, 2, 3] {
            let e = cc * CHUNK + 32 * j;
            if e.is_multiple_of(G) {
                let g = (e / G).min(l.groups - 1);
                if g >= wg1 {
                    (wg0, wg1) = (g, (g + TW).min(l.groups));
                    for r in 0..R {
                        window::<B, R, A8, VX>(&levels, &side, scales[r], g, wg1 - g, tmax, r, &mut wtab, &mut wfac);
                    }
                }
                tab = wtab[g - wg0];
                fac = wfac[g - wg0];
            }
            let off = cc * CHUNK + 32 * j;
            if A8 && VX {
                // `vpdpbusd` multiplies unsigned by signed bytes: the entries plus 128 (the
                // tables hold them so) times x, less 128 times the sum of x, which one more
                // `vpdpbusd` per input accumulates for all the tile's rows (exact in 32 bits).
                let mut h = [_mm256_setzero_si256(); C];
                for k in 0..C {
                    h[k] = _mm256_loadu_si256(xh[k].add(off) as *const __m256i);
                    xsum[k] = _mm256_dpbusd_avx_epi32(xsum[k], _mm256_set1_epi8(-128), h[k]);
                }
                for r in 0..R {
                    let t = _mm256_shuffle_epi8(tab[r][0], index::<B>(&raw[r], j));
                    for k in 0..C {
                        acc[r][k] = _mm256_dpbusd_avx_epi32(acc[r][k], t, h[k]);
                    }
                }
            } else if A8 {
                // `vpmaddubsw` multiplies unsigned by signed bytes: |x| times the entry carrying
                // x's sign. Pairs sum to at most 2 * 127 * 127, short of saturating.
                let mut h = [_mm256_setzero_si256(); C];
                let mut ah = [_mm256_setzero_si256(); C];
                for k in 0..C {
                    h[k] = _mm256_loadu_si256(xh[k].add(off) as *const __m256i);
                    ah[k] = _mm256_abs_epi8(h[k]);
                }
                for r in 0..R {
                    let t = _mm256_shuffle_epi8(tab[r][0], index::<B>(&raw[r], j));
                    for k in 0..C {
                        let p = _mm256_maddubs_epi16(ah[k], _mm256_sign_epi8(t, h[k]));
                        acc[r][k] = _mm256_add_epi32(acc[r][k], _mm256_madd_epi16(p, ones));
                    }
                }
            } else {
                for r in 0..R {
                    let c = index::<B>(&raw[r], j);
                    let lo = _mm256_shuffle_epi8(tab[r][0], c);
                    let hi = _mm256_shuffle_epi8(tab[r][1], c);
                    let (w0, w1) = (_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi));
                    for k in 0..C {
                        let xa = _mm256_loadu_si256(xp[k].add(off) as *const __m256i);
                        let xb = _mm256_loadu_si256(xp[k].add(off + 16) as *const __m256i);
                        acc[r][k] = if VX {
                            _mm256_dpwssd_avx_epi32(_mm256_dpwssd_avx_epi32(acc[r][k], w0, xa), w1, xb)
                        } else {
                            let d = _mm256_add_epi32(_mm256_madd_epi16(w0, xa), _mm256_madd_epi16(w1, xb));
                            _mm256_add_epi32(acc[r][k], d)
                        };
                    }
                }
            }
            // A segment is 4 blocks of 32 (G >= 128), 2 (G = 64) or 1 (G = 32).
            let ends = match spc {
                1 => j == 3,
                2 => j % 2 == 1,
                _ => true,
            };
            if ends {
                let s = j * spc / 4;
                for k in 0..C {
                    let d = *dseg[k].add(cc * spc + s);
                    for r in 0..R {
                        let f = _mm256_set1_ps(fac[r] * d * unit);
                        let s = if A8 && VX { _mm256_sub_epi32(acc[r][k], xsum[k]) } else { acc[r][k] };
                        facc[r][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, facc[r][k]);
                        acc[r][k] = _mm256_setzero_si256();
                    }
                    xsum[k] = _mm256_setzero_si256();
                }
            }
        });
    }
    for r in 0..R {
        for k in 0..C {
            *y.add((k0 + k) * ys + r0 + r) = hsum(facc[r][k]);
        }
    }
}
