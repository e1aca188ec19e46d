//! No heap allocation per token: a counting global allocator sees none over 64 decode-and-sample
//! steps. It counts every thread of the process (the session's pool workers included), so this binary
//! holds a single test: another test running beside it would be counted too.

mod common;

use bd_formats::hf::fixture::TinySpec;
use bd_formats::quant::QuantFormat;
use bd_formats::DType;
use bd_runtime::kernels::Kernels;
use bd_runtime::{Model, ReadOptions, Sampler, SamplerConfig, Session, Tokenizer};
use std::alloc::{GlobalAlloc, Layout, System};
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

/// Allocations during `STEPS` decode steps (each sampling the next token with top-k/top-p/min-p and a
/// repetition penalty) after a warm-up, run on the session's own pool thread as a real loop would.
/// `tables`: with the table kernels (`BD_TABLES=1`), where the CPU has them, on a model wide
/// enough that their products split across threads (into partial sums the session holds).
fn allocations_per_run(block: DType, threads: usize, tables: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let spec = if tables { TinySpec { hidden: 256, intermediate: 512, ..TinySpec::default() } } else { TinySpec::default() };
    let path = common::write_model(dir.path(), "m.bd2", &spec, block, DType::F32, 32);
    let mut model = Model::open(&path, ReadOptions::default()).unwrap();
    let kernels = Kernels::detect().with_tables(tables);
    model.repack_for(&kernels);
    let prompt = Tokenizer::from_model(&model).unwrap().encode("the end", true).unwrap();
    let mut session = Session::with_kernels(&model, 128, threads, kernels).unwrap();
    if kernels.tables() {
        // Reserved when the session starts, not grown by its first decode step (which the
        // warm-up below would hide).
        let c = model.config();
        let rows = c.hidden_size.max(c.intermediate_size).max(c.vocab_size);
        assert!(session.reserved_partials() >= (threads - 1) * rows, "partial sums reserved: {}", session.reserved_partials());
    }
    let cfg = SamplerConfig { temperature: 0.9, repeat_penalty: 1.1, seed: 3, ..SamplerConfig::default() };
    let mut sampler = Sampler::new(cfg, model.config().vocab_size).unwrap();
    session.with_pool(|s| {
        s.prefill(&prompt).unwrap();
        let mut step = |s: &mut Session| {
            let t = sampler.sample(s.logits());
            sampler.accept(t);
            s.decode(t).unwrap();
        };
        // Warm-up: lets every worker and every lazily set-up structure reach its steady state.
        for _ in 0..16 {
            step(s);
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..STEPS {
            step(s);
        }
        ALLOCATIONS.load(Ordering::SeqCst) - before
    })
}

#[test]
fn decode_steps_allocate_nothing() {
    let mut report = Vec::new();
    for (block, threads, tables) in [
        (DType::F32, 1, false),
        (DType::F32, 2, false),
        (DType::F32, 4, false),
        (DType::Quant(QuantFormat::Int2), 2, false),
        (DType::Quant(QuantFormat::Nf3), 2, false),
        (DType::Quant(QuantFormat::Int4), 2, false),
        (DType::Quant(QuantFormat::Int2), 2, true),
        (DType::Quant(QuantFormat::Nf3), 1, true),
        (DType::Quant(QuantFormat::Int3), 2, true),
    ] {
        report.push((block, threads, tables, allocations_per_run(block, threads, tables)));
    }
    assert!(report.iter().all(|r| r.3 == 0), "allocations over {STEPS} steps (dtype, threads, tables, count): {report:?}");
}
