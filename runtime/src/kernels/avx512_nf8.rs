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
//! once (`avx512_nf_window::Window`): one conversion, division and factor computation per 16
//! groups instead of one per group, and the segment factors `fac * d` multiplied ahead for the
//! epilogue's FMA.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::{segs_per_chunk, ActQ};
use super::avx512_nf_window::{Levels, Window};
use super::nf_int::TMAX8;
use super::x86_int::{prefetch_chunk, prefetch_range};
use bd_formats::quant::{PackedMatrix, CHUNK};
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
    macro_rules! tile {
        ($r:literal, $c:literal, $r0:expr, $k:expr) => {
            block::<B, G, $r, $c>(p, act, $r0, $k, y, ys)
        };
    }
    nf_tiles!(tile, k0, k1, r0, r1);
}

/// The lookup indices of the chunk at `cp`: weights 0-63, then 64-127, in order. NF4: the code
/// in bits 0-3 (a lane's low nibbles, then its high nibbles). NF3: the code in bits 0-2 (the low
/// bits in 0-1, the high bit in 2; bits 3-5 are garbage, over which the 8-entry tables repeat,
/// `avx512_nf_window`). Taking bit 6 from the high plane as well puts the second 64 weights' high
/// bits there while their low bits already sit in bits 4-5: the second index is the first shifted
/// right by 4, one operation instead of three.
#[inline(always)]
pub(super) unsafe fn indices<const B: u32>(cp: *const u8) -> [__m512i; 2] {
    // Plain calls rather than closures: a closure that is not inlined turns its intrinsics into
    // function calls.
    if B == 4 {
        let v0 = _mm512_broadcast_i64x4(_mm256_loadu_si256(cp as *const __m256i));
        let v1 = _mm512_broadcast_i64x4(_mm256_loadu_si256(cp.add(32) as *const __m256i));
        let sh = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
        [_mm512_srlv_epi32(v0, sh), _mm512_srlv_epi32(v1, sh)]
    } else {
        // Fields 0 and 1 of the low plane (weights 0-31, 32-63) in bits 0-1, fields 2 and 3
        // (weights 64-95, 96-127) in bits 4-5.
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(cp as *const __m256i));
        let a = _mm512_srlv_epi32(v, _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2));
        // Weight 32t + i's high bit is bit 2t of high byte i (i < 16) or bit 2t + 1 of byte
        // i - 16; the quarters of the register hold (t, i < 16), (t, i >= 16) for t = 0, 1:
        // rotated left by 2, 1, 0 and right by 1, bit 2 holds the high bit of t = 0, 1 and bit 6
        // that of t = 2, 3 (a rotation, so one instruction moves bits both ways).
        let hb = _mm512_broadcast_i32x4(_mm_loadu_si128(cp.add(32) as *const __m128i));
        let hs = _mm512_rolv_epi32(hb, _mm512_setr_epi32(2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 31, 31, 31, 31));
        // Bits 2 and 6 from hs, the others from a.
        let i0 = _mm512_ternarylogic_epi32::<0xD8>(a, hs, _mm512_set1_epi8(0x44));
        [i0, _mm512_srli_epi32::<4>(i0)]
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
    let mut win = Window::<R, C, true>::new();
    let mut gi = 0;
    for cc in 0..nch {
        for r in 0..R {
            let cp = codes[r].add(cc * cb);
            // The same chunk of the next block of rows (see x86_int::prefetch).
            prefetch_chunk(cp.wrapping_add(R * l.row_code_bytes), cc, cb);
        }
        let mut xv = [[_mm512_setzero_si512(); 2]; C];
        for k in 0..C {
            for h in 0..2 {
                xv[k][h] = _mm512_loadu_si512(hp[k].add(cc * CHUNK + 64 * h) as *const __m512i);
            }
        }
        // Loops, not `from_fn`: a closure is not always inlined, and its intrinsics then become
        // calls (the word kernel's NF4 ran 15x slower that way).
        let mut ix = [[_mm512_setzero_si512(); 2]; R];
        for r in 0..R {
            ix[r] = indices::<B>(codes[r].add(cc * cb));
        }
        unroll!(h in [0, 1] {
            let e = cc * CHUNK + 64 * h;
            if e.is_multiple_of(G) {
                gi = win.at::<B, G>(&lv, &scales, &dseg, (e / G).min(l.groups - 1), l.groups, TMAX8);
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
                let lk = _mm512_permutexvar_epi8(ix[r][h], win.bytes_z::<B>(r, gi));
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
