//! Quick timings of the matrix-vector kernels (not a benchmark suite: see benches/ for that).
//!
//! `cargo run --release -p bd-runtime --example kernel_speed [-- --isa avx2] [--plain] [--quick] [--formats int2,nf3]`
//!
//! For each format (group 128, or `--group N`) and shape (4096x4096, 11008x4096), 1 and 2 threads:
//! - cache: the same matrix again and again (4096x4096 int2 is 4.4 MB: L3);
//! - l2: a 256-row slice of it again and again (fits the 1 MB L2);
//! - dram: a set of copies totalling more than 64 MiB, cycled through;
//! - mm64 (with `--where matmul`): `matmul` of 64 inputs on the cached matrix, per weight and input.
//!
//! Prints ns per weight (per core: time x threads / weights) and GB/s of weight bytes read, next
//! to the machine's streaming read bandwidth (sum over a 1 GiB buffer).

use bd_formats::quant::{pack_matrix, PackedLayout, PackedMatrix, QuantFormat};
use bd_runtime::kernels::{Isa, Kernels, Scratch, Weight, WeightData};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// With `--cpu-time`, this process's CPU time (immune to other processes on a busy machine;
/// divide by threads for per-core figures), else wall time.
static CPU_TIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
fn now() -> f64 {
    if CPU_TIME.load(std::sync::atomic::Ordering::Relaxed) {
        let mut ts = Timespec { sec: 0, nsec: 0 };
        unsafe { clock_gettime(2, &mut ts) }; // CLOCK_PROCESS_CPUTIME_ID
        ts.sec as f64 + ts.nsec as f64 * 1e-9
    } else {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

/// Seconds per call of `f`, the median of a few timed batches lasting about `budget` in total.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut calls = 0u64;
    while t.elapsed() < budget / 10 {
        f();
        calls += 1;
    }
    let per_batch = calls.max(1);
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = now();
            for _ in 0..per_batch {
                f();
            }
            (now() - t) / per_batch as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[3]
}

fn stream_bandwidth(threads: usize) -> f64 {
    let n = 1usize << 27; // 1 GiB of u64
    let buf: Vec<u64> = (0..n as u64).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        best = best.min(pool.install(|| bd_runtime::probe::read_pass(&buf)));
    }
    (n * 8) as f64 / best / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");

    CPU_TIME.store(args.iter().any(|a| a == "--cpu-time"), std::sync::atomic::Ordering::Relaxed);
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let kernels = match arg("--isa") {
        // BD_ACT_BITS as `Kernels::detect` reads it.
        Some(name) => Kernels::with_isa(Isa::parse(&name).expect("--isa: reference, avx2, avx512 or neon"))
            .with_act8(bd_runtime::kernels::act8_setting(std::env::var("BD_ACT_BITS").ok().as_deref()).0),
        None => Kernels::detect(),
    };
    // `--plain`: without the ISA's optional extensions (AVX-VNNI, GFNI, VBMI, dotprod), as on
    // CPUs that lack them.
    let kernels = if args.iter().any(|a| a == "--plain") { kernels.without_extensions() } else { kernels };
    let formats: Vec<QuantFormat> = arg("--formats")
        .map(|s| s.split(',').map(|f| QuantFormat::parse(f).expect("format")).collect())
        .unwrap_or_else(|| vec![QuantFormat::Int2, QuantFormat::Nf3, QuantFormat::Int3, QuantFormat::Int4]);
    let thread_counts: Vec<usize> =
        arg("--threads").map(|s| s.split(',').map(|t| t.parse().expect("--threads")).collect()).unwrap_or(vec![1, 2]);
    let group: usize = arg("--group").map(|g| g.parse().expect("--group: a group size")).unwrap_or(128);
    let budget = Duration::from_millis(if quick { 300 } else { 1000 });
    println!("kernels: {}", kernels.describe());
    let skip_bw = args.iter().any(|a| a == "--no-bw");
    let bw1 = if skip_bw { f64::NAN } else { stream_bandwidth(1) };
    let bw2 = if skip_bw { f64::NAN } else { stream_bandwidth(2) };
    println!("streaming read bandwidth: 1 thread {bw1:.1} GB/s, 2 threads {bw2:.1} GB/s");
    println!("{:<10} {:<11} {:>3} {:<5} {:>10} {:>8} {:>7}", "format", "shape", "thr", "where", "ns/weight", "GB/s", "of bw");
    let mut rng = Rng(0x1234_5678);
    for format in formats {
        for (rows, cols) in [(4096usize, 4096usize), (11008, 4096)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| 0.02 * rng.next()).collect();
            let layout = PackedLayout::new(format, group, rows, cols).unwrap();
            let blob = pack_matrix(format, group, rows, cols, &w).unwrap();
            drop(w);
            let copies = (64 << 20) / blob.len() + 2;
            let blobs: Vec<Vec<u8>> = (0..copies).map(|_| blob.clone()).collect();
            let weights: Vec<Weight> = blobs
                .iter()
                .map(|b| Weight { rows, cols, data: WeightData::Quant(PackedMatrix::new(layout, b).unwrap()), lut: None })
                .collect();
            let small_rows = 256;
            let small_layout = PackedLayout::new(format, group, small_rows, cols).unwrap();
            let small_blob = pack_matrix(format, group, small_rows, cols, &vec![0.01; small_rows * cols]).unwrap();
            let small = Weight {
                rows: small_rows,
                cols,
                data: WeightData::Quant(PackedMatrix::new(small_layout, &small_blob).unwrap()),
                lut: None,
            };
            let x: Vec<f32> = (0..cols).map(|_| rng.next()).collect();
            let mut y = vec![0f32; rows];
            let mut scratch = Scratch::new(cols, 1);
            for &threads in &thread_counts {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let bw = if threads == 1 { bw1 } else { bw2 };
                let place_ok = |p: &str| match arg("--where") {
                    None => true,
                    Some(w) => w.split(',').any(|x| x == p),
                };
                let report = |place: &str, secs: f64, weights: usize, bytes: usize| {
                    let gbs = bytes as f64 / secs / 1e9;
                    println!(
                        "{:<10} {:<11} {:>3} {:<5} {:>10.4} {:>8.1} {:>6.0}%",
                        format!("{}_g{group}", format.name()),
                        format!("{rows}x{cols}"),
                        threads,
                        place,
                        secs * 1e9 * if CPU_TIME.load(std::sync::atomic::Ordering::Relaxed) { 1.0 } else { threads as f64 }
                            / weights as f64,
                        gbs,
                        100.0 * gbs / bw
                    );
                };
                pool.install(|| {
                    let wl2 = small;
                    if place_ok("l2") {
                        let s = time(budget, || kernels.matvec(&wl2, &x, &mut y[..small_rows], &mut scratch));
                        report("l2", s, small_rows * cols, small_layout.len);
                    }
                    let w0 = weights[0];
                    if place_ok("cache") {
                        let s = time(budget, || kernels.matvec(&w0, &x, &mut y, &mut scratch));
                        report("cache", s, rows * cols, layout.len);
                    }
                    if place_ok("matmul") {
                        // Prefill: 64 inputs at once; ns per weight and input.
                        let n = 64;
                        let xs: Vec<f32> = (0..n).flat_map(|_| x.iter().copied()).collect();
                        let mut ys = vec![0f32; n * rows];
                        let mut big = Scratch::new(cols, n);
                        let s = time(budget, || kernels.matmul(&w0, &xs, n, &mut ys, &mut big));
                        report("mm64", s, n * rows * cols, n * layout.len);
                    }
                    if !place_ok("dram") {
                        return;
                    }
                    let mut i = 0;
                    let s = time(budget, || {
                        i = (i + 1) % copies;
                        kernels.matvec(&weights[i], &x, &mut y, &mut scratch)
                    });
                    report("dram", s, rows * cols, layout.len);
                });
            }
        }
    }
}
