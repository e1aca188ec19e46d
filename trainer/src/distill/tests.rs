use super::*;
use candle_core::{Device, Tensor};

fn t2(rows: &[[f64; 2]], dtype: DType) -> Tensor {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0]
}

/// Two tokens: p_T = (1/4, 3/4) from logits (0, ln 3), p_S = (1/2, 1/2) from logits (0, 0).
#[test]
fn two_token_example_by_hand() {
    let teacher = t2(&[[0.0, 3f64.ln()]], DType::F64);
    let student = t2(&[[0.0, 0.0]], DType::F64);
    let (pt, ps) = ([0.25f64, 0.75], [0.5f64, 0.5]);
    let kl = |p: [f64; 2], q: [f64; 2]| p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln();
    let fkl = kl(pt, ps);
    let rkl = kl(ps, pt);
    assert!((fkl - 0.130812).abs() < 1e-6 && (rkl - 0.143841).abs() < 1e-6);
    let m = [0.375, 0.625];
    let jsd = 0.5 * kl(pt, m) + 0.5 * kl(ps, m);
    let targets = Tensor::new(&[1u32], &Device::Cpu).unwrap();
    for (loss, want) in [
        (Loss::ForwardKl, fkl),
        (Loss::ReverseKl, rkl),
        (Loss::Cakld { gamma: 0.0 }, fkl),
        (Loss::Cakld { gamma: 1.0 }, rkl),
        (Loss::Cakld { gamma: 0.3 }, 0.3 * rkl + 0.7 * fkl),
        (Loss::Jsd { beta: 0.5 }, jsd),
        (Loss::CrossEntropy, 2f64.ln()),
    ] {
        let got = scalar(&per_row(loss, &student, &teacher, Some(&targets)).unwrap());
        assert!((got - want).abs() < 1e-12, "{loss:?}: {got} vs {want}");
    }
}

fn random(rows: usize, vocab: usize, seed: u64, dtype: DType) -> Tensor {
    let mut x = seed | 1;
    let v: Vec<f64> = (0..rows * vocab)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 6.0
        })
        .collect();
    Tensor::from_vec(v, (rows, vocab), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

const LOSSES: [Loss; 5] =
    [Loss::ForwardKl, Loss::ReverseKl, Loss::Cakld { gamma: 0.7 }, Loss::Jsd { beta: 0.5 }, Loss::CrossEntropy];

#[test]
fn gradients_match_finite_differences() {
    let (rows, vocab) = (3, 5);
    let teacher = random(rows, vocab, 1, DType::F64);
    let targets = Tensor::new(&[0u32, 4, 2], &Device::Cpu).unwrap();
    for loss in LOSSES {
        let z = Var::from_tensor(&random(rows, vocab, 2, DType::F64)).unwrap();
        let total =
            |t: &Tensor| scalar(&per_row(loss, t, &teacher, Some(&targets)).unwrap().sum_all().unwrap().unsqueeze(0).unwrap());
        let grads = per_row(loss, z.as_tensor(), &teacher, Some(&targets)).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f64> = grads.get(z.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = z.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for i in 0..rows * vocab {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                total(&Tensor::from_vec(v, (rows, vocab), &Device::Cpu).unwrap())
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-6, "{loss:?} element {i}: analytic {} vs finite difference {fd}", g[i]);
        }
    }
}

#[test]
fn chunked_equals_unchunked_and_masks_padding() {
    let (rows, vocab) = (7, 11);
    let student = random(rows, vocab, 3, DType::F32);
    let teacher = random(rows, vocab, 4, DType::F32);
    let targets = Tensor::new(&[1u32, 2, 3, 4, 5, 6, 7], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[1f32, 1., 0., 1., 1., 0., 1.], &Device::Cpu).unwrap();
    for loss in LOSSES {
        let full = loss_and_grad(loss, &student, &teacher, &mask, Some(&targets), 2, rows).unwrap();
        assert_eq!(full.tokens, 5.0);
        // Reference: unchunked, masked, divided by the 2 sequences.
        let r: Vec<f32> = per_row(loss, &student, &teacher, Some(&targets)).unwrap().to_vec1().unwrap();
        let m: Vec<f32> = mask.to_vec1().unwrap();
        let want: f64 = r.iter().zip(&m).map(|(a, b)| (a * b) as f64).sum::<f64>() / 2.0;
        assert!((full.loss - want).abs() < 1e-5, "{loss:?}");
        let g: Vec<Vec<f32>> = full.grad.to_vec2().unwrap();
        for (row, &keep) in g.iter().zip(&m) {
            if keep == 0.0 {
                assert!(row.iter().all(|&x| x == 0.0), "{loss:?}: padding gets no gradient");
            } else {
                assert!(row.iter().any(|&x| x != 0.0));
            }
        }
        for chunk in [1, 2, 3, 100] {
            let c = loss_and_grad(loss, &student, &teacher, &mask, Some(&targets), 2, chunk).unwrap();
            assert!((c.loss - full.loss).abs() < 1e-5, "{loss:?} chunk {chunk}");
            let diff = (c.grad - &full.grad).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-7, "{loss:?} chunk {chunk}: {diff}");
        }
    }
}

#[test]
fn surrogate_carries_the_gradient_into_the_graph() {
    let (rows, vocab) = (4, 6);
    let w = Var::from_tensor(&random(vocab, vocab, 5, DType::F32)).unwrap();
    let x = random(rows, vocab, 6, DType::F32);
    let teacher = random(rows, vocab, 7, DType::F32);
    let mask = Tensor::ones(rows, DType::F32, &Device::Cpu).unwrap();
    let logits = x.matmul(w.as_tensor()).unwrap();
    let lg = loss_and_grad(Loss::Cakld { gamma: 0.4 }, &logits, &teacher, &mask, None, 1, 3).unwrap();
    let via_surrogate = surrogate(&logits, &lg.grad).unwrap().backward().unwrap();
    let direct = per_row(Loss::Cakld { gamma: 0.4 }, &logits, &teacher, None).unwrap().sum_all().unwrap().backward().unwrap();
    let a = via_surrogate.get(w.as_tensor()).unwrap();
    let b = direct.get(w.as_tensor()).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn gamma_is_an_exact_masked_mean() {
    // Row 0: teacher (1/4, 3/4) -> top 0.75, data token 0 -> 0.25. Row 1: padding with logits that
    // would pull the mean. Row 2: uniform -> 0.5 either way. Two batches, added separately.
    let teacher = t2(&[[0.0, 3f64.ln()], [100.0, 0.0], [0.0, 0.0]], DType::F32);
    let mask = Tensor::new(&[1f32, 0., 1.], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[0u32, 0, 1], &Device::Cpu).unwrap();
    let mut top = GammaMean::default();
    let mut data = GammaMean::default();
    assert_eq!(top.value(), None);
    for _ in 0..3 {
        top.add(GammaEstimator::TopToken, &teacher, &mask, None).unwrap();
        data.add(GammaEstimator::DataToken, &teacher, &mask, Some(&targets)).unwrap();
    }
    assert!((top.value().unwrap() - 0.625).abs() < 1e-6);
    assert!((data.value().unwrap() - 0.375).abs() < 1e-6);
    assert_eq!(top.tokens, 6.0);
}
