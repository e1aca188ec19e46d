//! `bd-run` as a user meets it: generation, interactive mode, perplexity, bench and info, and clear
//! errors (non-zero exit, a message, never a panic) for bad files and absurd flags.

mod common;

use bd_formats::hf::fixture::TinySpec;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn bd_run_with_stdin(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bd-run"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    let run = Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    };
    assert!(!run.stderr.contains("panicked"), "bd-run {args:?} panicked:\n{}", run.stderr);
    run
}

fn bd_run(args: &[&str]) -> Run {
    bd_run_with_stdin(args, "")
}

/// A failure with a message on stderr mentioning every one of `words`.
fn assert_fails(args: &[&str], words: &[&str]) {
    let r = bd_run(args);
    assert!(!r.ok, "bd-run {args:?} succeeded:\n{}", r.stdout);
    for w in words {
        assert!(r.stderr.contains(w), "bd-run {args:?}: stderr lacks {w:?}:\n{}", r.stderr);
    }
}

fn model(dir: &Path) -> PathBuf {
    common::write_f32_model(dir, &TinySpec::default())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(r: &Run) -> Value {
    assert!(r.ok, "{}", r.stderr);
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout))
}

#[test]
fn generates_and_streams_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let r = bd_run(&[s(&m), "--prompt", "the", "-n", "12", "--temp", "0"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.starts_with("the"), "{:?}", r.stdout);
    assert!(r.stdout.len() > "the\n".len(), "nothing generated: {:?}", r.stdout);
    assert!(r.stderr.contains("tok/s"), "timings go to stderr: {}", r.stderr);
    // Same flags, same text; a seed makes sampling repeatable too.
    assert_eq!(r.stdout, bd_run(&[s(&m), "--prompt", "the", "-n", "12", "--temp", "0", "-t", "1"]).stdout);
    let sampled = [s(&m), "--prompt", "the", "-n", "12", "--seed", "9", "--top-k", "0", "--repeat-penalty", "1.3"];
    assert_eq!(bd_run(&sampled).stdout, bd_run(&sampled).stdout);
    // A repetition window longer than the context is accepted, and acts as the whole context.
    let whole = [s(&m), "--prompt", "the", "-n", "12", "--seed", "9", "--top-k", "0", "--repeat-penalty", "1.3", "--ctx", "64"];
    let longer = [&whole[..], &["--repeat-last-n", "1000000"]].concat();
    let r = bd_run(&longer);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, bd_run(&[&whole[..], &["--repeat-last-n", "64"]].concat()).stdout);
    // -n 0 prints the prompt alone.
    let r = bd_run(&[s(&m), "--prompt", "the", "-n", "0"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "the\n");
}

#[test]
fn a_stop_string_ends_generation_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let args = [s(&m), "--prompt", "the", "-n", "40", "--temp", "0"];
    let full = bd_run(&args).stdout;
    let generated = full.trim_end_matches('\n').strip_prefix("the").unwrap().to_string();
    let chars: Vec<char> = generated.chars().collect();
    assert!(chars.len() >= 8, "too little text to test with: {generated:?}");
    // Stop at a two-character string from the middle of the greedy text.
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let before = &generated[..generated.find(&stop).unwrap()];
    let r = bd_run(&[&args[..], &["--stop", &stop]].concat());
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, format!("the{before}\n"), "stop {stop:?}");
    assert!(r.stderr.contains("StopString"), "{}", r.stderr);
}

#[test]
fn interactive_mode_answers_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let r = bd_run_with_stdin(&[s(&m), "-n", "5", "--temp", "0"], "the\n\nhello there\n");
    assert!(r.ok, "{}", r.stderr);
    // The blank line is skipped; each prompt is echoed, then continued.
    assert!(r.stdout.starts_with("the") && r.stdout.contains("\nhello there"), "{:?}", r.stdout);
    assert_eq!(r.stdout.matches("hello there").count(), 1, "{:?}", r.stdout);
    assert_eq!(r.stderr.matches("stop:").count(), 2, "one completion per prompt line: {}", r.stderr);
}

#[test]
fn perplexity_json_has_the_required_keys() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the end of the tale is near. then the old owl sat in the tree.\n".repeat(8)).unwrap();
    let v = json(&bd_run(&["perplexity", s(&m), "--file", s(&text), "--ctx", "32", "--json"]));
    let (ppl, tokens, windows) = (v["ppl"].as_f64().unwrap(), v["tokens"].as_u64().unwrap(), v["windows"].as_u64().unwrap());
    assert!(ppl.is_finite() && ppl > 1.0, "{v}");
    assert_eq!(windows, tokens.div_ceil(31), "{v}");
    let v2 = json(&bd_run(&["perplexity", s(&m), "--file", s(&text), "--ctx", "32", "--json", "--chunks", "2"]));
    assert_eq!((v2["tokens"].as_u64(), v2["windows"].as_u64()), (Some(62), Some(2)));
    // Text output for people.
    let r = bd_run(&["perplexity", s(&m), "--file", s(&text), "--ctx", "32"]);
    assert!(r.ok && r.stdout.starts_with("perplexity "), "{}{}", r.stdout, r.stderr);
}

#[test]
fn bench_json_has_the_required_keys() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let keys =
        ["pp_tokens_per_s", "tg_tokens_per_s", "bytes_per_token", "bandwidth_gb_s", "bandwidth_bound_tokens_per_s", "threads"];
    for args in [
        vec!["bench", s(&m), "--pp", "16", "--tg", "8", "--json", "-t", "2"],
        vec!["bench", "--synthetic", "tiny", "--format", "int2", "--group", "32", "--pp", "8", "--tg", "4", "--json", "-t", "2"],
    ] {
        let v = json(&bd_run(&args));
        for k in keys {
            let x = v[k].as_f64().unwrap_or_else(|| panic!("{args:?}: {k} missing or not a number: {v}"));
            assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
        }
        assert_eq!(v["threads"], 2);
    }
}

#[test]
fn info_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let v = json(&bd_run(&["info", s(&m), "--json"]));
    assert_eq!(v["format"], "f32");
    assert!(v["file_bytes"].as_u64().unwrap() > 0);
    assert!(bd_run(&["info", s(&m)]).stdout.contains("layers"));
}

#[test]
fn malformed_or_missing_models_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let good = model(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage.bd2", b"definitely not a model".to_vec()),
        ("truncated.bd2", bytes[..bytes.len() / 2].to_vec()),
        ("flipped.bd2", {
            let mut b = bytes.clone();
            let n = b.len();
            b[n - 100] ^= 0x55;
            b
        }),
        ("empty.bd2", Vec::new()),
    ];
    for (name, content) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        assert_fails(&[s(&p), "--prompt", "the"], &["error", "cannot load model", name]);
        assert_fails(&["perplexity", s(&p), "--file", s(&p)], &["error"]);
        assert_fails(&["bench", s(&p), "--pp", "4", "--tg", "4"], &["error", name]);
    }
    let missing = dir.path().join("missing.bd2");
    assert_fails(&[s(&missing), "--prompt", "the"], &["error", "missing.bd2"]);
    assert_fails(&["perplexity", s(&good), "--file", s(&missing)], &["error", "missing.bd2"]);
}

#[test]
fn bad_prompts_and_absurd_flags_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let m = s(&m);
    assert_fails(&[m, "--prompt", ""], &["prompt is empty"]);
    assert_fails(&[m, "--prompt", "the the the the the the the the", "--ctx", "4"], &["longer than the context"]);
    assert_fails(&[m, "--prompt", "the", "--temp", "-1"], &["--temp"]);
    assert_fails(&[m, "--prompt", "the", "--top-p", "2"], &["--top-p"]);
    assert_fails(&[m, "--prompt", "the", "--min-p", "1.5"], &["--min-p"]);
    assert_fails(&[m, "--prompt", "the", "--repeat-penalty", "0"], &["--repeat-penalty"]);
    assert_fails(&[m, "--prompt", "the", "--repeat-last-n", "99999999999999"], &["--repeat-last-n 99999999999999", "at most"]);
    assert_fails(&[m, "--prompt", "the", "--threads", "0"], &["--threads"]);
    assert_fails(&[m, "--prompt", "the", "--threads", "100000"], &["--threads 100000", "at most 1024"]);
    assert_fails(&[m, "--prompt", "the", "--ctx", "0"], &["--ctx"]);
    assert_fails(&[m, "--prompt", "the", "--ctx", "100000"], &["--ctx", "256"]);
    assert_fails(&[m, "--prompt", "the", "--stop", ""], &["--stop"]);
    assert_fails(&[m, "--prompt", "the", "-n", "-3"], &["-3"]);
    assert_fails(&[m, "--prompt", "the", "--top-k", "lots"], &["lots"]);
    assert_fails(&["--prompt", "the"], &["no model"]);
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the end").unwrap();
    assert_fails(&["perplexity", m, "--file", s(&text), "--ctx", "1"], &["--ctx"]);
    assert_fails(&["perplexity", m, "--file", s(&text), "--chunks", "0"], &["--chunks"]);
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_fails(&["perplexity", m, "--file", s(&empty)], &["no text"]);
    assert_fails(&["bench", m, "--pp", "0", "--tg", "0"], &["nothing to measure"]);
    assert_fails(&["bench", m, "--pp", "1000"], &["--pp"]);
    assert_fails(&["bench", "--synthetic", "gpt-5"], &["gpt-5", "llama2-7b"]);
    assert_fails(&["bench", "--synthetic", "tiny", "--format", "int9"], &["int9"]);
    assert_fails(&["bench", "--synthetic", "tiny", "--group", "100"], &["group"]);
    assert_fails(&["bench", "--synthetic", "tiny", "--reps", "0"], &["--reps 0"]);
    assert_fails(&["bench", "--synthetic", "tiny", "--reps", "1000000000"], &["--reps 1000000000", "1..=1000"]);
    assert_fails(&["bench"], &["synthetic"]);
}
