//! Every error path of the C API, called from Rust exactly as C calls it (`bd_runtime::ffi`'s
//! `extern "C"` functions with raw pointers): NULL arguments, bad files, short buffers, invalid
//! UTF-8, bad token ids, full contexts, freed and foreign handles, sessions used from two places at
//! once. Each gives its status code and a message, never a crash; the library keeps working after.

#[path = "../runtime/tests/common/mod.rs"]
mod common;

use bd_formats::hf::fixture::TinySpec;
use bd_formats::quant::QuantFormat;
use bd_formats::DType;
use bd_runtime::ffi::bd_status::*;
use bd_runtime::ffi::*;
use bd_runtime::{Model, ReadOptions, Tokenizer};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

fn last_error() -> String {
    // SAFETY: bd_last_error always returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(bd_last_error()) }.to_string_lossy().into_owned()
}

/// `status` is `expected`, and the thread's message names `function` and contains `words`.
#[track_caller]
fn fails(status: bd_status, expected: bd_status, function: &str, words: &[&str]) {
    let msg = last_error();
    assert_eq!(status, expected, "{msg}");
    assert!(msg.starts_with(&format!("{function}: ")), "{msg:?} should name {function}");
    for w in words {
        assert!(msg.contains(w), "{msg:?} should mention {w:?}");
    }
}

#[track_caller]
fn ok(status: bd_status) {
    assert_eq!(status, BD_OK, "{}", last_error());
}

fn write_model(dir: &Path) -> PathBuf {
    common::write_model(dir, "m.bd2", &TinySpec::default(), DType::Quant(QuantFormat::Int2), DType::F32, 32)
}

fn c(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

/// A loaded model, freed at the end of the test.
struct Loaded {
    _dir: tempfile::TempDir,
    path: PathBuf,
    model: *mut bd_model,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // SAFETY: the handle is live (or already freed, which gives an error, not a crash).
        unsafe { bd_model_free(self.model) };
    }
}

fn load() -> Loaded {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path());
    let mut model = null_mut();
    // SAFETY: valid pointers.
    ok(unsafe { bd_model_load(c(&path).as_ptr(), &mut model) });
    Loaded { _dir: dir, path, model }
}

fn session(model: *const bd_model, context: u32) -> *mut bd_session {
    let mut s = null_mut();
    let p = bd_session_params { context, threads: 2, seed: 1 };
    // SAFETY: valid pointers.
    ok(unsafe { bd_session_new(model, &p, &mut s) });
    s
}

#[test]
fn version_and_an_empty_last_error() {
    // SAFETY: no arguments.
    unsafe {
        assert_eq!(bd_abi_version(), BD_ABI_VERSION);
        assert_eq!(CStr::from_ptr(bd_version()).to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
    // A fresh thread has no error, and errors are per thread.
    std::thread::spawn(|| {
        assert_eq!(last_error(), "");
        // SAFETY: a NULL path is what is tested.
        let s = unsafe { bd_model_load(null(), &mut null_mut()) };
        fails(s, BD_ERR_NULL_ARGUMENT, "bd_model_load", &["path"]);
        std::thread::spawn(|| assert_eq!(last_error(), "")).join().unwrap();
        // A successful call leaves the message alone.
        // SAFETY: plain values.
        assert_eq!(unsafe { bd_model_free(null_mut()) }, BD_OK);
        assert!(last_error().contains("path"));
    })
    .join()
    .unwrap();
}

#[test]
fn loading_bad_files_gives_io_and_bad_model_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_model(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    let load = |p: &Path| {
        let mut m: *mut bd_model = std::ptr::NonNull::dangling().as_ptr();
        // SAFETY: valid pointers.
        let s = unsafe { bd_model_load(c(p).as_ptr(), &mut m) };
        assert!(m.is_null(), "a failed load writes NULL");
        s
    };
    let missing = dir.path().join("missing.bd2");
    fails(load(&missing), BD_ERR_IO, "bd_model_load", &["missing.bd2", "No such file"]);
    fails(load(dir.path()), BD_ERR_IO, "bd_model_load", &[]);

    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 1;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("corrupt.bd2", corrupt, "checksum"),
        ("truncated.bd2", bytes[..bytes.len() - 100].to_vec(), ""),
        ("empty.bd2", Vec::new(), ""),
        ("text.bd2", b"not a model at all, just some text that is long enough".repeat(4), "magic"),
    ];
    for (name, data, word) in &cases {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        fails(load(&p), BD_ERR_BAD_MODEL, "bd_model_load", &[word]);
        // The same bytes from memory.
        let mut m: *mut bd_model = std::ptr::NonNull::dangling().as_ptr();
        // SAFETY: `data` is valid for its length (or empty, with a dangling non-NULL pointer).
        let s = unsafe { bd_model_load_from_memory(data.as_ptr(), data.len(), &mut m) };
        fails(s, BD_ERR_BAD_MODEL, "bd_model_load_from_memory", &[word]);
        assert!(m.is_null());
    }

    // NULL and invalid UTF-8.
    let mut m = null_mut();
    // SAFETY: the NULLs are what is tested; the other pointers are valid.
    unsafe {
        fails(bd_model_load(c(&good).as_ptr(), null_mut()), BD_ERR_NULL_ARGUMENT, "bd_model_load", &["out"]);
        fails(bd_model_load_from_memory(null(), 10, &mut m), BD_ERR_NULL_ARGUMENT, "bd_model_load_from_memory", &["data"]);
        fails(bd_model_load_from_memory(null(), 0, &mut m), BD_ERR_NULL_ARGUMENT, "bd_model_load_from_memory", &["data"]);
        fails(
            bd_model_load_from_memory(bytes.as_ptr(), bytes.len(), null_mut()),
            BD_ERR_NULL_ARGUMENT,
            "bd_model_load_from_memory",
            &["out"],
        );
        let bad = b"m\xff.bd2\0";
        fails(bd_model_load(bad.as_ptr().cast(), &mut m), BD_ERR_INVALID_UTF8, "bd_model_load", &["path"]);
        // And the good file after all that, from the path and from memory (then freed at once).
        ok(bd_model_load(c(&good).as_ptr(), &mut m));
        ok(bd_model_free(m));
        let copy = bytes.clone();
        ok(bd_model_load_from_memory(copy.as_ptr(), copy.len(), &mut m));
        drop(copy);
        let mut info = std::mem::zeroed();
        ok(bd_model_get_info(m, &mut info));
        assert_eq!(info.file_bytes, bytes.len() as u64);
        ok(bd_model_free(m));
    }
}

#[test]
fn model_info_matches_the_file() {
    let l = load();
    let model = Model::open(&l.path, ReadOptions::default()).unwrap();
    let c = model.config();
    // SAFETY: valid pointers, then NULLs.
    unsafe {
        let mut info: bd_model_info = std::mem::zeroed();
        ok(bd_model_get_info(l.model, &mut info));
        assert_eq!(info.vocab_size as usize, c.vocab_size);
        assert_eq!(info.hidden_size as usize, c.hidden_size);
        assert_eq!(info.intermediate_size as usize, c.intermediate_size);
        assert_eq!(info.num_layers as usize, c.num_layers);
        assert_eq!((info.num_heads as usize, info.num_kv_heads as usize), (c.num_heads, c.num_kv_heads));
        assert_eq!(info.head_dim as usize, c.head_dim);
        assert_eq!(info.max_context as usize, c.max_context);
        assert_eq!((info.bos_id as u32, info.eos_id as u32), (c.bos_id, c.eos_id));
        assert_eq!(info.group_size, 32);
        assert_eq!(Some(info.bits_per_weight), model.file().bits_per_weight());
        assert_eq!(info.file_bytes, std::fs::metadata(&l.path).unwrap().len());
        assert_eq!(info.params, model.file().tensors().iter().map(|t| t.numel() as u64).sum::<u64>());
        assert_eq!(CStr::from_ptr(info.format.as_ptr()).to_str().unwrap(), "int2");
        fails(bd_model_get_info(l.model, null_mut()), BD_ERR_NULL_ARGUMENT, "bd_model_get_info", &["out"]);
        fails(bd_model_get_info(null(), &mut info), BD_ERR_NULL_ARGUMENT, "bd_model_get_info", &["model"]);
    }
}

#[test]
fn tokenize_and_detokenize_errors() {
    let l = load();
    let tok = Tokenizer::from_model(&Model::open(&l.path, ReadOptions::default()).unwrap()).unwrap();
    let text = "Zürich € the end";
    let expected: Vec<i32> = tok.encode(text, true).unwrap().into_iter().map(|t| t as i32).collect();
    let m = l.model;
    // SAFETY: every buffer is valid for the capacity given; the NULLs are what is tested.
    unsafe {
        let mut ids = [0i32; 64];
        let mut n = 0usize;
        let t = text.as_ptr().cast::<c_char>();
        // A short buffer: nothing written, the needed count reported.
        fails(bd_tokenize(m, t, text.len(), 1, ids.as_mut_ptr(), 3, &mut n), BD_ERR_BUFFER_TOO_SMALL, "bd_tokenize", &["3"]);
        assert_eq!(n, expected.len());
        assert_eq!(ids[0], 0, "nothing written on BUFFER_TOO_SMALL");
        fails(bd_tokenize(m, t, text.len(), 1, null_mut(), 0, &mut n), BD_ERR_BUFFER_TOO_SMALL, "bd_tokenize", &[]);
        assert_eq!(n, expected.len());
        ok(bd_tokenize(m, t, text.len(), 1, ids.as_mut_ptr(), ids.len(), &mut n));
        assert_eq!(&ids[..n], &expected[..]);
        // NULLs, bad UTF-8, a freed model.
        fails(bd_tokenize(m, null(), 4, 1, ids.as_mut_ptr(), 64, &mut n), BD_ERR_NULL_ARGUMENT, "bd_tokenize", &["text"]);
        fails(bd_tokenize(m, t, text.len(), 1, null_mut(), 64, &mut n), BD_ERR_NULL_ARGUMENT, "bd_tokenize", &["tokens"]);
        fails(
            bd_tokenize(m, t, text.len(), 1, ids.as_mut_ptr(), 64, null_mut()),
            BD_ERR_NULL_ARGUMENT,
            "bd_tokenize",
            &["n_tokens"],
        );
        fails(
            bd_tokenize(null(), t, text.len(), 1, ids.as_mut_ptr(), 64, &mut n),
            BD_ERR_NULL_ARGUMENT,
            "bd_tokenize",
            &["model"],
        );
        // "Zü" cut inside the ü.
        fails(bd_tokenize(m, t, 2, 1, ids.as_mut_ptr(), 64, &mut n), BD_ERR_INVALID_UTF8, "bd_tokenize", &["text", "byte 1"]);
        ok(bd_tokenize(m, null(), 0, 0, ids.as_mut_ptr(), 64, &mut n));
        assert_eq!(n, 0);

        // Detokenize: the text, a short buffer, bad ids.
        let mut buf = [0 as c_char; 64];
        let mut len = 0usize;
        ok(bd_detokenize(m, expected.as_ptr(), expected.len(), buf.as_mut_ptr(), buf.len(), &mut len));
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), text);
        assert_eq!(len, text.len());
        let mut small = [7 as c_char; 8];
        let s = bd_detokenize(m, expected.as_ptr(), expected.len(), small.as_mut_ptr(), small.len(), &mut len);
        fails(s, BD_ERR_BUFFER_TOO_SMALL, "bd_detokenize", &[]);
        assert_eq!(len, text.len());
        assert!(small.iter().all(|&c| c == 7), "nothing written on BUFFER_TOO_SMALL");
        // Exactly the text and no room for the NUL is too small as well.
        let mut exact = vec![0 as c_char; text.len()];
        let s = bd_detokenize(m, expected.as_ptr(), expected.len(), exact.as_mut_ptr(), exact.len(), &mut len);
        fails(s, BD_ERR_BUFFER_TOO_SMALL, "bd_detokenize", &[]);
        ok(bd_detokenize(m, null(), 0, buf.as_mut_ptr(), buf.len(), &mut len));
        assert_eq!((len, buf[0]), (0, 0));
        for bad in [-1, 279, i32::MAX, i32::MIN] {
            let s = bd_detokenize(m, &bad, 1, buf.as_mut_ptr(), buf.len(), &mut len);
            fails(s, BD_ERR_INVALID_ARGUMENT, "bd_detokenize", &[&bad.to_string(), "279"]);
        }
        fails(bd_detokenize(m, null(), 2, buf.as_mut_ptr(), 64, &mut len), BD_ERR_NULL_ARGUMENT, "bd_detokenize", &["tokens"]);
        fails(bd_detokenize(m, expected.as_ptr(), 2, null_mut(), 64, &mut len), BD_ERR_NULL_ARGUMENT, "bd_detokenize", &["buf"]);
        fails(
            bd_detokenize(m, expected.as_ptr(), 2, buf.as_mut_ptr(), 64, null_mut()),
            BD_ERR_NULL_ARGUMENT,
            "bd_detokenize",
            &["len"],
        );

        // Pieces: bytes of byte tokens, " the" for "▁the", nothing for specials.
        let piece = |id: i32| {
            let (mut p, mut len) = (null(), 0usize);
            ok(bd_token_piece(m, id, &mut p, &mut len));
            std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec()
        };
        assert_eq!(piece(3 + 0xE2), [0xE2]);
        assert_eq!(piece(1), b"");
        let the = tok.encode("the", false).unwrap();
        assert_eq!(the.len(), 1);
        assert_eq!(piece(the[0] as i32), b" the");
        let (mut p, mut len) = (null(), 0usize);
        fails(bd_token_piece(m, 279, &mut p, &mut len), BD_ERR_INVALID_ARGUMENT, "bd_token_piece", &["279"]);
        fails(bd_token_piece(m, 5, null_mut(), &mut len), BD_ERR_NULL_ARGUMENT, "bd_token_piece", &["piece"]);
        fails(bd_token_piece(m, 5, &mut p, null_mut()), BD_ERR_NULL_ARGUMENT, "bd_token_piece", &["len"]);
    }
}

#[test]
fn session_errors_before_and_after_evaluation() {
    let l = load();
    let s = session(l.model, 8);
    // SAFETY: valid pointers, except the NULLs and bad values under test.
    unsafe {
        let mut sp = bd_session_params { context: 257, threads: 1, seed: 0 };
        let mut other: *mut bd_session = std::ptr::NonNull::dangling().as_ptr();
        fails(bd_session_new(l.model, &sp, &mut other), BD_ERR_INVALID_ARGUMENT, "bd_session_new", &["context", "256"]);
        assert!(other.is_null());
        sp = bd_session_params { context: 8, threads: 5000, seed: 0 };
        fails(bd_session_new(l.model, &sp, &mut other), BD_ERR_INVALID_ARGUMENT, "bd_session_new", &["threads"]);
        fails(bd_session_new(null(), &sp, &mut other), BD_ERR_NULL_ARGUMENT, "bd_session_new", &["model"]);
        fails(bd_session_new(l.model, &sp, null_mut()), BD_ERR_NULL_ARGUMENT, "bd_session_new", &["out"]);
        // NULL params are the defaults.
        ok(bd_session_new(l.model, null(), &mut other));
        ok(bd_session_free(other));

        let (mut logits, mut n_vocab, mut token, mut pos) = (null(), 0usize, 0i32, 0u32);
        fails(bd_session_logits(s, &mut logits, &mut n_vocab), BD_ERR_NO_LOGITS, "bd_session_logits", &["evaluate"]);
        fails(bd_session_sample(s, null(), &mut token), BD_ERR_NO_LOGITS, "bd_session_sample", &[]);
        fails(
            bd_generate(s, null(), null(), 4, None, null_mut(), null_mut()),
            BD_ERR_INVALID_ARGUMENT,
            "bd_generate",
            &["empty"],
        );
        fails(bd_generate(s, c"".as_ptr(), null(), 4, None, null_mut(), null_mut()), BD_ERR_INVALID_ARGUMENT, "bd_generate", &[]);
        fails(
            bd_generate(s, c"\xff\xfe".as_ptr(), null(), 4, None, null_mut(), null_mut()),
            BD_ERR_INVALID_UTF8,
            "bd_generate",
            &["prompt"],
        );

        // Evaluation: bad ids, NULL, nothing, too many.
        let ids = [1i32, 274, 5, 6, 7, 8, 9, 10, 11];
        fails(bd_session_eval(s, null(), 3), BD_ERR_NULL_ARGUMENT, "bd_session_eval", &["tokens"]);
        fails(bd_session_eval(s, ids.as_ptr(), 0), BD_ERR_INVALID_ARGUMENT, "bd_session_eval", &["n_tokens"]);
        fails(bd_session_eval(s, [1, 2, -3].as_ptr(), 3), BD_ERR_INVALID_ARGUMENT, "bd_session_eval", &["tokens[2]", "-3"]);
        fails(bd_session_eval(s, [1, 279].as_ptr(), 2), BD_ERR_INVALID_ARGUMENT, "bd_session_eval", &["279"]);
        fails(bd_session_eval(s, ids.as_ptr(), 9), BD_ERR_CONTEXT_FULL, "bd_session_eval", &["9", "8"]);
        ok(bd_session_position(s, &mut pos));
        assert_eq!(pos, 0, "a failed eval evaluates nothing");
        ok(bd_session_eval(s, ids.as_ptr(), 6));
        fails(bd_session_eval(s, ids.as_ptr(), 3), BD_ERR_CONTEXT_FULL, "bd_session_eval", &[]);
        ok(bd_session_position(s, &mut pos));
        assert_eq!(pos, 6);
        ok(bd_session_logits(s, &mut logits, &mut n_vocab));
        assert_eq!(n_vocab, 279);
        assert!(std::slice::from_raw_parts(logits, n_vocab).iter().all(|v| v.is_finite()));
        fails(bd_session_logits(s, null_mut(), &mut n_vocab), BD_ERR_NULL_ARGUMENT, "bd_session_logits", &["logits"]);
        fails(bd_session_logits(s, &mut logits, null_mut()), BD_ERR_NULL_ARGUMENT, "bd_session_logits", &["n_vocab"]);
        fails(bd_session_position(s, null_mut()), BD_ERR_NULL_ARGUMENT, "bd_session_position", &["pos"]);
        fails(bd_session_position(null(), &mut pos), BD_ERR_NULL_ARGUMENT, "bd_session_position", &["session"]);

        // A prompt longer than the room left: nothing evaluated.
        let long = c"the the the the the the the the";
        fails(bd_generate(s, long.as_ptr(), null(), 4, None, null_mut(), null_mut()), BD_ERR_CONTEXT_FULL, "bd_generate", &[]);
        ok(bd_session_position(s, &mut pos));
        assert_eq!(pos, 6);
        // Generation runs into the end of the context: a normal stop.
        let mut n = 0u32;
        ok(bd_generate(s, null(), null(), 10, None, null_mut(), &mut n));
        ok(bd_session_position(s, &mut pos));
        assert_eq!((n, pos), (3, 8), "2 evaluated, a third sampled at the end");

        // Sampler options out of range, each named by its field.
        let d = bd_sampler_default_params();
        for (p, field) in [
            (bd_sampler_params { temperature: -1.0, ..d }, "temperature"),
            (bd_sampler_params { temperature: f32::NAN, ..d }, "temperature"),
            (bd_sampler_params { top_p: 0.0, ..d }, "top_p"),
            (bd_sampler_params { top_p: 1.5, ..d }, "top_p"),
            (bd_sampler_params { min_p: -0.5, ..d }, "min_p"),
            (bd_sampler_params { repeat_penalty: 0.0, ..d }, "repeat_penalty"),
        ] {
            fails(bd_session_sample(s, &p, &mut token), BD_ERR_INVALID_ARGUMENT, "bd_session_sample", &[field]);
            fails(bd_generate(s, null(), &p, 1, None, null_mut(), null_mut()), BD_ERR_INVALID_ARGUMENT, "bd_generate", &[field]);
        }
        // A huge repeat_last_n is fine (the window is at most the context).
        let p = bd_sampler_params { repeat_last_n: u32::MAX, repeat_penalty: 1.2, ..d };
        ok(bd_session_sample(s, &p, &mut token));
        fails(bd_session_sample(s, &p, null_mut()), BD_ERR_NULL_ARGUMENT, "bd_session_sample", &["token"]);

        // Reset: no tokens, no logits; then usable again.
        ok(bd_session_reset(s));
        ok(bd_session_position(s, &mut pos));
        assert_eq!(pos, 0);
        fails(bd_session_logits(s, &mut logits, &mut n_vocab), BD_ERR_NO_LOGITS, "bd_session_logits", &[]);
        ok(bd_session_eval(s, ids.as_ptr(), 2));
        ok(bd_session_set_seed(s, 99));
        ok(bd_session_sample(s, null(), &mut token));
        fails(bd_session_reset(null_mut()), BD_ERR_NULL_ARGUMENT, "bd_session_reset", &["session"]);
        fails(bd_session_set_seed(null_mut(), 1), BD_ERR_NULL_ARGUMENT, "bd_session_set_seed", &["session"]);
        ok(bd_session_free(s));
    }
}

#[test]
fn freed_and_foreign_handles_give_invalid_handle() {
    let l = load();
    let s = session(l.model, 16);
    // SAFETY: freed handles are never dereferenced by the library: that is what is tested.
    unsafe {
        // The model is busy while a session lives.
        fails(bd_model_free(l.model), BD_ERR_BUSY, "bd_model_free", &["1 live session"]);
        let ids = [1i32, 274];
        ok(bd_session_eval(s, ids.as_ptr(), 2));
        ok(bd_session_free(s));

        let (mut logits, mut n_vocab, mut token, mut pos) = (null(), 0usize, 0i32, 0u32);
        let closed = |st: bd_status, f: &str| fails(st, BD_ERR_INVALID_HANDLE, f, &["session"]);
        closed(bd_session_eval(s, ids.as_ptr(), 2), "bd_session_eval");
        closed(bd_session_logits(s, &mut logits, &mut n_vocab), "bd_session_logits");
        closed(bd_session_sample(s, null(), &mut token), "bd_session_sample");
        closed(bd_session_position(s, &mut pos), "bd_session_position");
        closed(bd_session_reset(s), "bd_session_reset");
        closed(bd_session_set_seed(s, 1), "bd_session_set_seed");
        let mut n = 7u32;
        closed(bd_generate(s, c"the".as_ptr(), null(), 4, None, null_mut(), &mut n), "bd_generate");
        assert_eq!(n, 0, "n_generated is written on errors too");
        closed(bd_session_free(s), "bd_session_free");
        ok(bd_session_free(null_mut()));

        // A model pointer is not a session and the other way round; nor is a made-up pointer.
        closed(bd_session_eval(l.model.cast(), ids.as_ptr(), 2), "bd_session_eval");
        let mut info = std::mem::zeroed();
        fails(bd_model_get_info(s.cast(), &mut info), BD_ERR_INVALID_HANDLE, "bd_model_get_info", &["model"]);
        let junk = 0x1234_5678 as *mut bd_model;
        fails(bd_model_free(junk), BD_ERR_INVALID_HANDLE, "bd_model_free", &[]);

        // Now the model can go, once.
        let dir = tempfile::tempdir().unwrap();
        let mut m = null_mut();
        ok(bd_model_load(c(&write_model(dir.path())).as_ptr(), &mut m));
        ok(bd_model_free(m));
        let model_gone = |st: bd_status, f: &str| fails(st, BD_ERR_INVALID_HANDLE, f, &["model"]);
        model_gone(bd_model_get_info(m, &mut info), "bd_model_get_info");
        let (mut ids2, mut n) = ([0i32; 8], 0usize);
        model_gone(bd_tokenize(m, c"the".as_ptr(), 3, 1, ids2.as_mut_ptr(), 8, &mut n), "bd_tokenize");
        let mut buf = [0 as c_char; 8];
        model_gone(bd_detokenize(m, ids.as_ptr(), 2, buf.as_mut_ptr(), 8, &mut n), "bd_detokenize");
        let mut p = null();
        model_gone(bd_token_piece(m, 5, &mut p, &mut n), "bd_token_piece");
        let mut s2 = null_mut();
        model_gone(bd_session_new(m, null(), &mut s2), "bd_session_new");
        model_gone(bd_model_free(m), "bd_model_free");
    }
}

/// The callback of `callback_reenters`: calls on the session it runs for, and on its model.
struct Reentry {
    session: *mut bd_session,
    model: *const bd_model,
    statuses: Vec<bd_status>,
    tokens: Vec<i32>,
    stop_at: usize,
}

unsafe extern "C" fn reenter(token: i32, _text: *const c_char, _len: usize, user: *mut c_void) -> c_int {
    let r = &mut *(user as *mut Reentry);
    r.tokens.push(token);
    let mut pos = 0u32;
    r.statuses.push(bd_session_position(r.session, &mut pos));
    r.statuses.push(bd_session_eval(r.session, &token, 1));
    r.statuses.push(bd_session_free(r.session));
    let mut info = std::mem::zeroed();
    r.statuses.push(bd_model_get_info(r.model, &mut info));
    (r.tokens.len() >= r.stop_at) as c_int
}

#[test]
fn a_session_in_use_answers_busy() {
    let l = load();
    let s = session(l.model, 64);
    let mut r = Reentry { session: s, model: l.model, statuses: vec![], tokens: vec![], stop_at: 3 };
    let mut n = 0u32;
    // SAFETY: valid pointers; the callback only makes calls the header allows to fail.
    unsafe {
        ok(bd_generate(s, c"the".as_ptr(), null(), 10, Some(reenter), &mut r as *mut Reentry as *mut c_void, &mut n));
        assert_eq!(n, 3);
        // Calls on the same session from its callback are refused; the model is fine.
        assert_eq!(
            r.statuses,
            [BD_ERR_BUSY, BD_ERR_BUSY, BD_ERR_BUSY, BD_OK].repeat(3),
            "position, eval, free on the session; info on the model"
        );
        let mut pos = 0u32;
        ok(bd_session_position(s, &mut pos));
        assert_eq!(pos as usize, 2 + 3, "BOS, the, and the 3 tokens (the last one evaluated too)");

        // From another thread, while this one is inside a call: BUSY too.
        let sp = s as usize;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        struct Block(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);
        unsafe extern "C" fn block(_: i32, _: *const c_char, _: usize, user: *mut c_void) -> c_int {
            let b = &*(user as *const Block);
            let _ = b.0.send(());
            let _ = b.1.recv();
            1
        }
        let blocker = std::thread::spawn(move || {
            let b = Block(started_tx, rx);
            let s = sp as *mut bd_session;
            bd_generate(s, null(), null(), 1, Some(block), &b as *const Block as *mut c_void, null_mut())
        });
        started_rx.recv().unwrap();
        fails(bd_session_position(s, &mut pos), BD_ERR_BUSY, "bd_session_position", &["one thread at a time"]);
        fails(bd_session_free(s), BD_ERR_BUSY, "bd_session_free", &[]);
        tx.send(()).unwrap();
        assert_eq!(blocker.join().unwrap(), BD_OK);
        ok(bd_session_free(s));
    }
}

/// Token ids and their texts, as a callback sees them.
#[derive(Default)]
struct Stream {
    tokens: Vec<i32>,
    text: Vec<u8>,
    stop_after: usize,
}

unsafe extern "C" fn record(token: i32, text: *const c_char, len: usize, user: *mut c_void) -> c_int {
    let s = &mut *(user as *mut Stream);
    s.tokens.push(token);
    assert_eq!(*text.add(len), 0, "NUL after the text");
    s.text.extend_from_slice(std::slice::from_raw_parts(text.cast::<u8>(), len));
    (s.stop_after > 0 && s.tokens.len() >= s.stop_after) as c_int
}

#[test]
fn generation_is_repeatable_continues_and_stops_where_told() {
    let l = load();
    let s = session(l.model, 128);
    let sampled =
        bd_sampler_params { temperature: 5.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 64 };
    let run = |prompt: Option<&CStr>, n: u32, stop_after: usize| {
        let mut out = Stream { stop_after, ..Stream::default() };
        let mut count = 0u32;
        // SAFETY: valid pointers.
        ok(unsafe {
            bd_generate(
                s,
                prompt.map_or(null(), CStr::as_ptr),
                &sampled,
                n,
                Some(record),
                &mut out as *mut Stream as *mut c_void,
                &mut count,
            )
        });
        assert_eq!(count as usize, out.tokens.len());
        out
    };
    // SAFETY: valid handles.
    unsafe {
        let whole = run(Some(c"the"), 24, 0);
        assert_eq!(whole.tokens.len(), 24);
        // Reset: the same tokens again (the random stream restarts from the seed).
        ok(bd_session_reset(s));
        assert_eq!(run(Some(c"the"), 24, 0).tokens, whole.tokens);
        // Stopped by the callback after 5, then continued with a NULL prompt: the same tokens and text.
        ok(bd_session_reset(s));
        let first = run(Some(c"the"), 24, 5);
        assert_eq!(first.tokens.len(), 5);
        let rest = run(None, 19, 0);
        assert_eq!([first.tokens, rest.tokens].concat(), whole.tokens);
        // Text: complete characters in each call; across the split it may differ only if a character
        // was cut there (not the case when the texts agree).
        let joined = [first.text, rest.text].concat();
        if joined != whole.text {
            assert!(String::from_utf8_lossy(&whole.text).contains('\u{FFFD}'));
        }
        assert!(std::str::from_utf8(&whole.text).is_ok(), "the callback's text is UTF-8");
        // max_tokens 0 evaluates the prompt and generates nothing.
        ok(bd_session_reset(s));
        assert!(run(Some(c"the"), 0, 0).tokens.is_empty());
        let mut pos = 0u32;
        ok(bd_session_position(s, &mut pos));
        assert_eq!(pos, 2);
        // Another seed, other tokens.
        ok(bd_session_reset(s));
        ok(bd_session_set_seed(s, 12345));
        assert_ne!(run(Some(c"the"), 24, 0).tokens, whole.tokens);
        // No callback, no count: allowed.
        ok(bd_generate(s, null(), &sampled, 2, None, null_mut(), null_mut()));
        ok(bd_session_free(s));
    }
}

#[test]
fn panics_never_cross_the_boundary() {
    // No API path is known to panic; the guard every function runs under is tested in the
    // runtime's unit tests (ffi::tests). Here: absurd but legal inputs do not panic either.
    let l = load();
    // SAFETY: valid pointers and lengths.
    unsafe {
        let mut ids = [0i32; 4096];
        let mut n = 0usize;
        let text = "€".repeat(1000);
        ok(bd_tokenize(l.model, text.as_ptr().cast(), text.len(), 1, ids.as_mut_ptr(), ids.len(), &mut n));
        let mut buf = vec![0 as c_char; 8192];
        let mut len = 0usize;
        ok(bd_detokenize(l.model, ids.as_ptr(), n, buf.as_mut_ptr(), buf.len(), &mut len));
        assert_eq!(len, text.len());
        let s = session(l.model, 0);
        ok(bd_session_eval(s, ids.as_ptr(), 256));
        let mut token = 0;
        ok(bd_session_sample(s, null(), &mut token));
        fails(bd_session_eval(s, &token, 1), BD_ERR_CONTEXT_FULL, "bd_session_eval", &[]);
        ok(bd_session_free(s));
    }
}
