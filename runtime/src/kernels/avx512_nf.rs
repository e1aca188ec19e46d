//! AVX-512 VNNI kernel for the NF formats, groups of 32 and more: per-group 16-bit level tables
//! looked up with `vpermw`, 16-bit activations, `vpdpwssd` (the scheme and its twin:
//! `nf_int.rs`).
//!
//! A 16-bit word of packed codes holds the codes of two neighbouring elements (bytes `2k` and
//! `2k + 1` of a lane), and `vpermw` on 256-bit registers reads only the low 4 bits of each index
//! word (5 on 512-bit registers). So one shift of the code lane per lookup puts a code in those
//! bits and the bits above are ignored; NF3's code takes index bits 0-2, and its 8-entry tables
//! (`avx512_nf_window`) repeat over the garbage bits 3 and 4. A lookup yields the
//! even or the odd elements of 32 consecutive weights; the activations are stored in that order
//! (`nf_int::pair_order`). This replaces the exact f32 method (`vpermps` and FMA on 16 floats, 2.1x
//! the time of the INT kernels per weight) with 16 weights per `vpdpwssd`.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::{segs_per_chunk, ActQ};
use super::avx512_nf8::{indices as nf8_indices, rows as nf8_rows};
use super::avx512_nf_window::{Levels, Window};
use super::nf_int::{pair_offset, tmax, TMAX8};
use super::x86_int::{prefetch_chunk, prefetch_range};
use bd_formats::quant::{PackedMatrix, CHUNK};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Rows `r0..r1`, inputs `k0..k1` of `act`: `y[k * ys + r]`. The group must be at least
/// `nf_int::MIN_GROUP`. `act8`: the activations are 8-bit and the tables take `nf_int::TMAX8`;
/// with `vbmi` and groups of 64 and more that is the byte kernel (`avx512_nf8.rs`, natural
/// activation order), otherwise the word kernel (`act` must carry the pair-ordered activations,
/// [`uses_pair_order`]).
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
    vbmi: bool,
) {
    if !uses_pair_order(p, act8, vbmi) {
        nf_dispatch!(nf8_rows(p, act, k0, k1, r0, r1, y, ys, TMAX8))
    } else {
        nf_dispatch!(rows(p, act, k0, k1, r0, r1, y, ys, tmax(act8)))
    }
}

/// Whether `nf_rows` runs the word kernel, which reads the activations in `nf_int::pair_order`.
pub(super) fn uses_pair_order(p: &PackedMatrix, act8: bool, vbmi: bool) -> bool {
    !(act8 && vbmi && p.layout.group >= 64)
}

/// Tiles as for the INT kernels: 4 rows for one input, 2 rows x 2 inputs for several.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<const B: u32, const G: usize>(
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
    // Groups of 64 and more: the 512-bit kernel.
    macro_rules! tile {
        ($r:literal, $c:literal, $r0:expr, $k:expr) => {
            if G >= 64 {
                block_z::<B, G, $r, $c>(p, act, $r0, $k, y, ys, tmax)
            } else {
                block::<B, G, $r, $c>(p, act, $r0, $k, y, ys, tmax)
            }
        };
    }
    nf_tiles!(tile, k0, k1, r0, r1);
}

/// The codes of weights `32t..32t+31` of a chunk, one per byte in bits 0-3 (NF3: the low bits in
/// bits 0-1 and the high bit in bit 2, as the word tables of `avx512_nf_window` expect; bit 3 and
/// the bits above are garbage): the even elements are the low bytes of its words, the odd ones the
/// high bytes. `raw`: NF4, the two code lanes; NF3, the low-bit lane and the high plane broadcast
/// to both 128-bit halves.
#[inline(always)]
unsafe fn code_block<const B: u32>(raw: &[__m256i; 2], t: usize) -> __m256i {
    if B == 4 {
        let v = raw[t / 2];
        if t.is_multiple_of(2) {
            v
        } else {
            _mm256_srli_epi16::<4>(v)
        }
    } else {
        let v = raw[0];
        let a = match t {
            0 => v,
            1 => _mm256_srli_epi16::<2>(v),
            2 => _mm256_srli_epi16::<4>(v),
            _ => _mm256_srli_epi16::<6>(v),
        };
        // High bit of weight 32t + i: bit 2t of high byte i (i < 16), bit 2t + 1 of byte i - 16
        // (i >= 16), moved to bit 2 (t = 1 moves bits both ways: a rotation).
        let h = raw[1];
        let hs = match t {
            0 => _mm256_sllv_epi32(h, _mm256_setr_epi32(2, 2, 2, 2, 1, 1, 1, 1)),
            1 => _mm256_rolv_epi32(h, _mm256_setr_epi32(0, 0, 0, 0, 31, 31, 31, 31)),
            2 => _mm256_srlv_epi32(h, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)),
            _ => _mm256_srlv_epi32(h, _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5)),
        };
        // Bit 2 of each byte from hs, the others from a.
        _mm256_ternarylogic_epi32::<0xD8>(a, hs, _mm256_set1_epi8(4))
    }
}

/// Lookup indices (`vpermw` reads bits 0-3 of each word) of the even (`odd == 0`) or odd
/// elements of a block from its `code_block`.
#[inline(always)]
unsafe fn index(c: __m256i, odd: usize) -> __m256i {
    if odd == 0 {
        c
    } else {
        _mm256_srli_epi16::<8>(c)
    }
}

/// `vpdpwssd` as one instruction: LLVM rewrites the intrinsic into `vpmaddwd` + `vpaddd` (two
/// operations, measured 10-15% slower in this kernel).
#[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    let mut acc = acc;
    std::arch::asm!("vpdpwssd {0:y}, {1:y}, {2:y}", inout(zmm_reg) acc, in(zmm_reg) a, in(zmm_reg) b, options(pure, nomem, nostack));
    acc
}

/// `vpdpwssd` on 512-bit registers (see `dpwssd`).
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn dpwssd_z(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    std::arch::asm!("vpdpwssd {0}, {1}, {2}", inout(zmm_reg) acc, in(zmm_reg) a, in(zmm_reg) b, options(pure, nomem, nostack));
    acc
}

/// Lookup indices of the even and of the odd elements (`[h][odd]`) of blocks `2h` and `2h + 1` of
/// the chunk at `cp` (low and high 256 bits), for 512-bit `vpermw` on a table repeated in both
/// halves (it reads bits 0-4 of each word): the byte kernel's indices of 64 consecutive weights
/// (`avx512_nf8::indices`) are the even elements in the low byte of each word, and shifted right
/// by 8, the odd ones.
#[inline(always)]
unsafe fn indices_z<const B: u32>(cp: *const u8) -> [[__m512i; 2]; 2] {
    let [e0, e1] = nf8_indices::<B>(cp);
    [[e0, _mm512_srli_epi32::<8>(e0)], [e1, _mm512_srli_epi32::<8>(e1)]]
}

/// 512-bit version of `block` for groups of 64 and more: blocks `2h` and `2h + 1` of a chunk
/// (one group) share a register, so a chunk takes 4 lookups and 4 `vpdpwssd` per row instead of
/// 8 of each (NF3: 16 instructions per row and chunk instead of 31).
#[inline(always)]
unsafe fn block_z<const B: u32, const G: usize, const R: usize, const C: usize>(
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
    let cb = if B == 3 { 48 } else { 64 };
    let spc = segs_per_chunk(G);
    let base = p.bytes().as_ptr();
    let codes: [*const u8; R] = from_fn(|r| base.add((r0 + r) * l.row_code_bytes));
    let scales: [*const u8; R] = from_fn(|r| base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes));
    let xp: [*const i16; C] = from_fn(|k| act.xp(k0 + k).as_ptr());
    let dseg: [*const f32; C] = from_fn(|k| act.dseg(k0 + k).as_ptr());
    let lv = Levels::new(l.format);
    prefetch_range(scales[0].wrapping_add(R * l.row_scale_bytes), R * l.row_scale_bytes);

    let mut facc = [[_mm512_setzero_ps(); C]; R];
    let mut acc = [[_mm512_setzero_si512(); C]; R];
    let mut win = Window::<R, C, false>::new();
    let mut gi = 0;
    for cc in 0..nch {
        for r in 0..R {
            let cp = codes[r].add(cc * cb);
            // The same chunk of the next block of rows (see x86_int::prefetch).
            prefetch_chunk(cp.wrapping_add(R * l.row_code_bytes), cc, cb);
        }
        // A loop, not `from_fn`: a closure is not always inlined, and its intrinsics then become
        // calls (measured 15x slower).
        let mut idx = [[[_mm512_setzero_si512(); 2]; 2]; R];
        for r in 0..R {
            idx[r] = indices_z::<B>(codes[r].add(cc * cb));
        }
        unroll!(h in [0, 1] {
            let e = cc * CHUNK + 64 * h;
            if e.is_multiple_of(G) {
                gi = win.at::<B, G>(&lv, &scales, &dseg, (e / G).min(l.groups - 1), l.groups, tmax);
            }
            unroll!(odd in [0, 1] {
                let mut lk = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    lk[r] = _mm512_permutexvar_epi16(idx[r][h][odd], win.words_z::<B>(r, gi));
                }
                for k in 0..C {
                    let xv = _mm512_loadu_si512(xp[k].add(cc * CHUNK + pair_offset(2 * h, odd)) as *const __m512i);
                    for r in 0..R {
                        acc[r][k] = dpwssd_z(acc[r][k], lk[r], xv);
                    }
                }
            });
            // A segment ends with its group or its chunk.
            if (64 * h + 64).is_multiple_of(G.min(CHUNK)) {
                for k in 0..C {
                    for r in 0..R {
                        // The factor as a broadcast memory operand: no shuffle.
                        let f = _mm512_set1_ps(win.fd[k][r][gi]);
                        let s = _mm512_cvtepi32_ps(acc[r][k]);
                        facc[r][k] = if G <= CHUNK {
                            _mm512_fmadd_ps(s, f, facc[r][k])
                        } else {
                            _mm512_fmadd_ps(_mm512_mul_ps(s, f), _mm512_set1_ps(*dseg[k].add(cc * spc)), facc[r][k])
                        };
                        acc[r][k] = _mm512_setzero_si512();
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

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
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
    tmax: f32,
) {
    let l = &p.layout;
    let nch = l.padded_cols() / CHUNK;
    let cb = if B == 3 { 48 } else { 64 };
    let base = p.bytes().as_ptr();
    let codes: [*const u8; R] = from_fn(|r| base.add((r0 + r) * l.row_code_bytes));
    let scales: [*const u8; R] = from_fn(|r| base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes));
    let xp: [*const i16; C] = from_fn(|k| act.xp(k0 + k).as_ptr());
    let dseg: [*const f32; C] = from_fn(|k| act.dseg(k0 + k).as_ptr());
    let lv = Levels::new(l.format);
    prefetch_range(scales[0].wrapping_add(R * l.row_scale_bytes), R * l.row_scale_bytes);

    let mut facc = [[_mm256_setzero_ps(); C]; R];
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    let mut tab = [_mm256_setzero_si256(); R];
    let mut win = Window::<R, C, false>::new();
    let mut gi = 0;
    for cc in 0..nch {
        let mut raw = [[_mm256_setzero_si256(); 2]; R];
        for r in 0..R {
            let cp = codes[r].add(cc * cb);
            raw[r][0] = _mm256_loadu_si256(cp as *const __m256i);
            raw[r][1] = if B == 3 {
                _mm256_broadcastsi128_si256(_mm_loadu_si128(cp.add(32) as *const __m128i))
            } else {
                _mm256_loadu_si256(cp.add(32) as *const __m256i)
            };
            // The same chunk of the next block of rows (see x86_int::prefetch).
            prefetch_chunk(cp.wrapping_add(R * l.row_code_bytes), cc, cb);
        }
        unroll!(t in [0, 1, 2, 3] {
            let e = cc * CHUNK + 32 * t;
            if e.is_multiple_of(G) {
                gi = win.at::<B, G>(&lv, &scales, &dseg, (e / G).min(l.groups - 1), l.groups, tmax);
                for r in 0..R {
                    tab[r] = win.words_y::<B>(r, gi);
                }
            }
            let mut cw = [_mm256_setzero_si256(); R];
            for r in 0..R {
                cw[r] = code_block::<B>(&raw[r], t);
            }
            unroll!(odd in [0, 1] {
                let mut lk = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    lk[r] = _mm256_permutexvar_epi16(index(cw[r], odd), tab[r]);
                }
                for k in 0..C {
                    let xv = _mm256_loadu_si256(xp[k].add(cc * CHUNK + pair_offset(t, odd)) as *const __m256i);
                    for r in 0..R {
                        acc[r][k] = dpwssd(acc[r][k], lk[r], xv);
                    }
                }
            });
            // A segment ends with its group or its chunk.
            if (32 * t + 32).is_multiple_of(G.min(CHUNK)) {
                for k in 0..C {
                    for r in 0..R {
                        // Groups of 32: one segment per group, `fac * d` in the window.
                        let f = _mm256_set1_ps(win.fd[k][r][gi]);
                        facc[r][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][k]), f, facc[r][k]);
                        acc[r][k] = _mm256_setzero_si256();
                    }
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
