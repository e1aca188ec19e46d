//! AVX2 kernels for f32 / f16 / bf16 weights: converted in registers (F16C for f16, a shift for
//! bf16), FMA in f32. The last `cols % 8` columns of a row are done in scalar code.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::x86_int::prefetch;
use super::{Weight, WeightData};
use half::{bf16, f16};
use std::arch::x86_64::*;

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

pub(super) unsafe fn rows(w: &Weight, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    match w.data {
        WeightData::F32(b) => rows_t::<F32>(b.as_ptr(), w.cols, x, n, r0, r1, y, ys),
        WeightData::F16(b) => rows_t::<F16>(b.as_ptr(), w.cols, x, n, r0, r1, y, ys),
        WeightData::Bf16(b) => rows_t::<BF16>(b.as_ptr(), w.cols, x, n, r0, r1, y, ys),
        WeightData::Quant(_) => unreachable!("quantized weights go to the quantized kernels"),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_t<const T: u8>(w: *const u8, cols: usize, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    let mut k = 0;
    while k + 4 <= n {
        let mut r = r0;
        while r + 2 <= r1 {
            block::<T, 2, 4>(w, cols, x, r, k, y, ys);
            r += 2;
        }
        if r < r1 {
            block::<T, 1, 4>(w, cols, x, r, k, y, ys);
        }
        k += 4;
    }
    while k < n {
        let mut r = r0;
        while r + 4 <= r1 {
            block::<T, 4, 1>(w, cols, x, r, k, y, ys);
            r += 4;
        }
        while r < r1 {
            block::<T, 1, 1>(w, cols, x, r, k, y, ys);
            r += 1;
        }
        k += 1;
    }
}

#[inline(always)]
unsafe fn load8<const T: u8>(p: *const u8, i: usize) -> __m256 {
    match T {
        F32 => _mm256_loadu_ps((p as *const f32).add(i)),
        F16 => _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(i) as *const __m128i)),
        _ => {
            let h = _mm_loadu_si128((p as *const u16).add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

#[inline(always)]
unsafe fn scalar<const T: u8>(p: *const u8, i: usize) -> f32 {
    match T {
        F32 => (p as *const f32).add(i).read_unaligned(),
        F16 => f16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32(),
        _ => bf16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32(),
    }
}

#[inline(always)]
unsafe fn block<const T: u8, const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    x: &[f32],
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
) {
    let esize = if T == F32 { 4 } else { 2 };
    let mut rowp = [w; R];
    for (r, p) in rowp.iter_mut().enumerate() {
        *p = w.add((r0 + r) * cols * esize);
    }
    let mut xs = [x.as_ptr(); C];
    for (k, p) in xs.iter_mut().enumerate() {
        *p = x.as_ptr().add((k0 + k) * cols);
    }
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut i = 0;
    while i + 8 <= cols {
        let mut wv = [_mm256_setzero_ps(); R];
        for r in 0..R {
            wv[r] = load8::<T>(rowp[r], i);
            if (i * esize) % 64 == 0 {
                // 1 KiB ahead on each row's stream (see x86_int::prefetch).
                prefetch(rowp[r].wrapping_add(i * esize + 1024));
            }
        }
        for k in 0..C {
            let xv = _mm256_loadu_ps(xs[k].add(i));
            for r in 0..R {
                acc[r][k] = _mm256_fmadd_ps(wv[r], xv, acc[r][k]);
            }
        }
        i += 8;
    }
    for r in 0..R {
        for k in 0..C {
            let v = acc[r][k];
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let mut s = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
            for t in i..cols {
                s += scalar::<T>(rowp[r], t) * *xs[k].add(t);
            }
            *y.add((k0 + k) * ys + r0 + r) = s;
        }
    }
}
