//! Every SIMD kernel against its scalar definition.
//!
//! - INT formats: SIMD == the scalar twin of the 16-bit-activation scheme (same integer sums, only
//!   the f32 summation order differs: 1e-5 of the magnitude), and the twin == the exact f32
//!   dequantized dot product within the stated bound of the activation rounding.
//! - NF formats: the integer kernels (`Kernels::nf_integer`) == the scalar twin of `nf_int.rs`
//!   (1e-5 of the magnitude), and the twin == the exact product within the bound of its table and
//!   activation rounding; the f32 kernels == exact reference (1e-5 of the magnitude).
//! - Float weights: SIMD == exact reference (f32 arithmetic, 1e-5 of the magnitude).
//! - `matmul` == `n` x `matvec`, and results do not depend on the thread count.

use super::act::{ActBuf, XMAX, XMAX8};
use super::nf_int;
use super::*;
use bd_formats::quant::{pack_matrix, PackedLayout, QuantFormat, GROUP_SIZES};
use half::{bf16, f16};

const COLS: [usize; 9] = [1, 5, 16, 127, 128, 129, 172, 300, 4096];
const ROWS: [usize; 3] = [1, 3, 17];

/// A small deterministic generator (xorshift64*).
pub(super) struct Rng(pub(super) u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately N(0, 1) (sum of 4 uniforms).
    fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.uniform()).sum::<f32>() - 2.0) * 3f32.sqrt()
    }
    /// Weights ~ N(0, 0.02).
    pub(super) fn weights(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| 0.02 * self.normal()).collect()
    }
    /// Activations ~ N(0, 1) with about 1% outliers x10.
    pub(super) fn acts(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| if self.uniform() < 0.01 { 10.0 * self.normal() } else { self.normal() }).collect()
    }
}

/// A quantized matrix owned by the test.
pub(super) struct Quant {
    layout: PackedLayout,
    blob: Vec<u8>,
}
impl Quant {
    pub(super) fn new(format: QuantFormat, group: usize, rows: usize, cols: usize, w: &[f32]) -> Self {
        Self {
            layout: PackedLayout::new(format, group, rows, cols).unwrap(),
            blob: pack_matrix(format, group, rows, cols, w).unwrap(),
        }
    }
    pub(super) fn weight(&self) -> Weight<'_> {
        let p = PackedMatrix::new(self.layout, &self.blob).unwrap();
        Weight { rows: self.layout.rows, cols: self.layout.cols, data: WeightData::Quant(p), lut: None }
    }
}

fn simd_kernels() -> Vec<Kernels> {
    let mut v: Vec<Kernels> = Kernels::available().into_iter().filter(|&i| i != Isa::Reference).map(Kernels::with_isa).collect();
    // What CPUs without the optional extensions run: NEON without dotprod, AVX-512 without
    // GFNI and VBMI (Cascade Lake), AVX2 without AVX-VNNI (Zen 3, Intel before Alder Lake).
    let plain: Vec<Kernels> = v.iter().filter(|k| k.has_extensions()).map(|k| k.without_extensions()).collect();
    v.extend(plain);
    // Every kernel also with 8-bit activations (the INT kernels of AVX2, AVX-512 and NEON sdot
    // skip the zero low plane; the others run the 16-bit code on values whose low byte is zero;
    // the integer NF kernels take byte tables, AVX-512 with VBMI in its byte kernel).
    let act8: Vec<Kernels> = v.iter().map(|k| k.with_act8(true)).collect();
    v.extend(act8);
    v
}

pub(super) fn exact(w: &Weight, x: &[f32]) -> Vec<f32> {
    (0..w.rows).map(|r| reference::row(w, r, x)).collect()
}

/// `sum |w_i x_i|` per row (plus the zero-point terms for INT): the scale of rounding errors.
pub(super) fn magnitude(w: &Weight, x: &[f32]) -> Vec<f32> {
    let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let abs_w = |r: usize| -> Vec<f32> {
        match w.data {
            WeightData::Quant(p) => {
                let mut row = vec![0f32; w.cols];
                p.dequantize_row(r, &mut row);
                if !p.format().is_nf() {
                    // |(q - z) s| <= |q s| + |z s|: bound both terms.
                    for (g, chunk) in row.chunks_mut(p.layout.group).enumerate() {
                        if let bd_formats::quant::GroupParams::Int { scale, zero } = p.params(r, g) {
                            let zs = zero as f32 * scale.to_f32();
                            chunk.iter_mut().for_each(|v| *v = v.abs() + 2.0 * zs);
                        }
                    }
                }
                row.iter().map(|v| v.abs()).collect()
            }
            WeightData::F32(b) => b[r * w.cols * 4..][..w.cols * 4]
                .chunks_exact(4)
                .map(|v| f32::from_le_bytes(v.try_into().unwrap()).abs())
                .collect(),
            WeightData::F16(b) => b[r * w.cols * 2..][..w.cols * 2]
                .chunks_exact(2)
                .map(|v| f16::from_le_bytes([v[0], v[1]]).to_f32().abs())
                .collect(),
            WeightData::Bf16(b) => b[r * w.cols * 2..][..w.cols * 2]
                .chunks_exact(2)
                .map(|v| bf16::from_le_bytes([v[0], v[1]]).to_f32().abs())
                .collect(),
        }
    };
    (0..w.rows).map(|r| abs_w(r).iter().zip(&abs_x).map(|(a, b)| a * b).sum::<f32>() + 1e-30).collect()
}

/// Per row, the largest error activation rounding can cause: `sum_i |w_i| d_b(i) / 2`.
fn rounding_bound(w: &Weight, x: &[f32], xmax: f32) -> Vec<f32> {
    let WeightData::Quant(p) = w.data else { unreachable!() };
    let half_step: Vec<f32> = (0..x.len())
        .map(|i| {
            let b = &x[i / 128 * 128..(i / 128 * 128 + 128).min(x.len())];
            b.iter().fold(0f32, |m, v| m.max(v.abs())) / xmax / 2.0
        })
        .collect();
    (0..w.rows)
        .map(|r| {
            let mut row = vec![0f32; w.cols];
            p.dequantize_row(r, &mut row);
            row.iter().zip(&half_step).map(|(a, h)| a.abs() * h).sum()
        })
        .collect()
}

/// Per row, the largest error of the integer NF scheme against the exact product: each weight
/// moved by at most `m_g / tmax / 2` (table rounding), each input by `d_b / 2` (activation
/// rounding): `sum_i e_i (|x_i| + h_i) + |w_i| h_i`. `act8`: 8-bit activations and tables.
fn nf_rounding_bound(w: &Weight, x: &[f32], act8: bool) -> Vec<f32> {
    let (xmax, tmax) = if act8 { (XMAX8, nf_int::TMAX8) } else { (XMAX, nf_int::TMAX) };
    let WeightData::Quant(p) = w.data else { unreachable!() };
    let half_step: Vec<f32> = (0..x.len())
        .map(|i| {
            let b = &x[i / 128 * 128..(i / 128 * 128 + 128).min(x.len())];
            b.iter().fold(0f32, |m, v| m.max(v.abs())) / xmax / 2.0
        })
        .collect();
    (0..w.rows)
        .map(|r| {
            let mut row = vec![0f32; w.cols];
            p.dequantize_row(r, &mut row);
            let e = |i: usize| {
                let bd_formats::quant::GroupParams::Nf { pos, neg } = p.params(r, i / p.layout.group) else { unreachable!() };
                pos.to_f32().abs().max(neg.to_f32().abs()) / tmax / 2.0
            };
            (0..w.cols).map(|i| e(i) * (x[i].abs() + half_step[i]) + row[i].abs() * half_step[i]).sum()
        })
        .collect()
}

/// What kernel `k` must compute for `w`: the integer twin for the integer schemes, else the exact
/// product.
fn definition(k: &Kernels, w: &Weight, x: &[f32]) -> Vec<f32> {
    match w.data {
        WeightData::Quant(p) if !p.format().is_nf() || k.nf_integer(&p) => twin(w, x, k.act8()),
        _ => exact(w, x),
    }
}

/// Normwise relative error `|got - want| / |want|` over the rows.
fn normwise(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f32], rel: f32) {
    for (r, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        assert!((g - w).abs() <= rel * m, "{what}: row {r}: got {g}, want {w} (|diff| {} > {rel} * {m})", (g - w).abs());
    }
}

fn matvec(k: &Kernels, w: &Weight, x: &[f32]) -> Vec<f32> {
    let mut y = vec![f32::NAN; w.rows];
    k.matvec(w, x, &mut y, &mut Scratch::new(w.cols, 1));
    y
}

fn twin(w: &Weight, x: &[f32], act8: bool) -> Vec<f32> {
    let mut y = vec![0f32; w.rows];
    Kernels::int_twin_matvec(w, x, &mut y, act8);
    y
}

#[test]
fn every_simd_kernel_equals_its_scalar_definition_on_every_format_group_and_shape() {
    let kernels = simd_kernels();
    eprintln!("SIMD kernels under test: {:?}", kernels.iter().map(|k| k.describe()).collect::<Vec<_>>());
    #[cfg(target_arch = "x86_64")]
    assert!(kernels.iter().any(|k| k.isa() == Isa::Avx2) || !Isa::Avx2.supported());
    #[cfg(target_arch = "aarch64")]
    assert!(kernels.iter().any(|k| k.isa() == Isa::Neon && !k.dotprod));
    let mut rng = Rng(0x5EED);
    for format in QuantFormat::ALL {
        for group in GROUP_SIZES {
            for cols in COLS {
                for rows in ROWS {
                    let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
                    let w = q.weight();
                    let x = rng.acts(cols);
                    let mag = magnitude(&w, &x);
                    for k in &kernels {
                        let what = format!("{} {format} g{group} {rows}x{cols}", k.describe());
                        assert_close(&what, &matvec(k, &w, &x), &definition(k, &w, &x), &mag, 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn float_weights_equal_the_reference() {
    let kernels = simd_kernels();
    let mut rng = Rng(7);
    for cols in COLS.into_iter().chain([15, 17, 31, 33]) {
        for rows in ROWS.into_iter().chain([4, 5, 8]) {
            let w32 = rng.weights(rows * cols);
            let b32: Vec<u8> = w32.iter().flat_map(|v| v.to_le_bytes()).collect();
            let b16: Vec<u8> = w32.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            let bb16: Vec<u8> = w32.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
            let x = rng.acts(cols);
            for data in [WeightData::F32(&b32), WeightData::F16(&b16), WeightData::Bf16(&bb16)] {
                let w = Weight { rows, cols, data, lut: None };
                let (want, mag) = (exact(&w, &x), magnitude(&w, &x));
                for k in &kernels {
                    assert_close(&format!("{} {data:?} {rows}x{cols}", k.describe()), &matvec(k, &w, &x), &want, &mag, 1e-5);
                }
            }
        }
    }
}

/// The 16-bit activation scheme against the exact f32 dot product: the measured error is far
/// below the 1e-3 the model-level check allows.
#[test]
fn int16_activation_scheme_is_within_its_bound_of_the_exact_dot_product() {
    let mut rng = Rng(99);
    let (rows, cols) = (64, 4096);
    for format in [QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Int4] {
        for group in GROUP_SIZES {
            let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
            let w = q.weight();
            let x = rng.acts(cols);
            let (got, want) = (twin(&w, &x, false), exact(&w, &x));
            let rel = normwise(&got, &want);
            eprintln!("int16 activations, {format} g{group}: normwise relative error {rel:.2e}");
            assert!(rel < 1e-4, "{format} g{group}: normwise relative error {rel:e}");
            // Per row, bounded by half a rounding step per activation.
            let mag = magnitude(&w, &x);
            assert_close(&format!("{format} g{group} rowwise"), &got, &want, &mag, 1e-4);
        }
    }
}

/// The 8-bit activation scheme (opt-in) against the exact f32 dot product: within half an 8-bit
/// step per activation, row by row, and 1.2-1.9e-2 normwise on this data (its 1% outliers x10
/// set the block maxima).
#[test]
fn int8_activation_scheme_is_within_its_bound_of_the_exact_dot_product() {
    let mut rng = Rng(98);
    let (rows, cols) = (64, 4096);
    for format in [QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Int4] {
        for group in GROUP_SIZES {
            let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
            let w = q.weight();
            let x = rng.acts(cols);
            let (got, want) = (twin(&w, &x, true), exact(&w, &x));
            let rel = normwise(&got, &want);
            eprintln!("int8 activations, {format} g{group}: normwise relative error {rel:.2e}");
            assert!(rel < 3e-2, "{format} g{group}: normwise relative error {rel:e}");
            // The 16-bit scheme is much closer on the same data: the 8-bit path really is 8-bit.
            let rel16 = normwise(&twin(&w, &x, false), &want);
            assert!(rel16 < rel / 10.0, "{format} g{group}: 16-bit error {rel16:e} not below the 8-bit {rel:e}");
            let mag = magnitude(&w, &x);
            let bound: Vec<f32> = rounding_bound(&w, &x, XMAX8).iter().zip(&mag).map(|(b, m)| 1.001 * b + 1e-5 * m).collect();
            assert_close(&format!("{format} g{group} rowwise, 8 bits"), &got, &want, &bound, 1.0);
        }
    }
}

/// The integer NF scheme against the exact f32 dot product, on the same data as the INT check:
/// the table rounding (1.2e-4 of a group's largest scale per weight) dominates the activations'.
/// With 8-bit activations the tables are bytes too (`nf_int::TMAX8`): both roundings grow by
/// ~2^7, and the 8-bit scheme must stay within its own bound.
#[test]
fn nf_integer_scheme_is_within_its_bound_of_the_exact_dot_product() {
    let mut rng = Rng(98);
    let (rows, cols) = (64, 4096);
    for format in [QuantFormat::Nf3, QuantFormat::Nf4] {
        for group in GROUP_SIZES {
            let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
            let w = q.weight();
            let x = rng.acts(cols);
            let want = exact(&w, &x);
            let mag = magnitude(&w, &x);
            let mut rels = [0f64; 2];
            for (act8, limit) in [(false, 3e-4), (true, 4e-2)] {
                let got = twin(&w, &x, act8);
                let rel = normwise(&got, &want);
                eprintln!("integer NF, {format} g{group}, act8 {act8}: normwise relative error {rel:.2e}");
                assert!(rel < limit, "{format} g{group} act8 {act8}: normwise relative error {rel:e}");
                rels[act8 as usize] = rel;
                let bound: Vec<f32> =
                    nf_rounding_bound(&w, &x, act8).iter().zip(&mag).map(|(b, m)| 1.001 * b + 1e-5 * m).collect();
                assert_close(&format!("{format} g{group} act8 {act8} rowwise"), &got, &want, &bound, 1.0);
            }
            // The 8-bit tables really are 8-bit: much further from the exact product.
            assert!(rels[0] < rels[1] / 10.0, "{format} g{group}: 16-bit error {:e} not below the 8-bit {:e}", rels[0], rels[1]);
        }
    }
}

#[test]
fn extreme_values() {
    let kernels = simd_kernels();
    let mut rng = Rng(3);
    for format in QuantFormat::ALL {
        for group in [16, 128, 256] {
            let (rows, cols) = (9, 300);
            // Row 0 all zero, row 1 constant, row 2 huge spread, others random.
            let mut wv = rng.weights(rows * cols);
            wv[..cols].fill(0.0);
            wv[cols..2 * cols].fill(0.5);
            for (i, v) in wv[2 * cols..3 * cols].iter_mut().enumerate() {
                *v = if i % 2 == 0 { 60000.0 } else { -60000.0 * (i as f32 / cols as f32) };
            }
            let q = Quant::new(format, group, rows, cols, &wv);
            let w = q.weight();
            let inputs: Vec<Vec<f32>> = vec![
                vec![0.0; cols],
                rng.acts(cols).iter().map(|v| v * 1e4).collect(),
                rng.acts(cols).iter().map(|v| v * 1e-20).collect(),
                (0..cols).map(|i| if i == 77 { 1e6 } else { 1.0 }).collect(),
                (0..cols).map(|i| if i % 3 == 0 { -XMAX } else { XMAX }).collect(),
            ];
            for x in &inputs {
                let mag = magnitude(&w, x);
                for k in &kernels {
                    let want = definition(k, &w, x);
                    assert_close(&format!("{} {format} g{group} extreme", k.describe()), &matvec(k, &w, x), &want, &mag, 1e-5);
                }
                let bound = if format.is_nf() { nf_rounding_bound(&w, x, false) } else { rounding_bound(&w, x, XMAX) };
                let bound: Vec<f32> = bound.iter().zip(&mag).map(|(b, m)| 1.001 * b + 1e-5 * m).collect();
                assert_close(&format!("twin {format} g{group} extreme"), &twin(&w, x, false), &exact(&w, x), &bound, 1.0);
            }
        }
    }
}

/// Arbitrary bytes in the code, zero and padding fields (max codes included) with finite scales:
/// the kernels must read exactly what the format defines and ignore the padding.
#[test]
fn arbitrary_codes_and_zero_points() {
    let kernels = simd_kernels();
    let mut rng = Rng(11);
    for format in QuantFormat::ALL {
        for group in GROUP_SIZES {
            for (rows, cols) in [(5, 129), (4, 300), (2, 1000)] {
                let layout = PackedLayout::new(format, group, rows, cols).unwrap();
                let mut blob: Vec<u8> = (0..layout.len).map(|_| rng.next() as u8).collect();
                for (i, c) in blob[..layout.scales_offset].iter_mut().enumerate() {
                    if i % 7 == 0 {
                        *c = 0xFF; // max codes
                    }
                }
                let nscales = rows * layout.row_scale_bytes / 2;
                for i in 0..nscales {
                    let s = f16::from_f32(0.001 + 0.1 * rng.uniform()).to_le_bytes();
                    blob[layout.scales_offset + 2 * i..][..2].copy_from_slice(&s);
                }
                let w = Weight { rows, cols, data: WeightData::Quant(PackedMatrix::new(layout, &blob).unwrap()), lut: None };
                let x = rng.acts(cols);
                let mag = magnitude(&w, &x);
                for k in &kernels {
                    assert_close(
                        &format!("{} {format} g{group} {rows}x{cols} arbitrary", k.describe()),
                        &matvec(k, &w, &x),
                        &definition(k, &w, &x),
                        &mag,
                        1e-5,
                    );
                }
                let bound = if format.is_nf() { nf_rounding_bound(&w, &x, false) } else { rounding_bound(&w, &x, XMAX) };
                let bound: Vec<f32> = bound.iter().zip(&mag).map(|(b, m)| 1.001 * b + 1e-5 * m).collect();
                assert_close(&format!("twin {format} g{group} arbitrary"), &twin(&w, &x, false), &exact(&w, &x), &bound, 1.0);
            }
        }
    }
}

#[test]
fn matmul_equals_n_matvecs_and_batches_split() {
    let mut kernels = simd_kernels();
    kernels.push(Kernels::with_isa(Isa::Reference));
    let mut rng = Rng(5);
    for format in QuantFormat::ALL {
        for (rows, cols, group) in [(17, 300, 32), (8, 4096, 128), (5, 129, 256), (3, 64, 16)] {
            let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
            let w = q.weight();
            let b32: Vec<u8> = rng.weights(rows * cols).iter().flat_map(|v| v.to_le_bytes()).collect();
            let wf = Weight { rows, cols, data: WeightData::F32(&b32), lut: None };
            for n in [1, 2, 3, 4, 5, 9, 13] {
                let x = rng.acts(n * cols);
                for w in [&w, &wf] {
                    for k in &kernels {
                        // Batches of 3 force the split into several passes.
                        for batch in [n, 3] {
                            let mut y = vec![f32::NAN; n * rows];
                            k.matmul(w, &x, n, &mut y, &mut Scratch::new(cols, batch));
                            for i in 0..n {
                                let xi = &x[i * cols..(i + 1) * cols];
                                let want = matvec(k, w, xi);
                                let mag = magnitude(w, xi);
                                let what = format!("{} {format} {rows}x{cols} n={n} batch={batch} input {i}", k.describe());
                                assert_close(&what, &y[i * rows..(i + 1) * rows], &want, &mag, 1e-6);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng(21);
    let (rows, cols, n) = (203, 1000, 6);
    let q = Quant::new(QuantFormat::Int2, 64, rows, cols, &rng.weights(rows * cols));
    let q3 = Quant::new(QuantFormat::Nf3, 128, rows, cols, &rng.weights(rows * cols));
    let x = rng.acts(n * cols);
    for k in Kernels::available().into_iter().map(Kernels::with_isa) {
        for w in [q.weight(), q3.weight()] {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut scratch = Scratch::new(cols, n);
                let mut y = vec![0f32; n * rows];
                let mut y1 = vec![0f32; rows];
                pool.install(|| {
                    k.matmul(&w, &x, n, &mut y, &mut scratch);
                    k.matvec(&w, &x[..cols], &mut y1, &mut scratch);
                });
                (y, y1)
            };
            let one = run(1);
            for t in [2, 3] {
                assert_eq!(run(t), one, "{} with {t} threads", k.describe());
            }
        }
    }
}

#[test]
fn guided_chunks_cover_every_row_block_once_and_shrink() {
    for (blocks, threads, min) in [(0, 2, 1), (1, 2, 4), (3, 1, 1), (26, 2, 4), (512, 2, 2), (1376, 3, 1), (4000, 16, 0)] {
        let g = Guided::new(blocks, threads, min);
        let chunks: Vec<_> = std::iter::from_fn(|| g.next()).collect();
        let mut at = 0;
        for (i, &(b0, b1)) in chunks.iter().enumerate() {
            assert_eq!(b0, at, "{blocks} blocks: chunks are contiguous");
            assert!(b1 > b0 && b1 <= blocks);
            let (len, left) = (b1 - b0, blocks - b0);
            assert_eq!(len, (left / (2 * threads)).max(min.max(1)).min(left), "{blocks} blocks, chunk {i}");
            at = b1;
        }
        assert_eq!(at, blocks, "{blocks} blocks all taken");
        assert!(g.next().is_none());
    }
    // Taken concurrently, each block still goes to exactly one thread.
    let g = Guided::new(100_000, 4, 3);
    let taken: Vec<Vec<(usize, usize)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| std::iter::from_fn(|| g.next()).collect())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<_> = taken.concat();
    all.sort();
    assert_eq!(all.first().map(|c| c.0), Some(0));
    assert!(all.windows(2).all(|w| w[0].1 == w[1].0), "no block taken twice or skipped");
    assert_eq!(all.last().map(|c| c.1), Some(100_000));
}

#[test]
fn scratch_is_reused_without_growing() {
    let mut rng = Rng(8);
    let (rows, cols) = (16, 512);
    let q = Quant::new(QuantFormat::Int3, 32, rows, cols, &rng.weights(rows * cols));
    let w = q.weight();
    let mut scratch = Scratch::new(cols, 4);
    let before = (scratch.act.xq.capacity(), scratch.act.dseg.capacity(), scratch.act.gx.capacity(), scratch.act.hi.capacity());
    let k = Kernels::detect();
    let x = rng.acts(4 * cols);
    let mut y = vec![0f32; 4 * rows];
    for _ in 0..3 {
        k.matmul(&w, &x, 4, &mut y, &mut scratch);
        k.matvec(&w, &x[..cols], &mut y[..rows], &mut scratch);
    }
    let after = (scratch.act.xq.capacity(), scratch.act.dseg.capacity(), scratch.act.gx.capacity(), scratch.act.hi.capacity());
    assert_eq!(before, after);
    let _ = ActBuf::new(1, 1);
}

#[test]
fn bd_act_bits_setting() {
    assert_eq!(act8_setting(None), (false, None));
    assert_eq!(act8_setting(Some("16")), (false, None));
    assert_eq!(act8_setting(Some(" 8 ")), (true, None));
    let (a, w) = act8_setting(Some("4"));
    assert!(!a && w.unwrap().contains("BD_ACT_BITS=4"));
    assert!(Kernels::with_isa(Isa::Reference).with_act8(true).describe().ends_with("+act8"));
}

#[test]
fn bd_kernels_setting() {
    let best = *Kernels::available().last().unwrap();
    assert_eq!(Kernels::from_setting(None).0.isa(), best);
    assert_eq!(Kernels::from_setting(Some("")).0.isa(), best);
    assert_eq!(Kernels::from_setting(Some("reference")), (Kernels::with_isa(Isa::Reference), None));
    let (k, warn) = Kernels::from_setting(Some("sse9"));
    assert_eq!(k.isa(), Isa::Reference);
    assert!(warn.unwrap().contains("sse9"));
    for isa in Isa::ALL {
        let (k, warn) = Kernels::from_setting(Some(isa.name()));
        let (plain, warn_plain) = Kernels::from_setting(Some(&format!("{}-plain", isa.name())));
        if isa.supported() {
            assert_eq!((k.isa(), warn), (isa, None));
            assert_eq!((plain, warn_plain), (k.without_extensions(), None));
            assert!(!plain.has_extensions());
        } else {
            assert_eq!(k.isa(), Isa::Reference);
            assert!(warn.unwrap().contains("not supported"));
        }
    }
    #[cfg(target_arch = "x86_64")]
    assert!(Kernels::available().contains(&Isa::Avx2) || !is_x86_feature_detected!("avx2"));
    #[cfg(target_arch = "aarch64")]
    assert!(Kernels::available().contains(&Isa::Neon));
}

/// Compute rate of the INT kernels on an L1/L2-resident matrix (no activation quantization):
/// `cargo test -p bd-runtime --release --lib kernels::tests::kernel_compute_rate -- --ignored --nocapture`
#[test]
#[ignore]
fn kernel_compute_rate() {
    let mut rng = Rng(1);
    for (rows, cols) in [(16usize, 4096usize), (256, 4096)] {
        let only = std::env::var("BD_RATE_FORMAT").ok();
        for format in QuantFormat::ALL {
            if only.as_deref().is_some_and(|f| f != format.name()) {
                continue;
            }
            let q = Quant::new(format, 128, rows, cols, &rng.weights(rows * cols));
            let w = q.weight();
            let WeightData::Quant(p) = w.data else { unreachable!() };
            let x = rng.acts(cols);
            let mut buf = ActBuf::new(cols, 1);
            let mut y = vec![0f32; rows];
            for k in simd_kernels() {
                if std::env::var("BD_RATE_ISA").is_ok_and(|i| i != k.isa().name()) {
                    continue;
                }
                let act = buf.quantize(&x, 1, cols, 128, k.xp_order(&p), k.act8());
                let iters = (1usize << 28) / (rows * cols);
                let iters = iters / 8;
                let mut best = f64::MAX;
                for _ in 0..40 {
                    let t = std::time::Instant::now();
                    for _ in 0..iters {
                        if format.is_nf() && !k.nf_integer(&p) {
                            unsafe { k.float_rows(&w, &x, 1, 0, rows, y.as_mut_ptr(), rows) };
                        } else {
                            unsafe { k.int_rows(&p, &act, 0, 1, 0, rows, OutPtr(y.as_mut_ptr()), rows) };
                        }
                    }
                    best = best.min(t.elapsed().as_secs_f64() / iters as f64);
                }
                eprintln!("{} {format} g128 {rows}x{cols}: {:.4} ns/weight", k.describe(), best * 1e9 / (rows * cols) as f64);
            }
        }
    }
}

/// Cost of quantizing one activation vector (per call of an INT matvec).
#[test]
#[ignore]
fn activation_quantization_rate() {
    let mut rng = Rng(2);
    for cols in [4096usize, 11008] {
        let x = rng.acts(cols);
        let mut buf = ActBuf::new(cols, 1);
        let iters = 2000;
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                std::hint::black_box(buf.quantize(std::hint::black_box(&x), 1, cols, 128, None, false).pcols);
            }
            best = best.min(t.elapsed().as_secs_f64() / iters as f64);
        }
        eprintln!("quantize {cols} activations: {:.2} us ({:.2} ns/element)", best * 1e6, best * 1e9 / cols as f64);
    }
}
