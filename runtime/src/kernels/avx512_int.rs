//! AVX-512 kernel for the INT formats: rows in pairs on 512-bit registers, one input (decode) or
//! four (the prompt's batched products).
//!
//! The arithmetic of `x86_int::block` (`vpdpbusd` of the unpacked codes with both byte planes of
//! the 16-bit activations, one f32 factor per segment), with row `r` in the low 256 bits of each
//! register and row `r + 1` in the high 256 bits, and each 32-byte activation load broadcast to
//! both halves. At one input the 256-bit tile issued ~24 instructions per 128 weights and row,
//! and was bound by instruction throughput rather than by the `vpdpbusd` units (dropping half of
//! its `vpdpbusd` saved only 17%). Zen 4 runs a 512-bit operation as two 256-bit halves, so the
//! work per weight is the same with half the instructions; and 4 pairs of rows need 18
//! registers where 8 rows of 256-bit accumulators spilled.

// Kernels index several parallel per-row arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use super::act::ActQ;
use super::x86_int::{chunk_bytes, hsum, load_raw, prefetch, prefetch_range, FB_SLOTS, MAX_TILE, WCH, WSEG};
use bd_formats::quant::{PackedMatrix, CHUNK};
use std::arch::x86_64::*;
use std::array::from_fn;

/// Rows `r` and `r + 1` side by side.
#[inline(always)]
pub(super) unsafe fn pair(a: __m256i, b: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
}

/// `(w >> 2j) & 3` per byte; with `GF`, fields 1-3 in one GFNI affine transform each (the bit
/// matrix of every byte maps input bits 2j and 2j + 1 to output bits 0 and 1) instead of a shift
/// and a mask.
#[inline(always)]
unsafe fn field2<const GF: bool>(w: __m512i, j: usize) -> __m512i {
    let m3 = _mm512_set1_epi8(3);
    if GF && j > 0 {
        let s = 2 * j as i64;
        return _mm512_gf2p8affine_epi64_epi8::<0>(w, _mm512_set1_epi64(((1i64 << s) << 56) | ((1i64 << (s + 1)) << 48)));
    }
    match j {
        0 => _mm512_and_si512(w, m3),
        1 => _mm512_and_si512(_mm512_srli_epi16::<2>(w), m3),
        2 => _mm512_and_si512(_mm512_srli_epi16::<4>(w), m3),
        _ => _mm512_and_si512(_mm512_srli_epi16::<6>(w), m3),
    }
}

/// The codes of weights `32j..32j+31` of a chunk of a pair of rows, one per byte: 2- and 4-bit
/// codes from the lanes as loaded (as `x86_int::field`), 3-bit codes from `raw` after `pairs3`
/// (as `x86_int::field`).
#[inline(always)]
pub(super) unsafe fn field<const B: u32, const GF: bool>(raw: &[__m512i; 2], j: usize) -> __m512i {
    match B {
        2 => field2::<GF>(raw[0], j),
        4 => {
            let m15 = _mm512_set1_epi8(15);
            match j {
                0 => _mm512_and_si512(raw[0], m15),
                1 => _mm512_and_si512(_mm512_srli_epi16::<4>(raw[0]), m15),
                2 => _mm512_and_si512(raw[1], m15),
                _ => _mm512_and_si512(_mm512_srli_epi16::<4>(raw[1]), m15),
            }
        }
        // 3-bit codes: from `pairs3` (the kernel takes it once per chunk).
        _ => {
            let m7 = _mm512_set1_epi8(7);
            match (GF, j) {
                (_, 0) => _mm512_and_si512(raw[0], m7),
                (_, 1) => _mm512_and_si512(raw[1], m7),
                // Bits 4-6 of each byte to 0-2, the others cleared, in one affine transform.
                (true, _) => _mm512_gf2p8affine_epi64_epi8::<0>(
                    raw[j - 2],
                    _mm512_set1_epi64((16i64 << 56) | (32i64 << 48) | (64i64 << 40)),
                ),
                (false, _) => _mm512_and_si512(_mm512_srli_epi16::<4>(raw[j - 2]), m7),
            }
        }
    }
}

/// `x86_int::pairs3` on a pair of rows (the high planes broadcast to the 128-bit quarters of each
/// row's half): bytes holding the codes of fields 0 and 2 (bits 0-2, 4-6), then 1 and 3; bits 3
/// and 7 are garbage here, which `field` masks. 5 operations per chunk and pair of rows for the
/// high bits of all four fields, where merging them field by field took 8.
#[inline(always)]
pub(super) unsafe fn pairs3(raw: &[__m512i; 2]) -> [__m512i; 2] {
    let c = |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b);
    let m33 = _mm512_set1_epi8(0x33);
    // Every field's high bit at bit 2j (see x86_int::pairs3).
    let h = _mm512_srlv_epi32(raw[1], c(0, 1));
    // (C ? B : A): the low bits where the mask is set, the high bits (moved to 2 and 6) elsewhere.
    let even = _mm512_ternarylogic_epi32::<0xD8>(_mm512_slli_epi16::<2>(h), raw[0], m33);
    let odd = _mm512_ternarylogic_epi32::<0xD8>(h, _mm512_srli_epi16::<2>(raw[0]), m33);
    [even, odd]
}

/// The factors of field `j` of chunk `c` of the window in slots `a` and `b` of `fb` (the
/// window's factors, `prep512`: slot `r * C + k` for row `r`, input `k`), laid out as the
/// accumulator lanes of a pair of rows.
#[inline(always)]
pub(super) unsafe fn factors<const SEGS: usize>(fb: *const f32, a: usize, b: usize, c: usize, j: usize) -> __m512 {
    let (fa, fbb) = (fb.add(a * WSEG + c * SEGS), fb.add(b * WSEG + c * SEGS));
    if SEGS == 8 {
        // Lanes 0-3 of each row hold weights 32j..32j+15 (group 2j of the chunk), 4-7 group 2j+1.
        let four = _mm_unpacklo_pd(_mm_load_sd(fa.add(2 * j) as *const f64), _mm_load_sd(fbb.add(2 * j) as *const f64));
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_castpd_ps(four)))
    } else {
        // Two broadcast loads and one 256-bit insert (what LLVM makes of the masked broadcast),
        // where two scalar loads, an unpack and a permute took two shuffles: on Zen 4, where
        // shuffles share pipes with `vpdpbusd`, int2-int4 1-13% faster in the best rounds of
        // 8 alternations (medians within the noise).
        let lo = _mm512_set1_ps(*fa.add(j * SEGS / 4));
        _mm512_mask_broadcastss_ps(lo, 0xFF00, _mm_load_ss(fbb.add(j * SEGS / 4)))
    }
}

/// The zero points of groups `g..g + n` (`n <= 16`) of a row's packed `B`-bit zero stream as f32,
/// lanes past `n` zero. Only the bytes those groups use are read.
#[inline(always)]
unsafe fn zeros16<const B: u32>(z: *const u8, g: usize, n: usize) -> __m512 {
    if n == 16 {
        // 16 whole groups (g is a multiple of 16, so they start on a byte): two 32-bit broadcast
        // loads, lanes 0-7 from the first and 8-15 from the second, instead of a trip through
        // a general register (int2 0.0071 -> 0.0069 ns/weight, L2-resident). Both loads stay
        // within the 2B bytes of these groups.
        let at = g * B as usize / 8;
        let (hi_at, hi_shift) = match B {
            2 => (at, 16),
            3 => (at + 2, 8),
            _ => (at + 4, 0),
        };
        let lo = (z.add(at) as *const i32).read_unaligned();
        let hi = (z.add(hi_at) as *const i32).read_unaligned();
        let v = _mm512_mask_set1_epi32(_mm512_set1_epi32(lo), 0xFF00, hi);
        // Lane i < 8 holds group i at bit B i of `lo`; lane 8 + i group 8 + i at bit
        // hi_shift + B i of `hi`.
        let sh: [i32; 16] =
            std::array::from_fn(|i| if i < 8 { B as i32 * i as i32 } else { hi_shift + B as i32 * (i as i32 - 8) });
        let sh = _mm512_loadu_si512(sh.as_ptr() as *const __m512i);
        return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(v, sh), _mm512_set1_epi32((1 << B) - 1)));
    }
    let b = B as usize;
    let bytes = (n * b).div_ceil(8);
    let u = _mm_cvtsi128_si64(_mm_maskz_loadu_epi8(((1u32 << bytes) - 1) as __mmask16, z.add(g * b / 8) as *const i8)) as u64;
    // Lanes 0-7 shift the low 32 bits, lanes 8-15 the 32 bits from group 8 on.
    let v =
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi32(u as i32)), _mm256_set1_epi32((u >> (8 * b)) as i32));
    let k = B as i32;
    let sh = _mm512_setr_epi32(0, k, 2 * k, 3 * k, 4 * k, 5 * k, 6 * k, 7 * k, 0, k, 2 * k, 3 * k, 4 * k, 5 * k, 6 * k, 7 * k);
    let q = _mm512_and_si512(_mm512_srlv_epi32(v, sh), _mm512_set1_epi32((1 << B) - 1));
    _mm512_maskz_cvtepi32_ps(((1u32 << n) - 1) as __mmask16, q)
}

/// `x86_int::prep` on 512-bit registers: 16 groups per step, and masked loads
/// instead of its bounds checks (a masked-off lane never faults), so a step has no branch. The
/// AVX2 version took ~20% of the int2 pair kernel's time on Zen 5 (measured by running it twice).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn prep512<const B: u32, const R: usize, const C: usize>(
    scales: &[*const u16; R],
    zeros: &[*const u8; R],
    dseg: &[*const f32; C],
    gx: &[*const f32; C],
    (g_lo, g_hi): (usize, usize),
    seg0: usize,
    cpg_shift: usize,
    fb: *mut f32,
    corr: &mut [[__m256; C]; R],
) {
    for r in 0..R {
        let mut acc = [_mm512_setzero_ps(); C];
        let mut g = g_lo;
        while g < g_hi {
            let n = (g_hi - g).min(16);
            let m = ((1u32 << n) - 1) as __mmask16;
            let sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, scales[r].add(g) as *const i16));
            let sz = _mm512_mul_ps(sv, zeros16::<B>(zeros[r], g, n));
            for k in 0..C {
                // Slot `r * C + k` of `fb` holds row r's factors for input k.
                let fs = fb.add((r * C + k) * WSEG);
                acc[k] = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(m, gx[k].add(g)), acc[k]);
                if cpg_shift == 0 {
                    let d = _mm512_maskz_loadu_ps(m, dseg[k].add(g));
                    _mm512_storeu_ps(fs.add(g - seg0), _mm512_mul_ps(sv, d));
                } else {
                    // Groups of 256: two chunk segments per group.
                    let s = 2 * g - seg0;
                    let lo = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), sv);
                    let hi =
                        _mm512_permutexvar_ps(_mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15), sv);
                    let (m0, m1) = (((1u64 << (2 * n)) - 1) as __mmask16, (((1u64 << (2 * n)) - 1) >> 16) as __mmask16);
                    _mm512_storeu_ps(fs.add(s), _mm512_mul_ps(lo, _mm512_maskz_loadu_ps(m0, dseg[k].add(2 * g))));
                    _mm512_storeu_ps(fs.add(s + 16), _mm512_mul_ps(hi, _mm512_maskz_loadu_ps(m1, dseg[k].add(2 * g + 16))));
                }
            }
            g += 16;
        }
        for k in 0..C {
            let a = _mm512_castps_pd(acc[k]);
            let folded =
                _mm256_add_ps(_mm256_castpd_ps(_mm512_castpd512_pd256(a)), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(a)));
            corr[r][k] = _mm256_add_ps(corr[r][k], folded);
        }
    }
}

/// Inputs per tile at most (`C`): the batched products' tile is 4 rows x 4 inputs.
const MAX_INPUTS: usize = 4;

/// `R` rows (an even number, at most `MAX_TILE`) from `r0`, `C` inputs from `k0` (`R * C` at most
/// `FB_SLOTS`). One input (decode): 8 rows. Several (the prompt's batched products): 4 rows x 4
/// inputs, so each unpacked field serves four inputs and each activation load two pairs of rows;
/// Zen 5 runs 512-bit `vpdpbusd` at the same two per cycle as 256-bit ones (0.111 ns each, 4
/// cycles' latency, measured), and this tile took 0.0064-0.0067 ns per weight and input (int2, 64
/// inputs, 1 thread) against 0.0097 for the 256-bit 4 x 2 tile of `x86_int::block`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pair_block<
    const B: u32,
    const SEGS: usize,
    const R: usize,
    const C: usize,
    const GF: bool,
    const A8: bool,
>(
    p: &PackedMatrix,
    act: &ActQ,
    r0: usize,
    k0: usize,
    y: *mut f32,
    ys: usize,
    fbuf: &mut [f32; FB_SLOTS * WSEG],
) {
    const { assert!(R.is_multiple_of(2) && R <= MAX_TILE && C <= MAX_INPUTS && R * C <= FB_SLOTS) };
    let np = R / 2;
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
    let cpg_shift = (l.group > CHUNK) as usize;
    let fb = fbuf.as_mut_ptr();

    let mut facc = [[_mm512_setzero_ps(); MAX_INPUTS]; MAX_TILE / 2];
    let mut w0 = 0;
    while w0 < nch {
        let wn = WCH.min(nch - w0);
        let seg0 = w0 * SEGS;
        let (g_lo, g_hi) =
            if SEGS == 1 { (w0 >> cpg_shift, (w0 + wn + cpg_shift) >> cpg_shift) } else { (seg0, seg0 + wn * SEGS) };
        let g_hi = g_hi.min(l.groups);
        let mut corr = [[_mm256_setzero_ps(); C]; R];
        prep512::<B, R, C>(&scales, &zeros, &dseg, &gx, (g_lo, g_hi), seg0, cpg_shift, fb, &mut corr);
        for i in 0..np {
            for k in 0..C {
                let c = _mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(corr[2 * i][k])),
                    _mm256_castps_pd(corr[2 * i + 1][k]),
                );
                facc[i][k] = _mm512_sub_ps(facc[i][k], _mm512_castpd_ps(c));
            }
        }
        if w0 == 0 {
            prefetch_range((scales[0] as *const u8).wrapping_add(R * l.row_scale_bytes), R * l.row_scale_bytes);
            prefetch_range(zeros[0].wrapping_add(R * l.row_zero_bytes), R * l.row_zero_bytes);
        }
        for c in 0..wn {
            let cc = w0 + c;
            let mut raw = [[_mm512_setzero_si512(); 2]; MAX_TILE / 2];
            for i in 0..np {
                let (a, b) = (load_raw::<B>(codes[2 * i].add(cc * cb)), load_raw::<B>(codes[2 * i + 1].add(cc * cb)));
                raw[i] = [pair(a[0], b[0]), if B == 2 { _mm512_setzero_si512() } else { pair(a[1], b[1]) }];
                if B == 3 {
                    raw[i] = pairs3(&raw[i]);
                }
            }
            for r in 0..R {
                // As in x86_int::block: the same chunk of the next block of rows.
                if B != 2 || cc.is_multiple_of(2) {
                    prefetch(codes[r].wrapping_add(R * l.row_code_bytes + cc * cb));
                }
                if B != 2 {
                    prefetch(codes[r].wrapping_add(R * l.row_code_bytes + cc * cb + 32));
                }
            }
            // One pair and one input: two accumulators per plane halve the chains of dependent
            // `vpdpbusd`.
            let split = np == 1 && C == 1;
            let mut ah = [[[_mm512_setzero_si512(); 2]; MAX_INPUTS]; MAX_TILE / 2];
            let mut al = [[[_mm512_setzero_si512(); 2]; MAX_INPUTS]; MAX_TILE / 2];
            unroll!(j in [0, 1, 2, 3] {
                let a = if split { j % 2 } else { 0 };
                let mut f = [_mm512_setzero_si512(); MAX_TILE / 2];
                for i in 0..np {
                    f[i] = field::<B, GF>(&raw[i], j);
                }
                let off = cc * CHUNK + 32 * j;
                for k in 0..C {
                    let h = _mm512_broadcast_i64x4(_mm256_loadu_si256(xh[k].add(off) as *const __m256i));
                    for i in 0..np {
                        ah[i][k][a] = _mm512_dpbusd_epi32(ah[i][k][a], f[i], h);
                    }
                    // 8-bit activations: the low plane is zero (act.rs), so half the `vpdpbusd` go.
                    if !A8 {
                        let lo = _mm512_broadcast_i64x4(_mm256_loadu_si256(xl[k].add(off) as *const __m256i));
                        for i in 0..np {
                            al[i][k][a] = _mm512_dpbusd_epi32(al[i][k][a], f[i], lo);
                        }
                    }
                }
                let ends = match SEGS {
                    1 => j == 3,
                    2 => j % 2 == 1,
                    _ => true,
                };
                if ends {
                    for i in 0..np {
                        for k in 0..C {
                            // Slots `r * C + k` of the window's factors (`prep512`).
                            let fv = factors::<SEGS>(fb, 2 * i * C + k, (2 * i + 1) * C + k, c, j);
                            let (h, lo) = if split {
                                (_mm512_add_epi32(ah[i][k][0], ah[i][k][1]), _mm512_add_epi32(al[i][k][0], al[i][k][1]))
                            } else {
                                (ah[i][k][0], al[i][k][0])
                            };
                            let s = _mm512_slli_epi32::<8>(h);
                            let s = _mm512_cvtepi32_ps(if A8 { s } else { _mm512_add_epi32(s, lo) });
                            facc[i][k] = _mm512_fmadd_ps(s, fv, facc[i][k]);
                            ah[i][k] = [_mm512_setzero_si512(); 2];
                            al[i][k] = [_mm512_setzero_si512(); 2];
                        }
                    }
                }
            });
        }
        w0 += wn;
    }
    for i in 0..np {
        for k in 0..C {
            let v = _mm512_castps_pd(facc[i][k]);
            *y.add((k0 + k) * ys + r0 + 2 * i) = hsum(_mm256_castpd_ps(_mm512_castpd512_pd256(v)));
            *y.add((k0 + k) * ys + r0 + 2 * i + 1) = hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(v)));
        }
    }
}
