//! The candle LLaMA: gradients reach every parameter (teacher and fake-quantized student), the
//! KV-cache forward agrees with the full one, and the evaluation shortcuts change nothing.

mod common;

use bd_formats::hf::fixture::TinySpec;
use bd_formats::quant::QuantFormat;
use bd_trainer::fake_quant::QuantSpec;
use bd_trainer::model::{ids_tensor, log_softmax, KvCache, Llama};
use candle_core::{Device, Tensor};
use common::{tiny_model, tokens};

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Next-token cross-entropy of `rows` (summed), built from basic ops.
fn ce_loss(model: &Llama, rows: &[Vec<u32>]) -> Tensor {
    let dev = Device::Cpu;
    let inputs: Vec<&[u32]> = rows.iter().map(|r| &r[..r.len() - 1]).collect();
    let logits = model.forward(&ids_tensor(&inputs, &dev).unwrap()).unwrap();
    let (b, s, v) = logits.dims3().unwrap();
    let mut onehot = vec![0f32; b * s * v];
    for (i, r) in rows.iter().enumerate() {
        for (p, &t) in r[1..].iter().enumerate() {
            onehot[(i * s + p) * v + t as usize] = 1.0;
        }
    }
    let onehot = Tensor::from_vec(onehot, (b, s, v), &dev).unwrap();
    (log_softmax(&logits).unwrap() * onehot).unwrap().sum_all().unwrap().neg().unwrap()
}

fn assert_every_param_gets_gradient(model: &Llama) {
    let rows: Vec<Vec<u32>> = (0..2).map(|i| tokens(17, 40 + i, model.config.vocab_size)).collect();
    let loss = ce_loss(model, &rows);
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let grads = loss.backward().unwrap();
    for (spec, var) in model.named_vars() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{} gets no gradient", spec.name));
        let g = vec(g);
        assert!(g.iter().all(|x| x.is_finite()), "{}: non-finite gradient", spec.name);
        let norm: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!(norm > 0.0, "{}: gradient is all zero", spec.name);
    }
}

#[test]
fn every_parameter_of_the_teacher_gets_a_nonzero_gradient() {
    for tied in [true, false] {
        let (_d, _c, model) = tiny_model(&TinySpec { tied, ..TinySpec::default() });
        assert_eq!(model.named_vars().len(), model.config.tensor_specs().len());
        assert_every_param_gets_gradient(&model);
    }
}

#[test]
fn every_parameter_of_the_student_gets_a_nonzero_gradient_through_the_ste() {
    let (_d, _c, mut model) = tiny_model(&TinySpec { tied: false, ..TinySpec::default() });
    model.quant = Some(QuantSpec { format: QuantFormat::Int2, group: 32 });
    assert_every_param_gets_gradient(&model);
}

#[test]
fn kv_cache_forward_matches_the_full_forward() {
    let (_d, _c, model) = tiny_model(&TinySpec::default());
    let dev = Device::Cpu;
    let ids = tokens(9, 5, model.config.vocab_size);
    let full = vec(&model.forward(&ids_tensor(&[&ids], &dev).unwrap()).unwrap());
    let v = model.config.vocab_size;
    let mut cache = KvCache::default();
    let mut got = vec(&model.forward_cached(&ids_tensor(&[&ids[..5]], &dev).unwrap(), &mut cache).unwrap());
    for t in 5..9 {
        got.extend(vec(&model.forward_cached(&ids_tensor(&[&ids[t..t + 1]], &dev).unwrap(), &mut cache).unwrap()));
    }
    assert_eq!(cache.len(), 9);
    assert_eq!(got.len(), 9 * v);
    for (i, (a, b)) in got.iter().zip(&full).enumerate() {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "logit {i} (position {}): cached {a} vs full {b}", i / v);
    }
}

#[test]
fn batching_and_inference_mode_do_not_change_logits() {
    let (_d, _c, model) = tiny_model(&TinySpec::default());
    let dev = Device::Cpu;
    let (a, b) = (tokens(12, 1, model.config.vocab_size), tokens(12, 2, model.config.vocab_size));
    let both = vec(&model.forward(&ids_tensor(&[&a, &b], &dev).unwrap()).unwrap());
    let alone = vec(&model.forward(&ids_tensor(&[&b], &dev).unwrap()).unwrap());
    let second = &both[both.len() / 2..];
    for (x, y) in second.iter().zip(&alone) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "batched {x} vs alone {y}");
    }
    let model = model.inference();
    assert_eq!(vec(&model.forward(&ids_tensor(&[&a, &b], &dev).unwrap()).unwrap()), both);
}

#[test]
fn baked_fake_quant_computes_exactly_what_the_student_computes() {
    let (_d, _c, mut model) = tiny_model(&TinySpec::default());
    let dev = Device::Cpu;
    let spec = QuantSpec { format: QuantFormat::Nf3, group: 32 };
    let ids = tokens(10, 3, model.config.vocab_size);
    let baked = model.bake_fake_quant(spec).unwrap();
    model.quant = Some(spec);
    let student = vec(&model.forward(&ids_tensor(&[&ids], &dev).unwrap()).unwrap());
    let baked = vec(&baked.forward(&ids_tensor(&[&ids], &dev).unwrap()).unwrap());
    assert!(student.iter().zip(&baked).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn sequences_longer_than_the_context_are_refused() {
    let (_d, _c, model) = tiny_model(&TinySpec { max_context: 8, ..TinySpec::default() });
    let ids = tokens(9, 3, model.config.vocab_size);
    let err = model.forward(&ids_tensor(&[&ids], &Device::Cpu).unwrap()).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}
