//! aarch64 Advanced SIMD kernels for the quantized formats.
//!
//! INT: codes unpacked to bytes, 16 per register (field `j` of bytes `16h..16h+15` of a code lane
//! is weights `32j + 16h ..` of the chunk). With the dot-product extension, `sdot` multiplies them
//! with the two signed bytes of each 16-bit activation (`X = 256 * hi + lo`, [`super::act`]) into
//! a `hi` and a `lo` accumulator (only `hi` with 8-bit activations, whose low plane is zero);
//! without it, the codes widen to 16 bits and `smlal` multiplies them with `X` directly. Either way the integer sums are exact, and each segment's sum becomes
//! f32 once (`y += (s * d) * S`); zero points are applied once per group.
//!
//! NF: exact f32. A group's 16 dequantized levels sit in four registers (64 bytes) and `tbl`
//! looks the codes up four bytes at a time; FMA with the f32 activations.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::{segs_per_chunk, ActQ};
use bd_formats::quant::{PackedMatrix, CHUNK, NF3_LEVELS, NF4_LEVELS};
use std::arch::aarch64::*;
use std::arch::asm;

/// Chunks per window: the factors of a window's segments are computed before its chunks.
const WCH: usize = 16;
/// Segments per window at most (8 per chunk when G = 16).
const WSEG: usize = WCH * 8;
/// Largest rows x inputs tile.
const MAX_TILE: usize = 4;

fn chunk_bytes(bits: u32) -> usize {
    [0, 0, 32, 48, 64][bits as usize]
}

/// Four f16 (as bits) to f32, exactly (`fcvtl`, base ARMv8).
#[inline(always)]
pub(super) unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    r
}

/// Read 8 bytes little-endian at `p`; past `end` read zeros.
#[inline(always)]
unsafe fn load_le(p: *const u8, end: *const u8) -> u64 {
    if p.add(8) <= end {
        (p as *const u64).read_unaligned()
    } else {
        let mut b = [0u8; 8];
        std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), end.offset_from(p) as usize);
        u64::from_le_bytes(b)
    }
}

/// 4 f16 at `p` as f32, lanes `avail..` zero.
#[inline(always)]
unsafe fn load_f16x4(p: *const u16, avail: usize, end: *const u8) -> float32x4_t {
    let mut b = [0u16; 4];
    if avail >= 4 && (p as *const u8).add(8) <= end {
        return f16x4_to_f32(vld1_u16(p));
    }
    std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), avail.min(4));
    f16x4_to_f32(vld1_u16(b.as_ptr()))
}

// ----------------------------------------------------------------------------------------------
// INT formats
// ----------------------------------------------------------------------------------------------

/// Rows `r0..r1`, inputs `k0..k1` of `act`: `y[k * ys + r]`. `dot`: use `sdot` (then `act` must
/// carry the byte planes).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn int_rows(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
    dot: bool,
    act8: bool,
) {
    type F = unsafe fn(&PackedMatrix, &ActQ, usize, usize, usize, usize, *mut f32, usize);
    macro_rules! pick {
        ($b:literal, $s:literal) => {
            if dot && act8 {
                rows_dot::<$b, $s, true> as F
            } else if dot {
                rows_dot::<$b, $s, false> as F
            } else {
                rows_plain::<$b, $s> as F
            }
        };
    }
    let f = match (p.format().bits(), segs_per_chunk(p.layout.group)) {
        (2, 1) => pick!(2, 1),
        (2, 2) => pick!(2, 2),
        (2, 4) => pick!(2, 4),
        (2, 8) => pick!(2, 8),
        (3, 1) => pick!(3, 1),
        (3, 2) => pick!(3, 2),
        (3, 4) => pick!(3, 4),
        (3, 8) => pick!(3, 8),
        (4, 1) => pick!(4, 1),
        (4, 2) => pick!(4, 2),
        (4, 4) => pick!(4, 4),
        (4, 8) => pick!(4, 8),
        other => unreachable!("INT format / segments {other:?}"),
    };
    f(p, act, k0, k1, r0, r1, y, ys)
}

#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_plain<const B: u32, const SEGS: usize>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    rows_impl::<B, SEGS, false, false>(p, act, k0, k1, r0, r1, y, ys)
}

#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_dot<const B: u32, const SEGS: usize, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    rows_impl::<B, SEGS, true, A8>(p, act, k0, k1, r0, r1, y, ys)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_impl<const B: u32, const SEGS: usize, const DOT: bool, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    let mut fbuf = [0f32; MAX_TILE * WSEG];
    let mut k = k0;
    while k + 4 <= k1 {
        for r in r0..r1 {
            int_block::<B, SEGS, 1, 4, DOT, A8>(p, act, r, k, y, ys, &mut fbuf);
        }
        k += 4;
    }
    while k < k1 {
        let mut r = r0;
        while r + 4 <= r1 {
            int_block::<B, SEGS, 4, 1, DOT, A8>(p, act, r, k, y, ys, &mut fbuf);
            r += 4;
        }
        while r < r1 {
            int_block::<B, SEGS, 1, 1, DOT, A8>(p, act, r, k, y, ys, &mut fbuf);
            r += 1;
        }
        k += 1;
    }
}

/// `(v >> 2j) & 3` per byte.
#[inline(always)]
unsafe fn field2(v: uint8x16_t, j: usize) -> uint8x16_t {
    let m3 = vdupq_n_u8(3);
    match j {
        0 => vandq_u8(v, m3),
        1 => vandq_u8(vshrq_n_u8::<2>(v), m3),
        2 => vandq_u8(vshrq_n_u8::<4>(v), m3),
        _ => vshrq_n_u8::<6>(v),
    }
}

/// The codes of weights `32j + 16h .. 32j + 16h + 15` of a chunk, one per byte (`raw`: the
/// chunk's code bytes, 16 per register).
#[inline(always)]
unsafe fn codes16<const B: u32>(raw: &[uint8x16_t; 4], j: usize, h: usize) -> uint8x16_t {
    match B {
        2 => field2(raw[h], j),
        4 => {
            let v = raw[2 * (j / 2) + h];
            if j & 1 == 0 {
                vandq_u8(v, vdupq_n_u8(15))
            } else {
                vshrq_n_u8::<4>(v)
            }
        }
        _ => {
            // High bit: bit 2j + h of the high-plane byte, moved to bit 2.
            let hb = raw[2];
            let hs = match 2 * j + h {
                0 => vshlq_n_u8::<2>(hb),
                1 => vshlq_n_u8::<1>(hb),
                2 => hb,
                3 => vshrq_n_u8::<1>(hb),
                4 => vshrq_n_u8::<2>(hb),
                5 => vshrq_n_u8::<3>(hb),
                6 => vshrq_n_u8::<4>(hb),
                _ => vshrq_n_u8::<5>(hb),
            };
            vorrq_u8(field2(raw[h], j), vandq_u8(hs, vdupq_n_u8(4)))
        }
    }
}

#[inline(always)]
unsafe fn load_raw<const B: u32>(p: *const u8) -> [uint8x16_t; 4] {
    let z = vdupq_n_u8(0);
    match B {
        2 => [vld1q_u8(p), vld1q_u8(p.add(16)), z, z],
        3 => [vld1q_u8(p), vld1q_u8(p.add(16)), vld1q_u8(p.add(32)), z],
        _ => [vld1q_u8(p), vld1q_u8(p.add(16)), vld1q_u8(p.add(32)), vld1q_u8(p.add(48))],
    }
}

/// `sdot`: four byte products per 32-bit lane.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b, options(pure, nomem, nostack, preserves_flags));
    acc
}

/// 4 f32 zero points of groups `g..g+4` from a row's packed `B`-bit zero stream.
#[inline(always)]
unsafe fn zeros4<const B: u32>(z: *const u8, g: usize, end: *const u8) -> float32x4_t {
    let bit = g * B as usize;
    let u = (load_le(z.add(bit / 8), end) >> (bit % 8)) as u32;
    let b = B as i32;
    let sh = [0, -b, -2 * b, -3 * b];
    let q = vandq_u32(vshlq_u32(vdupq_n_u32(u), vld1q_s32(sh.as_ptr())), vdupq_n_u32((1 << B) - 1));
    vcvtq_f32_u32(q)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn int_block<const B: u32, const SEGS: usize, const R: usize, const C: usize, const DOT: bool, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
    fbuf: &mut [f32; MAX_TILE * WSEG],
) {
    let l = &p.layout;
    let nch = l.padded_cols() / CHUNK;
    let cb = chunk_bytes(B);
    let base = p.bytes().as_ptr();
    let end = base.add(l.len);
    let mut codes = [base; R];
    let mut scales = [base as *const u16; R];
    let mut zeros = [base; R];
    for r in 0..R {
        codes[r] = base.add((r0 + r) * l.row_code_bytes);
        scales[r] = base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes) as *const u16;
        zeros[r] = base.add(l.zeros_offset + (r0 + r) * l.row_zero_bytes);
    }
    let mut xh = [std::ptr::null::<i8>(); C];
    let mut xl = [std::ptr::null::<i8>(); C];
    let mut xq = [std::ptr::null::<i16>(); C];
    let mut dseg = [std::ptr::null::<f32>(); C];
    let mut gx = [std::ptr::null::<f32>(); C];
    for k in 0..C {
        if DOT {
            xh[k] = act.hi(k0 + k).as_ptr();
            xl[k] = act.lo(k0 + k).as_ptr();
        } else {
            xq[k] = act.xq(k0 + k).as_ptr();
        }
        dseg[k] = act.dseg(k0 + k).as_ptr();
        gx[k] = act.gx(k0 + k).as_ptr();
    }
    let cpg = (l.group / CHUNK).max(1);
    let seg_len = CHUNK / SEGS;
    let fb = fbuf.as_mut_ptr();
    let zero_i = vdupq_n_s32(0);

    let mut facc = [[vdupq_n_f32(0.0); C]; R];
    let mut w0 = 0;
    while w0 < nch {
        let wn = WCH.min(nch - w0);
        let (seg0, nseg) = (w0 * SEGS, wn * SEGS);
        let (g_lo, g_hi) = if SEGS == 1 { (w0 / cpg, (w0 + wn).div_ceil(cpg)) } else { (seg0, seg0 + nseg) };
        let g_hi = g_hi.min(l.groups);
        for r in 0..R {
            let mut s = 0;
            while s < nseg {
                let seg = seg0 + s;
                let sv = if cpg == 2 {
                    let h = load_f16x4(scales[r].add(seg / 2), l.groups.saturating_sub(seg / 2).min(2), end);
                    vzip1q_f32(h, h)
                } else {
                    load_f16x4(scales[r].add(seg), l.groups.saturating_sub(seg), end)
                };
                for k in 0..C {
                    vst1q_f32(fb.add((r * C + k) * WSEG + s), vmulq_f32(sv, vld1q_f32(dseg[k].add(seg))));
                }
                s += 4;
            }
            let mut g = g_lo;
            while g < g_hi {
                let sz = vmulq_f32(load_f16x4(scales[r].add(g), g_hi - g, end), zeros4::<B>(zeros[r], g, end));
                for k in 0..C {
                    facc[r][k] = vfmsq_f32(facc[r][k], sz, vld1q_f32(gx[k].add(g)));
                }
                g += 4;
            }
        }
        for c in 0..wn {
            let cc = w0 + c;
            let mut raw = [[vdupq_n_u8(0); 4]; R];
            for r in 0..R {
                raw[r] = load_raw::<B>(codes[r].add(cc * cb));
            }
            let mut ah = [[zero_i; C]; R];
            let mut al = [[zero_i; C]; R];
            unroll!(j in [0, 1, 2, 3] {
                unroll!(h in [0, 1] {
                    let mut f = [vdupq_n_u8(0); R];
                    for r in 0..R {
                        f[r] = codes16::<B>(&raw[r], j, h);
                    }
                    let off = cc * CHUNK + 32 * j + 16 * h;
                    for k in 0..C {
                        if DOT {
                            let xhv = vld1q_s8(xh[k].add(off));
                            for r in 0..R {
                                ah[r][k] = sdot(ah[r][k], vreinterpretq_s8_u8(f[r]), xhv);
                            }
                            // 8-bit activations: the low plane is zero (see `act`).
                            if !A8 {
                                let xlv = vld1q_s8(xl[k].add(off));
                                for r in 0..R {
                                    al[r][k] = sdot(al[r][k], vreinterpretq_s8_u8(f[r]), xlv);
                                }
                            }
                        } else {
                            let x0 = vld1q_s16(xq[k].add(off));
                            let x1 = vld1q_s16(xq[k].add(off + 8));
                            for r in 0..R {
                                let c0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(f[r])));
                                let c1 = vreinterpretq_s16_u16(vmovl_high_u8(f[r]));
                                let mut a = ah[r][k];
                                a = vmlal_s16(a, vget_low_s16(c0), vget_low_s16(x0));
                                a = vmlal_high_s16(a, c0, x0);
                                a = vmlal_s16(a, vget_low_s16(c1), vget_low_s16(x1));
                                ah[r][k] = vmlal_high_s16(a, c1, x1);
                            }
                        }
                    }
                    let e = 32 * j + 16 * h + 16;
                    if e & (seg_len - 1) == 0 {
                        let si = c * SEGS + e / seg_len - 1;
                        for r in 0..R {
                            for k in 0..C {
                                let sum = if DOT && A8 {
                                    vshlq_n_s32::<8>(ah[r][k])
                                } else if DOT {
                                    vaddq_s32(vshlq_n_s32::<8>(ah[r][k]), al[r][k])
                                } else {
                                    ah[r][k]
                                };
                                let fv = *fb.add((r * C + k) * WSEG + si);
                                facc[r][k] = vfmaq_n_f32(facc[r][k], vcvtq_f32_s32(sum), fv);
                                ah[r][k] = zero_i;
                                al[r][k] = zero_i;
                            }
                        }
                    }
                });
            });
        }
        w0 += wn;
    }
    for r in 0..R {
        for k in 0..C {
            *y.add((k0 + k) * ys + r0 + r) = vaddvq_f32(facc[r][k]);
        }
    }
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

#[target_feature(enable = "neon")]
unsafe fn nf_rows_t<const B: u32>(p: &PackedMatrix, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    let cols = p.layout.cols;
    let full = cols / CHUNK;
    let mut tail = [[0f32; CHUNK]; 4];
    let mut k = 0;
    while k < n {
        let c = if n - k >= 4 { 4 } else { 1 };
        let mut xs = [x.as_ptr(); 4];
        let mut tails = [tail[0].as_ptr(); 4];
        for i in 0..c {
            xs[i] = x.as_ptr().add((k + i) * cols);
            tail[i].fill(0.0);
            tail[i][..cols - full * CHUNK].copy_from_slice(&x[(k + i) * cols + full * CHUNK..(k + i + 1) * cols]);
        }
        for (i, t) in tails.iter_mut().enumerate() {
            *t = tail[i].as_ptr();
        }
        if c == 4 {
            for r in r0..r1 {
                nf_block::<B, 1, 4>(p, xs, tails, full, r, k, y, ys);
            }
        } else {
            let mut r = r0;
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

/// The 16 dequantized levels of group `g` of a row, as 64 table bytes.
#[inline(always)]
unsafe fn nf_group_table<const B: u32>(sc: *const u8, g: usize) -> uint8x16x4_t {
    let pn = (sc.add(4 * g) as *const u32).read_unaligned();
    let s = f16x4_to_f32(vcreate_u16(pn as u64));
    let (sp, sn) = (vdupq_laneq_f32::<0>(s), vdupq_laneq_f32::<1>(s));
    let mut t = [vdupq_n_u8(0); 4];
    for (q, tq) in t.iter_mut().enumerate() {
        let lv: [f32; 4] = std::array::from_fn(|i| if B == 3 { NF3_LEVELS[(4 * q + i) % 8] } else { NF4_LEVELS[4 * q + i] });
        let neg: [u32; 4] = lv.map(|v| if v < 0.0 { u32::MAX } else { 0 });
        let scale = vbslq_f32(vld1q_u32(neg.as_ptr()), sn, sp);
        *tq = vreinterpretq_u8_f32(vmulq_f32(vld1q_f32(lv.as_ptr()), scale));
    }
    uint8x16x4_t(t[0], t[1], t[2], t[3])
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
    // Byte indices 4c..4c+3 of codes 0..3 of a register: spread each code over 4 bytes.
    let spread: [[u8; 16]; 4] = std::array::from_fn(|q| std::array::from_fn(|i| (4 * q + i / 4) as u8));
    let spread =
        [vld1q_u8(spread[0].as_ptr()), vld1q_u8(spread[1].as_ptr()), vld1q_u8(spread[2].as_ptr()), vld1q_u8(spread[3].as_ptr())];
    let offs: [u8; 16] = std::array::from_fn(|i| (i % 4) as u8);
    let offs = vld1q_u8(offs.as_ptr());
    let zero = vdupq_n_u8(0);
    let mut facc = [[vdupq_n_f32(0.0); C]; R];
    let mut tb = [uint8x16x4_t(zero, zero, zero, zero); R];
    for cc in 0..nch {
        let mut xp = [xs[0]; C];
        for k in 0..C {
            xp[k] = if cc < full { xs[k].add(cc * CHUNK) } else { tails[k] };
        }
        let mut raw = [[zero; 4]; R];
        for r in 0..R {
            raw[r] = load_raw::<B>(codes[r].add(cc * cb));
        }
        unroll!(j in [0, 1, 2, 3] {
            unroll!(h in [0, 1] {
                let e = cc * CHUNK + 32 * j + 16 * h;
                if e & gmask == 0 {
                    for r in 0..R {
                        tb[r] = nf_group_table::<B>(scales[r], (e >> gshift).min(l.groups - 1));
                    }
                }
                let mut c4 = [zero; R];
                for r in 0..R {
                    c4[r] = vshlq_n_u8::<2>(codes16::<B>(&raw[r], j, h));
                }
                unroll!(q in [0, 1, 2, 3] {
                    let mut w = [vdupq_n_f32(0.0); R];
                    for r in 0..R {
                        let idx = vaddq_u8(vqtbl1q_u8(c4[r], spread[q]), offs);
                        w[r] = vreinterpretq_f32_u8(vqtbl4q_u8(tb[r], idx));
                    }
                    for k in 0..C {
                        let xv = vld1q_f32(xp[k].add(32 * j + 16 * h + 4 * q));
                        for r in 0..R {
                            facc[r][k] = vfmaq_f32(facc[r][k], w[r], xv);
                        }
                    }
                });
            });
        });
    }
    for r in 0..R {
        for k in 0..C {
            *y.add((k0 + k) * ys + r0 + r) = vaddvq_f32(facc[r][k]);
        }
    }
}
