//! A training run (ALGORITHM.md section 5): gamma estimated first, then optimizer steps over seeded
//! micro-batches, the held-out loss every `eval_every` steps with the best weights kept, and a
//! resumable checkpoint every `save_every` steps.
//!
//! # Files in the run directory
//! - `checkpoint.safetensors`: student weights, AdamW moments and the run state (resume point);
//! - `best.safetensors`: the student weights with the lowest held-out loss so far;
//! - `metrics.jsonl`: one object per step (`step`, `loss`, `lr`, `grad_norm`, `tokens`, `tok_s`,
//!   `elapsed_s`, and `heldout_loss` on evaluation steps; step 0 is the held-out loss before training);
//! - `loss.svg`: the training and held-out loss curves;
//! - `summary.json`: written when the run is complete (what `.bd2` export stores in its header).
//!
//! # Resuming
//! Everything a step depends on is either in the checkpoint (weights, moments, step counters, gamma,
//! best loss) or a pure function of the options and the step (the micro-batches), so a run killed at
//! any point and resumed with the same options ends with the same weights as an uninterrupted one.
//! The options are stored in the checkpoint and a resume with different ones is refused.

use crate::checkpoint::{self, with_prefix, NamedTensor};
use crate::dataset::{make_batch, micro_batch, Sequence};
use crate::distill::{self, GammaEstimator, GammaMean, Loss};
use crate::model::{ids_tensor, Llama};
use crate::plot::{loss_svg, Series};
use crate::qat::{train_step, AdamW, Schedule, TrainConfig};
use anyhow::{bail, ensure, Context, Result};
use bd_formats::config::TensorRole;
use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything that decides a run's result (stored in its checkpoints).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// "cakld", "fkl", "rkl", "jsd" or "ce".
    pub loss: String,
    /// CAKLD's gamma; estimated from the teacher on the training data when `None`.
    pub gamma: Option<f64>,
    pub gamma_estimator: GammaEstimator,
    /// Sequences used to estimate gamma (all training sequences when `None`).
    pub gamma_sequences: Option<usize>,
    pub optim: TrainConfig,
    /// Sequences per micro-batch.
    pub batch: usize,
    pub seed: u64,
    pub eval_every: usize,
    pub save_every: usize,
    /// Do not teach the student to predict prompt tokens.
    pub mask_prompt: bool,
    /// Train the block linears only (embeddings, norms and head stay as they are).
    pub freeze_float: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            loss: "cakld".into(),
            gamma: None,
            gamma_estimator: GammaEstimator::TopToken,
            gamma_sequences: None,
            optim: TrainConfig::default(),
            batch: 8,
            seed: 0,
            eval_every: 25,
            save_every: 25,
            mask_prompt: false,
            freeze_float: false,
        }
    }
}

impl TrainOptions {
    /// The options as stored in checkpoints and the summary.
    pub fn to_json(&self) -> Value {
        let o = &self.optim;
        json!({
            "loss": self.loss,
            "gamma": self.gamma,
            "gamma_estimator": match self.gamma_estimator { GammaEstimator::TopToken => "top", GammaEstimator::DataToken => "data" },
            "gamma_sequences": self.gamma_sequences,
            "lr": o.lr, "betas": [o.betas.0, o.betas.1], "eps": o.eps, "weight_decay": o.weight_decay,
            "grad_clip": o.grad_clip,
            "schedule": match o.schedule { Schedule::Constant => "constant", Schedule::Cosine => "cosine" },
            "warmup_steps": o.warmup_steps, "steps": o.total_steps, "accumulation": o.accumulation,
            "chunk_rows": o.chunk_rows,
            "batch": self.batch, "seed": self.seed, "eval_every": self.eval_every, "save_every": self.save_every,
            "mask_prompt": self.mask_prompt, "freeze_float": self.freeze_float,
        })
    }
}

/// Where a run keeps its files.
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn plot(&self) -> PathBuf {
        self.dir.join("loss.svg")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
}

/// The student's parameters that train, with their HF names (a `Var` is a shared handle: updates
/// through these reach the model).
fn trainable(student: &Llama, freeze_float: bool) -> Vec<(String, Var)> {
    student
        .named_vars()
        .into_iter()
        .filter(|(s, _)| !freeze_float || s.role == TensorRole::BlockLinear)
        .map(|(s, v)| (s.name, v.clone()))
        .collect()
}

fn tensor_of(name: String, t: &Tensor) -> Result<NamedTensor> {
    Ok((name, t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
}

/// Every student parameter (frozen ones too, so the file alone describes the model).
fn student_tensors(student: &Llama) -> Result<Vec<NamedTensor>> {
    student.named_vars().into_iter().map(|(s, v)| tensor_of(format!("student/{}", s.name), v.as_tensor())).collect()
}

/// Set the student's parameters from `student/<name>` tensors.
pub fn load_student(student: &Llama, tensors: &[NamedTensor]) -> Result<()> {
    let map = with_prefix(tensors, "student/");
    for (spec, var) in student.named_vars() {
        let (_, shape, values) = map.get(spec.name.as_str()).with_context(|| format!("the checkpoint lacks {}", spec.name))?;
        ensure!(*shape == spec.shape, "{} has shape {shape:?} in the checkpoint, {:?} in the model", spec.name, spec.shape);
        var.set(&Tensor::from_vec(values.clone(), shape.as_slice(), student.device())?)?;
    }
    Ok(())
}

/// The teacher's confidence over `seqs` (masked like the training loss).
pub fn estimate_gamma(teacher: &Llama, seqs: &[Sequence], opts: &TrainOptions) -> Result<f64> {
    let n = opts.gamma_sequences.unwrap_or(seqs.len()).min(seqs.len());
    let mut mean = GammaMean::default();
    for chunk in seqs[..n].chunks(opts.batch.max(1)) {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let b = make_batch(&refs, teacher.config.eos_id, opts.mask_prompt)?;
        let rows: Vec<&[u32]> = b.ids.iter().map(|r| r.as_slice()).collect();
        let (bs, s) = (b.ids.len(), b.ids[0].len());
        let logits = teacher.forward(&ids_tensor(&rows, teacher.device())?)?.reshape((bs * s, teacher.config.vocab_size))?;
        let mask = Tensor::from_vec(b.mask.concat(), bs * s, teacher.device())?;
        let targets = Tensor::from_vec(b.targets(), bs * s, teacher.device())?;
        mean.add(opts.gamma_estimator, &logits, &mask, Some(&targets))?;
    }
    mean.value().context("no token to estimate gamma on")
}

/// Mean per-token loss of the student on `seqs` (no gradients).
pub fn heldout_loss(student: &mut Llama, teacher: &Llama, loss: Loss, seqs: &[Sequence], opts: &TrainOptions) -> Result<f64> {
    let was = student.grad;
    student.grad = false;
    let result = (|| -> Result<f64> {
        let (mut sum, mut tokens) = (0f64, 0f64);
        for chunk in seqs.chunks(opts.batch.max(1)) {
            let refs: Vec<&Sequence> = chunk.iter().collect();
            let b = make_batch(&refs, teacher.config.eos_id, opts.mask_prompt)?;
            let rows: Vec<&[u32]> = b.ids.iter().map(|r| r.as_slice()).collect();
            let (bs, s) = (b.ids.len(), b.ids[0].len());
            let v = teacher.config.vocab_size;
            let ids = ids_tensor(&rows, student.device())?;
            let ls = student.forward(&ids)?.reshape((bs * s, v))?;
            let lt = teacher.forward(&ids)?.reshape((bs * s, v))?;
            let targets = Tensor::from_vec(b.targets(), bs * s, student.device())?;
            let mask = Tensor::from_vec(b.loss_mask(loss), bs * s, student.device())?;
            let rows_per = opts.optim.chunk_rows.max(1);
            for start in (0..bs * s).step_by(rows_per) {
                let n = rows_per.min(bs * s - start);
                let r = distill::per_row(
                    loss,
                    &ls.narrow(0, start, n)?,
                    &lt.narrow(0, start, n)?,
                    Some(&targets.narrow(0, start, n)?),
                )?;
                let m = mask.narrow(0, start, n)?;
                sum += (r * &m)?.sum_all()?.to_scalar::<f32>()? as f64;
                tokens += m.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        ensure!(tokens > 0.0, "the held-out set has no token to score");
        Ok(sum / tokens)
    })();
    student.grad = was;
    result
}

/// What a finished run reports (and `summary.json` holds).
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub json: Value,
    /// Where the weights to export are: `best.safetensors`, or the last checkpoint without held-out data.
    pub weights: PathBuf,
}

fn read_metrics(path: &Path, upto: usize) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // A killed run can leave a torn last line; it is past the checkpoint, so dropping it is right.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["step"].as_u64().is_some_and(|s| s as usize <= upto))
        .collect())
}

fn write_plot(files: &RunFiles, metrics: &[Value], loss: &str) -> Result<()> {
    let pick = |key: &str| -> Vec<(f64, f64)> {
        metrics.iter().filter_map(|m| Some((m["step"].as_f64()?, m.get(key)?.as_f64()?))).collect()
    };
    let series = [
        Series { name: "training loss", color: "#1f77b4", points: pick("loss") },
        Series { name: "held-out loss", color: "#d62728", points: pick("heldout_loss") },
    ];
    let svg = loss_svg(&format!("{loss} per token, {}", files.dir.display()), &format!("{loss} per token"), &series);
    crate::atomic::write_atomic(&files.plot(), svg.as_bytes())
}

/// Train `student` against `teacher` on `train_set`, evaluating on `heldout`, in `dir`.
/// With `resume`, an existing checkpoint there is continued; without it, one is an error.
/// `spec` describes the student's quantization (stored with the options).
#[allow(clippy::too_many_arguments)]
pub fn train(
    student: &mut Llama,
    teacher: &Llama,
    train_set: &[Sequence],
    heldout: &[Sequence],
    dir: &Path,
    opts: &TrainOptions,
    spec: &str,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    let o = &opts.optim;
    ensure!(o.total_steps > 0 && opts.batch > 0 && o.accumulation > 0, "--steps, --batch and --accumulation must be positive");
    ensure!(opts.eval_every > 0 && opts.save_every > 0, "--eval-every and --save-every must be positive");
    ensure!(o.lr > 0.0 && o.lr.is_finite(), "--lr must be a positive number");
    ensure!(!train_set.is_empty(), "no training sequences");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = RunFiles::new(dir);
    // With a constant schedule the step count changes nothing before the last step, so it is left
    // out: a finished run can be extended with more steps (the same weights as a longer run).
    let mut options = opts.to_json();
    if o.schedule == Schedule::Constant {
        options["steps"] = Value::Null;
    }
    let fingerprint = json!({"options": options, "student": spec, "train_sequences": train_set.len(),
        "heldout_sequences": heldout.len(), "train_tokens": train_set.iter().map(|s| s.ids.len()).sum::<usize>()});
    let names_vars = trainable(student, opts.freeze_float);
    let vars: Vec<&Var> = names_vars.iter().map(|(_, v)| v).collect();

    let (mut opt, start_step, gamma, mut best, mut metrics);
    if files.checkpoint().exists() {
        if !resume {
            bail!("{} already holds a run: pass --resume to continue it, or choose another directory", dir.display());
        }
        let (state, tensors) = checkpoint::load(&files.checkpoint())?;
        if state["fingerprint"] != fingerprint {
            bail!(
                "{} was started with other options or data:\n  checkpoint: {}\n  now:        {}",
                files.checkpoint().display(),
                state["fingerprint"],
                fingerprint
            );
        }
        let done = state["step"].as_u64().context("no step")? as usize;
        ensure!(
            done <= o.total_steps,
            "{} is at step {done}, past the {} steps asked for",
            files.checkpoint().display(),
            o.total_steps
        );
        load_student(student, &tensors)?;
        let (m, v) = (with_prefix(&tensors, "adam_m/"), with_prefix(&tensors, "adam_v/"));
        let moment = |map: &std::collections::HashMap<&str, &NamedTensor>, name: &str| -> Result<Tensor> {
            let (_, shape, values) = map.get(name).with_context(|| format!("the checkpoint lacks the moments of {name}"))?;
            Ok(Tensor::from_vec(values.clone(), shape.as_slice(), student.device())?)
        };
        let ms = names_vars.iter().map(|(n, _)| moment(&m, n)).collect::<Result<Vec<_>>>()?;
        let vs = names_vars.iter().map(|(n, _)| moment(&v, n)).collect::<Result<Vec<_>>>()?;
        opt = AdamW::from_state(ms, vs, state["adam_steps"].as_u64().context("no adam_steps")? as usize);
        start_step = done;
        gamma = state["gamma"].as_f64();
        best = (state["best_loss"].as_f64(), state["best_step"].as_u64().map(|s| s as usize));
        metrics = read_metrics(&files.metrics(), start_step)?;
        let mut body = String::new();
        for m in &metrics {
            body.push_str(&m.to_string());
            body.push('\n');
        }
        crate::atomic::write_atomic(&files.metrics(), body.as_bytes())?;
        eprintln!("resuming {} at step {start_step} of {}", dir.display(), o.total_steps);
    } else {
        opt = AdamW::new(&vars)?;
        start_step = 0;
        gamma = match (opts.loss.as_str(), opts.gamma) {
            ("cakld", None) => {
                let g = estimate_gamma(teacher, train_set, opts)?;
                eprintln!("gamma (teacher confidence, {} estimator): {g:.4}", opts.to_json()["gamma_estimator"]);
                Some(g)
            }
            (_, g) => g,
        };
        best = (None, None);
        metrics = Vec::new();
        std::fs::write(files.metrics(), "").with_context(|| format!("cannot write {}", files.metrics().display()))?;
        let _ = std::fs::remove_file(files.best());
        let _ = std::fs::remove_file(files.summary());
    }
    let loss = Loss::parse(&opts.loss, gamma.unwrap_or(0.0))
        .with_context(|| format!("--loss {:?} is not one of cakld, fkl, rkl, jsd, ce", opts.loss))?;
    let teacher_opt = loss.needs_teacher().then_some(teacher);

    let mut log = std::fs::OpenOptions::new().append(true).open(files.metrics())?;
    let mut record = |v: Value, metrics: &mut Vec<Value>| -> Result<()> {
        writeln!(log, "{v}").and_then(|_| log.flush()).with_context(|| format!("cannot write {}", files.metrics().display()))?;
        metrics.push(v);
        Ok(())
    };
    let save_best = |student: &Llama, step: usize, l: f64| -> Result<()> {
        checkpoint::save(
            &files.best(),
            &json!({"step": step, "heldout_loss": l, "fingerprint": fingerprint}),
            &student_tensors(student)?,
        )
    };
    if start_step == 0 && !heldout.is_empty() {
        let l = heldout_loss(student, teacher, loss, heldout, opts)?;
        eprintln!("held-out {} before training: {l:.5}", loss.name());
        save_best(student, 0, l)?;
        best = (Some(l), Some(0));
        record(json!({"step": 0, "heldout_loss": l}), &mut metrics)?;
    }

    let bar = if progress { ProgressBar::new(o.total_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("train {bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start_step as u64);
    let started = Instant::now();
    let mut tokens_done = 0f64;
    let mut last_print = Instant::now();
    for step in start_step..o.total_steps {
        let t0 = Instant::now();
        let batches = (0..o.accumulation)
            .map(|j| {
                let idx = micro_batch(train_set.len(), opts.batch, opts.seed, step * o.accumulation + j);
                let refs: Vec<&Sequence> = idx.iter().map(|&i| &train_set[i]).collect();
                make_batch(&refs, teacher.config.eos_id, opts.mask_prompt)
            })
            .collect::<Result<Vec<_>>>()?;
        let st = train_step(student, teacher_opt, loss, &batches, &vars, &mut opt, o)?;
        ensure!(st.loss.is_finite(), "the loss became {} at step {} (try a lower --lr)", st.loss, step + 1);
        tokens_done += st.tokens;
        let secs = started.elapsed().as_secs_f64();
        let tok_s = tokens_done / secs.max(1e-9);
        let mut rec = json!({"step": step + 1, "loss": st.loss_per_token, "lr": st.lr, "grad_norm": st.grad_norm,
            "tokens": st.tokens, "tok_s": tok_s, "step_s": t0.elapsed().as_secs_f64()});
        let last = step + 1 == o.total_steps;
        if !heldout.is_empty() && ((step + 1) % opts.eval_every == 0 || last) {
            let l = heldout_loss(student, teacher, loss, heldout, opts)?;
            rec["heldout_loss"] = json!(l);
            if best.0.is_none_or(|b| l < b) {
                save_best(student, step + 1, l)?;
                best = (Some(l), Some(step + 1));
            }
        }
        bar.set_message(format!(
            "{} {:.4}{}  gamma {}  {:.0} tok/s",
            loss.name(),
            st.loss_per_token,
            rec.get("heldout_loss").and_then(Value::as_f64).map(|h| format!(" (held-out {h:.4})")).unwrap_or_default(),
            gamma.map(|g| format!("{g:.3}")).unwrap_or_else(|| "-".into()),
            tok_s
        ));
        bar.set_position(step as u64 + 1);
        if !progress && (last_print.elapsed().as_secs_f64() > 10.0 || last || rec.get("heldout_loss").is_some()) {
            eprintln!("step {}/{}: {}", step + 1, o.total_steps, bar.message());
            last_print = Instant::now();
        }
        record(rec, &mut metrics)?;
        // A hard stop at a chosen step, for the resume test: `abort` ends the process at once, as a
        // kill would, with no unwinding and no file closed cleanly.
        if std::env::var("BD_TRAIN_ABORT_AFTER_STEP").ok().and_then(|v| v.parse::<usize>().ok()) == Some(step + 1) {
            std::process::abort();
        }
        if (step + 1) % opts.save_every == 0 || last {
            let mut t = student_tensors(student)?;
            let (ms, vs) = opt.state();
            for ((name, _), (m, v)) in names_vars.iter().zip(ms.iter().zip(vs)) {
                t.push(tensor_of(format!("adam_m/{name}"), m)?);
                t.push(tensor_of(format!("adam_v/{name}"), v)?);
            }
            let state = json!({"step": step + 1, "adam_steps": opt.steps, "gamma": gamma, "best_loss": best.0,
                "best_step": best.1, "fingerprint": fingerprint});
            checkpoint::save(&files.checkpoint(), &state, &t)?;
            write_plot(&files, &metrics, loss.name())?;
        }
    }
    bar.finish_and_clear();
    let final_loss = metrics.iter().rev().find_map(|m| m.get("loss").and_then(Value::as_f64));
    let weights = if best.0.is_some() { files.best() } else { files.checkpoint() };
    let json = json!({
        "loss": loss.name(), "gamma": gamma, "steps": o.total_steps, "student": spec,
        "final_train_loss": final_loss, "best_heldout_loss": best.0, "best_step": best.1,
        "train_sequences": train_set.len(), "heldout_sequences": heldout.len(),
        "options": opts.to_json(),
    });
    crate::atomic::write_atomic(&files.summary(), serde_json::to_string_pretty(&json)?.as_bytes())?;
    write_plot(&files, &metrics, loss.name())?;
    Ok(TrainSummary { json, weights })
}
