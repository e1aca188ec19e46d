//! Trainer II end to end on tiny models: teacher data (padding, resuming), training (a run killed
//! mid-way and resumed ends with the same weights), export, the `run` pipeline and the demo, and
//! bad input reported with its line number.

mod common;

use bd_formats::bd2::{Bd2File, ReadOptions};
use bd_formats::hf::fixture::TinySpec;
use bd_trainer::checkpoint;
use bd_trainer::data::load_tokenizer;
use bd_trainer::dataset::read_sequences;
use bd_trainer::model::{ids_tensor, KvCache};
use bd_trainer::rng::Rng;
use bd_trainer::teacher::{generate_data, read_prompts, read_samples, sample_token, GenOptions, PromptOptions};
use common::{tiny_checkpoint, tiny_model};
use std::path::Path;
use std::process::{Command, Output};

fn bd_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bd-train")).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed: {err}");
    err
}

fn prompts_file(dir: &Path, n: usize) -> String {
    let words = ["the", "hello", "world", "in", "on", "hill", "wall", "then", "there", "all"];
    let mut r = Rng::new(3);
    let lines: Vec<String> = (0..n)
        .map(|_| {
            serde_json::json!({"prompt": (0..3 + r.below(5)).map(|_| words[r.below(words.len())]).collect::<Vec<_>>().join(" ")})
                .to_string()
        })
        .collect();
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn left_padded_batches_score_each_row_as_if_alone() {
    let (_d, _c, model) = tiny_model(&TinySpec::default());
    let model = model.inference();
    let dev = candle_core::Device::Cpu;
    let a: Vec<u32> = vec![1, 40, 41, 42, 43, 44];
    let b: Vec<u32> = vec![1, 50, 51];
    let padded_b: Vec<u32> = [vec![1, 1, 1], b.clone()].concat();
    let mut cache = KvCache::default();
    let both = model.forward_cached_padded(&ids_tensor(&[&a, &padded_b], &dev).unwrap(), &mut cache, Some(&[0, 3])).unwrap();
    let next = ids_tensor(&[&[60u32][..], &[61u32][..]], &dev).unwrap();
    let step = model.forward_cached_padded(&next, &mut cache, Some(&[0, 3])).unwrap();
    for (row, ids, pad, nxt) in [(0, &a, 0, 60u32), (1, &b, 3, 61u32)] {
        let full: Vec<u32> = ids.iter().copied().chain([nxt]).collect();
        let alone = model.forward(&ids_tensor(&[&full], &dev).unwrap()).unwrap();
        let v = model.config.vocab_size;
        let want_last_prompt = alone.narrow(1, ids.len() - 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = both
            .narrow(0, row, 1)
            .unwrap()
            .narrow(1, pad + ids.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want_next = alone.narrow(1, ids.len(), 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got_next = step.narrow(0, row, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), v);
        for (x, y) in got.iter().zip(&want_last_prompt).chain(got_next.iter().zip(&want_next)) {
            assert!(x.is_finite() && (x - y).abs() < 1e-4, "row {row}: {x} vs {y}");
        }
    }
}

#[test]
fn sampling_follows_temperature_and_top_p() {
    let logits = [2.0f32, 1.0, 0.0, -1.0];
    let mut r = Rng::new(1);
    assert_eq!(sample_token(&logits, 0.0, 1.0, &mut r), 0);
    // top-p below the top token's probability keeps only it.
    assert!((0..200).all(|_| sample_token(&logits, 1.0, 0.5, &mut r) == 0));
    // At temperature 1 the frequencies follow softmax (exactly reproducible with the seed).
    let mut counts = [0usize; 4];
    for _ in 0..20000 {
        counts[sample_token(&logits, 1.0, 1.0, &mut r) as usize] += 1;
    }
    let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let p = (logits[i] as f64).exp() / z;
        assert!((c as f64 / 20000.0 - p).abs() < 0.015, "token {i}: {c} vs p {p}");
    }
}

#[test]
fn gen_data_resumes_an_interrupted_file_to_the_same_result() {
    let (dir, hf) = tiny_checkpoint(&TinySpec::default());
    let ckpt = bd_formats::hf::HfCheckpoint::open(&hf).unwrap();
    let model = bd_trainer::model::Llama::load(&ckpt, &candle_core::Device::Cpu).unwrap().inference();
    let tok = load_tokenizer(ckpt.tokenizer_json()).unwrap();
    let pfile = prompts_file(dir.path(), 10);
    let prompts = read_prompts(Path::new(&pfile), &PromptOptions { n: Some(9), seed: 2, ..PromptOptions::default() }).unwrap();
    assert_eq!(prompts.len(), 9);
    let opts = GenOptions { max_new: 12, batch: 4, seed: 5, ..GenOptions::default() };
    let full = dir.path().join("full.jsonl");
    let r = generate_data(&model, &tok, &prompts, &full, &opts).unwrap();
    assert_eq!((r.resumed, r.generated), (0, 9));
    let samples = read_samples(&full, false).unwrap();
    assert_eq!(samples.len(), 9);
    for s in &samples {
        assert_eq!(s.ids[0], 1, "BOS first");
        assert!(s.ids.len() > s.prompt_tokens && s.ids.len() <= s.prompt_tokens + 12);
        assert_eq!(s.prompt, prompts[s.index]);
    }
    // Interrupted: the first batch and half a line of the second.
    let bytes = std::fs::read(&full).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let cut: usize = text.lines().take(5).map(|l| l.len() + 1).sum::<usize>() + 20;
    let part = dir.path().join("part.jsonl");
    std::fs::write(&part, &bytes[..cut]).unwrap();
    let r = generate_data(&model, &tok, &prompts, &part, &opts).unwrap();
    assert_eq!((r.resumed, r.generated), (5, 4));
    assert_eq!(std::fs::read(&part).unwrap(), bytes, "resumed file differs from the uninterrupted one");
    // Records from another prompt list are refused.
    let other = read_prompts(Path::new(&pfile), &PromptOptions { n: Some(9), seed: 3, ..PromptOptions::default() }).unwrap();
    let err = format!("{:#}", generate_data(&model, &tok, &other, &full, &opts).unwrap_err());
    assert!(err.contains("not from this prompt list"), "{err}");
}

#[test]
fn malformed_lines_are_reported_with_their_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let tok = load_tokenizer(bd_formats::hf::fixture::tiny_tokenizer_json().as_bytes()).unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(&p, "{\"text\": \"the hill\"}\n\n{\"ids\": [1, 2, 3]}\n{\"ids\": [1, \"x\"]}\n").unwrap();
    let err = format!("{:#}", read_sequences(&p, &tok, 1, 300, 64).unwrap_err());
    assert!(err.contains("line 4") && err.contains("\"ids\""), "{err}");
    std::fs::write(&p, "{\"text\": \"the hill\"}\nnot json\n").unwrap();
    let err = format!("{:#}", read_sequences(&p, &tok, 1, 300, 64).unwrap_err());
    assert!(err.contains("line 2") && err.contains("not valid JSON"), "{err}");
    std::fs::write(&p, "{\"ids\": [1, 999]}\n").unwrap();
    assert!(format!("{:#}", read_sequences(&p, &tok, 1, 300, 64).unwrap_err()).contains("token id 999"));
    std::fs::write(&p, "{\"foo\": 1}\n").unwrap();
    assert!(format!("{:#}", read_sequences(&p, &tok, 1, 300, 64).unwrap_err()).contains("line 1: expected"));
    std::fs::write(&p, "{\"prompt\": \"a\"}\n{\"neither\": 2}\n").unwrap();
    let err = format!("{:#}", read_prompts(&p, &PromptOptions::default()).unwrap_err());
    assert!(err.contains("line 2") && err.contains("\"instruction\""), "{err}");
    // A broken record in the middle of a teacher-data file is an error, not silently dropped.
    std::fs::write(&p, "garbage\n{\"index\": 0}\n").unwrap();
    assert!(format!("{:#}", read_samples(&p, true).unwrap_err()).contains("line 1"));
}

/// Teacher data for a tiny checkpoint, through the CLI.
fn gen_data(hf: &str, dir: &Path) -> String {
    let pfile = prompts_file(dir, 40);
    let data = dir.join("data.jsonl");
    let d = data.to_str().unwrap().to_string();
    ok(&bd_train(&["gen-data", "--teacher", hf, "--prompts", &pfile, "--max-new", "24", "--gen-batch", "16", "--out", &d]));
    d
}

fn train_args<'a>(hf: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--teacher",
        hf,
        "--format",
        "int2",
        "--group",
        "32",
        "--data",
        data,
        "--out-dir",
        out,
        "--steps",
        "9",
        "--batch",
        "4",
        "--accumulation",
        "2",
        "--save-every",
        "3",
        "--eval-every",
        "4",
        "--lr",
        "3e-3",
        "--seed",
        "4",
    ]
}

#[test]
fn a_killed_training_run_resumes_to_the_same_weights() {
    let (dir, hf) = tiny_checkpoint(&TinySpec::default());
    let hf = hf.to_str().unwrap();
    let data = gen_data(hf, dir.path());
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    ok(&bd_train(&train_args(hf, &data, a_s)));

    // Killed after step 7: its last checkpoint is step 6, and metrics.jsonl already has step 7.
    let o = Command::new(env!("CARGO_BIN_EXE_bd-train"))
        .args(train_args(hf, &data, b_s))
        .env("BD_TRAIN_ABORT_AFTER_STEP", "7")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the run was not killed");
    assert!(!b.join("summary.json").exists());
    let (state, _) = checkpoint::load(&b.join("checkpoint.safetensors")).unwrap();
    assert_eq!(state["step"], 6);
    // Without --resume the directory is not overwritten.
    let o = bd_train(&train_args(hf, &data, b_s));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--resume"));
    // With other options it is not resumed.
    let mut other = train_args(hf, &data, b_s);
    other.extend(["--resume", "--loss", "fkl"]);
    assert!(String::from_utf8_lossy(&bd_train(&other).stderr).contains("other options"));
    let mut resume = train_args(hf, &data, b_s);
    resume.push("--resume");
    let err = ok(&bd_train(&resume));
    assert!(err.contains("resuming"), "{err}");

    for file in ["checkpoint.safetensors", "best.safetensors"] {
        let (sa, ta) = checkpoint::load(&a.join(file)).unwrap();
        let (sb, tb) = checkpoint::load(&b.join(file)).unwrap();
        assert_eq!(sa, sb, "{file} state");
        assert_eq!(ta.len(), tb.len());
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!(x.0, y.0);
            assert!(x.2.iter().zip(&y.2).all(|(p, q)| p.to_bits() == q.to_bits()), "{file}: {} differs after resume", x.0);
        }
    }
    let losses = |d: &Path| -> Vec<(u64, Option<f64>, Option<f64>)> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64(), v["heldout_loss"].as_f64()))
            .collect()
    };
    let la = losses(&a);
    assert_eq!(la.len(), 10, "step 0 and 9 steps: {la:?}");
    assert_eq!(la, losses(&b));
    let svg = std::fs::read_to_string(b.join("loss.svg")).unwrap();
    assert!(svg.contains("<polyline") && svg.contains("held-out loss"));

    // A finished run extended to 12 steps ends where a 12-step run does (constant schedule).
    let mut longer = train_args(hf, &data, a_s);
    longer.extend(["--resume"]);
    let i = longer.iter().position(|&x| x == "9").unwrap();
    longer[i] = "12";
    ok(&bd_train(&longer));
    let c = dir.path().join("c");
    let mut fresh = train_args(hf, &data, c.to_str().unwrap());
    fresh[i] = "12";
    ok(&bd_train(&fresh));
    let (_, ta) = checkpoint::load(&a.join("checkpoint.safetensors")).unwrap();
    let (sc, tc) = checkpoint::load(&c.join("checkpoint.safetensors")).unwrap();
    assert_eq!(sc["step"], 12);
    assert!(ta.iter().zip(&tc).all(|(x, y)| x.2 == y.2), "an extended run differs from a longer one");

    // Export: the .bd2 carries the summary and holds the student's fake-quantized weights.
    let out = dir.path().join("s.bd2");
    ok(&bd_train(&["export", "--teacher", hf, "--run", a_s, "--out", out.to_str().unwrap()]));
    let file = Bd2File::open(&out, ReadOptions::default()).unwrap();
    let training = file.header().quant.training.clone().unwrap();
    assert_eq!(training["loss"], "cakld");
    assert_eq!(training["steps"], 12);
    assert!(training["gamma"].as_f64().unwrap() > 0.0);
}

#[test]
fn losses_train_and_freezing_keeps_float_tensors() {
    let (dir, hf) = tiny_checkpoint(&TinySpec::default());
    let hf = hf.to_str().unwrap();
    let data = gen_data(hf, dir.path());
    let out = dir.path().join("f");
    let mut args = train_args(hf, &data, out.to_str().unwrap());
    args.extend(["--freeze-float", "--loss", "rkl", "--mask-prompt"]);
    ok(&bd_train(&args));
    let (_, t) = checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let names: Vec<&str> = t.iter().map(|x| x.0.as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("adam_m/") && n.contains("q_proj")));
    assert!(!names.iter().any(|n| n.starts_with("adam_m/") && n.contains("norm")), "frozen tensors have moments");
    let ckpt = bd_formats::hf::HfCheckpoint::open(Path::new(hf)).unwrap();
    let map = checkpoint::with_prefix(&t, "student/");
    assert_eq!(map["model.norm.weight"].2, ckpt.tensor_f32("model.norm.weight").unwrap());
    assert_ne!(
        map["model.layers.0.self_attn.q_proj.weight"].2,
        ckpt.tensor_f32("model.layers.0.self_attn.q_proj.weight").unwrap()
    );
    let bad = ["--loss", "kl2"];
    let mut args = train_args(hf, &data, out.to_str().unwrap());
    args.extend(bad);
    assert!(String::from_utf8_lossy(&bd_train(&args).stderr).contains("--loss \"kl2\""));
}

#[test]
fn run_pipeline_caches_its_stages_and_runtime_agrees() {
    let (dir, hf) = tiny_checkpoint(&TinySpec::default());
    let hf = hf.to_str().unwrap();
    let pfile = prompts_file(dir.path(), 30);
    let calib: String = (0..60).map(|i| format!("the hello world {i} in the wall on the hill.\n\n")).collect();
    let calib_path = dir.path().join("calib.txt");
    std::fs::write(&calib_path, calib).unwrap();
    let out = dir.path().join("m.bd2");
    let args = [
        "run",
        "--teacher",
        hf,
        "--format",
        "nf3",
        "--group",
        "32",
        "--out",
        out.to_str().unwrap(),
        "--prompts",
        &pfile,
        "--calib",
        calib_path.to_str().unwrap(),
        "--calib-docs",
        "60",
        "--max-new",
        "20",
        "--steps",
        "6",
        "--batch",
        "4",
    ];
    let first = bd_train(&args);
    let err = ok(&first);
    assert!(err.contains("== clip: searching") && err.contains("== train: cakld"), "{err}");
    let table = String::from_utf8_lossy(&first.stdout).into_owned();
    for row in ["fp (teacher)", "RTN nf3 g32", "clip + RTN nf3 g32", "BitDistiller nf3 g32 (cakld)"] {
        assert!(table.contains(row), "{table}");
    }
    // The trained row: the trainer's perplexity and the runtime's on the .bd2, equal to 4 decimals.
    let last = table.lines().find(|l| l.starts_with("| BitDistiller")).unwrap();
    let cells: Vec<&str> = last.split('|').map(str::trim).collect();
    let (trainer, runtime): (f64, f64) = (cells[2].parse().unwrap(), cells[3].parse().unwrap());
    assert!((trainer - runtime).abs() <= 1e-3 * trainer, "{trainer} vs {runtime}");
    // A rerun takes every stage from the cache.
    let again = bd_train(&args);
    let err = ok(&again);
    assert!(err.contains("== clip: cached") && err.contains("== train: cached"), "{err}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), table);
}

#[test]
fn demo_runs_end_to_end_in_small() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let out = dir.path().join("demo.bd2");
    let o = bd_train(&[
        "demo",
        "--work",
        work.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--pretrain-steps",
        "20",
        "--qat-steps",
        "4",
    ]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    for needle in
        ["| fp (teacher) |", "| RTN int2 g32 |", "| clip + RTN int2 g32 |", "BitDistiller int2", "prompt: \"mia lives in\""]
    {
        assert!(stdout.contains(needle), "{needle} missing from {stdout}");
    }
    assert!(Bd2File::open(&out, ReadOptions::default()).is_ok());
}
