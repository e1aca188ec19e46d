//! aarch64 kernels for f32 / f16 / bf16 weights: converted in registers (`fcvtl` for f16, a
//! shift for bf16), FMA in f32. The last `cols % 4` columns of a row are done in scalar code.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::neon::f16x4_to_f32;
use super::{Weight, WeightData};
use half::{bf16, f16};
use std::arch::aarch64::*;

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

#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_t<const T: u8>(w: *const u8, cols: usize, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    let mut k = 0;
    while k + 4 <= n {
        for r in r0..r1 {
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
unsafe fn load4<const T: u8>(p: *const u8, i: usize) -> float32x4_t {
    match T {
        F32 => vld1q_f32((p as *const f32).add(i)),
        F16 => f16x4_to_f32(vld1_u16((p as *const u16).add(i))),
        _ => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16((p as *const u16).add(i)))),
    }
}

#[inline(always)]
unsafe fn scalar<const T: u8>(p: *const u8, i: usize) -> f32 {
    match T {
        F32 => *(p as *const f32).add(i),
        F16 => f16::from_bits(*(p as *const u16).add(i)).to_f32(),
        _ => bf16::from_bits(*(p as *const u16).add(i)).to_f32(),
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
    let mut acc = [[vdupq_n_f32(0.0); C]; R];
    let mut i = 0;
    while i + 4 <= cols {
        let mut wv = [vdupq_n_f32(0.0); R];
        for r in 0..R {
            wv[r] = load4::<T>(rowp[r], i);
        }
        for k in 0..C {
            let xv = vld1q_f32(xs[k].add(i));
            for r in 0..R {
                acc[r][k] = vfmaq_f32(acc[r][k], wv[r], xv);
            }
        }
        i += 4;
    }
    for r in 0..R {
        for k in 0..C {
            let mut s = vaddvq_f32(acc[r][k]);
            for t in i..cols {
                s += scalar::<T>(rowp[r], t) * *xs[k].add(t);
            }
            *y.add((k0 + k) * ys + r0 + r) = s;
        }
    }
}
