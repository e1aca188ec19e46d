//! What the C handles point to, the registry of live handles, and the driver thread that runs a
//! session's work inside its thread pool.
//!
//! Handles are `Arc::into_raw` pointers. The registry holds the reference `into_raw` gave away, and
//! every call first looks the pointer up in the registry and takes its own reference there, under
//! the registry's lock: a pointer that was freed (or never created, or is of the other kind) is
//! never dereferenced, and a model freed by one thread while another is still inside a call on it
//! stays alive until that call returns.
//!
//! Allocation-free decoding from a foreign thread: `Session::decode` called outside the session's
//! pool goes through `ThreadPool::install`, which pushes a job into rayon's global injector, and
//! that queue allocates a new block every few dozen pushes. So each session has a driver: a thread
//! that enters the pool once (`Session::with_pool`) and stays there, executing commands handed over
//! through a mutex-and-condvar slot. A command is a plain value holding raw pointers into the
//! caller's memory, which stays valid because the caller blocks until the reply; nothing is
//! allocated per command.

use super::pieces::{Pieces, Utf8Stream};
use super::{bd_model, bd_model_info, bd_session, bd_status, Error, R};
use crate::error::RuntimeError;
use crate::{Model, Sampler, SamplerConfig, Session, Tokenizer};
use std::collections::BTreeSet;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;

/// Live handles by address.
struct Registry {
    models: BTreeSet<usize>,
    sessions: BTreeSet<usize>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { models: BTreeSet::new(), sessions: BTreeSet::new() });

/// Lock ignoring poison: every critical section here leaves the data consistent (and none panics).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn registry() -> MutexGuard<'static, Registry> {
    lock(&REGISTRY)
}

fn invalid_handle(what: &str) -> Error {
    Error::new(
        bd_status::BD_ERR_INVALID_HANDLE,
        format!("`{what}` is not a live {what} handle (already freed, never created, or of another kind)"),
    )
}

/// A new reference to the object behind `p`, if `p` is in `set`.
///
/// SAFETY (of the unsafe block): `p` came from `Arc::into_raw` of a `T` (only such addresses enter
/// the set), and the set's reference keeps it alive while the registry lock is held.
fn lookup<T>(set: &BTreeSet<usize>, p: usize, what: &str) -> R<Arc<T>> {
    if p == 0 {
        return Err(Error::null(what));
    }
    if !set.contains(&p) {
        return Err(invalid_handle(what));
    }
    unsafe {
        Arc::increment_strong_count(p as *const T);
        Ok(Arc::from_raw(p as *const T))
    }
}

// ---- models ------------------------------------------------------------------------------------

pub(crate) struct ModelInner {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub pieces: Pieces,
    pub info: bd_model_info,
    /// Live sessions; changed only under the registry lock.
    sessions: AtomicUsize,
}

impl ModelInner {
    pub fn new(model: Model) -> R<Self> {
        let bad = |e: RuntimeError| Error::new(bd_status::BD_ERR_BAD_MODEL, e.to_string());
        let tokenizer = Tokenizer::from_model(&model).map_err(bad)?;
        let c = model.config();
        let pieces = Pieces::new(&tokenizer, c.vocab_size).map_err(bad)?;
        let file = model.file();
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let mut format = [0 as c_char; 16];
        // Truncated if ever longer; the last byte stays NUL.
        for (d, &s) in format.iter_mut().zip(file.header().quant.format.as_bytes().iter().take(15)) {
            *d = s as c_char;
        }
        let info = bd_model_info {
            vocab_size: u(c.vocab_size),
            hidden_size: u(c.hidden_size),
            intermediate_size: u(c.intermediate_size),
            num_layers: u(c.num_layers),
            num_heads: u(c.num_heads),
            num_kv_heads: u(c.num_kv_heads),
            head_dim: u(c.head_dim),
            max_context: u(c.max_context),
            bos_id: c.bos_id as i32,
            eos_id: c.eos_id as i32,
            group_size: u(file.header().quant.group_size.unwrap_or(0)),
            bits_per_weight: file.bits_per_weight().unwrap_or(0.0),
            file_bytes: file.file_len(),
            params: file.tensors().iter().map(|t| t.numel() as u64).sum(),
            format,
        };
        Ok(Self { model, tokenizer, pieces, info, sessions: AtomicUsize::new(0) })
    }

    pub fn vocab(&self) -> usize {
        self.model.config().vocab_size
    }
}

pub(crate) fn register_model(m: ModelInner) -> *mut bd_model {
    let p = Arc::into_raw(Arc::new(m));
    registry().models.insert(p as usize);
    p as *mut bd_model
}

/// The model behind a handle.
pub(crate) fn model(p: *const bd_model) -> R<Arc<ModelInner>> {
    lookup(&registry().models, p as usize, "model")
}

/// The model behind a handle, counted as having one more session (atomically with the lookup, so
/// that a concurrent `bd_model_free` either fails with BUSY or makes this lookup fail).
fn model_for_session(p: *const bd_model) -> R<Arc<ModelInner>> {
    let reg = registry();
    let m: Arc<ModelInner> = lookup(&reg.models, p as usize, "model")?;
    m.sessions.fetch_add(1, Ordering::SeqCst);
    Ok(m)
}

pub(crate) fn free_model(p: *mut bd_model) -> R<()> {
    if p.is_null() {
        return Ok(());
    }
    let mut reg = registry();
    if !reg.models.contains(&(p as usize)) {
        return Err(invalid_handle("model"));
    }
    // SAFETY: registered, so alive (the registry's reference).
    let inner = unsafe { &*(p as *const ModelInner) };
    let live = inner.sessions.load(Ordering::SeqCst);
    if live > 0 {
        return Err(Error::new(bd_status::BD_ERR_BUSY, format!("the model still has {live} live session(s): free them first")));
    }
    reg.models.remove(&(p as usize));
    drop(reg);
    // SAFETY: the registry's reference, now given back (calls in flight hold their own).
    drop(unsafe { Arc::from_raw(p as *const ModelInner) });
    Ok(())
}

// ---- sessions ----------------------------------------------------------------------------------

/// Work for the driver. Pointers refer to the caller's memory, valid until the reply.
enum Command {
    /// Evaluate `n` tokens (none when `n` is 0), then sample one if asked.
    Run {
        tokens: *const u32,
        n: usize,
        sample: Option<SamplerConfig>,
    },
    Reset,
    SetSeed(u64),
    Exit,
}

struct Reply {
    result: R<Option<u32>>,
    pos: usize,
    logits: *const f32,
    n_logits: usize,
    broken: bool,
}

// SAFETY: the raw pointers cross to the driver and back while their owner (the calling thread)
// blocks in `SessionInner::request`; the logits pointer is read only while the driver is idle.
unsafe impl Send for Command {}
unsafe impl Send for Reply {}

#[derive(Default)]
struct Slot {
    cmd: Option<Command>,
    reply: Option<Reply>,
}

#[derive(Default)]
struct Link {
    slot: Mutex<Slot>,
    to_driver: Condvar,
    to_caller: Condvar,
}

/// What the calling side keeps. Its mutex is the claim on the session: a call takes it with
/// `try_lock`, so a second thread gets BD_ERR_BUSY instead of a race.
pub(crate) struct CallerState {
    driver: Option<JoinHandle<()>>,
    closed: bool,
    broken: bool,
    pub pos: usize,
    pub ctx: usize,
    pub logits: *const f32,
    pub n_logits: usize,
    /// Generation's text assembly, sized at creation.
    pub stream: Utf8Stream,
    pub text: Vec<u8>,
}

// SAFETY: `logits` points into the session's buffers, which live as long as the session; it is
// only handed to the caller, never dereferenced here.
unsafe impl Send for CallerState {}

pub(crate) struct SessionInner {
    pub model: Arc<ModelInner>,
    link: Arc<Link>,
    caller: Mutex<CallerState>,
}

/// The driver's state: everything the session's forward passes and sampling touch.
struct Core {
    sampler: Sampler,
    vocab: usize,
    seed: u64,
    /// Whether the current sampler has drawn since its stream started.
    drawn: bool,
    /// Sampler rebuilds since the stream started.
    changes: u64,
    /// Every token in the context (`len == session.pos()`), for the repetition penalty of a
    /// rebuilt sampler. Capacity: the context, so pushes never reallocate.
    history: Vec<u32>,
    broken: bool,
}

impl Core {
    fn execute(&mut self, s: &mut Session<'static>, cmd: Command) -> R<Option<u32>> {
        match cmd {
            Command::Run { tokens, n, sample } => {
                if n > 0 {
                    // SAFETY: `tokens` is the caller's array of `n` ids, valid while it waits.
                    let tokens = unsafe { std::slice::from_raw_parts(tokens, n) };
                    s.prefill(tokens)?;
                    for &t in tokens {
                        self.history.push(t);
                        self.sampler.accept(t);
                    }
                }
                match sample {
                    None => Ok(None),
                    Some(cfg) => {
                        if s.logits().is_empty() {
                            return Err(no_logits());
                        }
                        self.configure(cfg)?;
                        self.drawn = true;
                        Ok(Some(self.sampler.sample(s.logits())))
                    }
                }
            }
            Command::Reset => {
                s.reset();
                self.history.clear();
                self.restart()?;
                Ok(None)
            }
            Command::SetSeed(seed) => {
                self.seed = seed;
                self.restart()?;
                Ok(None)
            }
            Command::Exit => Ok(None),
        }
    }

    /// Use `cfg` (its seed ignored) for sampling: nothing to do when it is the current one;
    /// otherwise a new sampler, whose stream starts from the session's seed when nothing was drawn
    /// yet (so a fresh session samples exactly as bd-run with that seed), else from a seed derived
    /// from it.
    fn configure(&mut self, cfg: SamplerConfig) -> R<()> {
        let current = self.sampler.config();
        if (SamplerConfig { seed: current.seed, ..cfg.clone() }) == *current {
            return Ok(());
        }
        let seed = if self.drawn {
            self.changes += 1;
            self.seed ^ self.changes.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        } else {
            self.seed
        };
        self.rebuild(SamplerConfig { seed, ..cfg })
    }

    /// A new random stream from the session's seed, same options.
    fn restart(&mut self) -> R<()> {
        self.drawn = false;
        self.changes = 0;
        let cfg = SamplerConfig { seed: self.seed, ..self.sampler.config().clone() };
        self.rebuild(cfg)
    }

    fn rebuild(&mut self, cfg: SamplerConfig) -> R<()> {
        let last_n = cfg.repeat_last_n;
        let mut sampler = Sampler::new(cfg, self.vocab)?;
        for &t in &self.history[self.history.len().saturating_sub(last_n)..] {
            sampler.accept(t);
        }
        self.sampler = sampler;
        Ok(())
    }
}

fn no_logits() -> Error {
    Error::new(bd_status::BD_ERR_NO_LOGITS, "the session has no logits yet: evaluate tokens first")
}

fn broken() -> Error {
    Error::new(bd_status::BD_ERR_INTERNAL, "the session is unusable after an earlier internal error: free it")
}

/// The driver's loop, on one of the session's pool threads: wait for a command, run it, reply.
fn drive(s: &mut Session<'static>, core: &mut Core, link: &Link) {
    loop {
        let cmd = {
            let mut slot = lock(&link.slot);
            loop {
                if let Some(cmd) = slot.cmd.take() {
                    break cmd;
                }
                slot = link.to_driver.wait(slot).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let exit = matches!(cmd, Command::Exit);
        let result = if core.broken && !exit {
            Err(broken())
        } else {
            match catch_unwind(AssertUnwindSafe(|| core.execute(s, cmd))) {
                Ok(r) => r,
                Err(panic) => {
                    core.broken = true;
                    Err(Error::internal(&*panic))
                }
            }
        };
        let logits = s.logits();
        let reply = Reply { result, pos: s.pos(), logits: logits.as_ptr(), n_logits: logits.len(), broken: core.broken };
        lock(&link.slot).reply = Some(reply);
        link.to_caller.notify_one();
        if exit {
            return;
        }
    }
}

impl SessionInner {
    fn create(model: Arc<ModelInner>, ctx: usize, threads: usize, seed: u64) -> R<Self> {
        // SAFETY: the `Session` borrows the `Model` inside an `Arc<ModelInner>`. An Arc's contents
        // never move and live while any clone does; the driver thread, which owns the session,
        // holds a clone (`keep`) and drops it only after the session. So the borrow outlives every
        // use, although the type system cannot see that: the 'static never escapes this module.
        let m: &'static Model = unsafe { &*(&model.model as *const Model) };
        let session = Session::new(m, ctx, threads).map_err(|e| match e {
            RuntimeError::ThreadPool(_) => Error::new(bd_status::BD_ERR_SYSTEM, e.to_string()),
            e => Error::from(e),
        })?;
        let vocab = model.vocab();
        let sampler = Sampler::new(SamplerConfig { seed, ..SamplerConfig::default() }, vocab)?;
        let mut core = Core { sampler, vocab, seed, drawn: false, changes: 0, history: Vec::with_capacity(ctx), broken: false };
        let link = Arc::new(Link::default());
        let max_piece = model.pieces.max_len();
        let driver = std::thread::Builder::new()
            .name("bd-session".into())
            .spawn({
                let link = Arc::clone(&link);
                let keep = Arc::clone(&model);
                move || {
                    let mut session = session;
                    session.with_pool(|s| drive(s, &mut core, &link));
                    // The session borrows `keep`'s model: it goes first.
                    drop(session);
                    drop(keep);
                }
            })
            .map_err(|e| Error::new(bd_status::BD_ERR_SYSTEM, format!("cannot start the session's driver thread: {e}")))?;
        let caller = CallerState {
            driver: Some(driver),
            closed: false,
            broken: false,
            pos: 0,
            ctx,
            logits: std::ptr::null(),
            n_logits: 0,
            stream: Utf8Stream::new(max_piece),
            text: Vec::with_capacity(Utf8Stream::max_output(max_piece) + 1),
        };
        Ok(Self { model, link, caller: Mutex::new(caller) })
    }

    /// Hand `cmd` to the driver and wait for its reply. Allocates nothing.
    fn request(&self, st: &mut CallerState, cmd: Command) -> R<Option<u32>> {
        let mut slot = lock(&self.link.slot);
        slot.cmd = Some(cmd);
        self.link.to_driver.notify_one();
        let reply = loop {
            if let Some(r) = slot.reply.take() {
                break r;
            }
            slot = self.link.to_caller.wait(slot).unwrap_or_else(PoisonError::into_inner);
        };
        drop(slot);
        st.pos = reply.pos;
        st.logits = reply.logits;
        st.n_logits = reply.n_logits;
        st.broken = reply.broken;
        reply.result
    }

    /// Evaluate `tokens` (ids already checked by the caller or not: the session checks them too),
    /// then sample one token with `sample` if given.
    pub fn run(&self, st: &mut CallerState, tokens: &[u32], sample: Option<SamplerConfig>) -> R<Option<u32>> {
        if tokens.is_empty() && sample.is_some() && st.n_logits == 0 {
            return Err(no_logits());
        }
        self.request(st, Command::Run { tokens: tokens.as_ptr(), n: tokens.len(), sample })
    }

    pub fn reset(&self, st: &mut CallerState) -> R<()> {
        self.request(st, Command::Reset).map(|_| ())
    }

    pub fn set_seed(&self, st: &mut CallerState, seed: u64) -> R<()> {
        self.request(st, Command::SetSeed(seed)).map(|_| ())
    }

    /// Stop the driver and wait for its thread (the session and its pool are dropped there).
    fn shutdown(&self, st: &mut CallerState) {
        if let Some(driver) = st.driver.take() {
            if !driver.is_finished() {
                let _ = self.request(st, Command::Exit);
            }
            let _ = driver.join();
        }
    }
}

pub(crate) fn new_session(model: *const bd_model, ctx: u32, threads: u32, seed: u64) -> R<*mut bd_session> {
    let m = model_for_session(model)?;
    let created = (|| {
        let c = m.model.config();
        let ctx = if ctx == 0 { c.max_context } else { ctx as usize };
        let threads = if threads == 0 { crate::default_threads() } else { threads as usize };
        if threads > crate::session::MAX_THREADS {
            return Err(Error::invalid(format!(
                "threads {threads} is out of range (0..={}; 0 = all physical cores)",
                crate::session::MAX_THREADS
            )));
        }
        SessionInner::create(Arc::clone(&m), ctx, threads, seed)
    })();
    match created {
        Ok(s) => {
            let p = Arc::into_raw(Arc::new(s));
            registry().sessions.insert(p as usize);
            Ok(p as *mut bd_session)
        }
        Err(e) => {
            let _reg = registry();
            m.sessions.fetch_sub(1, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// Run `f` with the session behind `p` claimed for this call.
pub(crate) fn with_session<T>(p: *const bd_session, f: impl FnOnce(&SessionInner, &mut CallerState) -> R<T>) -> R<T> {
    let inner: Arc<SessionInner> = lookup(&registry().sessions, p as usize, "session")?;
    let mut guard = match inner.caller.try_lock() {
        Ok(g) => g,
        Err(TryLockError::WouldBlock) => {
            return Err(Error::new(
                bd_status::BD_ERR_BUSY,
                "the session is in use by another call (a session must be used by one thread at a time)",
            ))
        }
        Err(TryLockError::Poisoned(_)) => return Err(broken()),
    };
    let st = &mut *guard;
    if st.closed {
        return Err(invalid_handle("session"));
    }
    if st.broken {
        return Err(broken());
    }
    f(&inner, st)
}

pub(crate) fn free_session(p: *mut bd_session) -> R<()> {
    if p.is_null() {
        return Ok(());
    }
    let mut reg = registry();
    if !reg.sessions.contains(&(p as usize)) {
        return Err(invalid_handle("session"));
    }
    // SAFETY: registered, so alive (the registry's reference).
    let inner = unsafe { &*(p as *const SessionInner) };
    let mut guard = match inner.caller.try_lock() {
        Ok(g) => g,
        Err(TryLockError::WouldBlock) => {
            return Err(Error::new(bd_status::BD_ERR_BUSY, "the session is in use by another call: free it after that call"))
        }
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
    };
    reg.sessions.remove(&(p as usize));
    drop(reg);
    guard.closed = true;
    inner.shutdown(&mut guard);
    drop(guard);
    {
        let _reg = registry();
        inner.model.sessions.fetch_sub(1, Ordering::SeqCst);
    }
    // SAFETY: the registry's reference, now given back.
    drop(unsafe { Arc::from_raw(p as *const SessionInner) });
    Ok(())
}
