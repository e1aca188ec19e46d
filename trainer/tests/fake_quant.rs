//! The trainer's fake quantization is bd-formats' quantizer, bit for bit, and its STE passes the
//! gradient through unchanged.

mod common;

use bd_formats::quant::{fake_quant_matrix, pack_matrix, PackedLayout, PackedMatrix, QuantFormat, GROUP_SIZES, NF3_LEVELS};
use bd_trainer::fake_quant::{fake_quant, ste, QuantSpec};
use bd_trainer::model::linear;
use candle_core::{Device, Tensor, Var};
use common::random;

/// Random rows at several magnitudes, plus rows that hit the edge cases of both quantizers.
fn test_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut w = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let scale = [0.02, 0.1, 1.0, 7.5, 300.0][r % 5];
        let mut row = random(cols, seed ^ (r as u64) << 8, scale);
        match r % 9 {
            // All equal: the scale hits its epsilon.
            5 => row.iter_mut().for_each(|x| *x = 0.25),
            // All zero, all positive, all negative.
            6 => row.iter_mut().for_each(|x| *x = 0.0),
            7 => row.iter_mut().for_each(|x| *x = x.abs() + 0.01),
            8 => row.iter_mut().for_each(|x| *x = -x.abs() - 0.01),
            _ => {}
        }
        // An exact zero and a negative zero somewhere in most rows.
        if cols > 3 && r % 3 == 0 {
            row[1] = 0.0;
            row[2] = -0.0;
        }
        w.extend(row);
    }
    w
}

fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: element {i}: trainer {x:e} vs bd-formats {y:e}");
    }
}

fn trainer_fq(w: &[f32], rows: usize, cols: usize, spec: QuantSpec) -> Vec<f32> {
    let t = Tensor::from_slice(w, (rows, cols), &Device::Cpu).unwrap();
    fake_quant(&t, spec).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn fake_quant_is_bit_identical_to_bd_formats_for_every_format_and_group() {
    for format in QuantFormat::ALL {
        for group in GROUP_SIZES {
            // Whole groups, a partial last group, a row shorter than one group, a single column.
            let shapes = [(9, 2 * group), (9, 2 * group + 7), (9, group.saturating_sub(5).max(1)), (4, 1), (3, 300)];
            for (k, (rows, cols)) in shapes.into_iter().enumerate() {
                let w = test_matrix(rows, cols, (group * 31 + k) as u64);
                let spec = QuantSpec { format, group };
                let ours = trainer_fq(&w, rows, cols, spec);
                let reference = fake_quant_matrix(format, group, rows, cols, &w).unwrap();
                let what = format!("{format} g{group} {rows}x{cols}");
                assert_bits_eq(&ours, &reference, &what);
                // And what the runtime reads: the packed tensor, dequantized.
                let blob = pack_matrix(format, group, rows, cols, &w).unwrap();
                let layout = PackedLayout::new(format, group, rows, cols).unwrap();
                let packed = PackedMatrix::new(layout, &blob).unwrap().dequantize();
                assert_bits_eq(&ours, &packed, &format!("{what} (packed)"));
            }
        }
    }
}

#[test]
fn ties_round_away_from_zero_like_bd_formats() {
    // INT2: min 0, max 3 gives scale exactly 1, so w / s lands on .5 exactly.
    let int_row = [0.0f32, 0.5, 1.5, 2.5, 3.0, 1.0, 2.0, 0.5];
    // NF3: max 1 and min -1 give scales of exactly 1, so w / s lands on the midpoints.
    let mut nf_row = vec![1.0f32, -1.0];
    for i in 0..NF3_LEVELS.len() - 1 {
        nf_row.push((NF3_LEVELS[i] + NF3_LEVELS[i + 1]) * 0.5);
    }
    for (format, row) in [(QuantFormat::Int2, int_row.to_vec()), (QuantFormat::Nf3, nf_row)] {
        let n = row.len();
        let ours = trainer_fq(&row, 1, n, QuantSpec { format, group: 16 });
        let reference = fake_quant_matrix(format, 16, 1, n, &row).unwrap();
        assert_bits_eq(&ours, &reference, &format!("{format} ties"));
    }
}

#[test]
fn ste_forward_is_exactly_fake_quant_and_gradient_is_identity() {
    let (out_f, in_f, n) = (24, 80, 5);
    let spec = QuantSpec { format: QuantFormat::Int2, group: 32 };
    let dev = Device::Cpu;
    let w = Var::from_vec(random(out_f * in_f, 11, 0.2), (out_f, in_f), &dev).unwrap();
    let x = Tensor::from_vec(random(n * in_f, 12, 1.0), (n, in_f), &dev).unwrap();
    let r = Tensor::from_vec(random(n * out_f, 13, 1.0), (n, out_f), &dev).unwrap();

    let w_ste = ste(w.as_tensor(), spec).unwrap();
    let fq = fake_quant(w.as_tensor(), spec).unwrap();
    assert_bits_eq(
        &w_ste.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        &fq.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "ste forward",
    );

    // The loss is linear in the output, so dL/dy = r whatever the weight, and dL/dW = r^T x for
    // the latent weight exactly as for a plain (unquantized) weight holding the same values.
    let loss = (linear(&x, &w_ste).unwrap() * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g_ste = grads.get(w.as_tensor()).expect("latent weight gets a gradient");
    let w_plain = Var::from_tensor(&fq).unwrap();
    let loss_plain = (linear(&x, w_plain.as_tensor()).unwrap() * &r).unwrap().sum_all().unwrap();
    let grads_plain = loss_plain.backward().unwrap();
    let g_plain = grads_plain.get(w_plain.as_tensor()).unwrap();
    assert_bits_eq(
        &g_ste.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        &g_plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "ste gradient",
    );
    let expected = r.t().unwrap().matmul(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let got = g_ste.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (a, b) in got.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "gradient {a} vs r^T x {b}");
    }
    assert!(got.iter().any(|&g| g != 0.0));
}
