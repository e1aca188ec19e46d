//! Perplexity follows the runtime's window convention; the multiple-choice scorer follows
//! lm-eval-harness, checked by hand on a small example.

mod common;

use bd_formats::hf::fixture::TinySpec;
use bd_trainer::data::{encode, load_tokenizer};
use bd_trainer::eval::{continuation_loglik, encode_pair, perplexity, read_mc, score_mc, token_nll, McItem};
use bd_trainer::model::{ids_tensor, Llama};
use candle_core::Device;
use common::{tiny_model, tokens};

/// The convention written out by hand: windows of ctx-1 tokens, BOS in front, each scored alone.
fn manual_ppl(model: &Llama, stream: &[u32], ctx: usize) -> (f64, usize) {
    let v = model.config.vocab_size;
    let (mut nll, mut windows) = (0f64, 0);
    for w in stream.chunks(ctx - 1) {
        let mut input = vec![model.config.bos_id];
        input.extend_from_slice(&w[..w.len() - 1]);
        let logits = model.forward(&ids_tensor(&[&input], &Device::Cpu).unwrap()).unwrap();
        let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (p, &t) in w.iter().enumerate() {
            nll += token_nll(&logits[p * v..(p + 1) * v], t);
        }
        windows += 1;
    }
    ((nll / stream.len() as f64).exp(), windows)
}

#[test]
fn perplexity_uses_windows_of_ctx_minus_one_with_bos() {
    let (_d, _c, model) = tiny_model(&TinySpec::default());
    let model = model.inference();
    let stream = tokens(23, 8, model.config.vocab_size);
    let p = perplexity(&model, &stream, 8, false).unwrap();
    assert_eq!((p.tokens, p.windows), (23, 4), "7 + 7 + 7 + 2 tokens");
    let (want, windows) = manual_ppl(&model, &stream, 8);
    assert_eq!(windows, 4);
    assert!((p.ppl - want).abs() <= 1e-6 * want, "batched {} vs window by window {want}", p.ppl);
    assert!(perplexity(&model, &stream, 1, false).is_err());
    assert!(perplexity(&model, &stream, model.config.max_context + 1, false).is_err());
    assert!(perplexity(&model, &[], 8, false).is_err());
    let bad = [0, model.config.vocab_size as u32];
    assert!(format!("{:#}", perplexity(&model, &bad, 8, false).unwrap_err()).contains("vocabulary"));
}

#[test]
fn a_model_with_zero_embeddings_has_perplexity_equal_to_the_vocabulary() {
    let (_d, ckpt, _m) = tiny_model(&TinySpec::default());
    let mut tensors = ckpt.load_all().unwrap();
    for (s, v) in tensors.iter_mut() {
        if s.name == "model.embed_tokens.weight" {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let model = Llama::from_tensors(ckpt.config().clone(), tensors, &Device::Cpu).unwrap().inference();
    let p = perplexity(&model, &tokens(30, 1, model.config.vocab_size), 16, false).unwrap();
    let v = model.config.vocab_size as f64;
    assert!((p.ppl - v).abs() < 1e-9 * v, "ppl {} vs vocab {v}", p.ppl);
}

#[test]
fn encode_pair_splits_like_lm_eval_harness() {
    let tok = load_tokenizer(bd_formats::hf::fixture::tiny_tokenizer_json().as_bytes()).unwrap();
    let (ctx, cont) = encode_pair(&tok, "the cat", " sat on").unwrap();
    assert_eq!(ctx, encode(&tok, "the cat").unwrap());
    let mut whole = ctx.clone();
    whole.extend(&cont);
    assert_eq!(whole, encode(&tok, "the cat sat on").unwrap());
    // Trailing whitespace of the context moves to the continuation.
    let (ctx2, cont2) = encode_pair(&tok, "the cat ", "sat on").unwrap();
    assert_eq!((ctx2, cont2), (ctx, cont));
}

#[test]
fn multiple_choice_scores_a_hand_checked_example() {
    let tok = load_tokenizer(bd_formats::hf::fixture::tiny_tokenizer_json().as_bytes()).unwrap();
    let item = |context: &str, choices: &[&str], answer| McItem {
        context: context.into(),
        choices: choices.iter().map(|c| c.to_string()).collect(),
        answer,
    };
    // Log-likelihoods handed out in call order, chosen so that acc and acc_norm disagree:
    // item 1: [-2, -4] on choices of 1 and 8 bytes: acc picks 0 (-2 > -4), acc_norm picks 1
    //         (-4 / 8 = -0.5 > -2 / 1); answer 1: acc 0, acc_norm 1.
    // item 2: [-3, -1, -1] on 3, 3, 3 bytes: both pick 1 (the first of the tie); answer 1: 1, 1.
    // item 3: [-6, -9] on 2 and 6 bytes: acc picks 0, acc_norm picks 1 (-1.5 > -3); answer 0: 1, 0.
    let items = vec![
        item("the cat", &["a", "bbbbbbbb"], 1),
        item("a dog", &["ran", "sat", "hid"], 1),
        item("one day", &["in", "onward"], 0),
    ];
    let lls = [-2.0, -4.0, -3.0, -1.0, -1.0, -6.0, -9.0];
    let mut calls = Vec::new();
    let r = score_mc(&items, &tok, " ", |ctx, cont| {
        calls.push((ctx.to_vec(), cont.to_vec()));
        Ok(lls[calls.len() - 1])
    })
    .unwrap();
    assert_eq!(r.items, 3);
    assert!((r.acc - 2.0 / 3.0).abs() < 1e-12, "acc {}", r.acc);
    assert!((r.acc_norm - 2.0 / 3.0).abs() < 1e-12, "acc_norm {}", r.acc_norm);
    // The scorer asked for the context's tokens and the choice's (with the delimiter).
    assert_eq!(calls.len(), 7);
    assert_eq!(calls[1], encode_pair(&tok, "the cat", " bbbbbbbb").unwrap());
}

#[test]
fn continuation_loglik_sums_the_models_log_probabilities() {
    let (_d, ckpt, model) = tiny_model(&TinySpec::default());
    let model = model.inference();
    let tok = load_tokenizer(ckpt.tokenizer_json()).unwrap();
    let (ctx, cont) = encode_pair(&tok, "the hello", " world on the wall").unwrap();
    let got = continuation_loglik(&model, &ctx, &cont).unwrap();
    let mut all = vec![model.config.bos_id];
    all.extend(&ctx);
    all.extend(&cont);
    let logits = model.forward(&ids_tensor(&[&all[..all.len() - 1]], &Device::Cpu).unwrap()).unwrap();
    let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let v = model.config.vocab_size;
    let want: f64 =
        (all.len() - 1 - cont.len()..all.len() - 1).map(|p| -token_nll(&logits[p * v..(p + 1) * v], all[p + 1])).sum();
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    assert!(got < 0.0);
}

#[test]
fn multiple_choice_files_are_checked_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc.jsonl");
    std::fs::write(&path, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 1}\n\n").unwrap();
    assert_eq!(read_mc(&path).unwrap().len(), 1);
    std::fs::write(&path, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 1}\n{\"context\": \"a\", \"choices\": [\"b\"], \"answer\": 3}\n").unwrap();
    let err = format!("{:#}", read_mc(&path).unwrap_err());
    assert!(err.contains("line 2") && err.contains("answer 3"), "{err}");
    std::fs::write(&path, "{\"context\": \"a\"}\n").unwrap();
    assert!(format!("{:#}", read_mc(&path).unwrap_err()).contains("line 1"));
}
