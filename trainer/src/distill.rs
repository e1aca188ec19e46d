//! Distillation losses (ALGORITHM.md section 4): forward KL, reverse KL, CAKLD, JSD and cross-entropy,
//! and the teacher-confidence coefficient gamma.
//!
//! Every divergence is a per-token sum over the whole vocabulary, computed in f32. Padding is masked;
//! the masked sum over tokens is divided by the number of sequences in the batch (the reference's
//! reduction). To keep memory bounded the loss is evaluated over chunks of rows, each chunk's
//! gradient with respect to the student logits is taken on its own, and [`surrogate`] then carries
//! the whole gradient into the model in one backward pass: at no time is more than one
//! `[chunk, vocab]` block of softmax intermediates alive.

use candle_core::{DType, Result, Tensor, Var, D};

/// Which divergence the student minimises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// KL(p_T || p_S): mode covering.
    ForwardKl,
    /// KL(p_S || p_T): mode seeking.
    ReverseKl,
    /// gamma * KL(p_S || p_T) + (1 - gamma) * KL(p_T || p_S).
    Cakld { gamma: f64 },
    /// beta * KL(p_T || m) + (1 - beta) * KL(p_S || m) with m = beta * p_T + (1 - beta) * p_S.
    Jsd { beta: f64 },
    /// -log p_S(data token).
    CrossEntropy,
}

impl Loss {
    pub fn name(&self) -> &'static str {
        match self {
            Loss::ForwardKl => "fkl",
            Loss::ReverseKl => "rkl",
            Loss::Cakld { .. } => "cakld",
            Loss::Jsd { .. } => "jsd",
            Loss::CrossEntropy => "ce",
        }
    }

    /// Parse a loss name; `gamma` is CAKLD's coefficient (estimated before training).
    pub fn parse(name: &str, gamma: f64) -> Option<Loss> {
        match name {
            "fkl" | "forward_kl" => Some(Loss::ForwardKl),
            "rkl" | "reverse_kl" => Some(Loss::ReverseKl),
            "cakld" => Some(Loss::Cakld { gamma }),
            "jsd" => Some(Loss::Jsd { beta: 0.5 }),
            "ce" | "cross_entropy" => Some(Loss::CrossEntropy),
            _ => None,
        }
    }

    pub fn needs_teacher(&self) -> bool {
        !matches!(self, Loss::CrossEntropy)
    }
}

/// `log_softmax` over the last dimension, with a gradient to its input (candle-nn's fused softmax
/// passes none). The max is detached: log_softmax does not depend on the shift.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

fn kl(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    (log_p.exp()? * (log_p - log_q)?)?.sum(D::Minus1)
}

/// The loss of every row: `[rows]` for logits `[rows, vocab]`. `targets` (`[rows]`, u32) is needed
/// for cross-entropy only; `teacher` is ignored by it.
pub fn per_row(loss: Loss, student: &Tensor, teacher: &Tensor, targets: Option<&Tensor>) -> Result<Tensor> {
    let ls = log_softmax(student)?;
    if loss == Loss::CrossEntropy {
        let t = targets.ok_or_else(|| candle_core::Error::Msg("cross-entropy needs the data tokens".into()))?;
        return ls.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.neg();
    }
    let lt = log_softmax(teacher)?;
    match loss {
        Loss::ForwardKl => kl(&lt, &ls),
        Loss::ReverseKl => kl(&ls, &lt),
        Loss::Cakld { gamma } => kl(&ls, &lt)?.affine(gamma, 0.0)? + kl(&lt, &ls)?.affine(1.0 - gamma, 0.0)?,
        Loss::Jsd { beta } => {
            let m = (lt.exp()?.affine(beta, 0.0)? + ls.exp()?.affine(1.0 - beta, 0.0)?)?.log()?;
            kl(&lt, &m)?.affine(beta, 0.0)? + kl(&ls, &m)?.affine(1.0 - beta, 0.0)?
        }
        Loss::CrossEntropy => unreachable!(),
    }
}

/// A loss value and its gradient with respect to the student logits.
pub struct LossGrad {
    /// Masked sum of per-token losses over the batch's sequences.
    pub loss: f64,
    /// d loss / d student logits, `[rows, vocab]`, f32.
    pub grad: Tensor,
    /// Tokens that counted (mask = 1).
    pub tokens: f64,
}

/// Loss and gradient of `sum(mask * per_row) / sequences`, evaluated `chunk_rows` rows at a time.
///
/// `student` and `teacher` are `[rows, vocab]` logits (any float dtype; computed in f32), `mask` is
/// `[rows]` of 0/1, `targets` `[rows]` of u32 (cross-entropy only).
pub fn loss_and_grad(
    loss: Loss,
    student: &Tensor,
    teacher: &Tensor,
    mask: &Tensor,
    targets: Option<&Tensor>,
    sequences: usize,
    chunk_rows: usize,
) -> Result<LossGrad> {
    let rows = student.dim(0)?;
    let chunk_rows = chunk_rows.max(1);
    let mask = mask.to_dtype(DType::F32)?;
    let scale = 1.0 / sequences.max(1) as f64;
    let (mut total, mut grads) = (0f64, Vec::with_capacity(rows.div_ceil(chunk_rows)));
    for start in (0..rows).step_by(chunk_rows) {
        let n = chunk_rows.min(rows - start);
        let z = Var::from_tensor(&student.narrow(0, start, n)?.detach().to_dtype(DType::F32)?)?;
        let t = teacher.narrow(0, start, n)?.detach().to_dtype(DType::F32)?;
        let y = targets.map(|t| t.narrow(0, start, n)).transpose()?;
        let r = per_row(loss, z.as_tensor(), &t, y.as_ref())?;
        let l = (r * mask.narrow(0, start, n)?)?.sum_all()?.affine(scale, 0.0)?;
        total += l.to_scalar::<f32>()? as f64;
        let g = l.backward()?;
        grads.push(g.get(z.as_tensor()).cloned().unwrap_or(z.as_tensor().zeros_like()?));
    }
    let tokens = mask.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(LossGrad { loss: total, grad: Tensor::cat(&grads, 0)?, tokens })
}

/// A scalar whose gradient with respect to `logits` is `grad`: backpropagating it sends a gradient
/// computed outside the graph (by [`loss_and_grad`]) into the model.
pub fn surrogate(logits: &Tensor, grad: &Tensor) -> Result<Tensor> {
    (logits.to_dtype(DType::F32)? * grad.detach())?.sum_all()
}

/// How gamma (the teacher's confidence) is estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GammaEstimator {
    /// Mean probability of the teacher's top token (ALGORITHM.md's definition).
    TopToken,
    /// Mean probability the teacher gives the data token (the paper's formula).
    DataToken,
}

/// An exact running mean over unmasked tokens (the reference averages padding in and divides 11
/// batches by 10; this does neither).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GammaMean {
    pub sum: f64,
    pub tokens: f64,
}

impl GammaMean {
    /// Add a batch: teacher logits `[rows, vocab]`, mask `[rows]`, data tokens `[rows]` (u32, needed
    /// by [`GammaEstimator::DataToken`]).
    pub fn add(&mut self, est: GammaEstimator, teacher: &Tensor, mask: &Tensor, targets: Option<&Tensor>) -> Result<()> {
        let lp = log_softmax(&teacher.to_dtype(DType::F32)?)?;
        let p = match est {
            GammaEstimator::TopToken => lp.max(D::Minus1)?.exp()?,
            GammaEstimator::DataToken => {
                let t =
                    targets.ok_or_else(|| candle_core::Error::Msg("the data-token estimator needs the data tokens".into()))?;
                lp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?.exp()?
            }
        };
        let mask = mask.to_dtype(DType::F32)?;
        self.sum += (p * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
        self.tokens += mask.sum_all()?.to_scalar::<f32>()? as f64;
        Ok(())
    }

    /// The mean, or `None` before any unmasked token.
    pub fn value(&self) -> Option<f64> {
        (self.tokens > 0.0).then(|| self.sum / self.tokens)
    }
}

#[cfg(test)]
mod tests;
