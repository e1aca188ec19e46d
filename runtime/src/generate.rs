//! Text generation: prefill the prompt, then sample, stream and decode token by token until EOS, a
//! stop string, the token budget or the end of the context.

use crate::error::{Result, RuntimeError};
use crate::sampler::Sampler;
use crate::session::Session;
use crate::tokenizer::Tokenizer;
use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Most tokens to generate (`-n`).
    pub max_tokens: usize,
    /// Generation stops before the first occurrence of any of these; they are not printed.
    pub stop: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    ContextFull,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Tokens sampled, EOS and the token that completed a stop string included.
    pub generated: Vec<u32>,
    pub stop: StopReason,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// Generate a continuation of `prompt` (token ids, BOS included if wanted) from an empty context,
/// calling `on_text` with each piece of text as soon as it is complete.
pub fn generate(
    session: &mut Session,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(RuntimeError::InvalidArgument("the prompt is empty".into()));
    }
    if prompt.len() > session.ctx() {
        return Err(RuntimeError::InvalidArgument(format!(
            "the prompt is {} tokens, longer than the context of {} (--ctx)",
            prompt.len(),
            session.ctx()
        )));
    }
    session.reset();
    sampler.reset();
    prompt.iter().for_each(|&t| sampler.accept(t));
    let mut stream = tokenizer.stream(prompt);
    let mut filter = StopFilter { stops: &opts.stop, held: String::new() };
    let mut out = Generation {
        prompt_tokens: prompt.len(),
        generated: Vec::new(),
        stop: StopReason::MaxTokens,
        prefill_secs: 0.0,
        decode_secs: 0.0,
    };

    let t0 = Instant::now();
    session.prefill(prompt)?;
    out.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..opts.max_tokens {
        let token = sampler.sample(session.logits());
        out.generated.push(token);
        if token == tokenizer.eos_id() {
            out.stop = StopReason::Eos;
            break;
        }
        sampler.accept(token);
        if let Some(text) = stream.push(token)? {
            if filter.push(&text, &mut on_text) {
                out.stop = StopReason::StopString;
                break;
            }
        }
        if i + 1 == opts.max_tokens {
            break;
        }
        if session.pos() == session.ctx() {
            out.stop = StopReason::ContextFull;
            break;
        }
        session.decode(token)?;
    }
    out.decode_secs = t1.elapsed().as_secs_f64();
    if out.stop != StopReason::StopString {
        if let Some(text) = stream.finish()? {
            if filter.push(&text, &mut on_text) {
                out.stop = StopReason::StopString;
            }
        }
        if out.stop != StopReason::StopString {
            on_text(&filter.held);
        }
    }
    Ok(out)
}

/// Holds back text that might be the start of a stop string, so a stop string split across tokens
/// is never printed.
struct StopFilter<'a> {
    stops: &'a [String],
    held: String,
}

impl StopFilter<'_> {
    /// Add text; emits what is certainly not part of a stop string. Returns true at a stop string
    /// (the text before it is emitted, the rest dropped).
    fn push(&mut self, text: &str, out: &mut impl FnMut(&str)) -> bool {
        self.held.push_str(text);
        let stops = self.stops.iter().filter(|s| !s.is_empty());
        if let Some(at) = stops.clone().filter_map(|s| self.held.find(s.as_str())).min() {
            out(&self.held[..at]);
            self.held.clear();
            return true;
        }
        let keep = stops.map(|s| partial_match(&self.held, s)).max().unwrap_or(0);
        let cut = self.held.len() - keep;
        if cut > 0 {
            out(&self.held[..cut]);
            self.held.drain(..cut);
        }
        false
    }
}

/// Length of the longest end of `text` that is a proper beginning of `stop`.
fn partial_match(text: &str, stop: &str) -> usize {
    (1..stop.len()).rev().find(|&k| k <= text.len() && stop.is_char_boundary(k) && text.ends_with(&stop[..k])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter { stops: &stops, held: String::new() };
        let mut printed = String::new();
        for p in pieces {
            if f.push(p, &mut |t: &str| printed.push_str(t)) {
                return (printed, true);
            }
        }
        printed.push_str(&f.held);
        (printed, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_not_printed() {
        assert_eq!(run(&["The end"], &["Once. ", "The", " e", "nd", " more"]), ("Once. ".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        assert_eq!(run(&["The end"], &["The", " cat"]), ("The cat".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["€x"], &["a€", "y"]), ("a€y".into(), false));
    }
}
