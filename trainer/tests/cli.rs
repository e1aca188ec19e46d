//! `bd-train clip`, `eval` and `quantize --clip` end to end on a tiny model, and bad input giving
//! clear errors (non-zero exit, no panic).

mod common;

use bd_formats::bd2::{Bd2File, ReadOptions};
use bd_formats::hf::fixture::TinySpec;
use bd_formats::hf::HfCheckpoint;
use bd_formats::quant::QuantFormat;
use bd_trainer::clip::ClipFile;
use bd_trainer::data::{encode, load_tokenizer};
use bd_trainer::eval::perplexity;
use bd_trainer::fake_quant::{fake_quant, QuantSpec};
use bd_trainer::model::Llama;
use candle_core::{Device, Tensor};
use common::tiny_checkpoint;
use std::path::Path;
use std::process::{Command, Output};

fn bd_train<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bd-train")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args`, expects failure with every `needles` in the message and no panic.
fn fails_with<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], needles: &[&str]) {
    let o = bd_train(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

fn calib_text(dir: &Path) -> String {
    let text: String = (0..60).map(|i| format!("the hello world {i} in the wall on the hill.\n\n")).collect();
    let p = dir.join("calib.txt");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn bad_input_gives_clear_errors() {
    let (dir, hf) = tiny_checkpoint(&TinySpec::default());
    let hf = hf.to_str().unwrap();
    let calib = calib_text(dir.path());
    let out = dir.path().join("c.bin");
    let out = out.to_str().unwrap();
    let clip = |extra: &[&str]| -> Vec<String> {
        ["clip", "--teacher", hf, "--out", out].iter().chain(extra).map(|s| s.to_string()).collect()
    };
    fails_with(
        &clip(&["--format", "int2", "--group", "32", "--calib", "/nonexistent/calib.txt"]),
        &["cannot read calibration file", "/nonexistent/calib.txt"],
    );
    fails_with(&clip(&["--format", "int2", "--group", "256", "--calib", &calib]), &["group size 256", "input dimension 64"]);
    fails_with(&clip(&["--format", "int2", "--group", "48", "--calib", &calib]), &["group size 48 is not supported"]);
    fails_with(&clip(&["--format", "int5", "--calib", &calib]), &["int5", "not a supported quantized format"]);
    fails_with(&clip(&["--format", "f16", "--calib", &calib]), &["f16", "not a supported quantized format"]);
    fails_with(
        &["clip", "--teacher", "/nonexistent/model", "--format", "int2", "--calib", &calib, "--out", out],
        &["cannot load teacher", "/nonexistent/model"],
    );
    fails_with(&["eval", "--teacher", hf, "--text", &calib, "--group", "32"], &["--group needs --format"]);
    fails_with(&["eval", "--teacher", hf], &["nothing to evaluate"]);
    fails_with(&["eval", "--teacher", hf, "--text", "/nonexistent/valid.txt"], &["/nonexistent/valid.txt"]);
    fails_with(&["eval", "--teacher", hf, "--text", &calib, "--ctx", "100000"], &["--ctx 100000"]);
    fails_with(&["eval", "--teacher", hf, "--text", &calib, "--clip", "/nonexistent/clip.bin"], &["/nonexistent/clip.bin"]);
}

#[test]
fn clip_eval_and_quantize_agree_end_to_end() {
    let (dir, hf_path) = tiny_checkpoint(&TinySpec::default());
    let hf = hf_path.to_str().unwrap();
    let calib = calib_text(dir.path());
    let clip_path = dir.path().join("clip.bin");
    let clip_s = clip_path.to_str().unwrap();
    let o = bd_train(&[
        "clip",
        "--teacher",
        hf,
        "--format",
        "int2",
        "--group",
        "32",
        "--calib",
        &calib,
        "--calib-block",
        "64",
        "--calib-blocks",
        "4",
        "--tokens",
        "100",
        "--out",
        clip_s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let clip = ClipFile::load(&clip_path).unwrap();
    assert_eq!(clip.spec, QuantSpec { format: QuantFormat::Int2, group: 32 });
    assert_eq!(clip.tokens, 100);

    // eval --clip --json: the format and group come from the clip file.
    let o = bd_train(&["eval", "--teacher", hf, "--clip", clip_s, "--text", &calib, "--ctx", "32", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ppl = v["ppl"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0);
    assert!(v["tokens"].as_u64().unwrap() > 0 && v["windows"].as_u64().unwrap() > 0);

    // A clip file for another group is refused.
    let bd2 = dir.path().join("m.bd2");
    let bd2_s = bd2.to_str().unwrap();
    fails_with(
        &["quantize", "--teacher", hf, "--format", "int2", "--group", "16", "--clip", clip_s, "--out", bd2_s],
        &["int2 g32", "int2 g16"],
    );
    let o = bd_train(&["quantize", "--teacher", hf, "--format", "int2", "--group", "32", "--clip", clip_s, "--out", bd2_s]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The .bd2 holds exactly the trainer's fake_quant of the clipped weights ...
    let file = Bd2File::open(&bd2, ReadOptions::default()).unwrap();
    assert!(file.header().quant.clipping.contains("asymmetric clip"));
    let ckpt = HfCheckpoint::open(&hf_path).unwrap();
    let mut clipped = ckpt.load_all().unwrap();
    clip.apply_all(&mut clipped).unwrap();
    let mut from_file = Vec::new();
    for (spec, values) in &clipped {
        let t = file.tensor(&spec.name).unwrap();
        let stored = file.tensor_f32(t);
        if t.dtype.quant().is_some() {
            let w = Tensor::from_slice(values, (spec.shape[0], spec.shape[1]), &Device::Cpu).unwrap();
            let fq = fake_quant(&w, clip.spec).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(fq.iter().zip(&stored).all(|(a, b)| a.to_bits() == b.to_bits()), "{}", spec.name);
        } else {
            assert_eq!(&stored, values, "{}", spec.name);
        }
        from_file.push((spec.clone(), stored));
    }
    // ... so a model built from the file scores the same perplexity as `eval --clip`, to the bit.
    let model = Llama::from_tensors(ckpt.config().clone(), from_file, &Device::Cpu).unwrap().inference();
    let tok = load_tokenizer(ckpt.tokenizer_json()).unwrap();
    let stream = encode(&tok, &std::fs::read_to_string(&calib).unwrap()).unwrap();
    assert_eq!(perplexity(&model, &stream, 32, false).unwrap().ppl, ppl);
}
