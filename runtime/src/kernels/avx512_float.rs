//! AVX-512 kernels for f32 / f16 / bf16 weights: converted in registers, FMA in f32. Tails use
//! masked loads, so any `cols` works without reading past a row.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::x86_int::prefetch;
use super::{Weight, WeightData};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Weight element types.
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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

/// 16 weights from `p` (element offset), the lanes past `m` zero.
#[inline(always)]
unsafe fn load_w<const T: u8>(p: *const u8, i: usize, m: u16) -> __m512 {
    match T {
        F32 => _mm512_maskz_loadu_ps(m, (p as *const f32).add(i)),
        F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (p as *const i16).add(i))),
        _ => {
            let h = _mm256_maskz_loadu_epi16(m, (p as *const i16).add(i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
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
    let rowp: [*const u8; R] = from_fn(|r| w.add((r0 + r) * cols * esize));
    let xs: [*const f32; C] = from_fn(|k| x.as_ptr().add((k0 + k) * cols));
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut i = 0;
    while i < cols {
        let m = if i + 16 <= cols { 0xFFFF } else { ((1u32 << (cols - i)) - 1) as u16 };
        let mut wv = [_mm512_setzero_ps(); R];
        for r in 0..R {
            wv[r] = load_w::<T>(rowp[r], i, m);
            // 1 KiB ahead on each row's stream (see x86_int::prefetch).
            prefetch(rowp[r].wrapping_add(i * esize + 1024));
        }
        for k in 0..C {
            let xv = _mm512_maskz_loadu_ps(m, xs[k].add(i));
            for r in 0..R {
                acc[r][k] = _mm512_fmadd_ps(wv[r], xv, acc[r][k]);
            }
        }
        i += 16;
    }
    for r in 0..R {
        for k in 0..C {
            *y.add((k0 + k) * ys + r0 + r) = _mm512_reduce_add_ps(acc[r][k]);
        }
    }
}
