//! No heap allocation per token through the C API either: a counting global allocator sees none over
//! 64 `bd_session_eval` (one token) + `bd_session_sample` calls, nor over a 64-token `bd_generate`,
//! after warm-up. The calls come from this (foreign, non-pool) thread, as a C program's would. The
//! allocator counts every thread of the process (the session's driver and pool workers included),
//! so this binary holds a single test.

#[path = "../runtime/tests/common/mod.rs"]
mod common;

use bd_formats::hf::fixture::TinySpec;
use bd_formats::quant::QuantFormat;
use bd_formats::DType;
use bd_runtime::ffi::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const STEPS: usize = 64;

fn ok(s: bd_status) {
    assert_eq!(s, bd_status::BD_OK, "{}", unsafe { std::ffi::CStr::from_ptr(bd_last_error()) }.to_string_lossy());
}

/// Token ids and text bytes into fixed buffers: what a careful C callback does.
struct Sink {
    tokens: [i32; 512],
    n: usize,
    text: [u8; 8192],
    text_len: usize,
}

unsafe extern "C" fn sink(token: i32, text: *const c_char, len: usize, user: *mut c_void) -> c_int {
    let s = &mut *(user as *mut Sink);
    s.tokens[s.n] = token;
    s.n += 1;
    let bytes = std::slice::from_raw_parts(text.cast::<u8>(), len);
    s.text[s.text_len..s.text_len + len].copy_from_slice(bytes);
    s.text_len += len;
    0
}

fn count(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn decoding_through_the_c_api_allocates_nothing_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_model(dir.path(), "m.bd2", &TinySpec::default(), DType::Quant(QuantFormat::Int2), DType::F32, 32);
    let path = CString::new(path.to_str().unwrap()).unwrap();
    let prompt = c"the end";
    let params = bd_sampler_params { temperature: 0.9, repeat_penalty: 1.1, ..unsafe { bd_sampler_default_params() } };
    let mut report = Vec::new();
    for threads in [1u32, 2, 4] {
        // SAFETY: every pointer is valid for the call it is passed to.
        unsafe {
            let mut model = std::ptr::null_mut();
            ok(bd_model_load(path.as_ptr(), &mut model));
            let sp = bd_session_params { context: 0, threads, seed: 3 };
            let mut session = std::ptr::null_mut();
            ok(bd_session_new(model, &sp, &mut session));
            let mut ids = [0i32; 64];
            let mut n = 0;
            ok(bd_tokenize(model, prompt.as_ptr(), prompt.to_bytes().len(), 1, ids.as_mut_ptr(), ids.len(), &mut n));
            ok(bd_session_eval(session, ids.as_ptr(), n));

            // eval + logits + sample, one token at a time.
            let step = || {
                let mut token = 0;
                ok(bd_session_sample(session, &params, &mut token));
                ok(bd_session_eval(session, &token, 1));
                let (mut logits, mut n_vocab) = (std::ptr::null(), 0);
                ok(bd_session_logits(session, &mut logits, &mut n_vocab));
            };
            for _ in 0..16 {
                step();
            }
            let eval_sample = count(|| (0..STEPS).for_each(|_| step()));

            // bd_generate continuing the session (a NULL prompt: nothing to tokenize).
            let mut out = Box::new(Sink { tokens: [0; 512], n: 0, text: [0; 8192], text_len: 0 });
            let user = &mut *out as *mut Sink as *mut c_void;
            let mut generated = 0;
            ok(bd_generate(session, std::ptr::null(), &params, 16, Some(sink), user, &mut generated));
            let generate =
                count(|| ok(bd_generate(session, std::ptr::null(), &params, STEPS as u32, Some(sink), user, &mut generated)));
            assert_eq!(generated as usize, STEPS);

            // With a prompt, only tokenizing it allocates: as much for 64 tokens as for 4.
            let mut with_prompt = |n: u32| {
                ok(bd_session_reset(session));
                out.n = 0;
                out.text_len = 0;
                let user = &mut *out as *mut Sink as *mut c_void;
                count(|| ok(bd_generate(session, prompt.as_ptr(), &params, n, Some(sink), user, std::ptr::null_mut())))
            };
            with_prompt(4);
            let (short, long) = (with_prompt(4), with_prompt(STEPS as u32));

            ok(bd_session_free(session));
            ok(bd_model_free(model));
            report.push((threads, eval_sample, generate, short, long));
        }
    }
    eprintln!("allocations (threads, {STEPS} x eval+sample, {STEPS}-token generate, generate(prompt, 4), generate(prompt, {STEPS})): {report:?}");
    assert!(
        report.iter().all(|&(_, e, g, short, long)| e == 0 && g == 0 && short == long),
        "allocations (threads, {STEPS} x eval+sample, {STEPS}-token generate, generate(prompt, 4), generate(prompt, {STEPS})): {report:?}"
    );
}
