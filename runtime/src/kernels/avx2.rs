//! AVX2 kernels for the NF formats (the INT formats are in `x86_int.rs`).
//!
//! Exact f32: a group's dequantized levels sit in registers and `vpermps` (8 entries, 3 index
//! bits) looks the codes up; NF4 looks up in two 8-entry tables and picks by bit 3. FMA with the
//! f32 activations.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::x86_int::prefetch_chunk;
use bd_formats::quant::{PackedMatrix, CHUNK, NF3_LEVELS, NF4_LEVELS};
use std::arch::x86_64::*;

fn chunk_bytes(bits: u32) -> usize {
    [0, 0, 32, 48, 64][bits as usize]
}

/// Rows `r0..r1` for `n` inputs `x` (`[n][cols]`): `y[k * ys + r]`.
pub(super) unsafe fn nf_rows(p: &PackedMatrix, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    if p.format().bits() == 3 {
        nf_rows_t::<3>(p, x, n, r0, r1, y, ys)
    } else {
        nf_rows_t::<4>(p, x, n, r0, r1, y, ys)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nf_rows_t<const B: u32>(p: &PackedMatrix, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    let cols = p.layout.cols;
    let full = cols / CHUNK;
    let mut tail = [[0f32; CHUNK]; 4];
    let mut k = 0;
    while k < n {
        let c = if n - k >= 4 { 4 } else { 1 };
        let mut xs = [x.as_ptr(); 4];
        for i in 0..c {
            xs[i] = x.as_ptr().add((k + i) * cols);
            tail[i].fill(0.0);
            tail[i][..cols - full * CHUNK].copy_from_slice(&x[(k + i) * cols + full * CHUNK..(k + i + 1) * cols]);
        }
        let tails = [tail[0].as_ptr(), tail[1].as_ptr(), tail[2].as_ptr(), tail[3].as_ptr()];
        if c == 4 {
            for r in r0..r1 {
                nf_block::<B, 1, 4>(p, xs, tails, full, r, k, y, ys);
            }
        } else {
            let mut r = r0;
            while r + 2 <= r1 {
                nf_block::<B, 2, 1>(p, xs, tails, full, r, k, y, ys);
                r += 2;
            }
            if r < r1 {
                nf_block::<B, 1, 1>(p, xs, tails, full, r, k, y, ys);
            }
        }
        k += c;
    }
}

/// Group `g`'s dequantized levels: entries 0-7 and (NF4) 8-15.
#[inline(always)]
unsafe fn group_tables<const B: u32>(sc: *const u8, g: usize) -> [__m256; 2] {
    let pn = (sc.add(4 * g) as *const i32).read_unaligned();
    // [pos, neg, 0, ...] as f32, then per level the scale of its sign.
    let s = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(pn)));
    let mut t = [_mm256_setzero_ps(); 2];
    for (h, th) in t.iter_mut().enumerate().take(if B == 3 { 1 } else { 2 }) {
        let lv: [f32; 8] = std::array::from_fn(|i| if B == 3 { NF3_LEVELS[i] } else { NF4_LEVELS[8 * h + i] });
        let sel: [i32; 8] = lv.map(|v| (v < 0.0) as i32);
        let scale = _mm256_permutevar8x32_ps(s, _mm256_loadu_si256(sel.as_ptr() as *const __m256i));
        *th = _mm256_mul_ps(_mm256_loadu_ps(lv.as_ptr()), scale);
    }
    t
}

/// The 8 codes (in 32-bit lanes) of weights `8u..8u+7` of a chunk; `src`: the chunk's code bytes
/// zero-extended, 8 per register.
#[inline(always)]
unsafe fn codes8<const B: u32>(src: &[__m256i; 8], u: usize) -> __m256i {
    if B == 4 {
        // Lane h = u / 8, bytes 8 * (u % 4) of it, high nibble for (u / 4) odd.
        let q = src[4 * (u / 8) + u % 4];
        if (u / 4) % 2 == 1 {
            _mm256_srli_epi32::<4>(q)
        } else {
            q
        }
    } else {
        let (m, q) = (u / 4, u % 4);
        let low = match m {
            0 => src[q],
            1 => _mm256_srli_epi32::<2>(src[q]),
            2 => _mm256_srli_epi32::<4>(src[q]),
            _ => _mm256_srli_epi32::<6>(src[q]),
        };
        // High bit: bit 2m of high byte (q < 2) or bit 2m + 1 (q >= 2), moved to bit 2.
        let h = src[4 + q % 2];
        let hs = match 2 * m + q / 2 {
            0 => _mm256_slli_epi32::<2>(h),
            1 => _mm256_slli_epi32::<1>(h),
            2 => h,
            3 => _mm256_srli_epi32::<1>(h),
            4 => _mm256_srli_epi32::<2>(h),
            5 => _mm256_srli_epi32::<3>(h),
            6 => _mm256_srli_epi32::<4>(h),
            _ => _mm256_srli_epi32::<5>(h),
        };
        let four = _mm256_set1_epi32(4);
        _mm256_or_si256(_mm256_andnot_si256(four, low), _mm256_and_si256(hs, four))
    }
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
    let mut codes = [base; R];
    let mut scales = [base; R];
    for r in 0..R {
        codes[r] = base.add((r0 + r) * l.row_code_bytes);
        scales[r] = base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes);
    }
    let (gmask, gshift) = (l.group - 1, l.group.trailing_zeros());
    let mut facc = [[_mm256_setzero_ps(); C]; R];
    let mut tb = [[_mm256_setzero_ps(); 2]; R];
    for cc in 0..nch {
        let mut xp = [xs[0]; C];
        for k in 0..C {
            xp[k] = if cc < full { xs[k].add(cc * CHUNK) } else { tails[k] };
        }
        for r in 0..R {
            // Code bytes 8 at a time, zero-extended: int3 low lane (4) and high plane (2); int4 8.
            let cp = codes[r].add(cc * cb);
            // The same chunk of the next block of rows (see x86_int::prefetch).
            prefetch_chunk(cp.wrapping_add(R * l.row_code_bytes), cc, cb);
            let mut src = [_mm256_setzero_si256(); 8];
            for (i, s) in src.iter_mut().enumerate().take(if B == 3 { 6 } else { 8 }) {
                *s = _mm256_cvtepu8_epi32(_mm_loadl_epi64(cp.add(8 * i) as *const __m128i));
            }
            unroll!(u in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                let e = cc * CHUNK + 8 * u;
                if e & gmask == 0 {
                    tb[r] = group_tables::<B>(scales[r], (e >> gshift).min(l.groups - 1));
                }
                let idx = codes8::<B>(&src, u);
                let w = if B == 3 {
                    _mm256_permutevar8x32_ps(tb[r][0], idx)
                } else {
                    let lo = _mm256_permutevar8x32_ps(tb[r][0], idx);
                    let hi = _mm256_permutevar8x32_ps(tb[r][1], idx);
                    _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx)))
                };
                for k in 0..C {
                    facc[r][k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp[k].add(8 * u)), facc[r][k]);
                }
            });
        }
    }
    for r in 0..R {
        for k in 0..C {
            let v = facc[r][k];
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            *y.add((k0 + k) * ys + r0 + r) = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        }
    }
}
