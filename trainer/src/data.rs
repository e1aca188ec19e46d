//! Text in, token ids out: the checkpoint's tokenizer, and calibration blocks for clipping.
//!
//! # Calibration file formats
//! - **JSONL** (a name ending in `.jsonl`): one JSON object per line with a string field `"text"`;
//!   each line is one document. Blank lines are skipped; other fields are ignored.
//! - **Plain text** (any other name): documents are separated by one or more blank lines
//!   (TinyStories-style paragraphs; a file without blank lines is one document).
//!
//! # Recipe (ALGORITHM.md section 2, after the reference's AWQ-style loader)
//! Documents are shuffled with the seed and tokenized in that order, each with BOS in front;
//! documents longer than `max_doc_tokens` (BOS included) are skipped; the first `docs` that fit are
//! concatenated and cut into consecutive blocks of `block_len` tokens, the remainder dropped.

use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

/// The checkpoint's `tokenizer.json`.
pub fn load_tokenizer(json: &[u8]) -> Result<Tokenizer> {
    Tokenizer::from_bytes(json).map_err(|e| anyhow::anyhow!("cannot load tokenizer.json: {e}"))
}

/// Token ids of `text` without special tokens (no BOS): the runtime's convention for a stream.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok.encode(text, false).map_err(|e| anyhow::anyhow!("cannot tokenize text: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

/// How to build the calibration set.
#[derive(Clone, Debug)]
pub struct CalibOptions {
    /// Documents to take (128 in the reference).
    pub docs: usize,
    /// Longest document kept, in tokens with BOS (512 in the reference).
    pub max_doc_tokens: usize,
    /// Tokens per block (1024 in the reference; capped at the model's context).
    pub block_len: usize,
    /// Keep at most this many blocks (all when `None`).
    pub blocks: Option<usize>,
    pub seed: u64,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions { docs: 128, max_doc_tokens: 512, block_len: 1024, blocks: None, seed: 0 }
    }
}

/// The documents of a calibration file (see the module docs for the two formats).
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read calibration file {}", path.display()))?;
    let docs = if path.extension().is_some_and(|e| e == "jsonl") {
        let mut docs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{} line {}: not a JSON object", path.display(), i + 1))?;
            let t = v.get("text").and_then(|t| t.as_str()).with_context(|| {
                format!("{} line {}: no string field \"text\" (JSONL lines are {{\"text\": ...}})", path.display(), i + 1)
            })?;
            docs.push(t.to_string());
        }
        docs
    } else {
        split_paragraphs(&text)
    };
    if docs.is_empty() {
        bail!("calibration file {} holds no documents", path.display());
    }
    Ok(docs)
}

/// Split plain text at blank lines (lines holding only whitespace), dropping empty pieces.
pub fn split_paragraphs(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                docs.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        docs.push(cur.join("\n"));
    }
    docs
}

/// What [`calibration_blocks`] used, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibStats {
    pub docs_used: usize,
    pub docs_skipped: usize,
    pub tokens: usize,
}

/// Calibration blocks from `docs` per the recipe in the module docs.
pub fn calibration_blocks(
    tok: &Tokenizer,
    bos: u32,
    docs: &[String],
    opts: &CalibOptions,
) -> Result<(Vec<Vec<u32>>, CalibStats)> {
    if opts.block_len < 2 || opts.docs == 0 || opts.max_doc_tokens == 0 || opts.blocks == Some(0) {
        bail!("calibration: documents, tokens per document, blocks and block length must be positive (block length >= 2)");
    }
    let mut order: Vec<usize> = (0..docs.len()).collect();
    Rng::new(opts.seed).shuffle(&mut order);
    let mut stream = Vec::new();
    let (mut used, mut skipped) = (0, 0);
    for &i in &order {
        if used == opts.docs {
            break;
        }
        let ids = encode(tok, &docs[i])?;
        if ids.len() + 1 > opts.max_doc_tokens {
            skipped += 1;
            continue;
        }
        stream.push(bos);
        stream.extend_from_slice(&ids);
        used += 1;
    }
    let available = stream.len() / opts.block_len;
    let want = opts.blocks.unwrap_or(available);
    if available == 0 || available < want {
        bail!(
            "calibration: {used} documents ({skipped} longer than {} tokens skipped) give {} tokens, {available} blocks of {}, \
             but {} needed; use more documents (--calib-docs) or shorter blocks",
            opts.max_doc_tokens,
            stream.len(),
            opts.block_len,
            want.max(1)
        );
    }
    let blocks: Vec<Vec<u32>> = stream.chunks_exact(opts.block_len).take(want).map(|c| c.to_vec()).collect();
    Ok((blocks, CalibStats { docs_used: used, docs_skipped: skipped, tokens: stream.len() }))
}
