use super::*;

/// Deterministic pseudo-normal values (xorshift64*, sum of uniforms).
fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * 1.7 * scale).collect()
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]) as u32;
    let (sign, exp, man) = ((h >> 15) & 1, (h >> 10) & 0x1f, h & 0x3ff);
    let v = match exp {
        0 => man as f32 * 2f32.powi(-24),
        31 => f32::INFINITY,
        e => (1.0 + man as f32 / 1024.0) * 2f32.powi(e as i32 - 15),
    };
    if sign == 1 {
        -v
    } else {
        v
    }
}

/// Dequantize Q8_K / Q8_0 activations by hand (ggml gives Q8_K no `to_float`).
/// Q8_K block: f32 d, i8 qs[256], i16 bsums[16] (292 bytes); Q8_0 block: f16 d, i8 qs[32] (34 bytes).
fn dequantize_activations(ty: GgmlType, q: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for b in q.chunks_exact(ty.block_bytes()) {
        let (d, qs) = match ty {
            GgmlType::Q8K => (f32::from_le_bytes(b[0..4].try_into().unwrap()), &b[4..260]),
            GgmlType::Q8_0 => (f16_at(b, 0), &b[2..34]),
            _ => unreachable!(),
        };
        out.extend(qs.iter().map(|&v| d * v as i8 as f32));
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[test]
fn block_sizes_match_ggml() {
    let expect = [
        (GgmlType::Q2K, 256, 84, Some(GgmlType::Q8K)),
        (GgmlType::Q3K, 256, 110, Some(GgmlType::Q8K)),
        (GgmlType::Q4_0, 32, 18, Some(GgmlType::Q8_0)),
        (GgmlType::IQ2XXS, 256, 66, Some(GgmlType::Q8K)),
        (GgmlType::Q8K, 256, 292, None),
        (GgmlType::Q8_0, 32, 34, Some(GgmlType::Q8_0)),
    ];
    for (ty, block, bytes, vdt) in expect {
        assert_eq!(ty.block_size(), block, "{ty}");
        assert_eq!(ty.block_bytes(), bytes, "{ty}");
        assert_eq!(ty.vec_dot_type(), vdt, "{ty}");
        assert_eq!(type_name(ty), ty.name());
    }
    assert_eq!(GgmlType::Q2K.bits_per_weight(), 2.625);
    assert_eq!(GgmlType::IQ2XXS.bits_per_weight(), 2.0625);
    assert!(build_features().contains("avx2") || !cfg!(target_arch = "x86_64") || !std::is_x86_feature_detected!("avx2"));
}

#[test]
fn quantize_round_trip_error_is_sane() {
    let (rows, cols) = (16, 512);
    let w = randn(rows * cols, 1, 0.02);
    let norm = dot(&w, &w).sqrt();
    // Relative reconstruction error bounds, loose: 2-bit is coarse.
    for (ty, bound) in
        [(GgmlType::Q2K, 0.6), (GgmlType::Q3K, 0.3), (GgmlType::Q4_0, 0.15), (GgmlType::IQ2XXS, 0.6), (GgmlType::Q8_0, 0.01)]
    {
        let q = quantize(ty, rows, cols, &w).unwrap();
        assert_eq!(q.bytes().len(), rows * ty.row_bytes(cols));
        let d = dequantize(&q).unwrap();
        let err: Vec<f32> = w.iter().zip(&d).map(|(a, b)| a - b).collect();
        let rel = dot(&err, &err).sqrt() / norm;
        assert!(rel < bound, "{ty}: relative error {rel}");
        assert!(rel > 0.0, "{ty}: suspiciously exact");
    }
}

#[test]
fn matvec_equals_dot_of_dequantized_weights() {
    let (rows, cols) = (48, 768);
    let w = randn(rows * cols, 2, 0.05);
    let x = randn(cols, 3, 1.0);
    for ty in GgmlType::WEIGHTS {
        let q = quantize(ty, rows, cols, &w).unwrap();
        let wd = dequantize(&q).unwrap();
        let vdt = ty.vec_dot_type().unwrap();
        let qx = quantize_activations(vdt, &x).unwrap();
        let xd = dequantize_activations(vdt, &qx);
        let mut y = vec![0f32; rows];
        matvec(&q, &qx, &mut y).unwrap();
        let block = vdt.block_size();
        for r in 0..rows {
            let row = &wd[r * cols..(r + 1) * cols];
            // Against the dequantized activations: equal up to f32 rounding.
            let exact = dot(row, &xd);
            let mag: f64 = row.iter().zip(&xd).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            assert!((y[r] as f64 - exact).abs() <= 1e-4 * mag + 1e-6, "{ty} row {r}: {} vs {exact}", y[r]);
            // Against the f32 activations: within the activation quantization error, one step of
            // the block's 8-bit grid per value at most.
            let reference = dot(row, &x);
            let tol: f64 = x
                .chunks(block)
                .zip(row.chunks(block))
                .map(|(xb, wb)| {
                    let step = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                    wb.iter().map(|&v| v.abs() as f64).sum::<f64>() * step
                })
                .sum::<f64>()
                + 1e-4 * mag;
            assert!((y[r] as f64 - reference).abs() <= tol, "{ty} row {r}: {} vs f32 {reference} (tol {tol})", y[r]);
        }
        // vec_dot on one row agrees with matvec.
        assert_eq!(vec_dot(ty, cols, q.row(5), &qx).unwrap(), y[5]);
    }
}

#[test]
fn mul_mat_equals_matvec() {
    let (rows, cols, n) = (40, 512, 3);
    let w = randn(rows * cols, 4, 0.05);
    let x = randn(n * cols, 5, 1.0);
    for ty in GgmlType::WEIGHTS {
        let q = quantize(ty, rows, cols, &w).unwrap();
        let vdt = ty.vec_dot_type().unwrap();
        let mut expect = vec![0f32; n * rows];
        for (xi, yi) in x.chunks(cols).zip(expect.chunks_mut(rows)) {
            matvec(&q, &quantize_activations(vdt, xi).unwrap(), yi).unwrap();
        }
        for threads in [1, 2, 3] {
            let y = mul_mat(&q, &x, n, threads).unwrap();
            assert_eq!(y.len(), n * rows);
            for (i, (a, b)) in y.iter().zip(&expect).enumerate() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{ty} threads {threads} at {i}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn graph_of_several_products_reuses_its_context() {
    let (rows, cols) = (32, 256);
    let a = quantize(GgmlType::Q2K, rows, cols, &randn(rows * cols, 6, 0.05)).unwrap();
    let b = quantize(GgmlType::Q2K, rows, cols, &randn(rows * cols, 7, 0.05)).unwrap();
    let mut g = MulMatGraph::new(GgmlType::Q2K, rows, cols, 1, 3).unwrap();
    assert_eq!(g.products(), 3);
    for round in 0..3 {
        let x = randn(cols, 8 + round, 1.0);
        g.compute(&[&a, &b, &a], &x, 2).unwrap();
        let qx = quantize_activations(GgmlType::Q8K, &x).unwrap();
        for (i, m) in [&a, &b, &a].into_iter().enumerate() {
            let mut y = vec![0f32; rows];
            matvec(m, &qx, &mut y).unwrap();
            assert_eq!(g.output(i), &y[..], "round {round} product {i}");
        }
    }
    assert!(matches!(g.compute(&[&a, &b], &randn(cols, 1, 1.0), 1), Err(GgmlError::LengthMismatch { .. })));
    let other = quantize(GgmlType::Q3K, rows, cols, &randn(rows * cols, 9, 0.05)).unwrap();
    assert!(matches!(g.compute(&[&a, &b, &other], &randn(cols, 1, 1.0), 1), Err(GgmlError::WeightMismatch { .. })));
    assert!(matches!(g.compute(&[&a, &b, &a], &randn(cols + 1, 1, 1.0), 1), Err(GgmlError::LengthMismatch { .. })));
}

#[test]
fn bad_shapes_are_errors() {
    let w = randn(4 * 300, 10, 1.0);
    assert_eq!(quantize(GgmlType::Q2K, 4, 300, &w).unwrap_err(), GgmlError::BadCols { ty: "q2_K", cols: 300, block: 256 });
    assert_eq!(quantize(GgmlType::Q4_0, 4, 300, &w).unwrap_err(), GgmlError::BadCols { ty: "q4_0", cols: 300, block: 32 });
    assert!(matches!(quantize(GgmlType::Q4_0, 4, 288, &w), Err(GgmlError::ShapeMismatch { .. })));
    assert!(matches!(quantize(GgmlType::Q4_0, 0, 32, &[]), Err(GgmlError::Empty { .. })));
    assert!(matches!(quantize(GgmlType::Q8K, 1, 256, &w[..256]), Err(GgmlError::Unsupported { .. })));
    assert!(matches!(quantize_activations(GgmlType::Q8K, &w[..100]), Err(GgmlError::BadCols { .. })));
    assert!(matches!(quantize_activations(GgmlType::IQ2XXS, &w[..256]), Err(GgmlError::Unsupported { .. })));

    let q = quantize(GgmlType::Q4_0, 4, 256, &w[..1024]).unwrap();
    let qx = quantize_activations(GgmlType::Q8K, &w[..256]).unwrap(); // wrong activation type
    let mut y = vec![0f32; 4];
    assert!(matches!(matvec(&q, &qx, &mut y), Err(GgmlError::LengthMismatch { .. })));
    let qx = quantize_activations(GgmlType::Q8_0, &w[..256]).unwrap();
    assert!(matches!(matvec(&q, &qx, &mut y[..3]), Err(GgmlError::LengthMismatch { .. })));
    matvec(&q, &qx, &mut y).unwrap();
    assert!(matches!(GgmlMatrix::from_bytes(GgmlType::Q4_0, 4, 256, &q.bytes()[1..]), Err(GgmlError::LengthMismatch { .. })));
    let copy = GgmlMatrix::from_bytes(GgmlType::Q4_0, 4, 256, q.bytes()).unwrap();
    let mut y2 = vec![0f32; 4];
    matvec(&copy, &qx, &mut y2).unwrap();
    assert_eq!(y, y2);
}
