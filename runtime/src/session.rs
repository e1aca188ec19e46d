//! The run state of one conversation with a [`Model`] and the forward pass over it.
//!
//! Every buffer (activations for a batch of tokens, the KV cache, logits, kernel scratch, the rotary
//! tables) is allocated in [`Session::new`]; decoding and prefilling allocate nothing. The forward pass
//! reads top to bottom as the LLaMA paper draws it; the matrix products are the kernels' business.
//!
//! Threads: the session owns a rayon pool and runs every forward pass inside it, so the kernels split
//! rows over exactly `threads` workers. A call from outside the pool hands one job to rayon's global
//! queue, which allocates a small block every few dozen calls; a caller that needs a strictly
//! allocation-free loop runs it inside [`Session::with_pool`].

use crate::error::{Result, RuntimeError};
use crate::kernels::{Kernels, Scratch, Weight};
use crate::model::Model;
use rayon::prelude::*;
use rayon::ThreadPool;
use std::sync::Arc;

/// Tokens per forward pass in prefill: large enough that a matrix product reuses each weight many
/// times, small enough that the activations of a 7B model stay a few megabytes.
pub const MAX_BATCH: usize = 64;

/// Which logits a forward pass computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logits {
    None,
    Last,
    All,
}

/// Activations for up to `batch` tokens, row-major `[batch][width]`, and the caches.
struct RunState {
    /// The residual stream `[batch][dim]`.
    x: Vec<f32>,
    /// A sub-block's normalized input, then its output `[batch][dim]`.
    xb: Vec<f32>,
    q: Vec<f32>,
    /// Attention output `[batch][q_dim]`, and the same head-major `[heads][batch][head_dim]` so that
    /// heads can be computed in parallel on disjoint memory.
    attn: Vec<f32>,
    attn_by_head: Vec<f32>,
    /// Attention scores, one row of `ctx` per head.
    scores: Vec<f32>,
    /// SwiGLU gate and up projections `[batch][ffn]`.
    gate: Vec<f32>,
    up: Vec<f32>,
    /// `[layers][ctx][kv_dim]`: a prefill's keys for consecutive positions are one contiguous slice,
    /// so the k and v products write straight into the cache.
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
    logits: Vec<f32>,
    /// `cos`/`sin` of every position's rotary angles `[ctx][head_dim / 2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// One stream of tokens through a model: position, KV cache and every buffer the forward pass needs,
/// plus the thread pool it runs on. Several sessions may share one [`Model`].
pub struct Session<'m> {
    model: &'m Model,
    kernels: Kernels,
    scratch: Scratch,
    pool: Arc<ThreadPool>,
    threads: usize,
    ctx: usize,
    batch: usize,
    /// Number of positions already in the KV cache.
    pos: usize,
    /// Tokens whose logits are in `logits` (0 before the first pass).
    logits_rows: usize,
    s: RunState,
}

impl<'m> Session<'m> {
    /// A session holding up to `ctx_len` positions, computing on `threads` threads.
    pub fn new(model: &'m Model, ctx_len: usize, threads: usize) -> Result<Self> {
        Self::with_kernels(model, ctx_len, threads, Kernels::detect())
    }

    pub fn with_kernels(model: &'m Model, ctx_len: usize, threads: usize, kernels: Kernels) -> Result<Self> {
        let c = model.config();
        if ctx_len == 0 || ctx_len > c.max_context {
            return Err(RuntimeError::InvalidArgument(format!(
                "context length {ctx_len} is out of range (1..={}, the model's maximum context)",
                c.max_context
            )));
        }
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(RuntimeError::InvalidArgument(format!("threads {threads} is out of range (1..={MAX_THREADS})")));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bd-run-{i}"))
            .build()
            .map_err(|e| RuntimeError::ThreadPool(e.to_string()))?;
        // Workers start asynchronously, and a thread's start-up allocates (its name, its stack guard
        // info): make every one run once now rather than during the first tokens.
        pool.broadcast(|_| ());
        let (dim, q_dim, kv_dim, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let batch = MAX_BATCH.min(ctx_len);
        let half = c.head_dim / 2;
        let (mut rope_cos, mut rope_sin) = (vec![0f32; ctx_len * half], vec![0f32; ctx_len * half]);
        for pos in 0..ctx_len {
            for i in 0..half {
                // f64 keeps the angle exact to f32 precision even at long positions.
                let freq = (c.rope_theta as f64).powf(-2.0 * i as f64 / c.head_dim as f64);
                let angle = pos as f64 * freq;
                rope_cos[pos * half + i] = angle.cos() as f32;
                rope_sin[pos * half + i] = angle.sin() as f32;
            }
        }
        let cache = c.num_layers * ctx_len * kv_dim;
        let s = RunState {
            x: vec![0.0; batch * dim],
            xb: vec![0.0; batch * dim],
            q: vec![0.0; batch * q_dim],
            attn: vec![0.0; batch * q_dim],
            attn_by_head: vec![0.0; batch * q_dim],
            scores: vec![0.0; c.num_heads * ctx_len],
            gate: vec![0.0; batch * ffn],
            up: vec![0.0; batch * ffn],
            key_cache: vec![0.0; cache],
            value_cache: vec![0.0; cache],
            logits: vec![0.0; batch * c.vocab_size],
            rope_cos,
            rope_sin,
        };
        let widest = dim.max(q_dim).max(ffn);
        let mut scratch = Scratch::new(widest, batch);
        if kernels.tables() {
            scratch.reserve_partials(threads, widest.max(c.vocab_size));
        }
        Ok(Self { model, kernels, scratch, pool: Arc::new(pool), threads, ctx: ctx_len, batch, pos: 0, logits_rows: 0, s })
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Room held for the table kernels' partial sums, in outputs (tests).
    #[doc(hidden)]
    pub fn reserved_partials(&self) -> usize {
        self.scratch.reserved_partials()
    }

    /// Positions this session holds.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Tokens already processed (the position the next token takes).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forget every token: the next one takes position 0.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.logits_rows = 0;
    }

    /// The logits of the last position computed (empty before the first pass).
    pub fn logits(&self) -> &[f32] {
        let v = self.model.config().vocab_size;
        if self.logits_rows == 0 {
            &[]
        } else {
            &self.s.logits[(self.logits_rows - 1) * v..self.logits_rows * v]
        }
    }

    /// Run `f` on one of this session's pool threads. Calls to [`Session::decode`] inside it run
    /// directly, without handing a job to rayon's queue: the way to a loop with no allocation at all.
    pub fn with_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        let pool = Arc::clone(&self.pool);
        pool.install(|| f(self))
    }

    /// Feed one token; returns the logits for the next position (matrix-vector products).
    pub fn decode(&mut self, token: u32) -> Result<&[f32]> {
        self.check_room(1)?;
        self.run(&[token], Logits::Last)?;
        Ok(self.logits())
    }

    /// Feed a prompt in batches of up to [`MAX_BATCH`] tokens (matrix-matrix products); returns the
    /// logits for the position after the last token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.check_input(tokens)?;
        let last = tokens.len().div_ceil(self.batch) - 1;
        for (i, chunk) in tokens.chunks(self.batch).enumerate() {
            self.run(chunk, if i == last { Logits::Last } else { Logits::None })?;
        }
        Ok(self.logits())
    }

    /// Like [`Session::prefill`], but calls `f(i, logits)` with the logits after every token `i`,
    /// batch by batch, so memory stays bounded however long the input (perplexity needs this).
    pub fn prefill_all(&mut self, tokens: &[u32], mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        self.check_input(tokens)?;
        let v = self.model.config().vocab_size;
        for (c, chunk) in tokens.chunks(self.batch).enumerate() {
            self.run(chunk, Logits::All)?;
            for i in 0..chunk.len() {
                f(c * self.batch + i, &self.s.logits[i * v..(i + 1) * v]);
            }
        }
        Ok(())
    }

    fn check_input(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(RuntimeError::InvalidArgument("no tokens to process".into()));
        }
        self.check_room(tokens.len())?;
        let vocab = self.model.config().vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&id) => Err(RuntimeError::BadToken { id, vocab }),
            None => Ok(()),
        }
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.pos + n > self.ctx {
            return Err(RuntimeError::ContextOverflow { needed: self.pos + n, ctx: self.ctx });
        }
        Ok(())
    }

    fn run(&mut self, tokens: &[u32], logits: Logits) -> Result<()> {
        let pool = Arc::clone(&self.pool);
        pool.install(|| self.forward(tokens, logits))
    }

    /// One forward pass over `tokens` (at most `batch`) at positions `pos..pos + tokens.len()`.
    fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<()> {
        let m = self.model;
        let c = m.config();
        let (dim, q_dim, kv_dim, ffn, hd) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, c.head_dim);
        let (n, pos0, ctx) = (tokens.len(), self.pos, self.ctx);
        debug_assert!(n >= 1 && n <= self.batch && pos0 + n <= ctx);
        let (k, scratch, s) = (&self.kernels, &mut self.scratch, &mut self.s);

        for (i, &t) in tokens.iter().enumerate() {
            m.embed_into(t, &mut s.x[i * dim..(i + 1) * dim])?;
        }
        // Once positions are being written, a failure must not leave the cache half updated; nothing
        // below can fail.
        for (l, layer) in m.layers.iter().enumerate() {
            // Attention.
            rmsnorm_rows(&mut s.xb[..n * dim], &s.x[..n * dim], &layer.attn_norm, c.rms_eps);
            let cache_rows = (l * ctx + pos0) * kv_dim..(l * ctx + pos0 + n) * kv_dim;
            linear(k, scratch, &m.weight(&layer.wq), &s.xb[..n * dim], n, &mut s.q[..n * q_dim]);
            linear(k, scratch, &m.weight(&layer.wk), &s.xb[..n * dim], n, &mut s.key_cache[cache_rows.clone()]);
            linear(k, scratch, &m.weight(&layer.wv), &s.xb[..n * dim], n, &mut s.value_cache[cache_rows.clone()]);
            let half = hd / 2;
            for i in 0..n {
                let at = (pos0 + i) * half..(pos0 + i + 1) * half;
                let (cos, sin) = (&s.rope_cos[at.clone()], &s.rope_sin[at]);
                rope(&mut s.q[i * q_dim..(i + 1) * q_dim], hd, cos, sin);
                rope(&mut s.key_cache[cache_rows.start + i * kv_dim..][..kv_dim], hd, cos, sin);
            }
            let layer_cache = l * ctx * kv_dim..(l + 1) * ctx * kv_dim;
            attention(
                &AttnShape { heads: c.num_heads, kv_heads: c.num_kv_heads, hd, ctx, n, pos0 },
                &s.q[..n * q_dim],
                &s.key_cache[layer_cache.clone()],
                &s.value_cache[layer_cache],
                &mut s.scores,
                &mut s.attn_by_head[..n * q_dim],
            );
            for h in 0..c.num_heads {
                for i in 0..n {
                    s.attn[i * q_dim + h * hd..][..hd].copy_from_slice(&s.attn_by_head[(h * n + i) * hd..][..hd]);
                }
            }
            linear(k, scratch, &m.weight(&layer.wo), &s.attn[..n * q_dim], n, &mut s.xb[..n * dim]);
            add_assign(&mut s.x[..n * dim], &s.xb[..n * dim]);

            // SwiGLU feed-forward.
            rmsnorm_rows(&mut s.xb[..n * dim], &s.x[..n * dim], &layer.ffn_norm, c.rms_eps);
            linear(k, scratch, &m.weight(&layer.w_gate), &s.xb[..n * dim], n, &mut s.gate[..n * ffn]);
            linear(k, scratch, &m.weight(&layer.w_up), &s.xb[..n * dim], n, &mut s.up[..n * ffn]);
            for (g, &u) in s.gate[..n * ffn].iter_mut().zip(&s.up[..n * ffn]) {
                *g = silu(*g) * u;
            }
            linear(k, scratch, &m.weight(&layer.w_down), &s.gate[..n * ffn], n, &mut s.xb[..n * dim]);
            add_assign(&mut s.x[..n * dim], &s.xb[..n * dim]);
        }

        let v = c.vocab_size;
        let head = m.weight(&m.head);
        match logits {
            Logits::None => self.logits_rows = 0,
            Logits::Last => {
                rmsnorm_rows(&mut s.xb[..dim], &s.x[(n - 1) * dim..n * dim], &m.final_norm, c.rms_eps);
                linear(k, scratch, &head, &s.xb[..dim], 1, &mut s.logits[..v]);
                self.logits_rows = 1;
            }
            Logits::All => {
                rmsnorm_rows(&mut s.xb[..n * dim], &s.x[..n * dim], &m.final_norm, c.rms_eps);
                linear(k, scratch, &head, &s.xb[..n * dim], n, &mut s.logits[..n * v]);
                self.logits_rows = n;
            }
        }
        self.pos += n;
        Ok(())
    }
}

/// `y = x W^T` for `n` rows of `x`: a matrix-vector product for one token, a batched one otherwise.
fn linear(k: &Kernels, scratch: &mut Scratch, w: &Weight, x: &[f32], n: usize, y: &mut [f32]) {
    if n == 1 {
        k.matvec(w, x, y, scratch);
    } else {
        k.matmul(w, x, n, y, scratch);
    }
}

/// RMSNorm of each row of `x` (rows as long as `weight`): `weight * x / sqrt(mean(x^2) + eps)`.
fn rmsnorm_rows(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &xv), &w) in o.iter_mut().zip(xr).zip(weight) {
            *o = w * (xv * inv);
        }
    }
}

/// Rotate-half RoPE (the Hugging Face convention) on every head of `v`: element `i` of a head pairs
/// with element `i + head_dim / 2`, at angle `pos * theta^(-2i / head_dim)`.
fn rope(v: &mut [f32], hd: usize, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for head in v.chunks_exact_mut(hd) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x0, x1) = (a[i], b[i]);
            a[i] = x0 * cos[i] - x1 * sin[i];
            b[i] = x1 * cos[i] + x0 * sin[i];
        }
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

struct AttnShape {
    heads: usize,
    kv_heads: usize,
    hd: usize,
    ctx: usize,
    /// Tokens in this pass, at positions `pos0..pos0 + n`.
    n: usize,
    pos0: usize,
}

/// Causal grouped-query attention of `n` queries against the cache of one layer, one head per task.
/// Query head `h` reads key/value head `h / (heads / kv_heads)`. Writes `[heads][n][hd]` to `out`.
fn attention(a: &AttnShape, q: &[f32], keys: &[f32], values: &[f32], scores: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2");
    scores.par_chunks_mut(a.ctx).zip(out.par_chunks_mut(a.n * a.hd)).enumerate().for_each(|(h, (sc, out))| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { attend_head_avx2(a, h, q, keys, values, sc, out) };
        }
        attend_head(a, h, q, keys, values, sc, out)
    });
}

/// `attend_head` compiled for AVX2: the baseline x86-64 build vectorizes its loops 4 wide (SSE2),
/// and at a 512-token prompt attention took 16% of the prefill (perf, Zen 5). The arithmetic is the same
/// element by element (no FMA contraction), so the results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_head_avx2(a: &AttnShape, h: usize, q: &[f32], keys: &[f32], values: &[f32], sc: &mut [f32], out: &mut [f32]) {
    attend_head(a, h, q, keys, values, sc, out)
}

/// Query head `h`'s `n` queries: scores `sc`, output `out` (`[n][hd]`).
#[inline(always)]
fn attend_head(a: &AttnShape, h: usize, q: &[f32], keys: &[f32], values: &[f32], sc: &mut [f32], out: &mut [f32]) {
    let (hd, q_dim, kv_dim) = (a.hd, a.heads * a.hd, a.kv_heads * a.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let kv = (h / (a.heads / a.kv_heads)) * hd;
    for (i, o) in out.chunks_exact_mut(hd).enumerate() {
        let len = a.pos0 + i + 1;
        let qh = &q[i * q_dim + h * hd..][..hd];
        let sc = &mut sc[..len];
        let mut max = f32::NEG_INFINITY;
        for (s, k) in sc.iter_mut().zip(keys.chunks_exact(kv_dim)) {
            *s = dot(qh, &k[kv..kv + hd]) * scale;
            max = max.max(*s);
        }
        let mut sum = 0.0;
        for s in sc.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        weighted_sum(sc, values, kv_dim, kv, o);
        // Weights are normalized once at the end rather than score by score.
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// `o = sum over t of p[t] * (row t of values)[off..off + o.len()]`, position by position: each
/// step reads one contiguous row slice and updates `o`, which stays in L1. (Walking every position
/// for eight dimensions at a time instead read the cache at a stride of a whole row, `kv_dim`
/// floats: at 4096 that is 16 KiB, which maps every position to the same L1 set. With AVX2, 7B int2
/// prefill of 512 tokens went from 30.0 to 32.8-33.7 tokens/s on Zen 5, 2 threads.) Each `o[d]` still sums
/// over the positions in order, so the result is the same.
#[inline(always)]
fn weighted_sum(p: &[f32], values: &[f32], kv_dim: usize, off: usize, o: &mut [f32]) {
    let n = o.len();
    o.fill(0.0);
    for (&p, v) in p.iter().zip(values.chunks_exact(kv_dim)) {
        for (o, &v) in o.iter_mut().zip(&v[off..off + n]) {
            *o += p * v;
        }
    }
}

/// Eight independent partial sums: a single running sum is a chain of dependent additions that the
/// compiler may not reorder, so it would neither vectorize nor pipeline.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let acc = ca.zip(cb).fold([0f32; 8], |mut acc, (x, y)| {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
        acc
    });
    acc.iter().sum::<f32>() + tail
}

/// The most threads a session takes: more only spends time and memory creating them (100,000
/// kept `bd-run` busy for minutes).
pub const MAX_THREADS: usize = 1024;

/// Physical cores available to this process: logical CPUs (affinity and cgroup quotas included)
/// divided by the hyper-threads per core the kernel reports, since two threads on one core compete
/// for the same memory bandwidth and only add hand-off cost.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let siblings = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
        .map_or(1, |list| threads_in_list(&list));
    (logical / siblings).max(1)
}

/// The number of CPUs in a kernel CPU list such as `0,8` or `0-1` (at least 1: what cannot be read
/// counts as one).
fn threads_in_list(list: &str) -> usize {
    let n: usize = list.trim().split(',').map(|r| r.split_once('-').map_or(1, |(a, b)| range_len(a, b))).sum();
    n.max(1)
}

fn range_len(a: &str, b: &str) -> usize {
    match (a.parse::<usize>(), b.parse::<usize>()) {
        (Ok(a), Ok(b)) if b >= a => b - a + 1,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_lists_count_hyper_threads() {
        assert_eq!(threads_in_list("0\n"), 1);
        assert_eq!(threads_in_list("0,8\n"), 2);
        assert_eq!(threads_in_list("0-1"), 2);
        assert_eq!(threads_in_list("4-7,12"), 5);
        assert_eq!(threads_in_list("7-4"), 1);
        assert_eq!(threads_in_list(""), 1);
    }
}
