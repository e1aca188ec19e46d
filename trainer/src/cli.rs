//! The distillation commands of `bd-train` (gen-data, train, export, run, demo): their flags and how
//! each becomes a library call. The commands of Trainer I live in `main.rs`.

use anyhow::{bail, ensure, Context, Result};
use bd_formats::hf::HfCheckpoint;
use bd_trainer::checkpoint;
use bd_trainer::clip::ClipFile;
use bd_trainer::data::load_tokenizer;
use bd_trainer::dataset::{read_sequences, split};
use bd_trainer::demo::{demo, DemoOptions};
use bd_trainer::distill::GammaEstimator;
use bd_trainer::fake_quant::{parse_format, QuantSpec};
use bd_trainer::model::Llama;
use bd_trainer::pipeline::{self, default_lr, export, resolve_steps, EvalText, RunOptions};
use bd_trainer::qat::{Schedule, TrainConfig};
use bd_trainer::teacher::{generate_data, read_prompts, GenOptions, PromptOptions};
use bd_trainer::train::{load_student, train, RunFiles, TrainOptions};
use candle_core::Device;
use clap::Args;
use std::path::{Path, PathBuf};

/// `--device`: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let n = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .with_context(|| format!("--device {s:?}: expected cpu, cuda or cuda:N"))?,
                None => bail!("--device {s:?}: expected cpu, cuda or cuda:N"),
            };
            if !cfg!(feature = "cuda") {
                bail!("--device {s}: this bd-train was built without CUDA (rebuild with `--features cuda`, see the README)");
            }
            Device::new_cuda(n).with_context(|| format!("--device {s}: cannot open the GPU"))
        }
    }
}

/// Prompt selection (gen-data, run).
#[derive(Args, Clone, Debug)]
pub struct PromptArgs {
    /// Prompts: plain text (the first --prompt-chars characters of lines longer than
    /// --min-line-chars) or JSONL ({"instruction", "input"} Alpaca-style, {"prompt"} or {"text"}).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Prompts to use, after a seeded shuffle (default: all).
    #[arg(long)]
    pub n: Option<usize>,
    /// Characters kept from the start of a line.
    #[arg(long, default_value_t = 128)]
    pub prompt_chars: usize,
    /// Plain-text lines of at most this many characters are skipped (512: the WikiText recipe;
    /// TinyStories paragraphs want about 128).
    #[arg(long, default_value_t = 512)]
    pub min_line_chars: usize,
}

/// Teacher sampling (gen-data, run).
#[derive(Args, Clone, Debug)]
pub struct SampleArgs {
    /// Most new tokens per prompt (also bounded by the model's context).
    #[arg(long, default_value_t = 1024)]
    pub max_new: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Prompts generated together (one KV cache, left padding).
    #[arg(long, default_value_t = 32)]
    pub gen_batch: usize,
}

impl SampleArgs {
    fn options(&self, seed: u64, progress: bool) -> GenOptions {
        GenOptions {
            max_new: self.max_new,
            temperature: self.temperature,
            top_p: self.top_p,
            seed,
            batch: self.gen_batch,
            progress,
        }
    }
}

/// The training recipe (train, run).
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Loss: cakld (BitDistiller), fkl (forward KL), rkl (reverse KL), jsd, or ce (cross-entropy on the data).
    #[arg(long, default_value = "cakld")]
    pub loss: String,
    /// CAKLD's gamma (default: estimated from the teacher before training).
    #[arg(long)]
    pub gamma: Option<f64>,
    /// How gamma is estimated: top (mean probability of the teacher's top token) or data (of the data token).
    #[arg(long, default_value = "top")]
    pub gamma_estimator: String,
    /// Training sequences used to estimate gamma (default: all).
    #[arg(long)]
    pub gamma_sequences: Option<usize>,
    /// Peak learning rate (default: 8e-6 * sqrt(7e9 / parameters), between 8e-6 and 2e-3).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Largest global gradient norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// constant or cosine (after warmup).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Optimizer steps (default: --epochs passes over the training sequences).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 4.0)]
    pub epochs: f64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accumulation: usize,
    /// Rows of logits per loss chunk (bounds the memory of the loss).
    #[arg(long, default_value_t = 1024)]
    pub chunk_rows: usize,
    /// Longest training sequence in tokens (default: the model's context, at most 1024).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Share of the sequences held out for evaluation.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    #[arg(long, default_value_t = 25)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 25)]
    pub save_every: usize,
    /// Seed for the data order, the split, and (in run) clipping and sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not train on predicting prompt tokens.
    #[arg(long)]
    pub mask_prompt: bool,
    /// Train only the quantized block linears (embeddings, norms and head frozen).
    #[arg(long)]
    pub freeze_float: bool,
}

impl TrainArgs {
    fn options(&self, params: usize) -> Result<TrainOptions> {
        let gamma_estimator = match self.gamma_estimator.as_str() {
            "top" => GammaEstimator::TopToken,
            "data" => GammaEstimator::DataToken,
            o => bail!("--gamma-estimator {o:?} is not top or data"),
        };
        let schedule = match self.schedule.as_str() {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine,
            o => bail!("--schedule {o:?} is not constant or cosine"),
        };
        if let Some(g) = self.gamma {
            ensure!((0.0..=1.0).contains(&g), "--gamma {g} must be in [0, 1]");
        }
        ensure!(self.grad_clip >= 0.0, "--grad-clip must be >= 0");
        Ok(TrainOptions {
            loss: self.loss.clone(),
            gamma: self.gamma,
            gamma_estimator,
            gamma_sequences: self.gamma_sequences,
            optim: TrainConfig {
                lr: self.lr.unwrap_or_else(|| default_lr(params)),
                betas: (self.beta1, self.beta2),
                eps: self.eps,
                weight_decay: self.weight_decay,
                grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
                schedule,
                warmup_steps: self.warmup,
                total_steps: 0,
                accumulation: self.accumulation,
                chunk_rows: self.chunk_rows,
            },
            batch: self.batch,
            seed: self.seed,
            eval_every: self.eval_every,
            save_every: self.save_every,
            mask_prompt: self.mask_prompt,
            freeze_float: self.freeze_float,
        })
    }
}

fn check_loss(name: &str) -> Result<()> {
    ensure!(bd_trainer::distill::Loss::parse(name, 0.0).is_some(), "--loss {name:?} is not one of cakld, fkl, rkl, jsd, ce");
    Ok(())
}

pub fn gen_data(
    teacher: &Path,
    p: &PromptArgs,
    s: &SampleArgs,
    seed: u64,
    out: &Path,
    device: &Device,
    progress: bool,
) -> Result<()> {
    let ckpt = HfCheckpoint::open(teacher).context("cannot load teacher")?;
    let prompts = read_prompts(
        &p.prompts,
        &PromptOptions { prompt_chars: p.prompt_chars, min_line_chars: p.min_line_chars, n: p.n, seed },
    )?;
    let model = Llama::load(&ckpt, device)?.inference();
    let tok = load_tokenizer(ckpt.tokenizer_json())?;
    eprintln!("gen-data: {} prompts from {} -> {}", prompts.len(), p.prompts.display(), out.display());
    let r = generate_data(&model, &tok, &prompts, out, &s.options(seed, progress))?;
    eprintln!(
        "gen-data: {} already done, {} generated ({} new tokens, {:.1} s, {:.0} tok/s); wrote {}",
        r.resumed,
        r.generated,
        r.new_tokens,
        r.secs,
        r.new_tokens as f64 / r.secs.max(1e-9),
        out.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn train_cmd(
    teacher: &Path,
    format: &str,
    group: usize,
    clip: Option<&Path>,
    data: &Path,
    out_dir: &Path,
    resume: bool,
    t: &TrainArgs,
    device: &Device,
    progress: bool,
) -> Result<()> {
    check_loss(&t.loss)?;
    let ckpt = HfCheckpoint::open(teacher).context("cannot load teacher")?;
    let config = ckpt.config().clone();
    let spec = QuantSpec::for_model(parse_format(format)?, group, &config)?;
    let mut opts = t.options(config.num_params())?;
    let tok = load_tokenizer(ckpt.tokenizer_json())?;
    let seq_len = t.seq_len.unwrap_or(config.max_context.min(1024)).min(config.max_context);
    let seqs = read_sequences(data, &tok, config.bos_id, config.vocab_size, seq_len)?;
    let (train_set, heldout) = split(seqs, t.holdout, t.seed)?;
    opts.optim.total_steps = resolve_steps(t.steps, t.epochs, train_set.len(), &opts)?;
    let fp = ckpt.load_all().context("cannot load teacher")?;
    let mut latent = fp.clone();
    if let Some(path) = clip {
        let c = ClipFile::load(path)?;
        c.check_spec(spec)?;
        c.check_model(&config)?;
        c.apply_all(&mut latent)?;
    }
    let teacher_model = Llama::from_tensors(config.clone(), fp, device)?.inference();
    let mut student = Llama::from_tensors(config, latent, device)?;
    student.quant = Some(spec);
    eprintln!(
        "train: {} {} on {} sequences ({} held out), {} steps of {}x{}, lr {:.2e}",
        opts.loss,
        spec.describe(),
        train_set.len(),
        heldout.len(),
        opts.optim.total_steps,
        opts.optim.accumulation,
        opts.batch,
        opts.optim.lr
    );
    let s = train(&mut student, &teacher_model, &train_set, &heldout, out_dir, &opts, &spec.describe(), resume, progress)?;
    eprintln!(
        "train: done; best held-out loss {} at step {}; weights {}; curve {}",
        s.json["best_heldout_loss"],
        s.json["best_step"],
        s.weights.display(),
        RunFiles::new(out_dir).plot().display()
    );
    Ok(())
}

/// `bd-train export`: the student of a training run directory (or checkpoint file) as `.bd2`.
pub fn export_cmd(teacher: &Path, run: &Path, out: &Path, progress: bool) -> Result<()> {
    let ckpt = HfCheckpoint::open(teacher).context("cannot load teacher")?;
    let files = RunFiles::new(run);
    let weights = if run.is_dir() {
        [files.best(), files.checkpoint()].into_iter().find(|p| p.exists()).with_context(|| {
            format!("{} holds no best.safetensors or checkpoint.safetensors (is it a `bd-train train` directory?)", run.display())
        })?
    } else {
        run.to_path_buf()
    };
    let (state, tensors) = checkpoint::load(&weights)?;
    let student_spec = state["fingerprint"]["student"].as_str().context("the checkpoint does not say its format")?;
    let (format, group) = student_spec.split_once(" g").context("bad student description in the checkpoint")?;
    let spec =
        QuantSpec::for_model(parse_format(format)?, group.parse().context("bad group size in the checkpoint")?, ckpt.config())?;
    let student = Llama::from_tensors(ckpt.config().clone(), ckpt.load_all()?, &Device::Cpu)?;
    load_student(&student, &tensors)?;
    let summary = std::fs::read(files.summary())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"checkpoint": weights.display().to_string(), "state": state}));
    export(&ckpt, &student, out, spec, "see training", summary, progress)?;
    eprintln!("export: {} from {} -> {}", spec.describe(), weights.display(), out.display());
    Ok(())
}

/// The flags of `bd-train run` beyond teacher/format/group/out.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Work directory for the cached stages (default: OUT with `.work` appended).
    #[arg(long)]
    pub work: Option<PathBuf>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Calibration text for clipping (default: the prompts file).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Documents of calibration text for clipping.
    #[arg(long, default_value_t = 128)]
    pub calib_docs: usize,
    /// Skip clipping (plain round-to-nearest initialization).
    #[arg(long)]
    pub no_clip: bool,
    /// Text for the final perplexity table (default: the held-out teacher samples).
    #[arg(long)]
    pub eval_text: Option<PathBuf>,
    /// Window length for --eval-text, BOS included (default: the model's context).
    #[arg(long)]
    pub eval_ctx: Option<usize>,
    /// Score only the first N windows of --eval-text.
    #[arg(long)]
    pub eval_chunks: Option<usize>,
    #[command(flatten)]
    pub train: TrainArgs,
}

pub fn run_cmd(
    teacher: &Path,
    format: &str,
    group: usize,
    out: &Path,
    a: &RunArgs,
    device: &Device,
    progress: bool,
) -> Result<()> {
    check_loss(&a.train.loss)?;
    let ckpt = HfCheckpoint::open(teacher).context("cannot load teacher")?;
    let config = ckpt.config().clone();
    let spec = QuantSpec::for_model(parse_format(format)?, group, &config)?;
    let seq_len = a.train.seq_len.unwrap_or(config.max_context.min(1024)).min(config.max_context);
    let work = a.work.clone().unwrap_or_else(|| {
        let mut w = out.as_os_str().to_owned();
        w.push(".work");
        PathBuf::from(w)
    });
    let opts = RunOptions {
        spec,
        work: work.clone(),
        out: out.to_path_buf(),
        prompts: a.prompt.prompts.clone(),
        prompt: PromptOptions {
            prompt_chars: a.prompt.prompt_chars,
            min_line_chars: a.prompt.min_line_chars,
            n: a.prompt.n,
            seed: a.train.seed,
        },
        gen: a.sample.options(a.train.seed, progress),
        calib: a.calib.clone(),
        clip: !a.no_clip,
        calib_docs: a.calib_docs,
        seq_len,
        holdout: a.train.holdout,
        steps: a.train.steps,
        epochs: a.train.epochs,
        train: a.train.options(config.num_params())?,
        eval: a.eval_text.clone().map(|path| EvalText { path, ctx: a.eval_ctx, chunks: a.eval_chunks }),
        progress,
        device: device.clone(),
    };
    let report = pipeline::run(teacher, &opts)?;
    println!("\nPerplexity on {}:\n", report.eval_desc);
    print!("{}", pipeline::table(&report.rows));
    println!("\nwrote {} (work directory {})", out.display(), work.display());
    Ok(())
}

pub fn demo_cmd(
    work: &Path,
    out: &Path,
    seed: u64,
    pretrain_steps: usize,
    qat_steps: usize,
    device: &Device,
    progress: bool,
) -> Result<()> {
    ensure!(pretrain_steps > 0 && qat_steps > 0, "--pretrain-steps and --qat-steps must be positive");
    demo(&DemoOptions {
        work: work.to_path_buf(),
        out: out.to_path_buf(),
        seed,
        pretrain_steps,
        qat_steps,
        progress,
        device: device.clone(),
    })
}
