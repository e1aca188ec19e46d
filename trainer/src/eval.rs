//! Evaluation: perplexity with the runtime's convention, and multiple-choice log-likelihood scoring.
//!
//! # Perplexity
//! The text is tokenized as one stream without BOS, cut into consecutive windows of `ctx - 1`
//! tokens (the last may be shorter); each window is scored with BOS prepended, every window token
//! is predicted (the first from BOS alone), and `PPL = exp(mean NLL)` over all window tokens. NLLs
//! are `logsumexp - logit` computed in f64 from the f32 logits and summed in stream order.
//!
//! # Multiple choice (lm-eval-harness's `loglikelihood` and `multiple_choice` metrics)
//! A JSONL file, one item per line: `{"context": "...", "choices": ["...", ...], "answer": i}`.
//! Each choice is scored as the continuation `delimiter + choice` (lm-eval-harness's
//! `target_delimiter`, " " by default) of the context: whitespace at the end of the context moves
//! to the continuation, `whole = encode(context + continuation)`, `ctx = encode(context)`, and the
//! continuation tokens are `whole[len(ctx)..]`. Its score is the sum of the log-probabilities of
//! those tokens given BOS, the context and the tokens before them (left-truncated to the model's
//! context). `acc`: the highest sum is the answer; `acc_norm`: the highest sum divided by the
//! choice's length in UTF-8 bytes (the harness divides by `len(choice)`, the same for ASCII).
//! Ties go to the first choice, as `numpy.argmax` does.

use crate::data::encode;
use crate::model::{ids_tensor, Llama};
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use std::path::Path;
use tokenizers::Tokenizer;

/// Perplexity and what it was measured on (`--json` prints these three fields).
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub tokens: usize,
    pub windows: usize,
}

/// Largest activation one batched forward pass may produce, in f32 elements (64 MiB).
const MAX_ACTIVATION: usize = 1 << 20;

/// Windows of `s` tokens per forward pass: the widest per-token activation (logits, attention
/// scores of all heads, MLP) times `s` times the batch stays under [`MAX_ACTIVATION`].
fn batch_for(model: &Llama, s: usize) -> usize {
    let c = &model.config;
    let widest = c.vocab_size.max(c.num_heads * s).max(c.intermediate_size).max(c.hidden_size);
    (MAX_ACTIVATION / (s * widest)).max(1)
}

/// `-log softmax(logits)[target]`, in f64.
pub fn token_nll(logits: &[f32], target: u32) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    m + sum.ln() - logits[target as usize] as f64
}

/// Perplexity of `model` on the token `stream` with windows of `ctx - 1` tokens.
pub fn perplexity(model: &Llama, stream: &[u32], ctx: usize, progress: bool) -> Result<Perplexity> {
    let c = &model.config;
    ensure!(ctx >= 2 && ctx <= c.max_context, "--ctx {ctx} must be between 2 and the model's context {}", c.max_context);
    ensure!(!stream.is_empty(), "the text has no tokens");
    if let Some(&t) = stream.iter().find(|&&t| t as usize >= c.vocab_size) {
        bail!("token id {t} is not below the model's vocabulary size {} (tokenizer and model disagree)", c.vocab_size);
    }
    let win = ctx - 1;
    let windows: Vec<&[u32]> = stream.chunks(win).collect();
    let batch = batch_for(model, win);
    let bar = if progress { ProgressBar::new(windows.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("ppl {bar:30} {pos}/{len} windows {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut nll = 0f64;
    let mut i = 0;
    while i < windows.len() {
        // Equal-length windows share a forward pass; only the last can be shorter.
        let n = windows[i..].iter().take(batch).take_while(|w| w.len() == windows[i].len()).count();
        let group = &windows[i..i + n];
        let inputs: Vec<Vec<u32>> =
            group.iter().map(|w| std::iter::once(c.bos_id).chain(w[..w.len() - 1].iter().copied()).collect()).collect();
        let rows: Vec<&[u32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let logits = model.forward(&ids_tensor(&rows, model.device())?)?.flatten_all()?.to_vec1::<f32>()?;
        let v = c.vocab_size;
        for (b, w) in group.iter().enumerate() {
            for (p, &t) in w.iter().enumerate() {
                let at = (b * w.len() + p) * v;
                nll += token_nll(&logits[at..at + v], t);
            }
        }
        bar.inc(n as u64);
        i += n;
    }
    bar.finish_and_clear();
    Ok(Perplexity { ppl: (nll / stream.len() as f64).exp(), tokens: stream.len(), windows: windows.len() })
}

/// One multiple-choice item.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McItem {
    pub context: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// Read a multiple-choice JSONL file (blank lines skipped); errors name the line.
pub fn read_mc(path: &Path) -> Result<Vec<McItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: McItem = serde_json::from_str(line).with_context(|| {
            format!("{} line {}: expected {{\"context\": str, \"choices\": [str], \"answer\": int}}", path.display(), i + 1)
        })?;
        ensure!(!item.choices.is_empty(), "{} line {}: no choices", path.display(), i + 1);
        ensure!(
            item.answer < item.choices.len(),
            "{} line {}: answer {} but only {} choices",
            path.display(),
            i + 1,
            item.answer,
            item.choices.len()
        );
        items.push(item);
    }
    ensure!(!items.is_empty(), "{} holds no items", path.display());
    Ok(items)
}

/// The (context, continuation) token ids lm-eval-harness would score for one choice.
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let (context, continuation) = (trimmed, format!("{}{continuation}", &context[trimmed.len()..]));
    let whole = encode(tok, &format!("{context}{continuation}"))?;
    let ctx = encode(tok, context)?;
    ensure!(whole.len() > ctx.len(), "continuation {continuation:?} of context {context:?} adds no tokens");
    let cont = whole[ctx.len()..].to_vec();
    Ok((ctx, cont))
}

/// Accuracy of a multiple-choice set.
#[derive(Clone, Debug, PartialEq)]
pub struct McResult {
    pub acc: f64,
    pub acc_norm: f64,
    pub items: usize,
}

/// Score `items`; `loglik(context, continuation)` returns the summed log-probability of the
/// continuation tokens.
pub fn score_mc(
    items: &[McItem],
    tok: &Tokenizer,
    delimiter: &str,
    mut loglik: impl FnMut(&[u32], &[u32]) -> Result<f64>,
) -> Result<McResult> {
    let (mut acc, mut acc_norm) = (0usize, 0usize);
    for item in items {
        let mut lls = Vec::with_capacity(item.choices.len());
        for choice in &item.choices {
            let (ctx, cont) = encode_pair(tok, &item.context, &format!("{delimiter}{choice}"))?;
            lls.push(loglik(&ctx, &cont)?);
        }
        let norm: Vec<f64> = lls.iter().zip(&item.choices).map(|(l, c)| l / c.len().max(1) as f64).collect();
        acc += (argmax(&lls) == item.answer) as usize;
        acc_norm += (argmax(&norm) == item.answer) as usize;
    }
    let n = items.len() as f64;
    Ok(McResult { acc: acc as f64 / n, acc_norm: acc_norm as f64 / n, items: items.len() })
}

/// Index of the first maximum.
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Sum of `log p(cont[i] | BOS, ctx, cont[..i])` under `model`, keeping the last `max_context + 1`
/// tokens of `BOS + ctx + cont` when they do not fit.
pub fn continuation_loglik(model: &Llama, ctx: &[u32], cont: &[u32]) -> Result<f64> {
    let c = &model.config;
    if cont.is_empty() {
        bail!("empty continuation");
    }
    let all: Vec<u32> = std::iter::once(c.bos_id).chain(ctx.iter().copied()).chain(cont.iter().copied()).collect();
    let all = &all[all.len().saturating_sub(c.max_context + 1)..];
    ensure!(cont.len() < all.len(), "continuation of {} tokens does not fit in the model's context", cont.len());
    let input = &all[..all.len() - 1];
    let logits = model.forward(&ids_tensor(&[input], model.device())?)?.flatten_all()?.to_vec1::<f32>()?;
    let v = c.vocab_size;
    let first = input.len() - cont.len();
    Ok(cont.iter().enumerate().map(|(i, &t)| -token_nll(&logits[(first + i) * v..(first + i + 1) * v], t)).sum())
}
