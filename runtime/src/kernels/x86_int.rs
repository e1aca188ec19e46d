//! x86 kernels for the INT formats: AVX2, and AVX-512 (VL + VNNI) with `vpdpbusd`.
//!
//! Both multiply the codes, unpacked to bytes, with the two signed bytes of each 16-bit
//! activation (`X = 256 * hi + lo`, see [`super::act`]). Unpacking stays in bytes (32 weights per
//! 256-bit register; 16-bit lanes would take twice the shifts and masks): one 32-byte code lane
//! holds 4 fields, and field `j` (`(lane >> 2j) & 3` for int2) is weights `32j..32j+31` of the
//! chunk, in the order the activations are stored.
//!
//! - AVX-512: `vpdpbusd` (u8 codes x s8 planes, 4 products per 32-bit lane) into a `hi` and a
//!   `lo` accumulator; per segment `S = (hi << 8) + lo`.
//! - AVX2: `vpmaddubsw` into 16-bit sums (at most 4 fields per segment: no overflow), widened
//!   once per segment by `vpmaddwd` with 256 and 1; with AVX-VNNI (which Intel's client CPUs
//!   since Alder Lake have without AVX-512), the VEX-encoded `vpdpbusd` as for AVX-512, on the
//!   AVX2 tiles.
//!
//! Measured on Zen 4, 256-bit operations cost half of 512-bit ones and `vpdpbusd ymm` runs two per
//! cycle, so these kernels use 256-bit registers on both ISAs (the AVX-512 build gets 32 of them
//! and `vpdpbusd`). Each segment's integer sum becomes f32 once (`y += (s * d) * S`); the zero
//! points are applied once per group, 8 groups at a time.

// Kernels index several parallel per-row / per-input arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::{segs_per_chunk, ActQ};
use super::avx512_int;
use bd_formats::quant::{PackedMatrix, CHUNK};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Chunks per window: the factors of a window's segments are computed before its chunks.
pub(super) const WCH: usize = 32;
/// Segments per window at most (8 per chunk when G = 16).
pub(super) const WSEG: usize = WCH * 8;
/// Largest rows x inputs tile.
pub(super) const MAX_TILE: usize = 8;
/// Rows x inputs slots of the window factors buffer: `MAX_TILE`, or 4 x 4 for the AVX-512 batch
/// tile (`avx512_int::pair_block`).
pub(super) const FB_SLOTS: usize = 16;
/// How many row blocks ahead the code prefetches reach.
const PF: usize = 2;

pub(super) fn chunk_bytes(bits: u32) -> usize {
    [0, 0, 32, 48, 64][bits as usize]
}

/// Read 8 bytes little-endian at `p`; past `end` (the end of the blob) read zeros.
#[inline(always)]
pub(super) unsafe fn load_le(p: *const u8, end: *const u8) -> u64 {
    if p.add(8) <= end {
        (p as *const u64).read_unaligned()
    } else {
        let mut b = [0u8; 8];
        std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), end.offset_from(p) as usize);
        u64::from_le_bytes(b)
    }
}

/// Rows `r0..r1`, inputs `k0..k1` of `act` (which must carry the byte planes): `y[k * ys + r]`.
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
    vnni: bool,
    gfni: bool,
    avxvnni: bool,
    act8: bool,
) {
    type F = unsafe fn(&PackedMatrix, &ActQ, usize, usize, usize, usize, *mut f32, usize);
    macro_rules! pick {
        ($b:literal, $s:literal) => {
            if vnni && gfni && act8 {
                rows_vnni_gfni::<$b, $s, true> as F
            } else if vnni && gfni {
                rows_vnni_gfni::<$b, $s, false> as F
            } else if vnni && act8 {
                rows_vnni::<$b, $s, true> as F
            } else if vnni {
                rows_vnni::<$b, $s, false> as F
            } else if avxvnni && act8 {
                rows_avxvnni::<$b, $s, true> as F
            } else if avxvnni {
                rows_avxvnni::<$b, $s, false> as F
            } else if act8 {
                rows_avx2::<$b, $s, true> as F
            } else {
                rows_avx2::<$b, $s, false> as F
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

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx2<const B: u32, const SEGS: usize, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    rows_impl::<B, SEGS, false, false, A8, false>(p, act, k0, k1, r0, r1, y, ys)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avxvnni<const B: u32, const SEGS: usize, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    rows_impl::<B, SEGS, false, false, A8, true>(p, act, k0, k1, r0, r1, y, ys)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_vnni<const B: u32, const SEGS: usize, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    rows_impl::<B, SEGS, true, false, A8, false>(p, act, k0, k1, r0, r1, y, ys)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,gfni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_vnni_gfni<const B: u32, const SEGS: usize, const A8: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    rows_impl::<B, SEGS, true, true, A8, false>(p, act, k0, k1, r0, r1, y, ys)
}

/// Tiles (measured on Zen 4 and Zen 5, AVX2 on Zen 3): one input, 8 rows (AVX-512: 32 registers)
/// or 2-3 (AVX2), so each activation load serves several rows; several inputs, 4 rows x 4 inputs
/// on 512-bit registers (AVX-512, then 4 rows x 2 inputs on 256-bit ones for 2-3 inputs left) or
/// 1 row x 4 inputs (AVX2), so each unpacked code register also serves several inputs. Inputs are
/// the outer loop: a tile's activations stay in L1 while the rows stream by. On Zen 5 the 512-bit
/// 4 x 4 tile took 0.0064-0.0067 ns per weight and input (int2, 64 inputs, 1 thread) against
/// 0.0097 for the 256-bit 4 x 2 one; 4 x 3 (0.0069) and 2 x 4 (0.0075) were slower.
///
/// `VNNI`: AVX-512 (its tiles, and `vpdpbusd`); `VX`: AVX-VNNI, the AVX2 tiles (16 registers)
/// with the VEX `vpdpbusd`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_impl<const B: u32, const SEGS: usize, const VNNI: bool, const GF: bool, const A8: bool, const VX: bool>(
    p: &PackedMatrix,
    act: &ActQ,
    k0: usize,
    k1: usize,
    r0: usize,
    r1: usize,
    y: *mut f32,
    ys: usize,
) {
    let mut fbuf = [0f32; FB_SLOTS * WSEG];
    let mut k = k0;
    // AVX-512, four inputs at a time (prefill): 512-bit pairs of rows, each unpacked field
    // serving the four inputs (`avx512_int::pair_block`).
    while VNNI && k + 4 <= k1 {
        let mut r = r0;
        while r + 4 <= r1 {
            avx512_int::pair_block::<B, SEGS, 4, 4, GF, A8>(p, act, r, k, y, ys, &mut fbuf);
            r += 4;
        }
        while r + 2 <= r1 {
            avx512_int::pair_block::<B, SEGS, 2, 4, GF, A8>(p, act, r, k, y, ys, &mut fbuf);
            r += 2;
        }
        while r < r1 {
            block::<B, SEGS, 1, 4, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 1;
        }
        k += 4;
    }
    while VNNI && k + 2 <= k1 {
        let mut r = r0;
        while r + 4 <= r1 {
            block::<B, SEGS, 4, 2, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 4;
        }
        while r < r1 {
            block::<B, SEGS, 1, 2, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 1;
        }
        k += 2;
    }
    while k + 4 <= k1 {
        let mut r = r0;
        while r < r1 {
            block::<B, SEGS, 1, 4, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 1;
        }
        k += 4;
    }
    while k < k1 {
        let mut r = r0;
        if VNNI {
            while r + 8 <= r1 {
                avx512_int::pair_block::<B, SEGS, 8, 1, GF, A8>(p, act, r, k, y, ys, &mut fbuf);
                r += 8;
            }
            while r + 2 <= r1 {
                avx512_int::pair_block::<B, SEGS, 2, 1, GF, A8>(p, act, r, k, y, ys, &mut fbuf);
                r += 2;
            }
        }
        // AVX2 (16 registers, measured on Zen 3): 2 rows with 16-bit activations (two planes, twice
        // the accumulators), 3 with 8-bit ones; 4 rows spilled (int3: 20-35% slower).
        while !VNNI && !A8 && r + 2 <= r1 {
            block::<B, SEGS, 2, 1, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 2;
        }
        while !VNNI && A8 && r + 3 <= r1 {
            block::<B, SEGS, 3, 1, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 3;
        }
        while r + 4 <= r1 {
            block::<B, SEGS, 4, 1, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 4;
        }
        while r < r1 {
            block::<B, SEGS, 1, 1, VNNI, A8, VX>(p, act, r, k, y, ys, &mut fbuf);
            r += 1;
        }
        k += 1;
    }
}

/// One chunk of one row: the code lane (and the int4 second lane, or the int3 high plane
/// broadcast to both halves).
#[inline(always)]
pub(super) unsafe fn load_raw<const B: u32>(p: *const u8) -> [__m256i; 2] {
    let lo = _mm256_loadu_si256(p as *const __m256i);
    let hi = match B {
        3 => _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(32) as *const __m128i)),
        4 => _mm256_loadu_si256(p.add(32) as *const __m256i),
        _ => _mm256_setzero_si256(),
    };
    [lo, hi]
}

#[inline(always)]
unsafe fn field2(w: __m256i, j: usize) -> __m256i {
    let m3 = _mm256_set1_epi8(3);
    match j {
        0 => _mm256_and_si256(w, m3),
        1 => _mm256_and_si256(_mm256_srli_epi16::<2>(w), m3),
        2 => _mm256_and_si256(_mm256_srli_epi16::<4>(w), m3),
        _ => _mm256_and_si256(_mm256_srli_epi16::<6>(w), m3),
    }
}

/// One chunk of one row as `field` takes it: `load_raw`, and for 3-bit codes `pairs3`.
#[inline(always)]
pub(super) unsafe fn load_codes<const B: u32>(p: *const u8) -> [__m256i; 2] {
    let raw = load_raw::<B>(p);
    if B == 3 {
        pairs3(raw)
    } else {
        raw
    }
}

/// The codes of weights `32j..32j+31` of a chunk, one per byte, from `load_codes`.
#[inline(always)]
pub(super) unsafe fn field<const B: u32>(raw: &[__m256i; 2], j: usize) -> __m256i {
    match B {
        2 => field2(raw[0], j),
        4 => {
            let m15 = _mm256_set1_epi8(15);
            match j {
                0 => _mm256_and_si256(raw[0], m15),
                1 => _mm256_and_si256(_mm256_srli_epi16::<4>(raw[0]), m15),
                2 => _mm256_and_si256(raw[1], m15),
                _ => _mm256_and_si256(_mm256_srli_epi16::<4>(raw[1]), m15),
            }
        }
        // 3-bit codes, from `pairs3`.
        _ => {
            let m7 = _mm256_set1_epi8(7);
            match j {
                0 => _mm256_and_si256(raw[0], m7),
                1 => _mm256_and_si256(raw[1], m7),
                // A 16-bit shift by 4 brings the next byte's bits 0-3 into bits 4-7; the mask
                // drops them.
                2 => _mm256_and_si256(_mm256_srli_epi16::<4>(raw[0]), m7),
                _ => _mm256_and_si256(_mm256_srli_epi16::<4>(raw[1]), m7),
            }
        }
    }
}

/// 3-bit codes: a chunk's code lane and high plane (`load_raw`) as two registers whose bytes hold
/// two fields' whole codes each (`lo | hb << 2` in bits 0-2 and 4-6, bits 3 and 7 clear): fields 0
/// and 2 of the lane, then 1 and 3 (`field`). Merging the high bits once per chunk rather than
/// per field: 9 operations, then 1-2 per field (19 in all before).
#[inline(always)]
pub(super) unsafe fn pairs3(raw: [__m256i; 2]) -> [__m256i; 2] {
    let m33 = _mm256_set1_epi8(0x33);
    let m44 = _mm256_set1_epi8(0x44);
    // High bit of weight 32j + i: bit 2j of high byte i (i < 16), bit 2j + 1 of byte i - 16 (the
    // plane is broadcast to both halves). Shifting the upper half right by one puts every field's
    // high bit at bit 2j; what the shift carries into bit 7 from the next byte is masked below.
    let h = _mm256_srlv_epi32(raw[1], _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    // Fields 0 and 2: low bits at 0-1 and 4-5, high bits from 0 and 4 moved to 2 and 6.
    let even = _mm256_or_si256(_mm256_and_si256(raw[0], m33), _mm256_and_si256(_mm256_slli_epi16::<2>(h), m44));
    // Fields 1 and 3: low bits from 2-3 and 6-7, high bits already at 2 and 6.
    let odd = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<2>(raw[0]), m33), _mm256_and_si256(h, m44));
    [even, odd]
}

/// Add the products of codes `u` (u8) with one activation plane `s` (s8) to `acc`: 32-bit lanes
/// with VNNI (`VX`: the AVX-VNNI encoding), 16-bit lanes (widened per segment) without.
#[inline(always)]
unsafe fn dot<const VNNI: bool, const VX: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    if VX {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    } else if VNNI {
        _mm256_dpbusd_epi32(acc, u, s)
    } else {
        _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, s))
    }
}

/// `256 * hi + lo` of a segment's accumulators, as 32-bit lanes.
#[inline(always)]
unsafe fn combine<const VNNI: bool, const VX: bool>(hi: __m256i, lo: __m256i) -> __m256i {
    if VNNI || VX {
        _mm256_add_epi32(_mm256_slli_epi32::<8>(hi), lo)
    } else {
        _mm256_add_epi32(_mm256_madd_epi16(hi, _mm256_set1_epi16(256)), _mm256_madd_epi16(lo, _mm256_set1_epi16(1)))
    }
}

/// `256 * hi` of a segment's accumulator (the low plane is zero), as 32-bit lanes.
#[inline(always)]
unsafe fn combine_hi<const VNNI: bool, const VX: bool>(hi: __m256i) -> __m256i {
    if VNNI || VX {
        _mm256_slli_epi32::<8>(hi)
    } else {
        _mm256_madd_epi16(hi, _mm256_set1_epi16(256))
    }
}

/// 8 f16 values from `p` as f32, lanes `avail..` zero (`end`: the end of the blob, which bytes
/// past a row's own values may be read up to).
#[inline(always)]
unsafe fn load_f16x8(p: *const u16, avail: usize, end: *const u8) -> __m256 {
    let v = if (p as *const u8).add(16) <= end {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    } else {
        let mut b = [0u16; 8];
        std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), avail.min(8));
        _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr() as *const __m128i))
    };
    if avail >= 8 {
        v
    } else {
        let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(avail as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_and_ps(v, _mm256_castsi256_ps(keep))
    }
}

/// 8 f32 zero points of groups `g..g+8` from a row's packed `B`-bit zero stream (lanes past the
/// row's groups hold whatever follows; callers zero their scales).
#[inline(always)]
unsafe fn zeros8<const B: u32>(z: *const u8, g: usize, end: *const u8) -> __m256 {
    let p = z.add(g * B as usize / 8);
    let u = if p.add(4) <= end { (p as *const u32).read_unaligned() } else { load_le(p, end) as u32 };
    let b = B as i32;
    let sh = _mm256_setr_epi32(0, b, 2 * b, 3 * b, 4 * b, 5 * b, 6 * b, 7 * b);
    let q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(u as i32), sh), _mm256_set1_epi32((1 << B) - 1));
    _mm256_cvtepi32_ps(q)
}

/// Ask for the cache line holding `p` into L2 (never faults, whatever `p` is). Prefetching into
/// L1 instead caps a core at about 10 GB/s: its few L1 miss buffers stay busy for a whole DRAM
/// latency each.
#[inline(always)]
pub(super) unsafe fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T2>(p as *const i8);
}

/// Ask for chunk `cc` (`cb` bytes at `p`) of a row into L2, where the row's chunks are
/// contiguous: the line of the chunk's last byte only, since the line of its first byte is either
/// that one or the previous chunk's last (the first chunk asks for both). The NF kernels take it:
/// half the prefetches of asking for both ends of every chunk, nf3 8-bit 0.0149 -> 0.0147 and nf4
/// 8-bit 0.0157 -> 0.0148 ns/weight (L2-resident); the INT kernels keep their own (no gain).
#[inline(always)]
pub(super) unsafe fn prefetch_chunk(p: *const u8, cc: usize, cb: usize) {
    if cc == 0 {
        prefetch(p);
    }
    prefetch(p.wrapping_add(cb - 1));
}

/// Ask for every cache line of `bytes` bytes from `p` into L2: the group parameters of the next
/// block of rows, which are contiguous over its rows (one line per row left most of them to
/// demand misses once a row's parameters spanned several lines: 11008 columns, or NF's two scales
/// per group).
#[inline(always)]
pub(super) unsafe fn prefetch_range(p: *const u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        prefetch(p.wrapping_add(off));
        off += 64;
    }
}

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The group parameters of one window of `R` rows: the factors `s * d` of its segments into `fb`
/// (segments are groups when G <= 128, so both use the same scales, and chunks when G = 256, two
/// per group), and the zero-point terms `sum s * z * GX` of its groups into `corr`. Kept out of
/// line so the chunk loop's registers do not spill around it.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn prep<const B: u32, const R: usize, const C: usize>(
    scales: &[*const u16; R],
    zeros: &[*const u8; R],
    dseg: &[*const f32; C],
    gx: &[*const f32; C],
    (g_lo, g_hi): (usize, usize),
    seg0: usize,
    cpg_shift: usize,
    end: *const u8,
    fb: *mut f32,
    corr: &mut [[__m256; C]; R],
) {
    for r in 0..R {
        let mut g = g_lo;
        while g < g_hi {
            let sv = load_f16x8(scales[r].add(g), g_hi - g, end);
            let sz = _mm256_mul_ps(sv, zeros8::<B>(zeros[r], g, end));
            for k in 0..C {
                corr[r][k] = _mm256_fmadd_ps(sz, _mm256_loadu_ps(gx[k].add(g)), corr[r][k]);
            }
            if cpg_shift == 0 {
                let s = g - seg0;
                for k in 0..C {
                    let d = _mm256_loadu_ps(dseg[k].add(g));
                    _mm256_storeu_ps(fb.add((r * C + k) * WSEG + s), _mm256_mul_ps(sv, d));
                }
            } else {
                let s = 2 * g - seg0;
                let lo = _mm256_permutevar8x32_ps(sv, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
                let hi = _mm256_permutevar8x32_ps(sv, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
                for k in 0..C {
                    let d = dseg[k].add(2 * g);
                    _mm256_storeu_ps(fb.add((r * C + k) * WSEG + s), _mm256_mul_ps(lo, _mm256_loadu_ps(d)));
                    _mm256_storeu_ps(fb.add((r * C + k) * WSEG + s + 8), _mm256_mul_ps(hi, _mm256_loadu_ps(d.add(8))));
                }
            }
            g += 8;
        }
    }
}

/// `R` rows from `r0`, `C` inputs from `k0` (`VX`: AVX-VNNI).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<
    const B: u32,
    const SEGS: usize,
    const R: usize,
    const C: usize,
    const VNNI: bool,
    const A8: bool,
    const VX: bool,
>(
    p: &PackedMatrix,
    act: &ActQ,
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
    fbuf: &mut [f32; FB_SLOTS * WSEG],
) {
    let l = &p.layout;
    let nch = l.padded_cols() / CHUNK;
    let cb = chunk_bytes(B);
    let base = p.bytes().as_ptr();
    let codes: [*const u8; R] = from_fn(|r| base.add((r0 + r) * l.row_code_bytes));
    let scales: [*const u16; R] = from_fn(|r| base.add(l.scales_offset + (r0 + r) * l.row_scale_bytes) as *const u16);
    let zeros: [*const u8; R] = from_fn(|r| base.add(l.zeros_offset + (r0 + r) * l.row_zero_bytes));
    let xh: [*const i8; C] = from_fn(|k| act.hi(k0 + k).as_ptr());
    let xl: [*const i8; C] = from_fn(|k| act.lo(k0 + k).as_ptr());
    let dseg: [*const f32; C] = from_fn(|k| act.dseg(k0 + k).as_ptr());
    let gx: [*const f32; C] = from_fn(|k| act.gx(k0 + k).as_ptr());
    // Chunks per group: 1 (G <= 128) or 2 (G = 256).
    let cpg_shift = (l.group > CHUNK) as usize;
    let fb = fbuf.as_mut_ptr();
    let end = base.add(l.len);

    let mut facc = [[_mm256_setzero_ps(); C]; R];
    let mut w0 = 0;
    while w0 < nch {
        let wn = WCH.min(nch - w0);
        // Factors s * d of this window's segments, and its groups' zero-point terms.
        let seg0 = w0 * SEGS;
        // Groups of the window (G = 256: two chunks per group; windows hold an even count).
        let (g_lo, g_hi) =
            if SEGS == 1 { (w0 >> cpg_shift, (w0 + wn + cpg_shift) >> cpg_shift) } else { (seg0, seg0 + wn * SEGS) };
        let g_hi = g_hi.min(l.groups);
        let mut corr = [[_mm256_setzero_ps(); C]; R];
        prep::<B, R, C>(&scales, &zeros, &dseg, &gx, (g_lo, g_hi), seg0, cpg_shift, end, fb, &mut corr);
        for r in 0..R {
            for k in 0..C {
                facc[r][k] = _mm256_sub_ps(facc[r][k], corr[r][k]);
            }
        }
        // The next rows' group parameters (one block ahead of the codes below).
        if w0 == 0 {
            prefetch_range((scales[0] as *const u8).wrapping_add(R * l.row_scale_bytes), R * l.row_scale_bytes);
            prefetch_range(zeros[0].wrapping_add(R * l.row_zero_bytes), R * l.row_zero_bytes);
        }
        for c in 0..wn {
            let cc = w0 + c;
            let mut raw = [[_mm256_setzero_si256(); 2]; R];
            for r in 0..R {
                raw[r] = load_codes::<B>(codes[r].add(cc * cb));
                // Streams of a few KB are too short for the hardware prefetcher to pick up:
                // fetch the same chunk of the next block of rows, one block ahead.
                if B != 2 || cc % 2 == 0 {
                    prefetch(codes[r].wrapping_add(PF * R * l.row_code_bytes + cc * cb));
                }
                if B != 2 {
                    prefetch(codes[r].wrapping_add(PF * R * l.row_code_bytes + cc * cb + 32));
                }
            }
            // Two accumulators per plane (even and odd fields) halve the chains of dependent
            // `vpdpbusd` when the tile is small; with 4 inputs the tile has enough chains. (Not
            // with AVX-VNNI: on 16 registers the AVX2 tiles then spilled, 10-20% slower.)
            let split = VNNI && R * C <= 4;
            let mut ah = [[[_mm256_setzero_si256(); 2]; C]; R];
            let mut al = [[[_mm256_setzero_si256(); 2]; C]; R];
            unroll!(j in [0, 1, 2, 3] {
                let a = if split { j % 2 } else { 0 };
                let mut f = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    f[r] = field::<B>(&raw[r], j);
                }
                for k in 0..C {
                    let off = cc * CHUNK + 32 * j;
                    let h = _mm256_loadu_si256(xh[k].add(off) as *const __m256i);
                    for r in 0..R {
                        ah[r][k][a] = dot::<VNNI, VX>(ah[r][k][a], f[r], h);
                    }
                    // 8-bit activations: the low plane is zero (see `act`).
                    if !A8 {
                        let lo = _mm256_loadu_si256(xl[k].add(off) as *const __m256i);
                        for r in 0..R {
                            al[r][k][a] = dot::<VNNI, VX>(al[r][k][a], f[r], lo);
                        }
                    }
                }
                let ends = match SEGS {
                    1 => j == 3,
                    2 => j % 2 == 1,
                    _ => true,
                };
                if ends {
                    for r in 0..R {
                        for k in 0..C {
                            let fp = fb.add((r * C + k) * WSEG + c * SEGS);
                            let fv = if SEGS == 8 {
                                // Lanes 0-3 hold weights 32j..32j+15 (group 2j of the chunk).
                                let two = _mm_castpd_ps(_mm_load_sd(fp.add(2 * j) as *const f64));
                                _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
                            } else {
                                _mm256_broadcast_ss(&*fp.add(j * SEGS / 4))
                            };
                            let (h, lo) = if split {
                                (_mm256_add_epi32(ah[r][k][0], ah[r][k][1]), _mm256_add_epi32(al[r][k][0], al[r][k][1]))
                            } else {
                                (ah[r][k][0], al[r][k][0])
                            };
                            let s = _mm256_cvtepi32_ps(if A8 { combine_hi::<VNNI, VX>(h) } else { combine::<VNNI, VX>(h, lo) });
                            facc[r][k] = _mm256_fmadd_ps(s, fv, facc[r][k]);
                            ah[r][k] = [_mm256_setzero_si256(); 2];
                            al[r][k] = [_mm256_setzero_si256(); 2];
                        }
                    }
                }
            });
        }
        w0 += wn;
    }
    for r in 0..R {
        for k in 0..C {
            *y.add((k0 + k) * ys + r0 + r) = hsum(facc[r][k]);
        }
    }
}
