//! AVX-512 kernel of the INT2 and INT3 table scheme (`lut_int.rs`): per lookup (three INT2
//! columns, two INT3 ones) and block of 32 rows, one index register (a shift of the codes), one
//! `vpermi2w` and one 16-bit add.

// Kernels index several parallel per-block arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::lut::BLOCK;
use super::lut_int::{group_sum, span_scale, IntTables, IntTablesRaw, LutInt, Shape, ENTRIES, PASS_COLS, SPAN};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Lookup indices of lookup `k` of a block's unit at `z` (`lut_int.rs`, the layout): bits
/// `6k..6k + 6` of each row's unit field (the INT2 pair: 60-63), in the low bits of its word
/// (`vpermi2w` ignores the bits above bit 5). The NF3 table kernel's pairs of 3-bit codes lie as
/// INT3's do, and it uses this too (`k` 0-7).
#[inline(always)]
pub(super) unsafe fn indices(z: *const __m512i, k: usize) -> __m512i {
    let w = |i: usize| _mm512_loadu_si512(z.add(i));
    match k {
        0 => w(0),
        1 => _mm512_srli_epi16::<6>(w(0)),
        2 => _mm512_shrdi_epi16::<12>(w(0), w(1)),
        3 => _mm512_srli_epi16::<2>(w(1)),
        4 => _mm512_srli_epi16::<8>(w(1)),
        5 => _mm512_shrdi_epi16::<14>(w(1), w(2)),
        6 => _mm512_srli_epi16::<4>(w(2)),
        7 => _mm512_srli_epi16::<10>(w(2)),
        8 => w(3),
        9 => _mm512_srli_epi16::<6>(w(3)),
        _ => _mm512_srli_epi16::<12>(w(3)),
    }
}

/// `IntTables::build_twin` with 16 entries a register: per lookup, a product for the first code
/// and an FMA for each further one; rounded and narrowed to words. The same f32 operations as the
/// twin, so the same tables.
///
/// # Safety
/// The CPU has AVX-512 F/BW.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
pub unsafe fn build(x: &[f32], sh: Shape, group: usize, t: &mut IntTables) {
    assert!(group >= SPAN && group.is_multiple_of(SPAN), "groups of {group} columns for the INT tables");
    let spans = t.spans(x.len());
    build_spans(x, sh, group, t.raw(), 0, spans);
}

/// [`build`] for spans `s0..s1` only, with their groups' sums: a thread's share of the columns.
///
/// # Safety
/// The CPU has AVX-512 F/BW; `t` points at tables for at least `s1` spans of `sh` (groups of
/// `group`, a multiple of `SPAN`) that no other thread touches in these spans; `s0` starts a group.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw")]
pub(super) unsafe fn build_spans(x: &[f32], sh: Shape, group: usize, t: IntTablesRaw, s0: usize, s1: usize) {
    assert!(s0.is_multiple_of(group / SPAN), "tables built from span {s0}, inside a group of {group}");
    // Lane i of register v holds entry 16v + i; its codes are `sh.code_of(16v + i, j)`.
    let c: [[__m512; 4]; 3] =
        from_fn(|j| from_fn(|v| _mm512_loadu_ps(from_fn::<f32, 16, _>(|i| sh.centred(sh.code_of(16 * v + i, j))).as_ptr())));
    let xv = |c: usize| if c < x.len() { *x.get_unchecked(c) } else { 0.0 };
    let spg = group / SPAN;
    for g in s0 / spg..s1.div_ceil(spg).min(x.len().div_ceil(group)) {
        *t.xsum.add(g) = group_sum(x, group, g);
    }
    for s in s0..s1 {
        let (d, inv) = span_scale(x, sh, s);
        *t.d.add(s) = d;
        for u in s * SPAN / sh.unit..(s + 1) * SPAN / sh.unit {
            for k in 0..sh.lookups {
                let mut xs = [_mm512_setzero_ps(); 3];
                for (j, col) in sh.columns(k).enumerate() {
                    xs[j] = _mm512_set1_ps(xv(u * sh.unit + col) * inv);
                }
                let out = t.tabs.add((u * sh.lookups + k) * ENTRIES);
                for v in 0..4 {
                    let mut e = _mm512_mul_ps(xs[0], c[0][v]);
                    for j in 1..sh.per {
                        e = _mm512_fmadd_ps(xs[j], c[j][v], e);
                    }
                    _mm256_storeu_si256(out.add(16 * v) as *mut __m256i, _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(e)));
                }
            }
        }
    }
}

/// Blocks `b0..b1` of `m` times the input of `t`: `y[r]` for the rows of those blocks.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VBMI2; `y` has room for row `min(b1 * 32, m.rows) - 1`; `t` was built
/// for an input of `m.cols` values, `m.shape` and groups of `m.group`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vbmi2")]
pub unsafe fn blocks(m: &LutInt, t: &IntTables, b0: usize, b1: usize, y: *mut f32) {
    blocks_spans(m, t.view(), b0, b1, 0, m.pcols / SPAN, y)
}

/// [`blocks`] over spans `c0..c1` only (a thread's share of the columns): `y` gets that part of
/// each row's sum.
///
/// # Safety
/// As [`blocks`], with `t` built at least for spans `c0..c1`; `c0` starts a group.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vbmi2")]
pub(super) unsafe fn blocks_spans(m: &LutInt, t: IntTablesRaw, b0: usize, b1: usize, c0: usize, c1: usize, y: *mut f32) {
    // A tile's group loop starts at its pass's group: a pass must not start inside one.
    assert!(c0.is_multiple_of(m.group / SPAN), "columns from span {c0}, inside a group of {}", m.group);
    match m.shape.bits {
        2 => blocks_of::<2>(m, t, b0, b1, c0, c1, y),
        _ => blocks_of::<3>(m, t, b0, b1, c0, c1, y),
    }
}

#[inline(always)]
unsafe fn blocks_of<const BITS: u32>(m: &LutInt, t: IntTablesRaw, b0: usize, b1: usize, c0: usize, c1: usize, y: *mut f32) {
    let sh = Shape::of(BITS);
    let block_bytes = (m.pcols / sh.unit * sh.code_bytes()) as isize;
    // Column passes of whole groups, so that one pass's tables stay in L2.
    for s0 in (c0..c1).step_by(PASS_COLS / SPAN) {
        let s1 = (s0 + PASS_COLS / SPAN).min(c1);
        let first = s0 == c0;
        let pass_bytes = ((s1 - s0) * SPAN / sh.unit * sh.code_bytes()) as isize;
        let ahead = |b: usize, r: usize| prefetch_ahead(b, r, b0, b1, block_bytes, pass_bytes);
        let mut b = b0;
        while b + 4 <= b1 {
            tile::<4, BITS>(m, t, b, s0, s1, first, ahead(b, 4), y);
            b += 4;
        }
        while b < b1 {
            tile::<1, BITS>(m, t, b, s0, s1, first, ahead(b, 1), y);
            b += 1;
        }
    }
}

/// Where the prefetches of the tile of `r` blocks at block `b` go, in bytes from its own codes
/// (`block_bytes` a block's whole stream, `pass_bytes` a block's share of the column pass): the
/// same place in the next tile's blocks; from the pass's last tile (blocks `b0..b1`), the next
/// pass's first tile, which would otherwise start cold. Both table kernels prefetch so.
pub(super) fn prefetch_ahead(b: usize, r: usize, b0: usize, b1: usize, block_bytes: isize, pass_bytes: isize) -> isize {
    if b + r < b1 {
        r as isize * block_bytes
    } else {
        (b0 as isize - b as isize) * block_bytes + pass_bytes
    }
}

/// One lookup for 4 blocks: the table at `tp` loaded once, 4 lookups, 4 adds. In `asm!` as in the
/// NF3 table kernel, where LLVM otherwise hoisted a code group's table registers and spilled
/// (measured there, not here).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn step4(tp: *const __m512i, idx: [__m512i; 4], p: &mut [__m512i; 4]) {
    let (_t0, _t1, _i0, _i1, _i2, _i3): (__m512i, __m512i, __m512i, __m512i, __m512i, __m512i);
    std::arch::asm!(
        "vmovdqu64 {t0}, [{tp}]",
        "vmovdqu64 {t1}, [{tp} + 64]",
        "vpermi2w {i0}, {t0}, {t1}", "vpaddw {p0}, {p0}, {i0}",
        "vpermi2w {i1}, {t0}, {t1}", "vpaddw {p1}, {p1}, {i1}",
        "vpermi2w {i2}, {t0}, {t1}", "vpaddw {p2}, {p2}, {i2}",
        "vpermi2w {i3}, {t0}, {t1}", "vpaddw {p3}, {p3}, {i3}",
        tp = in(reg) tp,
        t0 = out(zmm_reg) _t0, t1 = out(zmm_reg) _t1,
        i0 = inout(zmm_reg) idx[0] => _i0, i1 = inout(zmm_reg) idx[1] => _i1, i2 = inout(zmm_reg) idx[2] => _i2, i3 = inout(zmm_reg) idx[3] => _i3,
        p0 = inout(zmm_reg) p[0], p1 = inout(zmm_reg) p[1], p2 = inout(zmm_reg) p[2], p3 = inout(zmm_reg) p[3],
        options(pure, readonly, nostack),
    );
}

// Prefetch: each block's codes are asked into L2 one tile ahead (at the same place in the next
// tile's blocks; the NF3 table kernel does the same since 2026-12-04), not 4 KiB ahead in its own
// stream: a tile reads only one column pass (16 KiB) of each block's stream, so a distance within
// the stream left each tile's first 4 KiB a block unfetched. From DRAM (`kernel_compare --kernels
// int2_g128_lut,int2_g128_a8 --where dram --threads 1,2`, Zen 4, two alternations) the table
// kernel took 0.99-1.10x the 8-bit kernel's time at 1 thread with it, 1.08-1.16x without. Two
// more alternations (23:25 UTC): one tile ahead 0.99-1.14x, two tiles 1.04-1.18x, half a tile (the
// current tile's other blocks, being read anyway) 1.23-1.35x, 4 KiB in the stream 1.10-1.26x.
// From the last tile of a column pass the prefetches go to the next pass's first tile, which
// otherwise started cold (once a pass, so more often the wider the input): int3 at 4096×11008 from
// DRAM on 1 thread 0.0226-0.0238 against 0.0257-0.0280 ns/weight, alternated three times.

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const BITS: u32>(
    m: &LutInt,
    t: IntTablesRaw,
    b: usize,
    s0: usize,
    s1: usize,
    first: bool,
    ahead: isize,
    y: *mut f32,
) {
    let sh = Shape::of(BITS);
    let units = m.pcols / sh.unit;
    let codes = m.codes.as_ptr() as *const u8;
    let cb: [*const __m512i; R] = from_fn(|i| codes.add((b + i) * units * sh.code_bytes()) as *const __m512i);
    let tabs = t.tabs as *const __m512i;
    let scales = m.scales.as_ptr();
    let (spg, ups) = (m.group / SPAN, SPAN / sh.unit);
    let mut yv = [[_mm512_setzero_ps(); 2]; R];
    for g in s0 / spg..s1.div_ceil(spg) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for s in g * spg..((g + 1) * spg).min(s1) {
            let mut p = [_mm512_setzero_si512(); R];
            for u in s * ups..(s + 1) * ups {
                for i in 0..R {
                    let c = (cb[i].add(u * sh.words) as *const u8).wrapping_offset(ahead);
                    for l in 0..sh.words {
                        _mm_prefetch::<_MM_HINT_T2>(c.wrapping_add(64 * l) as *const i8);
                    }
                }
                unroll!(k in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] {
                    if k < sh.lookups {
                        let tp = tabs.add((u * sh.lookups + k) * 2);
                        let idx: [__m512i; R] = from_fn(|i| indices(cb[i].add(u * sh.words), k));
                        if R == 4 {
                            let four = &mut *(p.as_mut_ptr() as *mut [__m512i; 4]);
                            step4(tp, *(idx.as_ptr() as *const [__m512i; 4]), four);
                        } else {
                            let (t0, t1) = (_mm512_loadu_si512(tp), _mm512_loadu_si512(tp.add(1)));
                            for i in 0..R {
                                p[i] = _mm512_add_epi16(p[i], _mm512_permutex2var_epi16(t0, idx[i], t1));
                            }
                        }
                    }
                });
            }
            let d = _mm512_set1_ps(*t.d.add(s));
            for i in 0..R {
                unroll!(h in [0, 1] {
                    let pw = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<{ h as i32 }>(p[i]));
                    acc[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pw), d, acc[i][h]);
                });
            }
        }
        let xs = _mm512_set1_ps(*t.xsum.add(g));
        for i in 0..R {
            let sc = scales.add(((b + i) * m.groups + g) * 2 * BLOCK);
            unroll!(h in [0, 1] {
                let s = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(16 * h) as *const __m256i));
                let c = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(BLOCK + 16 * h) as *const __m256i));
                yv[i][h] = _mm512_fmadd_ps(s, _mm512_fmadd_ps(c, xs, acc[i][h]), yv[i][h]);
            });
        }
    }
    store_blocks(&yv, b, m.rows, first, y);
}

/// Write (`first`, the first column pass of the product or of its part) or add (later passes) the
/// sums `yv` of blocks `b..b + R` into `y`, leaving the rows from `rows` on alone. Shared with the
/// NF3 table kernel.
#[inline(always)]
pub(super) unsafe fn store_blocks<const R: usize>(yv: &[[__m512; 2]; R], b: usize, rows: usize, first: bool, y: *mut f32) {
    for i in 0..R {
        let r0 = (b + i) * BLOCK;
        let live = rows.saturating_sub(r0).min(BLOCK);
        let lo = ((1u32 << live.min(16)) - 1) as u16;
        let hi = if live > 16 { ((1u32 << (live - 16)) - 1) as u16 } else { 0 };
        for (h, mask) in [(0, lo), (1, hi)] {
            // Wrapping: past the last row only masked-off lanes are addressed.
            let at = y.wrapping_add(r0 + 16 * h);
            let v = if first { yv[i][h] } else { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), yv[i][h]) };
            _mm512_mask_storeu_ps(at, mask, v);
        }
    }
}
