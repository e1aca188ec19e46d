//! Perplexity in llama.cpp's convention: the text is one token stream without BOS, cut into
//! consecutive windows of `ctx - 1` tokens (the last may be shorter); each window is scored with BOS
//! in front, every window token predicted. PPL = exp(mean negative log-likelihood).

use crate::error::{Result, RuntimeError};
use crate::session::Session;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Tokens scored.
    pub tokens: usize,
    pub windows: usize,
    /// Sum of the negative log-likelihoods (natural log).
    pub nll_sum: f64,
}

/// Score `tokens` with windows of `ctx` positions (BOS plus `ctx - 1` tokens). `progress` is called
/// after each window with (windows done, windows in all, perplexity so far).
pub fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    bos: u32,
    ctx: usize,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if ctx < 2 || ctx > session.ctx() {
        return Err(RuntimeError::InvalidArgument(format!(
            "perplexity context {ctx} must be in 2..={} (BOS plus at least one token)",
            session.ctx()
        )));
    }
    if tokens.is_empty() {
        return Err(RuntimeError::InvalidArgument("no tokens to score (is the text empty?)".into()));
    }
    let vocab = session.model().config().vocab_size;
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(RuntimeError::BadToken { id, vocab });
    }
    let per_window = ctx - 1;
    let windows = tokens.len().div_ceil(per_window);
    let mut input = Vec::with_capacity(per_window);
    let (mut nll_sum, mut scored) = (0f64, 0usize);
    for (w, window) in tokens.chunks(per_window).enumerate() {
        // Inputs BOS, t0 .. t(n-2) predict t0 .. t(n-1).
        input.clear();
        input.push(bos);
        input.extend_from_slice(&window[..window.len() - 1]);
        session.reset();
        session.prefill_all(&input, |i, logits| nll_sum += nll(logits, window[i]))?;
        scored += window.len();
        progress(w + 1, windows, (nll_sum / scored as f64).exp());
    }
    session.reset();
    Ok(Perplexity { ppl: (nll_sum / scored as f64).exp(), tokens: scored, windows, nll_sum })
}

/// `-log softmax(logits)[target]`, in f64 so that a long sum does not drift.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}
