//! `bd-run bench`: prompt and generation speed like llama-bench, next to the speed the machine's
//! memory bandwidth allows. Decoding streams every weight once per token, so
//! `bandwidth / bytes_per_token` bounds generation speed; the bench measures that bandwidth itself,
//! with the same threads ([`crate::probe`]), so the two numbers are comparable.

use crate::error::Result;
use crate::probe::StreamProbe;
use crate::sampler::Rng;
use crate::session::Session;
use rayon::prelude::*;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// Prompt tokens per second (prefill of `pp` tokens from an empty context); `None` when pp is 0.
    pub pp_tokens_per_s: Option<f64>,
    /// Generated tokens per second (`tg` decode steps from an empty context); `None` when tg is 0.
    pub tg_tokens_per_s: Option<f64>,
    /// Weight bytes one decode step reads.
    pub bytes_per_token: u64,
    /// Streaming read bandwidth of this machine with `threads` threads, GB/s (10^9 bytes).
    pub bandwidth_gb_s: f64,
    pub bandwidth_bound_tokens_per_s: f64,
    pub threads: usize,
    /// Cost of handing one matrix product's rows to the pool and joining them, with no work: what
    /// threading adds to every product.
    pub handoff_ns: f64,
    /// Matrix products per decoded token (seven per layer and the head).
    pub products_per_token: usize,
}

/// Bytes streamed per bandwidth pass: far beyond any last-level cache.
pub const BANDWIDTH_BYTES: usize = 512 << 20;

/// Time `pp` prompt tokens and `tg` generated tokens, each from an empty context, the best of `reps`
/// runs after one warm-up. Tokens are random (speed does not depend on them).
pub fn run(session: &mut Session, pp: usize, tg: usize, reps: usize, seed: u64) -> Result<BenchResult> {
    let vocab = session.model().config().vocab_size as u64;
    let mut rng = Rng::new(seed);
    let tokens: Vec<u32> = (0..pp.max(tg).max(1)).map(|_| (rng.next_u64() % vocab) as u32).collect();
    session.reset();
    session.prefill(&tokens[..pp.clamp(1, 8).min(session.ctx())])?;
    session.reset();
    session.decode(tokens[0])?;
    let (mut best_pp, mut best_tg) = (f64::INFINITY, f64::INFINITY);
    // One bandwidth pass after each repetition (and more at the end, five in all): on a shared
    // machine the bandwidth available changes from minute to minute, and a probe taken only after
    // the timed runs measured another moment than they did.
    let probe = StreamProbe::new(BANDWIDTH_BYTES);
    let mut best_pass = f64::INFINITY;
    for _ in 0..reps.max(1) {
        if pp > 0 {
            session.reset();
            let t = Instant::now();
            session.prefill(&tokens[..pp])?;
            best_pp = best_pp.min(t.elapsed().as_secs_f64());
        }
        if tg > 0 {
            session.reset();
            let t = Instant::now();
            for &tok in &tokens[..tg] {
                session.decode(tok)?;
            }
            best_tg = best_tg.min(t.elapsed().as_secs_f64());
        }
        best_pass = best_pass.min(session.with_pool(|_| probe.pass()));
    }
    for _ in reps.max(1)..5 {
        best_pass = best_pass.min(session.with_pool(|_| probe.pass()));
    }
    session.reset();
    let bandwidth = probe.bytes() as f64 / best_pass;
    let handoff_ns = session.with_pool(|s| handoff_ns(s.threads()));
    let bytes_per_token = session.model().weight_bytes_per_token();
    Ok(BenchResult {
        handoff_ns,
        products_per_token: 7 * session.model().config().num_layers + 1,
        pp_tokens_per_s: (pp > 0).then(|| pp as f64 / best_pp),
        tg_tokens_per_s: (tg > 0).then(|| tg as f64 / best_tg),
        bytes_per_token,
        bandwidth_gb_s: bandwidth / 1e9,
        bandwidth_bound_tokens_per_s: bandwidth / bytes_per_token as f64,
        threads: session.threads(),
    })
}

/// What one matrix product pays for splitting its rows over `threads` rayon tasks: each task gets the
/// same few microseconds of work, and the hand-off is the time a fork-join takes beyond that work
/// (waking or reaching the other workers, stealing, joining). Call it inside the pool to be measured.
pub fn handoff_ns(threads: usize) -> f64 {
    let spin = |n: u64| (0..n).fold(1u64, |a, i| std::hint::black_box(a.wrapping_mul(6364136223846793005).wrapping_add(i)));
    let per_second = {
        let t = Instant::now();
        std::hint::black_box(spin(1_000_000));
        1e6 / t.elapsed().as_secs_f64()
    };
    // About 5 us of work per task: the scale of one thread's share of a small matrix-vector product.
    let work = (per_second * 5e-6).max(1.0) as u64;
    let mut tasks = vec![0u64; threads.max(1)];
    let mut rounds = |n: usize| {
        let t = Instant::now();
        for _ in 0..n {
            tasks.par_chunks_mut(1).for_each(|r| r[0] = spin(work));
        }
        t.elapsed().as_secs_f64() / n as f64
    };
    rounds(200);
    let parallel = rounds(2000);
    let t = Instant::now();
    for _ in 0..2000 {
        std::hint::black_box(spin(work));
    }
    let alone = t.elapsed().as_secs_f64() / 2000.0;
    ((parallel - alone) * 1e9).max(0.0)
}
