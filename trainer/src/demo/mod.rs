//! `bd-train demo`: the whole BitDistiller path with no input at all. The program writes a corpus
//! about a small world ([`corpus`]), pretrains a small LLaMA teacher on it, then runs the `run`
//! pipeline at 2 bits (clip, teacher data, CAKLD, export) and shows the perplexity table and what
//! the runtime generates from the fp, the round-to-nearest and the distilled model.
//!
//! Every stage is seeded and cached in the work directory, like `run`'s.

pub mod corpus;

use crate::atomic::write_atomic;
use crate::dataset::{make_batch, Sequence};
use crate::distill::Loss;
use crate::fake_quant::QuantSpec;
use crate::model::Llama;
use crate::pipeline::{self, EvalText, RunOptions};
use crate::qat::{train_step, AdamW, Schedule, TrainConfig};
use crate::rng::Rng;
use crate::teacher::{GenOptions, PromptOptions};
use crate::train::TrainOptions;
use anyhow::{Context, Result};
use bd_formats::config::{ModelConfig, TensorRole};
use bd_formats::hf::fixture::{encode_f32, hf_config_json, write_safetensors, RawTensor};
use bd_formats::quant::QuantFormat;
use candle_core::{Device, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub work: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    /// Optimizer steps of teacher pretraining.
    pub pretrain_steps: usize,
    /// Optimizer steps of distillation.
    pub qat_steps: usize,
    pub progress: bool,
    pub device: Device,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            work: "demo-work".into(),
            out: "demo.bd2".into(),
            seed: 0,
            pretrain_steps: 500,
            qat_steps: 250,
            progress: false,
            device: Device::Cpu,
        }
    }
}

/// The teacher's shape: small enough to pretrain in about two minutes on two cores, deep enough
/// that 2-bit rounding hurts; a context of 128 tokens holds about four documents. The MLP width 176 is not a multiple of the group 32, so the demo also
/// exercises partial groups.
pub fn teacher_config() -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        hidden_size: 64,
        num_layers: 4,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        intermediate_size: 176,
        vocab_size: corpus::vocab_size(),
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        max_context: 128,
        tied_embeddings: true,
        bos_id: 1,
        eos_id: 2,
    }
}

/// Scaled uniform initialization (GPT-2 style): std 0.02 for embeddings, `1/sqrt(fan_in)` for
/// linears, residual outputs shrunk by `sqrt(2 * layers)`; norms at one.
fn init_tensors(c: &ModelConfig, seed: u64) -> Vec<(bd_formats::config::TensorSpec, Vec<f32>)> {
    c.tensor_specs()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.shape.iter().product();
            let mut r = Rng::derive(seed, i as u64);
            let mut uniform = |std: f64| -> Vec<f32> {
                let a = std * 3f64.sqrt();
                (0..n).map(|_| ((2.0 * r.next_f64() - 1.0) * a) as f32).collect()
            };
            let v = if s.role == TensorRole::BlockLinear {
                let fan_in = s.shape[1] as f64;
                let residual = s.name.ends_with("o_proj.weight") || s.name.ends_with("down_proj.weight");
                let shrink = if residual { (2.0 * c.num_layers as f64).sqrt() } else { 1.0 };
                uniform(1.0 / fan_in.sqrt() / shrink)
            } else if s.name.contains("embed_tokens") || s.name == "lm_head.weight" {
                uniform(0.3)
            } else {
                vec![1.0; n]
            };
            (s, v)
        })
        .collect()
}

/// Write `model` as a Hugging Face directory (config, safetensors weights, tokenizer).
fn save_hf(model: &Llama, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(&dir.join("config.json"), hf_config_json(&model.config, "float32").as_bytes())?;
    write_atomic(&dir.join("tokenizer.json"), corpus::tokenizer_json().as_bytes())?;
    let tensors: Vec<RawTensor> = model
        .to_tensors()?
        .into_iter()
        .map(|(s, v)| RawTensor { name: s.name, dtype: "F32", shape: s.shape, data: encode_f32(&v, "F32") })
        .collect();
    // Weights last: their presence marks a finished teacher.
    let tmp = dir.join(".model.safetensors.tmp");
    write_safetensors(&tmp, &tensors).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("model.safetensors")).with_context(|| format!("cannot write {}", dir.display()))?;
    Ok(())
}

/// Pretrain the teacher with cross-entropy on a stream of fresh documents: step `s` writes new
/// documents from its own seed, joins them into one stream and cuts it into 32 windows of
/// `context - 1` tokens, each scored with BOS in front: the perplexity convention, so the teacher
/// learns exactly the task it is evaluated on. It never sees a document twice, so it learns the
/// world rather than a sample of it.
fn pretrain(steps: usize, seed: u64, progress: bool, device: &Device) -> Result<Llama> {
    let c = teacher_config();
    let tok = crate::data::load_tokenizer(corpus::tokenizer_json().as_bytes())?;
    let win = c.max_context - 1;
    let batch_at = |step: usize| -> Result<crate::qat::Batch> {
        let mut r = Rng::derive(seed, 0x9e7 + step as u64);
        let mut stream = Vec::new();
        while stream.len() < 32 * win {
            let docs = corpus::documents(16, r.next_u64());
            stream.extend(crate::data::encode(&tok, &docs.join(" "))?);
        }
        let seqs: Vec<Sequence> = stream
            .chunks_exact(win)
            .take(32)
            .map(|w| Sequence { ids: std::iter::once(c.bos_id).chain(w.iter().copied()).collect(), prompt_tokens: 0 })
            .collect();
        make_batch(&seqs.iter().collect::<Vec<_>>(), c.eos_id, false)
    };
    let model = Llama::from_tensors(c.clone(), init_tensors(&c, seed), device)?;
    let vars: Vec<&Var> = model.named_vars().into_iter().map(|(_, v)| v).collect();
    let cfg = TrainConfig {
        lr: 5e-3,
        schedule: Schedule::Cosine,
        warmup_steps: steps / 20,
        total_steps: steps,
        weight_decay: 0.0,
        ..TrainConfig::default()
    };
    let mut opt = AdamW::new(&vars)?;
    let bar = if progress { ProgressBar::new(steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("pretrain {bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut last = Instant::now();
    for step in 0..steps {
        let st = train_step(&model, None, Loss::CrossEntropy, &[batch_at(step)?], &vars, &mut opt, &cfg)?;
        anyhow::ensure!(st.loss.is_finite(), "pretraining diverged at step {}", step + 1);
        bar.set_message(format!("cross-entropy {:.3}", st.loss_per_token));
        bar.inc(1);
        if !progress && (last.elapsed().as_secs_f64() > 10.0 || step + 1 == steps) {
            eprintln!("pretrain step {}/{steps}: cross-entropy {:.3}", step + 1, st.loss_per_token);
            last = Instant::now();
        }
    }
    bar.finish_and_clear();
    eprintln!("   pretrained in {:.1} s", start.elapsed().as_secs_f64());
    Ok(model)
}

fn write_docs(path: &Path, docs: &[String]) -> Result<()> {
    write_atomic(path, docs.join("\n\n").as_bytes())
}

/// Run the demo (see the module docs); prints the table and the generations to stdout.
pub fn demo(opts: &DemoOptions) -> Result<()> {
    let started = Instant::now();
    let w = &opts.work;
    std::fs::create_dir_all(w).with_context(|| format!("cannot create {}", w.display()))?;
    // 1. The corpus: training and evaluation text from different seeds, and prompts (the first
    //    words of documents from a third) for the teacher to continue.
    let (train_txt, valid_txt, prompts) = (w.join("corpus-train.txt"), w.join("corpus-valid.txt"), w.join("prompts.jsonl"));
    let train_docs = corpus::documents(1000, opts.seed.wrapping_mul(3).wrapping_add(11));
    write_docs(&train_txt, &train_docs)?;
    write_atomic(&valid_txt, corpus::documents(400, opts.seed.wrapping_mul(3).wrapping_add(12)).join(" ").as_bytes())?;
    let lines: Vec<String> = corpus::documents(1200, opts.seed.wrapping_mul(3).wrapping_add(13))
        .iter()
        .map(|d| json!({"prompt": d.split(' ').take(3).collect::<Vec<_>>().join(" ")}).to_string())
        .collect();
    write_atomic(&prompts, (lines.join("\n") + "\n").as_bytes())?;
    eprintln!(
        "== corpus: {} documents for calibration, 400 for evaluation, {} prompts in {}",
        train_docs.len(),
        lines.len(),
        w.display()
    );

    // 2. The teacher.
    let teacher_dir = w.join("teacher");
    if teacher_dir.join("model.safetensors").exists() {
        eprintln!("== pretrain: cached {}", teacher_dir.display());
    } else {
        let c = teacher_config();
        eprintln!(
            "== pretrain: a {}-parameter LLaMA ({} layers, hidden {}, GQA {}/{} heads) for {} steps",
            c.num_params(),
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            opts.pretrain_steps
        );
        let model = pretrain(opts.pretrain_steps, opts.seed, opts.progress, &opts.device)?;
        save_hf(&model, &teacher_dir)?;
    }

    // 3. The BitDistiller pipeline at 2 bits.
    let spec = QuantSpec { format: QuantFormat::Int2, group: 32 };
    let params = teacher_config().num_params();
    let run = RunOptions {
        spec,
        work: w.join("run-int2-g32"),
        out: opts.out.clone(),
        prompts: prompts.clone(),
        prompt: PromptOptions { n: None, seed: opts.seed, ..PromptOptions::default() },
        gen: GenOptions { max_new: 128, temperature: 0.7, top_p: 1.0, seed: opts.seed, batch: 100, progress: opts.progress },
        calib: Some(train_txt.clone()),
        clip: true,
        calib_docs: 128,
        seq_len: 128,
        holdout: 0.1,
        steps: Some(opts.qat_steps),
        epochs: 0.0,
        train: TrainOptions {
            optim: TrainConfig { lr: pipeline::default_lr(params), schedule: Schedule::Constant, ..TrainConfig::default() },
            batch: 16,
            seed: opts.seed,
            eval_every: 50,
            save_every: 50,
            ..TrainOptions::default()
        },
        eval: Some(EvalText { path: valid_txt.clone(), ctx: None, chunks: None }),
        progress: opts.progress,
        device: opts.device.clone(),
    };
    let report = pipeline::run(&teacher_dir, &run)?;

    println!("\nPerplexity on {} ({} parameters, int2 g32):\n", report.eval_desc, params);
    print!("{}", pipeline::table(&report.rows));
    let nll = |name: &str| report.rows.iter().find(|r| r.name.starts_with(name)).map(|r| r.ppl.ln());
    if let (Some(fp), Some(rtn), Some(bd)) = (nll("fp"), nll("RTN"), nll("BitDistiller")) {
        println!(
            "\nBitDistiller recovers {:.0}% of the log-perplexity that 2-bit rounding loses (clipping alone: {:.0}%).",
            100.0 * (rtn - bd) / (rtn - fp),
            100.0 * (rtn - nll("clip").unwrap_or(rtn)) / (rtn - fp)
        );
    }
    println!(
        "gamma {:.4}, loss curve {}",
        report.summary["gamma"].as_f64().unwrap_or(f64::NAN),
        run.work.join("train/loss.svg").display()
    );

    // 4. Generations from the runtime: the fp teacher, plain 2-bit rounding and the distilled file.
    let fp = w.join("teacher-f32.bd2");
    let rtn = w.join("rtn-int2-g32.bd2");
    let convert = |format: &str, out: &Path| -> Result<()> {
        let opts = crate::convert::ConvertOptions {
            format: bd_formats::DType::parse(format).context("format")?,
            group: 32,
            float_dtype: bd_formats::DType::F32,
            clipping: "none".into(),
            training: None,
            progress: false,
        };
        crate::convert::quantize_checkpoint(&teacher_dir, out, &opts)
    };
    convert("f32", &fp)?;
    convert("int2", &rtn)?;
    println!("\nGreedy generations by the runtime (bd-run --temp 0):");
    for prompt in ["mia lives in", "tom has a", "the favorite color of lily is", "ben had three"] {
        println!("\n  prompt: {prompt:?}");
        for (label, path) in [("fp teacher", &fp), ("RTN int2", &rtn), ("BitDistiller int2", &opts.out)] {
            println!("  {label:>18}: {}", generate(path, prompt, 24)?);
        }
    }
    eprintln!("\ndemo finished in {:.1} s; wrote {}", started.elapsed().as_secs_f64(), opts.out.display());
    Ok(())
}

/// Greedy continuation of `prompt` by the runtime.
pub fn generate(path: &Path, prompt: &str, n: usize) -> Result<String> {
    use bd_runtime::{GenerateOptions, Model, ReadOptions, Sampler, SamplerConfig, Session, Tokenizer};
    let model = Model::open(path, ReadOptions::default()).with_context(|| format!("runtime: cannot load {}", path.display()))?;
    let tok = Tokenizer::from_model(&model)?;
    let mut session = Session::new(&model, model.config().max_context, 1)?;
    let mut sampler = Sampler::new(SamplerConfig::greedy(), model.config().vocab_size)?;
    let ids = tok.encode(prompt, true)?;
    let mut text = String::new();
    session.with_pool(|s| {
        bd_runtime::generate(s, &tok, &mut sampler, &ids, &GenerateOptions { max_tokens: n, stop: vec![] }, |t| text.push_str(t))
    })?;
    Ok(text.trim().to_string())
}
