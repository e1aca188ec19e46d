//! Quantization-aware training (ALGORITHM.md section 5): one optimizer step of the student against the
//! frozen teacher, with AdamW on f32 master weights, gradient-norm clipping, a learning-rate schedule
//! and gradient accumulation.
//!
//! The student is a [`Llama`] whose block linears compute with `fake_quant(W)` through the STE, so
//! the gradient of every loss reaches the latent f32 weights unchanged. The loss is evaluated in row
//! chunks by [`distill::loss_and_grad`] and enters the graph through [`distill::surrogate`].

use crate::distill::{self, Loss};
use crate::model::{ids_tensor, Llama};
use anyhow::{ensure, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};

/// How the learning rate moves over training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// Cosine decay from the peak to 0 over the steps after warmup.
    Cosine,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// Largest global gradient norm; `None` leaves gradients as they are.
    pub grad_clip: Option<f64>,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Micro-batches summed into one optimizer step.
    pub accumulation: usize,
    /// Rows of logits per loss chunk (memory bound: one `[chunk, vocab]` block at a time).
    pub chunk_rows: usize,
}

impl Default for TrainConfig {
    /// The reference recipe's optimizer (ALGORITHM.md section 5).
    fn default() -> Self {
        Self {
            lr: 8e-6,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            schedule: Schedule::Constant,
            warmup_steps: 0,
            total_steps: 200,
            accumulation: 1,
            chunk_rows: 1024,
        }
    }
}

impl TrainConfig {
    /// Learning rate of optimizer step `step` (0-based): linear warmup, then the schedule.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// AdamW with decoupled weight decay. The variables are the f32 master weights; moments are f32.
pub struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimizer steps taken (bias correction uses it).
    pub steps: usize,
}

impl AdamW {
    pub fn new(vars: &[&Var]) -> Result<Self> {
        let zeros = |v: &&Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            steps: 0,
        })
    }

    /// The moments, for checkpoints.
    pub fn state(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    pub fn from_state(m: Vec<Tensor>, v: Vec<Tensor>, steps: usize) -> Self {
        Self { m, v, steps }
    }

    /// One update of every variable with its gradient (`None`: no gradient this step, left alone).
    pub fn step(&mut self, cfg: &TrainConfig, lr: f64, vars: &[&Var], grads: &[Option<Tensor>]) -> Result<()> {
        ensure!(
            vars.len() == self.m.len() && grads.len() == vars.len(),
            "optimizer built for {} variables, got {}",
            self.m.len(),
            vars.len()
        );
        self.steps += 1;
        let (b1, b2) = cfg.betas;
        let c1 = 1.0 - b1.powi(self.steps as i32);
        let c2 = 1.0 - b2.powi(self.steps as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + cfg.eps)?)?;
            let w = var.as_tensor();
            let decayed = if cfg.weight_decay > 0.0 { (w * (1.0 - lr * cfg.weight_decay))? } else { w.clone() };
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Sum of squares of every gradient, as the global norm.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// Scale gradients so their global norm is at most `max`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if norm > max {
        let s = max / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

/// A micro-batch: token rows of equal length and a 0/1 mask per token (0 = padding or a masked
/// prompt token).
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    pub mask: Vec<Vec<f32>>,
}

impl Batch {
    pub fn new(ids: Vec<Vec<u32>>, mask: Vec<Vec<f32>>) -> Result<Self> {
        ensure!(!ids.is_empty(), "a batch needs at least one sequence");
        let len = ids[0].len();
        ensure!(len >= 2, "sequences need at least two tokens");
        ensure!(
            ids.iter().all(|r| r.len() == len) && mask.len() == ids.len() && mask.iter().all(|m| m.len() == len),
            "batch rows must have equal lengths"
        );
        Ok(Self { ids, mask })
    }

    /// Each position's next data token, flattened row by row (0 after the last position).
    pub fn targets(&self) -> Vec<u32> {
        self.ids.iter().flat_map(|r| r[1..].iter().copied().chain([0])).collect()
    }

    /// The 0/1 weight of every position in `loss`, flattened row by row: the mask, and for
    /// cross-entropy also 0 where the next token is masked (padding) and at each row's end.
    pub fn loss_mask(&self, loss: Loss) -> Vec<f32> {
        let mut mask: Vec<f32> = self.mask.concat();
        if loss == Loss::CrossEntropy {
            let s = self.ids[0].len();
            for (r, row) in self.mask.iter().enumerate() {
                for t in 0..s {
                    mask[r * s + t] *= if t + 1 < s { row[t + 1] } else { 0.0 };
                }
            }
        }
        mask
    }
}

/// What one micro-batch gave.
pub struct MicroStep {
    /// The loss the gradient is of: masked sum of per-token losses over the batch's sequences.
    pub loss: f64,
    /// Tokens that counted.
    pub tokens: f64,
    /// Sum of per-token losses (`loss` times the number of sequences).
    pub loss_sum: f64,
    /// The gradient of every student variable (in `vars` order); `None` where it gets none.
    pub grads: Vec<Option<Tensor>>,
}

/// Loss of one micro-batch and the gradient of every student variable (in `vars` order).
///
/// Distillation losses compare the two next-token distributions at every unmasked position;
/// cross-entropy scores each position's next data token, so it also drops positions whose next
/// token is masked (padding) and the last position of every row.
pub fn micro_step(
    student: &Llama,
    teacher: Option<&Llama>,
    loss: Loss,
    batch: &Batch,
    vars: &[&Var],
    chunk_rows: usize,
) -> Result<MicroStep> {
    let dev = student.device().clone();
    let rows: Vec<&[u32]> = batch.ids.iter().map(|r| r.as_slice()).collect();
    let ids = ids_tensor(&rows, &dev)?;
    let (b, s) = (batch.ids.len(), batch.ids[0].len());
    let logits = student.forward(&ids)?;
    let vocab = logits.dim(2)?;
    let flat = logits.reshape((b * s, vocab))?;
    let mask = Tensor::from_vec(batch.loss_mask(loss), b * s, &dev)?;
    let targets = Tensor::from_vec(batch.targets(), b * s, &dev)?;
    let teacher_logits = match (loss.needs_teacher(), teacher) {
        (true, Some(t)) => t.forward(&ids)?.reshape((b * s, vocab))?.detach(),
        (true, None) => anyhow::bail!("loss {} needs a teacher", loss.name()),
        (false, _) => flat.zeros_like()?,
    };
    let lg = distill::loss_and_grad(loss, &flat, &teacher_logits, &mask, Some(&targets), b, chunk_rows)?;
    let grads: GradStore = distill::surrogate(&flat, &lg.grad)?.backward()?;
    Ok(MicroStep {
        loss: lg.loss,
        tokens: lg.tokens,
        loss_sum: lg.loss * b as f64,
        grads: vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect(),
    })
}

/// What one optimizer step gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean over the micro-batches of their loss (the quantity optimized).
    pub loss: f64,
    /// The same losses per counted token: sum over tokens / tokens.
    pub loss_per_token: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: f64,
    pub lr: f64,
}

/// One optimizer step over `accumulation` micro-batches: gradients summed, averaged, clipped, applied.
pub fn train_step(
    student: &Llama,
    teacher: Option<&Llama>,
    loss: Loss,
    batches: &[Batch],
    vars: &[&Var],
    opt: &mut AdamW,
    cfg: &TrainConfig,
) -> Result<StepStats> {
    ensure!(!batches.is_empty(), "a step needs at least one micro-batch");
    let mut sum: Vec<Option<Tensor>> = vec![None; vars.len()];
    let (mut total, mut loss_sum, mut tokens) = (0.0, 0.0, 0.0);
    for batch in batches {
        let m = micro_step(student, teacher, loss, batch, vars, cfg.chunk_rows)?;
        total += m.loss;
        loss_sum += m.loss_sum;
        tokens += m.tokens;
        for (acc, g) in sum.iter_mut().zip(m.grads) {
            *acc = match (acc.take(), g) {
                (Some(a), Some(g)) => Some((a + g)?),
                (a, g) => a.or(g),
            };
        }
    }
    let n = batches.len() as f64;
    for g in sum.iter_mut().flatten() {
        *g = (&*g / n)?;
    }
    let grad_norm = match cfg.grad_clip {
        Some(max) => clip_grad_norm(&mut sum, max)?,
        None => global_norm(&sum)?,
    };
    let lr = cfg.lr_at(opt.steps);
    opt.step(cfg, lr, vars, &sum)?;
    Ok(StepStats { loss: total / n, loss_per_token: loss_sum / tokens.max(1.0), grad_norm, tokens, lr })
}

#[cfg(test)]
mod tests;
