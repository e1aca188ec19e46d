//! The trainer's candle LLaMA and the runtime compute the same model: on tiny checkpoints built here,
//! the trainer's f32 logits equal the runtime's at every position, and a fake-quantized student equals
//! the runtime running the packed `.bd2` of the same weights.

use bd_formats::hf::fixture::{write_tiny_checkpoint, TinySpec};
use bd_formats::hf::HfCheckpoint;
use bd_formats::quant::QuantFormat;
use bd_formats::DType;
use bd_runtime::kernels::{Isa, Kernels};
use bd_runtime::{Model, ReadOptions, Session};
use bd_trainer::convert::{quantize_checkpoint, ConvertOptions};
use bd_trainer::fake_quant::QuantSpec;
use bd_trainer::model::{ids_tensor, Llama};
use candle_core::Device;
use std::path::Path;

fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![1u32];
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(3 + (x % (vocab as u64 - 3)) as u32);
    }
    out
}

/// Trainer logits `[seq][vocab]` of the full-sequence forward.
fn trainer_logits(model: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
    let logits = model.forward(&ids_tensor(&[ids], &Device::Cpu).unwrap()).unwrap();
    logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
}

/// Runtime logits after every token, batched prefill.
fn runtime_logits(path: &Path, ids: &[u32], kernels: Kernels) -> Vec<Vec<f32>> {
    let model = Model::open(path, ReadOptions::default()).unwrap();
    let mut session = Session::with_kernels(&model, ids.len(), 2, kernels).unwrap();
    let mut out = Vec::new();
    session.prefill_all(ids, |_, logits| out.push(logits.to_vec())).unwrap();
    out
}

/// Largest difference relative to the largest logit magnitude.
fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

fn convert(ckpt: &Path, out: &Path, format: DType) {
    let opts =
        ConvertOptions { format, group: 32, float_dtype: DType::F32, clipping: "none".into(), training: None, progress: false };
    quantize_checkpoint(ckpt, out, &opts).unwrap();
}

#[test]
fn trainer_f32_logits_equal_runtime_f32_logits() {
    for spec in [
        TinySpec::default(),
        TinySpec { tied: false, heads: 4, kv_heads: 1, seed: 5, ..TinySpec::default() },
        TinySpec { heads: 2, kv_heads: 2, layers: 3, seed: 9, ..TinySpec::default() },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("hf");
        write_tiny_checkpoint(&ckpt, &spec).unwrap();
        let bd2 = dir.path().join("m.bd2");
        convert(&ckpt, &bd2, DType::F32);

        let teacher = Llama::load(&HfCheckpoint::open(&ckpt).unwrap(), &Device::Cpu).unwrap();
        // 150 tokens: more than one prefill batch of the runtime.
        let ids = tokens(150, spec.seed, teacher.config.vocab_size);
        let want = trainer_logits(&teacher, &ids);
        for isa in Kernels::available() {
            let got = runtime_logits(&bd2, &ids, Kernels::with_isa(isa));
            let d = max_rel_diff(&want, &got);
            assert!(d < 1e-5, "{spec:?} {isa:?}: trainer and runtime f32 logits differ by {d}");
        }
    }
}

#[test]
fn fake_quantized_student_equals_the_packed_model() {
    let spec = TinySpec::default();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("hf");
    write_tiny_checkpoint(&ckpt, &spec).unwrap();
    let teacher = Llama::load(&HfCheckpoint::open(&ckpt).unwrap(), &Device::Cpu).unwrap();
    let ids = tokens(90, 3, teacher.config.vocab_size);
    for format in [QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Nf3, QuantFormat::Int4] {
        let bd2 = dir.path().join(format!("{format}.bd2"));
        convert(&ckpt, &bd2, DType::Quant(format));
        let student = teacher.bake_fake_quant(QuantSpec::for_model(format, 32, &teacher.config).unwrap()).unwrap();
        let want = trainer_logits(&student, &ids);
        // The scalar reference dequantizes exactly; the SIMD kernels quantize activations, so they
        // are held to the looser bound their own tests establish.
        let exact = runtime_logits(&bd2, &ids, Kernels::with_isa(Isa::Reference));
        let d = max_rel_diff(&want, &exact);
        assert!(d < 1e-5, "{format}: reference kernels differ from the fake-quantized student by {d}");
        let fast = runtime_logits(&bd2, &ids, Kernels::detect());
        let d = max_rel_diff(&want, &fast);
        assert!(d < 2e-2, "{format}: {:?} kernels differ from the fake-quantized student by {d}", Kernels::detect().isa());
    }
}
