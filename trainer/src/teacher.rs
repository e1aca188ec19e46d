//! Self-distillation data (ALGORITHM.md section 3): the fp teacher writes continuations of prompts,
//! and the text it writes, prompt included, is the student's training data.
//!
//! # Prompts
//! - **Plain text** (any name not ending in `.jsonl`), the WikiText recipe: the first
//!   `prompt_chars` characters (128) of every line longer than `min_line_chars` characters (512).
//! - **JSONL**, one object per line: `{"instruction", "input"?}` (Alpaca: the prompt is
//!   `"{instruction}\n{input}\n"`, or `"{instruction}\n"` without input), or `{"prompt"}` (as is), or
//!   `{"text"}` (its first `prompt_chars` characters).
//!
//! The prompts are shuffled with the seed and the first `n` are used; prompt `i` of that order is
//! sampled with its own random stream (seed, i).
//!
//! # Output (one JSON object per line, appended)
//! `{"index", "prompt", "text", "ids", "prompt_tokens", "stop"}`: `ids` are the exact token ids the
//! teacher saw and wrote (BOS first, EOS last when it stopped there), `text` their decoding without
//! special tokens, `stop` one of `"eos"`, `"max_new"`, `"context"`.
//!
//! # Batching and resuming
//! Prompts are generated in fixed batches (`batch` consecutive indices), left-padded to a common
//! length, with one KV cache. A rerun reads the output file, drops an incomplete last line (a killed
//! run), checks that its records belong to the same prompt list, and generates only the missing
//! prompts, in the same batches as before, so an interrupted run ends with the same file as an
//! uninterrupted one.

use crate::data::encode;
use crate::model::{ids_tensor, KvCache, Llama};
use crate::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;
use tokenizers::Tokenizer;

/// How prompts are taken from a file.
#[derive(Clone, Debug)]
pub struct PromptOptions {
    /// Characters kept from the start of a line or text (the WikiText recipe: 128).
    pub prompt_chars: usize,
    /// Plain-text lines of at most this many characters are skipped (the WikiText recipe: 512).
    pub min_line_chars: usize,
    /// Prompts to use after the shuffle (all when `None`).
    pub n: Option<usize>,
    pub seed: u64,
}

impl Default for PromptOptions {
    fn default() -> Self {
        Self { prompt_chars: 128, min_line_chars: 512, n: None, seed: 0 }
    }
}

/// The first `n` characters of `s`.
fn prefix_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// The prompts of `path` (see the module docs), shuffled with the seed, the first `n` kept.
pub fn read_prompts(path: &Path, opts: &PromptOptions) -> Result<Vec<String>> {
    ensure!(opts.prompt_chars > 0, "--prompt-chars must be positive");
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read prompts file {}", path.display()))?;
    let mut prompts = Vec::new();
    if path.extension().is_some_and(|e| e == "jsonl") {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{} line {}", path.display(), i + 1);
            let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not a JSON object", at()))?;
            let field = |k: &str| v.get(k).and_then(|x| x.as_str());
            let prompt = if let Some(ins) = field("instruction") {
                match field("input").filter(|s| !s.is_empty()) {
                    Some(input) => format!("{ins}\n{input}\n"),
                    None => format!("{ins}\n"),
                }
            } else if let Some(p) = field("prompt") {
                p.to_string()
            } else if let Some(t) = field("text") {
                prefix_chars(t, opts.prompt_chars).to_string()
            } else {
                bail!("{}: expected a string field \"instruction\", \"prompt\" or \"text\"", at());
            };
            if !prompt.trim().is_empty() {
                prompts.push(prompt);
            }
        }
    } else {
        for line in text.lines() {
            if line.chars().count() > opts.min_line_chars {
                prompts.push(prefix_chars(line, opts.prompt_chars).to_string());
            }
        }
    }
    ensure!(
        !prompts.is_empty(),
        "{} gives no prompts (plain text: no line is longer than --min-line-chars {})",
        path.display(),
        opts.min_line_chars
    );
    Rng::new(opts.seed).shuffle(&mut prompts);
    if let Some(n) = opts.n {
        ensure!(n > 0, "--n must be positive");
        prompts.truncate(n);
    }
    Ok(prompts)
}

/// How the teacher samples.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Most new tokens per prompt (also bounded by the model's context).
    pub max_new: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Prompts per batch.
    pub batch: usize,
    pub progress: bool,
}

impl Default for GenOptions {
    /// The paper's sampling: temperature 0.7, top-p 1.0, up to 1024 new tokens.
    fn default() -> Self {
        Self { max_new: 1024, temperature: 0.7, top_p: 1.0, seed: 0, batch: 32, progress: false }
    }
}

/// One line of the output file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub index: usize,
    pub prompt: String,
    pub text: String,
    pub ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop: String,
}

/// What a [`generate_data`] call did.
#[derive(Clone, Debug, PartialEq)]
pub struct GenReport {
    /// Prompts already in the file.
    pub resumed: usize,
    /// Prompts generated now.
    pub generated: usize,
    /// New tokens written now.
    pub new_tokens: usize,
    pub secs: f64,
}

/// Read the records of an existing output file. An incomplete or unparsable *last* line is what a
/// killed run leaves: the file is cut back to the end of the line before it. Any other bad line is
/// an error naming it.
pub fn read_samples(path: &Path, repair: bool) -> Result<Vec<Sample>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut samples = Vec::new();
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let end = bytes[start..].iter().position(|&b| b == b'\n').map(|p| start + p);
        let line = &bytes[start..end.unwrap_or(bytes.len())];
        let parsed = std::str::from_utf8(line).ok().and_then(|l| serde_json::from_str::<Sample>(l).ok());
        match (parsed, end) {
            (Some(s), Some(e)) => {
                samples.push(s);
                start = e + 1;
            }
            (_, None) if repair => {
                // The last line, unfinished: cut it off.
                let f = std::fs::OpenOptions::new().write(true).open(path)?;
                f.set_len(start as u64).with_context(|| format!("cannot repair {}", path.display()))?;
                eprintln!("{}: dropped an incomplete last line (line {line_no}) left by an interrupted run", path.display());
                break;
            }
            _ if line.iter().all(u8::is_ascii_whitespace) => start = end.map_or(bytes.len(), |e| e + 1),
            _ => bail!(
                "{} line {line_no}: not a teacher-data record ({{\"index\", \"prompt\", \"text\", \"ids\", ...}})",
                path.display()
            ),
        }
    }
    Ok(samples)
}

/// Generate teacher data for `prompts` into `out` (appending; see the module docs).
pub fn generate_data(teacher: &Llama, tok: &Tokenizer, prompts: &[String], out: &Path, opts: &GenOptions) -> Result<GenReport> {
    ensure!(opts.batch > 0, "--gen-batch must be positive");
    ensure!(opts.max_new > 0, "--max-new must be positive");
    ensure!(opts.temperature >= 0.0 && opts.temperature.is_finite(), "--temp must be a finite number >= 0");
    ensure!(opts.top_p > 0.0 && opts.top_p <= 1.0, "--top-p must be in (0, 1]");
    let existing = read_samples(out, true)?;
    let mut done: HashSet<usize> = HashSet::new();
    for s in &existing {
        ensure!(
            s.index < prompts.len() && prompts[s.index] == s.prompt,
            "{} holds a record (index {}) that is not from this prompt list: use the same --prompts, --n and --seed, \
             or another --out",
            out.display(),
            s.index
        );
        done.insert(s.index);
    }
    let start = Instant::now();
    let total = prompts.len();
    let bar = if opts.progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("gen-data {bar:30} {pos}/{len} prompts  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done.len() as u64);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("cannot open {} for appending", out.display()))?;
    let (mut generated, mut new_tokens) = (0, 0);
    let mut last_print = Instant::now();
    for batch_start in (0..total).step_by(opts.batch) {
        let indices: Vec<usize> = (batch_start..(batch_start + opts.batch).min(total)).collect();
        if indices.iter().all(|i| done.contains(i)) {
            continue;
        }
        // The whole batch is regenerated (same rows, same padding, same streams) so that its
        // samples equal those of an uninterrupted run; only the missing ones are written.
        let samples = generate_batch(teacher, tok, prompts, &indices, opts)?;
        let mut lines = String::new();
        for s in samples.into_iter().filter(|s| !done.contains(&s.index)) {
            new_tokens += s.ids.len() - s.prompt_tokens;
            generated += 1;
            lines.push_str(&serde_json::to_string(&s)?);
            lines.push('\n');
        }
        file.write_all(lines.as_bytes()).and_then(|_| file.flush()).with_context(|| format!("cannot write {}", out.display()))?;
        bar.set_position((batch_start + indices.len()).min(total) as u64);
        let secs = start.elapsed().as_secs_f64();
        bar.set_message(format!("{:.0} tok/s", new_tokens as f64 / secs.max(1e-9)));
        // Without a terminal (logs, CI), a line every 10 s instead of the bar.
        if !opts.progress && last_print.elapsed().as_secs_f64() > 10.0 {
            eprintln!("gen-data: {}/{total} prompts, {}", bar.position(), bar.message());
            last_print = Instant::now();
        }
    }
    file.sync_all().ok();
    bar.finish_and_clear();
    Ok(GenReport { resumed: existing.len(), generated, new_tokens, secs: start.elapsed().as_secs_f64() })
}

/// Sample continuations of the prompts `indices` together.
fn generate_batch(
    teacher: &Llama,
    tok: &Tokenizer,
    prompts: &[String],
    indices: &[usize],
    opts: &GenOptions,
) -> Result<Vec<Sample>> {
    let c = &teacher.config;
    let dev = teacher.device();
    // At least one new token must fit: prompts longer than half the context are cut to it.
    let keep = (c.max_context / 2).max(1);
    let mut rows: Vec<Vec<u32>> = Vec::with_capacity(indices.len());
    for &i in indices {
        let mut ids = vec![c.bos_id];
        ids.extend(encode(tok, &prompts[i])?);
        ids.truncate(keep);
        rows.push(ids);
    }
    let prompt_len: Vec<usize> = rows.iter().map(Vec::len).collect();
    let longest = prompt_len.iter().copied().max().unwrap_or(1);
    let pad: Vec<usize> = rows.iter().map(|r| longest - r.len()).collect();
    let padded: Vec<Vec<u32>> =
        rows.iter().map(|r| std::iter::repeat_n(c.bos_id, longest - r.len()).chain(r.iter().copied()).collect()).collect();
    let refs: Vec<&[u32]> = padded.iter().map(|r| r.as_slice()).collect();
    let mut cache = KvCache::default();
    let mut logits = teacher.forward_cached_padded(&ids_tensor(&refs, dev)?, &mut cache, Some(&pad))?;
    let mut rngs: Vec<Rng> = indices.iter().map(|&i| Rng::derive(opts.seed, i as u64)).collect();
    let mut stop: Vec<Option<&'static str>> = vec![None; rows.len()];
    let budget = opts.max_new.min(c.max_context - longest);
    let v = c.vocab_size;
    for step in 0..budget {
        let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let mut next = Vec::with_capacity(rows.len());
        for (b, row) in rows.iter_mut().enumerate() {
            if stop[b].is_some() {
                next.push(c.eos_id);
                continue;
            }
            let t = sample_token(&last[b * v..(b + 1) * v], opts.temperature, opts.top_p, &mut rngs[b]);
            row.push(t);
            next.push(t);
            if t == c.eos_id {
                stop[b] = Some("eos");
            }
        }
        if stop.iter().all(Option::is_some) || step + 1 == budget {
            break;
        }
        let ids = Tensor::from_vec(next, (rows.len(), 1), dev)?;
        logits = teacher.forward_cached_padded(&ids, &mut cache, Some(&pad))?;
    }
    let context_bound = c.max_context - longest < opts.max_new;
    indices
        .iter()
        .zip(rows)
        .zip(stop)
        .zip(prompt_len)
        .map(|(((&index, ids), stop), prompt_tokens)| {
            let text = tok.decode(&ids, true).map_err(|e| anyhow::anyhow!("cannot decode teacher output: {e}"))?;
            let stop = stop.unwrap_or(if context_bound { "context" } else { "max_new" });
            Ok(Sample { index, prompt: prompts[index].clone(), text, ids, prompt_tokens, stop: stop.to_string() })
        })
        .collect()
}

/// Sample from `softmax(logits / temperature)` restricted to the smallest set of most likely tokens
/// whose probability reaches `top_p` (Hugging Face's order: temperature first, then top-p).
/// Temperature 0 is greedy (the lowest id among ties).
pub fn sample_token(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> u32 {
    let argmax =
        || logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b }).0 as u32;
    if temperature == 0.0 {
        return argmax();
    }
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let mut p: Vec<(f64, u32)> =
        logits.iter().enumerate().map(|(i, &l)| (((l as f64 - m) / temperature).exp(), i as u32)).collect();
    let sum: f64 = p.iter().map(|x| x.0).sum();
    if !(sum.is_finite() && sum > 0.0) {
        return argmax();
    }
    let mut mass = sum;
    if top_p < 1.0 {
        p.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let (mut cum, mut keep) = (0.0, p.len());
        for (i, x) in p.iter().enumerate() {
            cum += x.0 / sum;
            if cum >= top_p {
                keep = i + 1;
                break;
            }
        }
        p.truncate(keep);
        mass = p.iter().map(|x| x.0).sum();
    }
    let mut target = rng.next_f64() * mass;
    for &(w, t) in &p {
        if target < w {
            return t;
        }
        target -= w;
    }
    p.last().map_or(0, |x| x.1)
}
