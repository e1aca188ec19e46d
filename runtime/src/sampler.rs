//! Choosing the next token from logits: greedy, or temperature sampling after the repetition
//! penalty, top-k, top-p and min-p, in llama.cpp's order and with its meanings. Every buffer is
//! allocated in [`Sampler::new`]; sampling a token allocates nothing.

use crate::error::{Result, RuntimeError};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax after the repetition penalty).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this; 1 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults.
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

/// Largest repetition window [`SamplerConfig::validate`] accepts (2^24 tokens).
pub const MAX_REPEAT_LAST_N: usize = 1 << 24;

impl SamplerConfig {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Reject settings that have no meaning. Messages name the CLI flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(RuntimeError::InvalidArgument(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("--temp {} must be a finite number >= 0 (0 = greedy)", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("--top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("--min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(format!("--repeat-penalty {} must be a finite number > 0 (1 = off)", self.repeat_penalty));
        }
        // The window is reserved when the sampler is made (no allocation per token), so an absurd
        // one must be refused rather than abort the allocation; no context comes near this.
        if self.repeat_last_n > MAX_REPEAT_LAST_N {
            return bad(format!("--repeat-last-n {} must be at most {MAX_REPEAT_LAST_N}", self.repeat_last_n));
        }
        Ok(())
    }
}

/// xorshift64* (Vigna): a few instructions per draw, and the same stream on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero; scramble the seed once with SplitMix64's finalizer.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    vocab: usize,
    /// Candidates as (logit, token), then (probability, token).
    cand: Vec<(f32, u32)>,
    /// The last `repeat_last_n` tokens, a ring.
    recent: Vec<u32>,
    recent_next: usize,
    /// Marks tokens already penalized in this step: llama.cpp penalizes a repeated token once.
    seen: Vec<bool>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig, vocab: usize) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            rng: Rng::new(cfg.seed),
            vocab,
            cand: Vec::with_capacity(vocab),
            recent: Vec::with_capacity(cfg.repeat_last_n),
            recent_next: 0,
            seen: vec![false; vocab],
            cfg,
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Record a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, token: u32) {
        let n = self.cfg.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.recent.len() < n {
            self.recent.push(token);
        } else {
            self.recent[self.recent_next] = token;
        }
        self.recent_next = (self.recent_next + 1) % n;
    }

    /// Forget the history (a new, unrelated text). The random stream goes on.
    pub fn reset(&mut self) {
        self.recent.clear();
        self.recent_next = 0;
    }

    /// Choose the next token from `logits` (`vocab` values); does not [`accept`](Self::accept) it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert_eq!(logits.len(), self.vocab, "one logit per vocabulary entry");
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        self.apply_repeat_penalty();
        if self.cfg.temperature == 0.0 {
            // Ties go to the lowest id, so greedy output does not depend on the platform.
            let best = self.cand.iter().fold((f32::NEG_INFINITY, 0u32), |b, &c| if c.0 > b.0 { c } else { b });
            return best.1;
        }
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.cfg.top_k;
        if k > 0 && k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cand.truncate(k);
        }
        // Probabilities at temperature 1: llama.cpp filters first and applies the temperature last.
        softmax_in_place(&mut self.cand);
        if self.cfg.top_p < 1.0 {
            self.cand.sort_unstable_by(by_logit_desc);
            let mut cum = 0.0;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                cum += c.0;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        if self.cfg.min_p > 0.0 {
            let max = self.cand.iter().fold(0f32, |m, c| m.max(c.0));
            let floor = self.cfg.min_p * max;
            self.cand.retain(|c| c.0 >= floor);
        }
        // p^(1/T) is softmax(logit / T) up to normalization.
        let inv_t = 1.0 / self.cfg.temperature;
        let mut total = 0.0f64;
        for c in self.cand.iter_mut() {
            c.0 = c.0.powf(inv_t);
            total += c.0 as f64;
        }
        if !(total > 0.0 && total.is_finite()) {
            // Every kept probability underflowed at this temperature: the most likely token wins.
            return self.cand.iter().fold((f32::NEG_INFINITY, 0u32), |b, &c| if c.0 > b.0 { c } else { b }).1;
        }
        let target = self.rng.next_f32() as f64 * total;
        let mut cum = 0.0f64;
        for c in &self.cand {
            cum += c.0 as f64;
            if target < cum {
                return c.1;
            }
        }
        self.cand.last().map_or(0, |c| c.1)
    }

    fn apply_repeat_penalty(&mut self) {
        let p = self.cfg.repeat_penalty;
        if p == 1.0 {
            return;
        }
        for &t in &self.recent {
            let t = t as usize;
            if t < self.vocab && !self.seen[t] {
                self.seen[t] = true;
                let l = &mut self.cand[t].0;
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
        }
        for &t in &self.recent {
            if let Some(s) = self.seen.get_mut(t as usize) {
                *s = false;
            }
        }
    }
}

/// Replace logits by probabilities (max-subtracted, so large logits do not overflow).
fn softmax_in_place(c: &mut [(f32, u32)]) {
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.0));
    let mut sum = 0.0f32;
    for x in c.iter_mut() {
        x.0 = (x.0 - max).exp();
        sum += x.0;
    }
    for x in c.iter_mut() {
        x.0 /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(cfg: SamplerConfig) -> Sampler {
        Sampler::new(cfg, 5).unwrap()
    }

    #[test]
    fn an_absurd_repetition_window_is_refused_not_allocated() {
        let cfg = SamplerConfig { repeat_last_n: usize::MAX, ..SamplerConfig::greedy() };
        let e = Sampler::new(cfg, 5).err().expect("refused").to_string();
        assert!(e.contains("--repeat-last-n"), "{e}");
        assert!(Sampler::new(SamplerConfig { repeat_last_n: MAX_REPEAT_LAST_N, ..SamplerConfig::greedy() }, 5).is_ok());
    }

    #[test]
    fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
        let mut s = sampler(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9, 0.0]), 1);
        assert_eq!(s.sample(&[1.0, 2.0, 2.0, 0.0, 0.0]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = sampler(SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() });
        s.accept(1);
        s.accept(1);
        // 3.0 -> 1.5 (once, although seen twice): token 3 (2.0) wins.
        assert_eq!(s.sample(&[0.0, 3.0, -1.0, 2.0, 0.0]), 3);
        // A negative logit gets more negative: -0.5 -> -1.0 falls below -0.9.
        let mut s = sampler(SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() });
        s.accept(0);
        assert_eq!(s.sample(&[-0.5, -0.9, -3.0, -3.0, -3.0]), 1);
    }

    #[test]
    fn penalty_window_forgets_old_tokens() {
        let mut s = sampler(SamplerConfig { repeat_penalty: 10.0, repeat_last_n: 2, ..SamplerConfig::greedy() });
        for t in [1, 2, 3] {
            s.accept(t);
        }
        // Token 1 left the window of 2, so it is not penalized.
        assert_eq!(s.sample(&[0.0, 3.0, 2.5, 2.5, 0.0]), 1);
    }

    #[test]
    fn top_k_1_is_greedy_whatever_the_temperature() {
        let mut s = sampler(SamplerConfig { temperature: 5.0, top_k: 1, top_p: 1.0, min_p: 0.0, ..Default::default() });
        for _ in 0..100 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5, 0.9, 0.0]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03, 0.00]: top-p 0.8 keeps tokens 0 and 1.
        let logits = [3.0, 2.0, 1.0, 0.0, -10.0];
        let mut s = sampler(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 0.8, min_p: 0.0, ..Default::default() });
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2..].iter().all(|&c| c == 0), "{seen:?}");
        // min-p 0.2: keeps p >= 0.2 * 0.64, i.e. tokens 0 and 1 again.
        let mut s = sampler(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.2, ..Default::default() });
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2..].iter().all(|&c| c == 0), "{seen:?}");
    }

    #[test]
    fn temperature_sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0, (3.0f32).ln(), -30.0, -30.0, -30.0];
        let cfg = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..Default::default() };
        let mut s = sampler(cfg.clone());
        let draws: Vec<u32> = (0..20000).map(|_| s.sample(&logits)).collect();
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / draws.len() as f64;
        assert!((ones - 0.75).abs() < 0.02, "P(1) = {ones}, expected 0.75");
        let mut again = sampler(cfg);
        assert!(draws.iter().all(|&t| t == again.sample(&logits)), "same seed, same tokens");
    }

    #[test]
    fn absurd_settings_are_rejected_with_the_flag_name() {
        for (cfg, flag) in [
            (SamplerConfig { temperature: -1.0, ..Default::default() }, "--temp"),
            (SamplerConfig { top_p: 2.0, ..Default::default() }, "--top-p"),
            (SamplerConfig { top_p: 0.0, ..Default::default() }, "--top-p"),
            (SamplerConfig { min_p: -0.1, ..Default::default() }, "--min-p"),
            (SamplerConfig { repeat_penalty: 0.0, ..Default::default() }, "--repeat-penalty"),
            (SamplerConfig { temperature: f32::NAN, ..Default::default() }, "--temp"),
        ] {
            let err = Sampler::new(cfg, 5).err().expect("rejected").to_string();
            assert!(err.contains(flag), "{err}");
        }
    }
}
