//! `bd-train run`: clip, teacher data, CAKLD training, export and a perplexity table in one command.
//! Every stage leaves its result in the work directory and is skipped when it is there, so a rerun
//! (after a crash, a kill, or with more steps) continues where the last one stopped:
//!
//! | stage | file in the work directory | cached when |
//! |---|---|---|
//! | clip | `clip.bin` | present and made for the same format and group |
//! | gen-data | `data.jsonl` | every prompt has its record (a partial file is completed) |
//! | train | `train/` (see [`crate::train`]) | `train/summary.json` exists (a checkpoint is resumed) |
//! | export | the `--out` file | never: rewritten from `train/best.safetensors` (seconds) |
//! | evaluate | `eval.json` | the fp/RTN/clip rows, per evaluation text and window |

use crate::checkpoint;
use crate::clip::{clip_model, ClipFile, ClipOptions};
use crate::convert::{write_bd2, ConvertOptions};
use crate::data::{calibration_blocks, encode, load_tokenizer, read_documents, CalibOptions};
use crate::dataset::{read_sequences, split, Sequence};
use crate::eval::perplexity;
use crate::fake_quant::QuantSpec;
use crate::model::Llama;
use crate::teacher::{generate_data, read_prompts, GenOptions, PromptOptions};
use crate::train::{load_student, train, TrainOptions};
use anyhow::{Context, Result};
use bd_formats::config::TensorRole;
use bd_formats::hf::HfCheckpoint;
use bd_formats::DType;
use candle_core::Device;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the text for the perplexity table comes from.
#[derive(Clone, Debug)]
pub struct EvalText {
    pub path: PathBuf,
    /// Window length including BOS (the model's context when `None`).
    pub ctx: Option<usize>,
    /// Score only the first N windows.
    pub chunks: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub spec: QuantSpec,
    pub work: PathBuf,
    pub out: PathBuf,
    pub prompts: PathBuf,
    pub prompt: PromptOptions,
    pub gen: GenOptions,
    /// Calibration text for clipping (the prompts file when `None`); `clip: false` skips clipping.
    pub calib: Option<PathBuf>,
    pub clip: bool,
    pub calib_docs: usize,
    /// Longest training sequence in tokens.
    pub seq_len: usize,
    pub holdout: f64,
    /// Optimizer steps; `None`: `epochs` passes over the training sequences.
    pub steps: Option<usize>,
    pub epochs: f64,
    pub train: TrainOptions,
    pub eval: Option<EvalText>,
    pub progress: bool,
    pub device: Device,
}

/// Learning rate for a model of `params` parameters: the reference's 8e-6 at 7B, larger for smaller
/// models (their gradients are smaller per weight and the 2-bit grid coarser relative to them), as
/// `8e-6 * sqrt(7e9 / params)`, between 8e-6 and 2e-3.
pub fn default_lr(params: usize) -> f64 {
    (8e-6 * (7e9 / params.max(1) as f64).sqrt()).clamp(8e-6, 2e-3)
}

/// Optimizer steps for a run: `steps`, or enough for `epochs` passes over `n_train` sequences
/// (at least one step).
pub fn resolve_steps(steps: Option<usize>, epochs: f64, n_train: usize, t: &TrainOptions) -> Result<usize> {
    match steps {
        Some(0) => anyhow::bail!("--steps must be positive"),
        Some(s) => Ok(s),
        None => {
            anyhow::ensure!(epochs > 0.0 && epochs.is_finite(), "--epochs must be a positive number");
            let per_step = (t.batch.min(n_train) * t.optim.accumulation).max(1) as f64;
            Ok(((epochs * n_train as f64) / per_step).ceil().max(1.0) as usize)
        }
    }
}

/// One row of the perplexity table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub ppl: f64,
    /// The runtime's perplexity of the exported `.bd2` (the trained row only).
    pub runtime_ppl: Option<f64>,
}

/// The result of a run.
pub struct RunReport {
    pub rows: Vec<Row>,
    pub eval_desc: String,
    pub summary: Value,
}

fn stage(name: &str, what: impl std::fmt::Display) {
    eprintln!("== {name}: {what}");
}

/// Run the pipeline on the checkpoint in `teacher_dir`.
pub fn run(teacher_dir: &Path, opts: &RunOptions) -> Result<RunReport> {
    let ckpt = HfCheckpoint::open(teacher_dir).context("cannot load teacher")?;
    let config = ckpt.config().clone();
    let spec = QuantSpec::for_model(opts.spec.format, opts.spec.group, &config)?;
    std::fs::create_dir_all(&opts.work).with_context(|| format!("cannot create work directory {}", opts.work.display()))?;
    let dev = opts.device.clone();
    let tok = load_tokenizer(ckpt.tokenizer_json())?;
    let fp_tensors = ckpt.load_all().context("cannot load teacher")?;
    let teacher = Llama::from_tensors(config.clone(), fp_tensors.clone(), &dev)?.inference();

    // 1. Clipping.
    let clip_path = opts.work.join("clip.bin");
    let clip = if !opts.clip {
        stage("clip", "skipped (--no-clip)");
        None
    } else if let Some(c) =
        ClipFile::load(&clip_path).ok().filter(|c| c.check_spec(spec).is_ok() && c.check_model(&config).is_ok())
    {
        stage("clip", format!("cached {}", clip_path.display()));
        Some(c)
    } else {
        let calib = opts.calib.as_ref().unwrap_or(&opts.prompts);
        stage("clip", format!("searching bounds for {} on {}", spec.describe(), calib.display()));
        let docs = read_documents(calib)?;
        let copts = CalibOptions { docs: opts.calib_docs, block_len: 1024.min(config.max_context), ..CalibOptions::default() };
        let (blocks, _) = calibration_blocks(&tok, config.bos_id, &docs, &copts)?;
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let copt = ClipOptions {
            spec,
            tokens: 512,
            seed: opts.train.seed,
            batch: 1,
            progress: opts.progress,
            source: name(teacher_dir),
            calib: name(calib),
        };
        let c = clip_model(&teacher, &blocks, &copt)?;
        c.save(&clip_path)?;
        Some(c)
    };
    let mut clipped = fp_tensors.clone();
    if let Some(c) = &clip {
        c.apply_all(&mut clipped)?;
    }

    // 2. Teacher data.
    let data_path = opts.work.join("data.jsonl");
    let prompts = read_prompts(&opts.prompts, &opts.prompt)?;
    if prompts.len() < 100 {
        eprintln!(
            "warning: only {} prompts from {} (plain text keeps lines longer than --min-line-chars {}); \
             distillation wants hundreds",
            prompts.len(),
            opts.prompts.display(),
            opts.prompt.min_line_chars
        );
    }
    stage("gen-data", format!("{} prompts from {} -> {}", prompts.len(), opts.prompts.display(), data_path.display()));
    let g = generate_data(&teacher, &tok, &prompts, &data_path, &GenOptions { progress: opts.progress, ..opts.gen.clone() })?;
    if g.generated > 0 {
        eprintln!(
            "   {} new samples, {} tokens in {:.1} s ({:.0} tok/s)",
            g.generated,
            g.new_tokens,
            g.secs,
            g.new_tokens as f64 / g.secs.max(1e-9)
        );
    }
    let seqs = read_sequences(&data_path, &tok, config.bos_id, config.vocab_size, opts.seq_len)?;
    let (train_set, heldout) = split(seqs, opts.holdout, opts.train.seed)?;
    let mut topts = opts.train.clone();
    topts.optim.total_steps = resolve_steps(opts.steps, opts.epochs, train_set.len(), &topts)?;

    // 3. Training.
    let train_dir = opts.work.join("train");
    let files = crate::train::RunFiles::new(&train_dir);
    let mut student = Llama::from_tensors(config.clone(), clipped.clone(), &dev)?;
    student.quant = Some(spec);
    let cached = std::fs::read(files.summary()).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    // A finished run asked for more steps (constant schedule) continues from its checkpoint.
    let summary = if let Some(s) = cached.filter(|s| s["steps"].as_u64() == Some(topts.optim.total_steps as u64)) {
        stage("train", format!("cached {}", files.summary().display()));
        s
    } else {
        stage(
            "train",
            format!(
                "{} on {} sequences ({} held out), {} steps of {}x{} sequences, lr {:.2e}",
                topts.loss,
                train_set.len(),
                heldout.len(),
                topts.optim.total_steps,
                topts.optim.accumulation,
                topts.batch,
                topts.optim.lr
            ),
        );
        let start = Instant::now();
        let s = train(&mut student, &teacher, &train_set, &heldout, &train_dir, &topts, &spec.describe(), true, opts.progress)?;
        eprintln!("   trained in {:.1} s; curve {}", start.elapsed().as_secs_f64(), files.plot().display());
        s.json
    };
    let best = if files.best().exists() { files.best() } else { files.checkpoint() };
    let (_, weights) = checkpoint::load(&best)?;
    load_student(&student, &weights)?;

    // 4. Export.
    stage("export", opts.out.display());
    let clipping = clip.as_ref().map(|c| c.describe()).unwrap_or_else(|| "none".into());
    export(&ckpt, &student, &opts.out, spec, &clipping, summary.clone(), opts.progress)?;

    // 5. Evaluation.
    let (rows, eval_desc) = evaluate(&ckpt, &teacher, &clipped, &student, spec, clip.is_some(), &heldout, opts)?;
    Ok(RunReport { rows, eval_desc, summary })
}

/// Write the student as a packed `.bd2` with the training summary in its header.
pub fn export(
    ckpt: &HfCheckpoint,
    student: &Llama,
    out: &Path,
    spec: QuantSpec,
    clipping: &str,
    summary: Value,
    progress: bool,
) -> Result<()> {
    let tensors = student.to_tensors()?;
    let opts = ConvertOptions {
        format: DType::Quant(spec.format),
        group: spec.group,
        float_dtype: DType::F32,
        clipping: clipping.to_string(),
        training: Some(summary),
        progress,
    };
    write_bd2(ckpt, out, &opts, |s| {
        tensors.iter().find(|(t, _)| t.name == s.name).map(|(_, v)| v.clone()).with_context(|| format!("no tensor {}", s.name))
    })
}

/// Perplexity of fp, RTN, clip+RTN and the trained student, and the runtime's on the exported file.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    ckpt: &HfCheckpoint,
    teacher: &Llama,
    clipped: &[(bd_formats::config::TensorSpec, Vec<f32>)],
    student: &Llama,
    spec: QuantSpec,
    has_clip: bool,
    heldout: &[Sequence],
    opts: &RunOptions,
) -> Result<(Vec<Row>, String)> {
    let config = ckpt.config();
    let tok = load_tokenizer(ckpt.tokenizer_json())?;
    let (stream, ctx, desc, key) = match &opts.eval {
        Some(e) => {
            let body = std::fs::read_to_string(&e.path).with_context(|| format!("cannot read {}", e.path.display()))?;
            let mut stream = encode(&tok, &body)?;
            let ctx = e.ctx.unwrap_or(config.max_context);
            if let Some(n) = e.chunks {
                stream.truncate(n.saturating_mul(ctx - 1));
            }
            let desc = format!(
                "{} (ctx {ctx}{})",
                e.path.display(),
                e.chunks.map(|n| format!(", first {n} windows")).unwrap_or_default()
            );
            (stream, ctx, desc.clone(), desc)
        }
        None => {
            // The held-out teacher samples as one stream, without their BOS (the window adds it).
            let stream: Vec<u32> = heldout.iter().flat_map(|s| s.ids.iter().copied().filter(|&t| t != config.bos_id)).collect();
            anyhow::ensure!(!stream.is_empty(), "nothing to evaluate on: give --eval-text or a non-zero --holdout");
            let ctx = config.max_context;
            (
                stream,
                ctx,
                format!("the {} held-out teacher samples (ctx {ctx})", heldout.len()),
                format!("heldout:{}", heldout.len()),
            )
        }
    };
    stage("evaluate", &desc);
    let cache_path = opts.work.join("eval.json");
    let mut cache: Value = std::fs::read(&cache_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(json!({}));
    let key = format!("{key} | {}", spec.describe());
    let dev = opts.device.clone();
    let mut rows = Vec::new();
    let mut cached_ppl = |name: &str, build: &dyn Fn() -> Result<Llama>| -> Result<f64> {
        if let Some(p) = cache[&key][name].as_f64() {
            return Ok(p);
        }
        let p = perplexity(&build()?, &stream, ctx, opts.progress)?.ppl;
        cache[&key][name] = json!(p);
        crate::atomic::write_atomic(&cache_path, serde_json::to_string_pretty(&cache)?.as_bytes())?;
        Ok(p)
    };
    let fp = cached_ppl("fp", &|| Ok(Llama::from_tensors(config.clone(), teacher.to_tensors()?, &dev)?.inference()))?;
    rows.push(Row { name: "fp (teacher)".into(), ppl: fp, runtime_ppl: None });
    let fq = |t: Vec<(bd_formats::config::TensorSpec, Vec<f32>)>| -> Result<Llama> {
        Llama::from_tensors(config.clone(), t, &dev)?.inference().bake_fake_quant(spec)
    };
    let rtn = cached_ppl("rtn", &|| fq(teacher.to_tensors()?))?;
    rows.push(Row { name: format!("RTN {}", spec.describe()), ppl: rtn, runtime_ppl: None });
    if has_clip {
        let c = cached_ppl("clip", &|| fq(clipped.to_vec()))?;
        rows.push(Row { name: format!("clip + RTN {}", spec.describe()), ppl: c, runtime_ppl: None });
    }
    let trained_tensors = student.to_tensors()?;
    debug_assert!(trained_tensors.iter().any(|(s, _)| s.role == TensorRole::BlockLinear));
    let trained = perplexity(&fq(trained_tensors)?, &stream, ctx, opts.progress)?.ppl;
    let runtime = runtime_perplexity(&opts.out, &stream, ctx)?;
    rows.push(Row {
        name: format!("BitDistiller {} ({})", spec.describe(), opts.train.loss),
        ppl: trained,
        runtime_ppl: Some(runtime),
    });
    Ok((rows, desc))
}

/// Perplexity of a `.bd2` file as `bd-run perplexity` computes it.
pub fn runtime_perplexity(path: &Path, stream: &[u32], ctx: usize) -> Result<f64> {
    let model = bd_runtime::Model::open(path, bd_runtime::ReadOptions::default())
        .with_context(|| format!("runtime: cannot load {}", path.display()))?;
    let bos = model.config().bos_id;
    let mut session = bd_runtime::Session::new(&model, ctx, bd_runtime::default_threads())?;
    Ok(session.with_pool(|s| bd_runtime::perplexity(s, stream, bos, ctx, |_, _, _| {}))?.ppl)
}

/// The table as Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from("| model | perplexity | bd-run perplexity of the .bd2 |\n|---|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.4} | {} |\n",
            r.name,
            r.ppl,
            r.runtime_ppl.map(|p| format!("{p:.4}")).unwrap_or_else(|| "".into())
        ));
    }
    s
}
