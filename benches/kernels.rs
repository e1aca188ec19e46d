//! criterion benchmarks: our matrix-vector kernels against ggml's (Q2_K, Q3_K, Q4_0, IQ2_XXS; the
//! raw vec_dot loop and ggml_mul_mat graphs) and candle's quantized matmul (Q2K, Q3K, Q4_0), on
//! 4096x4096 and 11008x4096, in cache and from DRAM, 1 thread and all threads, plus the streaming
//! read bandwidth. What each timing includes: `benches/support/mod.rs`.
//!
//! ```text
//! cargo bench --bench kernels                      # everything (~10 minutes on 2 cores)
//! cargo bench --bench kernels -- 4096x4096/cache   # a criterion filter
//! ```
//! criterion's throughput is each format's real weight bytes (GB/s); the summary printed at the end
//! adds ns per weight (median sample). Without `--bench` (`cargo test --benches`) a small smoke
//! run checks that every kernel runs. For a one-process interleaved comparison, see
//! `examples/kernel_compare.rs`.

#[path = "support/mod.rs"]
mod support;

use criterion::{Criterion, SamplingMode, Throughput};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use support::*;

type Samples = Rc<RefCell<Vec<(String, usize, usize, Vec<f64>)>>>;

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let threads = thread_counts();
    configure_candle_threads(*threads.last().unwrap());
    eprintln!("{}", describe_machine());
    if !bench_mode {
        smoke();
        return;
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(2500))
        .configure_from_args();
    // (id, weights per product, bytes per product, seconds per product of each sample)
    let samples: Samples = Rc::new(RefCell::new(Vec::new()));
    let pools: Vec<_> = threads.iter().map(|&t| (t, thread_pool(t))).collect();

    for (rows, cols) in SHAPES {
        let src = Sources::new(rows, cols, &KernelKind::all());
        for where_ in Where::ALL {
            for (t, pool) in &pools {
                let mut group = c.benchmark_group(format!("matvec/{rows}x{cols}/{}/{t}t", where_.name()));
                // Milliseconds per call: the same iteration count in every sample.
                group.sampling_mode(SamplingMode::Flat);
                for kind in KernelKind::all().into_iter().filter(|k| k.runs_with(*t)) {
                    let mut k = instantiate(kind, &src, where_, *t, pool);
                    let (products, weights, bytes) = (k.products(), k.weights(), k.matrix_bytes());
                    group.throughput(Throughput::Bytes((bytes * products) as u64));
                    let id = format!("matvec/{rows}x{cols}/{}/{t}t/{}", where_.name(), kind.name());
                    let rec = samples.clone();
                    let slot = {
                        let mut s = rec.borrow_mut();
                        s.push((id, weights, bytes, Vec::new()));
                        s.len() - 1
                    };
                    group.bench_function(kind.name(), |b| {
                        b.iter_custom(|iters| {
                            let t0 = Instant::now();
                            for _ in 0..iters {
                                k.call();
                            }
                            let e = t0.elapsed();
                            rec.borrow_mut()[slot].3.push(e.as_secs_f64() / (iters as f64 * products as f64));
                            e
                        })
                    });
                }
                group.finish();
            }
        }
    }

    let buf = read_probe_buffer(read_probe_bytes());
    let mut group = c.benchmark_group("read_bandwidth");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes((buf.len() * 8) as u64));
    for (t, pool) in &pools {
        let rec = samples.clone();
        let slot = {
            let mut s = rec.borrow_mut();
            s.push((format!("read_bandwidth/{t}t"), buf.len() * 8, buf.len() * 8, Vec::new()));
            s.len() - 1
        };
        group.bench_function(format!("{t}t"), |b| {
            b.iter_custom(|iters| {
                let e: f64 = (0..iters).map(|_| read_pass(&buf, pool)).sum();
                rec.borrow_mut()[slot].3.push(e / iters as f64);
                Duration::from_secs_f64(e)
            })
        });
    }
    group.finish();
    c.final_summary();

    println!("\nsummary (median of criterion's samples; read_bandwidth: ns per byte)");
    println!("{:<58} {:>12} {:>9}", "benchmark", "ns/weight", "GB/s");
    for (id, weights, bytes, s) in samples.borrow_mut().iter_mut() {
        if s.is_empty() {
            continue; // filtered out
        }
        let sec = median(s);
        println!("{id:<58} {:>12.4} {:>9.2}", sec * 1e9 / *weights as f64, *bytes as f64 / sec / 1e9);
    }
}

/// `cargo test --benches`: every kernel once on a small shape, and the outputs agree with the exact
/// product within quantization error.
fn smoke() {
    let (rows, cols) = (64, 512);
    let src = Sources::new(rows, cols, &KernelKind::all());
    for t in thread_counts() {
        let pool = thread_pool(t);
        for kind in KernelKind::all().into_iter().filter(|k| k.runs_with(t)) {
            let mut k = instantiate(kind, &src, Where::Cache, t, &pool);
            k.call();
            let e = relative_error(&k.output(), &src.y_exact);
            eprintln!("smoke {} {t}t: relative error {e:.4}", kind.name());
            assert!(e < 0.7, "{} {t}t: output far from the exact product (relative error {e})", kind.name());
        }
    }
    for f in [bd_formats::quant::QuantFormat::Int2, bd_formats::quant::QuantFormat::Int3, bd_formats::quant::QuantFormat::Nf3] {
        let w = random_values(67 * 640, 3, 0.02);
        let whole = bd_formats::quant::pack_matrix(f, GROUP, 67, 640, &w).unwrap();
        assert!(pack_parallel(f, 67, 640, &w) == whole, "{f}: banded packing differs from pack_matrix");
    }
    let buf = read_probe_buffer(1 << 20);
    assert!(read_pass(&buf, &thread_pool(1)) > 0.0);
}
