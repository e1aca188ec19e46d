//! The student's training data: teacher-written sequences read from JSONL, a seeded held-out split,
//! and the micro-batches of every optimizer step as a pure function of (seed, step), so that a
//! resumed run sees exactly the batches an uninterrupted one would.
//!
//! # Input lines
//! One JSON object per line: a `bd-train gen-data` record (its `ids` are used as they are, and
//! `prompt_tokens` marks the prompt), or any object with a string `"text"` (tokenized with BOS in
//! front; no prompt). Blank lines are skipped; anything else is an error naming the line.

use crate::data::encode;
use crate::qat::Batch;
use crate::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

/// One training sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// Leading tokens that are prompt (BOS included); 0 when unknown.
    pub prompt_tokens: usize,
}

/// Read `path` (see the module docs): sequences cut to `max_len` tokens, those shorter than two
/// tokens dropped, every id checked against `vocab`.
pub fn read_sequences(path: &Path, tok: &Tokenizer, bos: u32, vocab: usize, max_len: usize) -> Result<Vec<Sequence>> {
    ensure!(max_len >= 2, "sequence length {max_len} must be at least 2");
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read training data {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        let (mut ids, prompt_tokens) = if let Some(ids) = v.get("ids") {
            let ids: Vec<u32> = serde_json::from_value(ids.clone())
                .with_context(|| format!("{}: \"ids\" must be an array of token ids", at()))?;
            let p = v.get("prompt_tokens").and_then(|p| p.as_u64()).unwrap_or(0) as usize;
            (ids, p)
        } else if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
            let mut ids = vec![bos];
            ids.extend(encode(tok, t)?);
            (ids, 0)
        } else {
            bail!("{}: expected {{\"ids\": [...]}} (from gen-data) or {{\"text\": \"...\"}}", at());
        };
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            bail!("{}: token id {bad} is not below the vocabulary size {vocab}", at());
        }
        ids.truncate(max_len);
        if ids.len() >= 2 {
            out.push(Sequence { prompt_tokens: prompt_tokens.min(ids.len()), ids });
        }
    }
    ensure!(!out.is_empty(), "{} holds no sequence of at least two tokens", path.display());
    Ok(out)
}

/// Split off a seeded held-out share (`holdout` in [0, 1)); at least one sequence stays for
/// training, and a non-zero share holds out at least one.
pub fn split(mut seqs: Vec<Sequence>, holdout: f64, seed: u64) -> Result<(Vec<Sequence>, Vec<Sequence>)> {
    ensure!((0.0..1.0).contains(&holdout), "--holdout {holdout} must be in [0, 1)");
    Rng::derive(seed, 0x5917).shuffle(&mut seqs);
    let mut n_held = (seqs.len() as f64 * holdout).round() as usize;
    if holdout > 0.0 {
        n_held = n_held.max(1);
    }
    ensure!(
        n_held < seqs.len(),
        "{} sequences are too few to hold out {:.0}% and train on the rest",
        seqs.len(),
        holdout * 100.0
    );
    let train = seqs.split_off(n_held);
    Ok((train, seqs))
}

/// The sequences (indices into the training set) of micro-batch `k` (0-based over the whole run).
/// Each epoch is a fresh seeded permutation cut into `n / batch` micro-batches (a remainder that does
/// not fill one is left for that epoch); with fewer sequences than `batch`, a micro-batch is all of them.
pub fn micro_batch(n: usize, batch: usize, seed: u64, k: usize) -> Vec<usize> {
    let batch = batch.min(n).max(1);
    let per_epoch = n / batch;
    let (epoch, j) = (k / per_epoch, k % per_epoch);
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::derive(seed, 0xe90c + epoch as u64).shuffle(&mut perm);
    perm[j * batch..(j + 1) * batch].to_vec()
}

/// Right-pad `seqs` into one batch. The mask is 1 on real positions; with `mask_prompt`, positions
/// whose next token is still prompt are 0 too (the student is not taught to predict the prompt).
pub fn make_batch(seqs: &[&Sequence], pad: u32, mask_prompt: bool) -> Result<Batch> {
    let len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len());
    let mut mask = Vec::with_capacity(seqs.len());
    for s in seqs {
        let mut row = s.ids.clone();
        row.resize(len, pad);
        let first = if mask_prompt { s.prompt_tokens.saturating_sub(1) } else { 0 };
        mask.push((0..len).map(|t| if t >= first && t < s.ids.len() { 1.0 } else { 0.0 }).collect());
        ids.push(row);
    }
    Batch::new(ids, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize, p: usize) -> Sequence {
        Sequence { ids: (0..n as u32).collect(), prompt_tokens: p }
    }

    #[test]
    fn micro_batches_cover_each_epoch_once_and_are_seeded() {
        let n = 10;
        let mut seen = vec![0; n];
        for k in 0..3 {
            for i in micro_batch(n, 3, 7, k) {
                seen[i] += 1;
            }
        }
        assert_eq!(seen.iter().sum::<usize>(), 9);
        assert!(seen.iter().all(|&c| c <= 1), "an epoch repeats a sequence: {seen:?}");
        assert_eq!(micro_batch(n, 3, 7, 4), micro_batch(n, 3, 7, 4));
        assert_ne!(micro_batch(n, 3, 7, 3), micro_batch(n, 3, 8, 3));
        assert_eq!(micro_batch(2, 8, 1, 5).len(), 2);
    }

    #[test]
    fn split_is_seeded_and_keeps_both_sides() {
        let seqs: Vec<Sequence> = (2..12).map(|n| seq(n, 0)).collect();
        let (a, b) = split(seqs.clone(), 0.2, 1).unwrap();
        assert_eq!((a.len(), b.len()), (8, 2));
        assert_eq!(split(seqs.clone(), 0.2, 1).unwrap(), (a, b));
        assert_eq!(split(seqs.clone(), 0.0, 1).unwrap().1.len(), 0);
        assert!(split(vec![seq(3, 0)], 0.5, 1).is_err());
    }

    #[test]
    fn batches_pad_right_and_mask_padding_and_prompt() {
        let (a, b) = (seq(5, 3), seq(3, 0));
        let batch = make_batch(&[&a, &b], 0, true).unwrap();
        assert_eq!(batch.ids[1], vec![0, 1, 2, 0, 0]);
        // Prompt of 3 tokens: positions 0 and 1 predict prompt tokens 1 and 2.
        assert_eq!(batch.mask[0], vec![0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(batch.mask[1], vec![1.0, 1.0, 1.0, 0.0, 0.0]);
        let open = make_batch(&[&a], 0, false).unwrap();
        assert_eq!(open.mask[0], vec![1.0; 5]);
    }
}
