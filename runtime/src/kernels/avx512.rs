//! AVX-512 kernels for the NF formats at group 16 (larger groups take the integer method of
//! `avx512_nf.rs`; the INT formats are in `x86_int.rs` and `avx512_int.rs`).
//!
//! Exact f32. A group's 16 dequantized levels sit in one register and `vpermps` (which reads
//! only the low 4 bits of each index) looks the codes up; FMA with the f32 activations.
//!
//! Rows are processed 4 at a time for one input (each activation load serves 4 rows) and 2 at a
//! time for 4 inputs in `matmul` (each unpacked code register serves 4 inputs).

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::x86_int::prefetch_chunk;
use bd_formats::quant::{PackedMatrix, CHUNK, NF3_LEVELS, NF4_LEVELS};
use std::arch::x86_64::*;
use std::array::from_fn;

fn chunk_bytes(bits: u32) -> usize {
    [0, 0, 32, 48, 64][bits as usize]
}

// ----------------------------------------------------------------------------------------------
// NF formats
// ----------------------------------------------------------------------------------------------

/// Rows `r0..r1` for `n` inputs `x` (`[n][cols]`): `y[k * ys + r]`.
pub(super) unsafe fn nf_rows(p: &PackedMatrix, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    if p.format().bits() == 3 {
        nf_rows_t::<3>(p, x, n, r0, r1, y, ys)
    } else {
        nf_rows_t::<4>(p, x, n, r0, r1, y, ys)
    }
}

/// The 16 table levels (NF3's 8 repeated: `vpermps` reads 4 index bits, the 4th is garbage) and,
/// per level, which scale it takes (0: positive, 1: negative).
fn nf_table<const B: u32>() -> ([f32; 16], [i32; 16]) {
    let levels: [f32; 16] = from_fn(|i| if B == 3 { NF3_LEVELS[i % 8] } else { NF4_LEVELS[i] });
    (levels, levels.map(|v| (v < 0.0) as i32))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nf_rows_t<const B: u32>(p: &PackedMatrix, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    let cols = p.layout.cols;
    let full = cols / CHUNK;
    // The last partial chunk of each input, zero padded.
    let mut tail = [[0f32; CHUNK]; 4];
    let mut k = 0;
    while k < n {
        let c = if n - k >= 4 { 4 } else { 1 };
        let xs: [*const f32; 4] = from_fn(|i| x.as_ptr().add((k + i.min(c - 1)) * cols));
        for i in 0..c {
            tail[i].fill(0.0);
            tail[i][..cols - full * CHUNK].copy_from_slice(&x[(k + i) * cols + full * CHUNK..(k + i + 1) * cols]);
        }
        let tails: [*const f32; 4] = from_fn(|i| tail[i].as_ptr());
        let mut r = r0;
        if c == 4 {
            while r + 2 <= r1 {
                nf_block::<B, 2, 4>(p, xs, tails, full, r, k, y, ys);
                r += 2;
            }
            if r < r1 {
                nf_block::<B, 1, 4>(p, xs, tails, full, r, k, y, ys);
            }
        } else {
            while r + 4 <= r1 {
                nf_block::<B, 4, 1>(p, xs, tails, full, r, k, y, ys);
                r += 4;
            }
            while r < r1 {
                nf_block::<B, 1, 1>(p, xs, tails, full, r, k, y, ys);
                r += 1;
            }
        }
        k += c;
    }
}

/// Table indices (low 4 bits) of weights `16t..16t+15` of a chunk from its code bytes
/// zero-extended to dwords (`src`: bytes 0-15, 16-31, 32-47, 48-63).
#[inline(always)]
unsafe fn nf_index<const B: u32>(src: &[__m512i; 4], t: usize) -> __m512i {
    if B == 4 {
        // Lane h = t / 4; bytes 16 * (t % 2) of it; low nibble for t % 4 < 2.
        let q = src[2 * (t / 4) + t % 2];
        if (t / 2) % 2 == 1 {
            _mm512_srli_epi32::<4>(q)
        } else {
            q
        }
    } else {
        let (m, half) = (t / 2, t % 2);
        let a = match m {
            0 => src[half],
            1 => _mm512_srli_epi32::<2>(src[half]),
            2 => _mm512_srli_epi32::<4>(src[half]),
            _ => _mm512_srli_epi32::<6>(src[half]),
        };
        // The high bit: bit 2m + half of the high-plane byte, moved to bit 2.
        let h = src[2];
        let hs = match 2 * m + half {
            0 => _mm512_slli_epi32::<2>(h),
            1 => _mm512_slli_epi32::<1>(h),
            2 => h,
            3 => _mm512_srli_epi32::<1>(h),
            4 => _mm512_srli_epi32::<2>(h),
            5 => _mm512_srli_epi32::<3>(h),
            6 => _mm512_srli_epi32::<4>(h),
            _ => _mm512_srli_epi32::<5>(h),
        };
        // Bit 2 from hs, the other bits from a (bit 3 is garbage: the NF3 table repeats).
        _mm512_ternarylogic_epi32::<0xD8>(a, hs, _mm512_set1_epi32(4))
    }
}

/// The 16 dequantized levels of group `g` of a row (`sc`: the row's `[pos, neg]` f16 scales).
#[inline(always)]
unsafe fn nf_group_table(levels: __m512, sel: __m512i, sc: *const u8, g: usize) -> __m512 {
    let pn = (sc.add(4 * g) as *const i32).read_unaligned();
    let s = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(pn)));
    _mm512_mul_ps(levels, _mm512_permutexvar_ps(sel, s))
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nf_block<const B: u32, const R: usize, const C: usize>(
    p: &PackedMatrix,
    xs: [*const f32; 4],
    tails: [*const f32; 4],
    full: usize,
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
) {
    let l = &p.layout;
    let nch = l.padded_cols() / CHUNK;
    let cb = chunk_bytes(B);
    let base = p.bytes().as_ptr();
    let codes: [*const u8; R] = from_fn(|r| base.add((r0 + r) * l.row_code_bytes));
    let scales: [*const u8; R] = from_fn(|r| base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes));
    let (lv, sel) = nf_table::<B>();
    let levels = _mm512_loadu_ps(lv.as_ptr());
    let sel = _mm512_loadu_si512(sel.as_ptr() as *const __m512i);
    let (gmask, gshift) = (l.group - 1, l.group.trailing_zeros());
    let mut facc = [[_mm512_setzero_ps(); C]; R];
    let mut tb = [_mm512_setzero_ps(); R];
    for cc in 0..nch {
        let xp: [*const f32; C] = from_fn(|k| if cc < full { xs[k].add(cc * CHUNK) } else { tails[k] });
        // Per row: the chunk's code bytes zero-extended to dwords, 16 at a time.
        let mut src = [[_mm512_setzero_si512(); 4]; R];
        for r in 0..R {
            let cp = codes[r].add(cc * cb);
            // The same chunk of the next block of rows (see x86_int::prefetch).
            prefetch_chunk(cp.wrapping_add(R * l.row_code_bytes), cc, cb);
            for (i, s) in src[r].iter_mut().enumerate().take(if B == 3 { 3 } else { 4 }) {
                *s = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(16 * i) as *const __m128i));
            }
        }
        unroll!(t in [0, 1, 2, 3, 4, 5, 6, 7] {
            let e = cc * CHUNK + 16 * t;
            if e & gmask == 0 {
                for r in 0..R {
                    tb[r] = nf_group_table(levels, sel, scales[r], (e >> gshift).min(l.groups - 1));
                }
            }
            let mut w = [_mm512_setzero_ps(); R];
            for r in 0..R {
                w[r] = _mm512_permutexvar_ps(nf_index::<B>(&src[r], t), tb[r]);
            }
            for k in 0..C {
                let xv = _mm512_loadu_ps(xp[k].add(16 * t));
                for r in 0..R {
                    facc[r][k] = _mm512_fmadd_ps(w[r], xv, facc[r][k]);
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
