//! The C ABI: `runtime/include/bitdistiller.h`, implemented. The header is the documentation; the
//! root package's build script runs bindgen over it and `tests/c_abi.rs` checks that these
//! declarations match it (names, parameter and return types, struct layouts, enum values).
//!
//! Every exported function runs its body under `catch_unwind` ([`call`]): errors become a status and
//! a thread-local message, panics become `BD_ERR_INTERNAL`. Handles and the per-session driver
//! thread are in [`handles`]; token text without allocation in [`pieces`].

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // the header documents every function's contract

mod handles;
mod pieces;

use crate::error::RuntimeError;
use crate::{Model, ReadOptions, SamplerConfig};
use bd_formats::bd2::Bd2Error;
use handles::{CallerState, ModelInner, SessionInner};
use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::{PhantomData, PhantomPinned};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `BD_ABI_VERSION` of the header this library implements.
pub const BD_ABI_VERSION: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum bd_status {
    BD_OK = 0,
    BD_ERR_NULL_ARGUMENT = 1,
    BD_ERR_INVALID_ARGUMENT = 2,
    BD_ERR_INVALID_UTF8 = 3,
    BD_ERR_IO = 4,
    BD_ERR_BAD_MODEL = 5,
    BD_ERR_BUFFER_TOO_SMALL = 6,
    BD_ERR_CONTEXT_FULL = 7,
    BD_ERR_INVALID_HANDLE = 8,
    BD_ERR_BUSY = 9,
    BD_ERR_INTERNAL = 10,
    BD_ERR_NO_LOGITS = 11,
    BD_ERR_SYSTEM = 12,
}

/// Opaque: a `bd_model *` is the address of a [`handles`] model, never dereferenced by C.
#[repr(C)]
pub struct bd_model {
    _private: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// Opaque, like [`bd_model`].
#[repr(C)]
pub struct bd_session {
    _private: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct bd_model_info {
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_layers: u32,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub max_context: u32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub group_size: u32,
    pub bits_per_weight: f64,
    pub file_bytes: u64,
    pub params: u64,
    pub format: [c_char; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct bd_session_params {
    pub context: u32,
    pub threads: u32,
    pub seed: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct bd_sampler_params {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
}

pub type bd_token_callback =
    Option<unsafe extern "C" fn(token: i32, text: *const c_char, text_len: usize, user_data: *mut c_void) -> c_int>;

// ---- errors ------------------------------------------------------------------------------------

/// A failed call: its status and message.
#[derive(Debug)]
pub(crate) struct Error {
    status: bd_status,
    msg: String,
}

pub(crate) type R<T> = Result<T, Error>;

impl Error {
    fn new(status: bd_status, msg: impl Into<String>) -> Self {
        Self { status, msg: msg.into() }
    }

    fn null(what: &str) -> Self {
        Self::new(bd_status::BD_ERR_NULL_ARGUMENT, format!("`{what}` is NULL"))
    }

    fn invalid(msg: impl Into<String>) -> Self {
        Self::new(bd_status::BD_ERR_INVALID_ARGUMENT, msg)
    }

    fn internal(panic: &(dyn Any + Send)) -> Self {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        Self::new(bd_status::BD_ERR_INTERNAL, format!("internal error (a panic in the library, please report it): {what}"))
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        let status = match &e {
            RuntimeError::Model(Bd2Error::Io { .. }) => bd_status::BD_ERR_IO,
            RuntimeError::Model(_) | RuntimeError::BadTensor { .. } => bd_status::BD_ERR_BAD_MODEL,
            RuntimeError::ContextOverflow { .. } => bd_status::BD_ERR_CONTEXT_FULL,
            RuntimeError::BadToken { .. } | RuntimeError::InvalidArgument(_) | RuntimeError::Tokenizer(_) => {
                bd_status::BD_ERR_INVALID_ARGUMENT
            }
            RuntimeError::ThreadPool(_) => bd_status::BD_ERR_SYSTEM,
        };
        Self::new(status, e.to_string())
    }
}

thread_local! {
    /// The last failure's message on this thread, NUL-terminated (empty before the first).
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn set_last_error(function: &str, msg: &str) {
    let _ = LAST_ERROR.try_with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        e.extend_from_slice(function.as_bytes());
        e.extend_from_slice(b": ");
        // An interior NUL would cut the message short.
        e.extend(msg.bytes().map(|b| if b == 0 { b'?' } else { b }));
        e.push(0);
    });
}

/// The body of every exported function that returns a status.
fn call(function: &'static str, body: impl FnOnce() -> R<()>) -> bd_status {
    let err = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return bd_status::BD_OK,
        Ok(Err(e)) => e,
        Err(panic) => Error::internal(&*panic),
    };
    // Even building the message must not unwind into C.
    let _ = catch_unwind(AssertUnwindSafe(|| set_last_error(function, &err.msg)));
    err.status
}

// ---- argument checks ---------------------------------------------------------------------------

/// `&mut *p`, or NULL_ARGUMENT naming `what`.
unsafe fn out<'a, T>(p: *mut T, what: &str) -> R<&'a mut T> {
    p.as_mut().ok_or_else(|| Error::null(what))
}

/// A caller's array: `len` elements at `p` (which may be NULL only when `len` is 0).
unsafe fn array<'a, T>(p: *const T, len: usize, what: &str) -> R<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::null(what));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Error::invalid(format!("`{what}`: length {len} is impossibly large")));
    }
    Ok(std::slice::from_raw_parts(p, len))
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> R<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        Error::new(bd_status::BD_ERR_INVALID_UTF8, format!("`{what}` is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })
}

unsafe fn c_str<'a>(p: *const c_char, what: &str) -> R<&'a str> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    utf8(CStr::from_ptr(p).to_bytes(), what)
}

/// Token ids from C as the runtime's `u32`, each checked against the vocabulary.
unsafe fn token_ids<'a>(p: *const i32, n: usize, vocab: usize, what: &str) -> R<&'a [u32]> {
    let ids = array(p, n, what)?;
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id as usize >= vocab) {
        return Err(Error::invalid(format!("`{what}[{i}]` = {id} is not a token id (vocabulary of {vocab})")));
    }
    // SAFETY: i32 and u32 have the same size and alignment, and every value is non-negative.
    Ok(std::slice::from_raw_parts(ids.as_ptr().cast::<u32>(), ids.len()))
}

/// bd-run's sampling options from C; the messages name the struct's fields.
fn sampler_config(p: *const bd_sampler_params, ctx: usize) -> R<SamplerConfig> {
    // SAFETY: the header requires a valid pointer or NULL.
    let p = unsafe { p.as_ref() }.copied().unwrap_or_else(default_sampler_params);
    let cfg = SamplerConfig {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        // The window cannot hold more than the context, and the sampler reserves room for it.
        repeat_last_n: (p.repeat_last_n as usize).min(ctx),
        seed: 0,
    };
    cfg.validate().map_err(|e| {
        let msg = e.to_string();
        let msg = [("--temp", "temperature"), ("--top-p", "top_p"), ("--min-p", "min_p"), ("--repeat-penalty", "repeat_penalty")]
            .iter()
            .fold(msg, |m, (flag, field)| m.replace(flag, field));
        Error::invalid(format!("bd_sampler_params: {msg}"))
    })?;
    Ok(cfg)
}

fn default_sampler_params() -> bd_sampler_params {
    let d = SamplerConfig::default();
    bd_sampler_params {
        temperature: d.temperature,
        top_k: d.top_k as u32,
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        repeat_last_n: d.repeat_last_n as u32,
    }
}

// ---- version and errors ------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn bd_abi_version() -> u32 {
    BD_ABI_VERSION
}

#[no_mangle]
pub unsafe extern "C" fn bd_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[no_mangle]
pub unsafe extern "C" fn bd_last_error() -> *const c_char {
    let empty = c"".as_ptr();
    let last = || LAST_ERROR.try_with(|e| e.borrow().first().map(|b| b as *const u8 as *const c_char)).ok().flatten();
    catch_unwind(last).ok().flatten().unwrap_or(empty)
}

// ---- models ------------------------------------------------------------------------------------

fn publish_model(model: R<Model>, out: &mut *mut bd_model) -> R<()> {
    let inner = ModelInner::new(model?)?;
    *out = handles::register_model(inner);
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn bd_model_load(path: *const c_char, out_model: *mut *mut bd_model) -> bd_status {
    call("bd_model_load", || {
        let out_model = out(out_model, "out")?;
        *out_model = std::ptr::null_mut();
        let path = c_str(path, "path")?;
        publish_model(Model::open(path.as_ref(), ReadOptions::default()).map_err(Error::from), out_model)
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_model_load_from_memory(data: *const u8, len: usize, out_model: *mut *mut bd_model) -> bd_status {
    call("bd_model_load_from_memory", || {
        let out_model = out(out_model, "out")?;
        *out_model = std::ptr::null_mut();
        let bytes = array(data, len, "data")?;
        if data.is_null() {
            return Err(Error::null("data"));
        }
        publish_model(Model::from_bytes(bytes, ReadOptions::default()).map_err(Error::from), out_model)
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_model_free(model: *mut bd_model) -> bd_status {
    call("bd_model_free", || handles::free_model(model))
}

#[no_mangle]
pub unsafe extern "C" fn bd_model_get_info(model: *const bd_model, info: *mut bd_model_info) -> bd_status {
    call("bd_model_get_info", || {
        let info = out(info, "out")?;
        *info = handles::model(model)?.info;
        Ok(())
    })
}

// ---- tokens ------------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn bd_tokenize(
    model: *const bd_model,
    text: *const c_char,
    len: usize,
    add_bos: c_int,
    tokens: *mut i32,
    capacity: usize,
    n_tokens: *mut usize,
) -> bd_status {
    call("bd_tokenize", || {
        let m = handles::model(model)?;
        let n_tokens = out(n_tokens, "n_tokens")?;
        if capacity > 0 && tokens.is_null() {
            return Err(Error::null("tokens"));
        }
        let text = utf8(array(text.cast::<u8>(), len, "text")?, "text")?;
        let ids = m.tokenizer.encode(text, add_bos != 0)?;
        *n_tokens = ids.len();
        if ids.len() > capacity {
            return Err(Error::new(
                bd_status::BD_ERR_BUFFER_TOO_SMALL,
                format!("the text is {} tokens, `tokens` holds {capacity}", ids.len()),
            ));
        }
        for (i, &id) in ids.iter().enumerate() {
            *tokens.add(i) = id as i32;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_detokenize(
    model: *const bd_model,
    tokens: *const i32,
    n_tokens: usize,
    buf: *mut c_char,
    capacity: usize,
    len: *mut usize,
) -> bd_status {
    call("bd_detokenize", || {
        let m = handles::model(model)?;
        let len = out(len, "len")?;
        if capacity > 0 && buf.is_null() {
            return Err(Error::null("buf"));
        }
        let ids = token_ids(tokens, n_tokens, m.vocab(), "tokens")?;
        let text = m.tokenizer.decode(ids)?;
        *len = text.len();
        if text.len() >= capacity {
            return Err(Error::new(
                bd_status::BD_ERR_BUFFER_TOO_SMALL,
                format!("the text is {} bytes plus a NUL, `buf` holds {capacity}", text.len()),
            ));
        }
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        *buf.add(text.len()) = 0;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_token_piece(
    model: *const bd_model,
    token: i32,
    piece: *mut *const c_char,
    len: *mut usize,
) -> bd_status {
    call("bd_token_piece", || {
        let m = handles::model(model)?;
        let piece = out(piece, "piece")?;
        let len = out(len, "len")?;
        if token < 0 || token as usize >= m.vocab() {
            return Err(Error::invalid(format!("`token` = {token} is not a token id (vocabulary of {})", m.vocab())));
        }
        let bytes = m.pieces.get(token as u32);
        // The model handle keeps the pieces alive (the registry's reference) until bd_model_free.
        *piece = bytes.as_ptr().cast();
        *len = bytes.len();
        Ok(())
    })
}

// ---- sessions ----------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn bd_session_default_params() -> bd_session_params {
    bd_session_params { context: 0, threads: 0, seed: 0 }
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_new(
    model: *const bd_model,
    params: *const bd_session_params,
    out_session: *mut *mut bd_session,
) -> bd_status {
    call("bd_session_new", || {
        let out_session = out(out_session, "out")?;
        *out_session = std::ptr::null_mut();
        let p = params.as_ref().copied().unwrap_or_else(|| bd_session_default_params());
        *out_session = handles::new_session(model, p.context, p.threads, p.seed)?;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_reset(session: *mut bd_session) -> bd_status {
    call("bd_session_reset", || handles::with_session(session, |s, st| s.reset(st)))
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_set_seed(session: *mut bd_session, seed: u64) -> bd_status {
    call("bd_session_set_seed", || handles::with_session(session, |s, st| s.set_seed(st, seed)))
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_free(session: *mut bd_session) -> bd_status {
    call("bd_session_free", || handles::free_session(session))
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_position(session: *const bd_session, pos: *mut u32) -> bd_status {
    call("bd_session_position", || {
        let pos = out(pos, "pos")?;
        *pos = handles::with_session(session, |_, st| Ok(st.pos as u32))?;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_eval(session: *mut bd_session, tokens: *const i32, n_tokens: usize) -> bd_status {
    call("bd_session_eval", || {
        handles::with_session(session, |s, st| {
            if n_tokens == 0 {
                return Err(Error::invalid("`n_tokens` is 0: nothing to evaluate"));
            }
            let ids = token_ids(tokens, n_tokens, s.model.vocab(), "tokens")?;
            s.run(st, ids, None).map(|_| ())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_logits(
    session: *const bd_session,
    logits: *mut *const f32,
    n_vocab: *mut usize,
) -> bd_status {
    call("bd_session_logits", || {
        let logits = out(logits, "logits")?;
        let n_vocab = out(n_vocab, "n_vocab")?;
        let (p, n) = handles::with_session(session, |_, st| Ok((st.logits, st.n_logits)))?;
        if n == 0 {
            return Err(Error::new(bd_status::BD_ERR_NO_LOGITS, "the session has no logits yet: evaluate tokens first"));
        }
        *logits = p;
        *n_vocab = n;
        Ok(())
    })
}

// ---- sampling and generation -------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn bd_sampler_default_params() -> bd_sampler_params {
    default_sampler_params()
}

#[no_mangle]
pub unsafe extern "C" fn bd_session_sample(
    session: *mut bd_session,
    params: *const bd_sampler_params,
    token: *mut i32,
) -> bd_status {
    call("bd_session_sample", || {
        let token = out(token, "token")?;
        handles::with_session(session, |s, st| {
            let cfg = sampler_config(params, st.ctx)?;
            let t = s.run(st, &[], Some(cfg))?.ok_or_else(|| Error::new(bd_status::BD_ERR_INTERNAL, "no token sampled"))?;
            *token = t as i32;
            Ok(())
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn bd_generate(
    session: *mut bd_session,
    prompt: *const c_char,
    params: *const bd_sampler_params,
    max_tokens: u32,
    callback: bd_token_callback,
    user_data: *mut c_void,
    n_generated: *mut u32,
) -> bd_status {
    let mut count = 0u32;
    let status = call("bd_generate", || {
        handles::with_session(session, |s, st| {
            let prompt = if prompt.is_null() { "" } else { c_str(prompt, "prompt")? };
            let cfg = sampler_config(params, st.ctx)?;
            generate(s, st, prompt, cfg, max_tokens, callback, user_data, &mut count)
        })
    });
    if let Some(n) = n_generated.as_mut() {
        *n = count;
    }
    status
}

/// bd_generate's loop on the calling thread: each step is one command to the driver (evaluate the
/// previous token and sample the next), so the callback runs on the caller's thread.
#[allow(clippy::too_many_arguments)]
unsafe fn generate(
    s: &SessionInner,
    st: &mut CallerState,
    prompt: &str,
    cfg: SamplerConfig,
    max_tokens: u32,
    callback: bd_token_callback,
    user_data: *mut c_void,
    count: &mut u32,
) -> R<()> {
    let m = &*s.model;
    let ids = if prompt.is_empty() {
        if st.pos == 0 {
            return Err(Error::invalid("the prompt is empty and so is the session: nothing to continue"));
        }
        Vec::new()
    } else {
        m.tokenizer.encode(prompt, st.pos == 0)?
    };
    let sample = |n: u32| if n > 0 { Some(cfg.clone()) } else { None };
    let mut next = s.run(st, &ids, sample(max_tokens))?;
    st.stream.clear();
    let eos = m.tokenizer.eos_id();
    for i in 0..max_tokens {
        let Some(token) = next else { break };
        *count += 1;
        let full = st.pos >= st.ctx;
        let last = token == eos || full || i + 1 == max_tokens;
        st.text.clear();
        st.stream.push(m.pieces.get(token), last, &mut st.text);
        let text_len = st.text.len();
        st.text.push(0);
        let stop = match callback {
            Some(f) => f(token as i32, st.text.as_ptr().cast(), text_len, user_data) != 0,
            None => false,
        };
        if token == eos || full {
            break;
        }
        if stop || i + 1 == max_tokens {
            s.run(st, &[token], None)?;
            break;
        }
        next = s.run(st, &[token], sample(1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: always a valid NUL-terminated string.
        unsafe { CStr::from_ptr(bd_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_internal_with_its_message_and_errors_their_status() {
        assert_eq!(call("bd_test", || panic!("boom {}", 42)), bd_status::BD_ERR_INTERNAL);
        let msg = last_error();
        assert!(msg.starts_with("bd_test: internal error") && msg.contains("boom 42"), "{msg}");
        assert_eq!(call("bd_other", || Err(Error::invalid("bad\0value"))), bd_status::BD_ERR_INVALID_ARGUMENT);
        assert_eq!(last_error(), "bd_other: bad?value");
        assert_eq!(call("bd_fine", || Ok(())), bd_status::BD_OK);
        assert_eq!(last_error(), "bd_other: bad?value", "success leaves the message alone");
    }

    #[test]
    fn runtime_errors_map_to_statuses() {
        let io = RuntimeError::Model(Bd2Error::Io { path: "x".into(), err: std::io::ErrorKind::NotFound.into() });
        assert_eq!(Error::from(io).status, bd_status::BD_ERR_IO);
        let bad = RuntimeError::Model(Bd2Error::UnsupportedVersion(9));
        assert_eq!(Error::from(bad).status, bd_status::BD_ERR_BAD_MODEL);
        let full = RuntimeError::ContextOverflow { needed: 9, ctx: 8 };
        assert_eq!(Error::from(full).status, bd_status::BD_ERR_CONTEXT_FULL);
        assert_eq!(Error::from(RuntimeError::ThreadPool("no".into())).status, bd_status::BD_ERR_SYSTEM);
    }
}
