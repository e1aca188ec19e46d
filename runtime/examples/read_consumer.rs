//! How close to the read probe can a loop get that computes on what it reads?
//!
//! `cargo run --release -p bd-runtime --example read_consumer [-- --rounds 10] [--w 1,4,16]`
//! `cargo run --release -p bd-runtime --example read_consumer -- --kernel int2[,a8] [--rounds 10]`
//!
//! The kernels' "% of read bandwidth" is measured against a plain read ([`bd_runtime::probe`]).
//! This example puts the smallest possible kernel next to it: it reads the same 1 GiB and feeds
//! every 64-byte line to `W` dependent `vpdpbusd` (by default W = 1, 4 and 16), on 1 and 2
//! threads, with and without a software prefetch 8 KiB ahead. Each consumer pass sits between two plain passes,
//! and is reported as a fraction of their mean, so that the host's bandwidth drifting from
//! second to second cancels out. The consumer's rate on a 16 MiB buffer (in L3) shows that its
//! arithmetic alone is far faster than memory. x86-64 with AVX-512 VNNI only.
//!
//! With `--kernel FORMAT` the same sandwich holds our matrix-vector kernel instead
//! (`Kernels::detect`, group 128, `,a8` for 8-bit activations) over a set of 4096x4096 and
//! 11008x4096 matrices of about 256 MiB, far beyond the last-level cache: a DRAM figure that the
//! host's drift disturbs less than `kernel_compare`'s medians do. It runs on 1 thread, on 2 with a
//! join per product (as in the forward pass), and on 2 with no joins (each thread its own half of
//! the set), which shows what the products' hand-offs cost.

#[cfg(target_arch = "x86_64")]
mod consumer {
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Feed each line of `x` to `w` dependent `vpdpbusd` (four lines, four chains per step).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn consume(x: &[u8], w: usize, prefetch: bool) -> i32 {
        let mut a = [_mm512_setzero_si512(); 4];
        let p = x.as_ptr();
        let mut i = 0;
        while i + 256 <= x.len() {
            if prefetch {
                for k in 0..4 {
                    _mm_prefetch::<_MM_HINT_T2>(p.wrapping_add(i + 8192 + 64 * k) as *const i8);
                }
            }
            for (k, ak) in a.iter_mut().enumerate() {
                let v = _mm512_loadu_si512(p.add(i + 64 * k) as *const __m512i);
                for _ in 0..w {
                    *ak = _mm512_dpbusd_epi32(*ak, v, v);
                }
            }
            i += 256;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3])))
    }

    /// GB/s of one consumer pass over `buf` with the current pool's threads.
    fn pass(buf: &[u8], w: usize, prefetch: bool) -> f64 {
        let per = buf.len().div_ceil(rayon::current_num_threads());
        let t = Instant::now();
        // SAFETY: `supported()` was checked by `run`.
        let s: i32 = buf.par_chunks(per).map(|c| unsafe { consume(c, w, prefetch) }).reduce(|| 0, i32::wrapping_add);
        std::hint::black_box(s);
        buf.len() as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// A line on stdout; a closed pipe (`| head`) ends the output quietly rather than panicking.
    fn say(line: String) {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{line}");
    }

    /// 1 GiB of non-zero values (zeroed pages would all map one physical page).
    fn probe_buffer() -> Vec<u64> {
        (0..(1usize << 27) as u64).map(|i| i | 1).collect()
    }

    fn plain(buf: &[u64]) -> f64 {
        (buf.len() * 8) as f64 / bd_runtime::probe::read_pass(buf) / 1e9
    }

    /// Our kernel over `mats` (each once), sandwiched like the consumer: GB/s of weight bytes
    /// per pass, as a fraction of the probe around it.
    pub fn run_kernel(spec: &str, rounds: usize) {
        use bd_formats::quant::{pack_matrix, PackedLayout, PackedMatrix, QuantFormat};
        use bd_runtime::kernels::{Kernels, Scratch, Weight, WeightData};
        let (name, a8) = match spec.split_once(',') {
            Some((n, opt)) => (n, opt == "a8"),
            None => (spec, false),
        };
        let format = QuantFormat::parse(name).expect("--kernel: a quantized format, e.g. int2");
        let kernels = Kernels::detect().with_act8(a8);
        let big = probe_buffer();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        };
        for (rows, cols) in [(4096usize, 4096usize), (11008, 4096)] {
            let layout = PackedLayout::new(format, 128, rows, cols).expect("layout");
            let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
            let blob = pack_matrix(format, 128, rows, cols, &w).expect("pack");
            let copies = ((256usize << 20) / blob.len()).max(2);
            let blobs: Vec<Vec<u8>> = (0..copies).map(|_| blob.clone()).collect();
            let mats: Vec<Weight> = blobs
                .iter()
                .map(|b| Weight { rows, cols, data: WeightData::Quant(PackedMatrix::new(layout, b).expect("matrix")), lut: None })
                .collect();
            let x: Vec<f32> = (0..cols).map(|_| rnd() * 50.0).collect();
            let mut y = vec![0f32; rows];
            let mut scratch = Scratch::new(cols, 1);
            // `no_joins`: two threads with no join between products, each its own half of the
            // matrices on a pool of one (what the 2-thread products would read without their
            // hand-offs: waking the second thread, waiting for the last row block, quantizing the
            // input on one thread).
            for (threads, no_joins) in [(1, false), (2, false), (2, true)] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
                // The no-join variant's pools and buffers, one per thread, made before any timing
                // (its passes still include starting the two threads: ~0.1 ms of a ~6 ms pass).
                let mut solo: Vec<(rayon::ThreadPool, Vec<f32>, Scratch)> = if no_joins {
                    (0..2)
                        .map(|_| {
                            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
                            (pool, vec![0f32; rows], Scratch::new(cols, 1))
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                pool.install(|| {
                    let mut pass = || {
                        let t = Instant::now();
                        if no_joins {
                            let half = mats.len() / 2;
                            let start = std::sync::Barrier::new(2);
                            std::thread::scope(|s| {
                                for (part, (solo, y, scratch)) in [&mats[..half], &mats[half..]].into_iter().zip(solo.iter_mut())
                                {
                                    let (start, x) = (&start, &x);
                                    s.spawn(move || {
                                        start.wait();
                                        solo.install(|| {
                                            for m in part {
                                                kernels.matvec(m, x, y, scratch);
                                            }
                                        })
                                    });
                                }
                            });
                        } else {
                            for m in &mats {
                                kernels.matvec(m, &x, &mut y, &mut scratch);
                            }
                        }
                        (copies * blob.len()) as f64 / t.elapsed().as_secs_f64() / 1e9
                    };
                    pass();
                    let (mut frac, mut gb, mut probe) = (0f64, 0f64, 0f64);
                    for _ in 0..rounds {
                        let a = plain(&big);
                        let k = pass();
                        let b = plain(&big);
                        frac += k / ((a + b) / 2.0);
                        gb += k;
                        probe += (a + b) / 2.0;
                    }
                    let n = rounds as f64;
                    say(format!(
                        "{} {format}{} {rows}x{cols}, {}: {:.1} GB/s, {:.0}% of the probe around it ({:.1} GB/s)",
                        kernels.describe(),
                        if a8 { " a8" } else { "" },
                        if no_joins { "2 threads, no joins".to_string() } else { format!("{threads} thread(s)") },
                        gb / n,
                        100.0 * frac / n,
                        probe / n
                    ));
                });
            }
        }
    }

    pub fn supported() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    }

    pub fn run(rounds: usize, ws: &[usize]) {
        let big = probe_buffer();
        // SAFETY: any initialised u64 memory is valid as bytes.
        let bytes = unsafe { std::slice::from_raw_parts(big.as_ptr() as *const u8, big.len() * 8) };
        let small = &bytes[..16 << 20];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            pool.install(|| {
                for &w in ws {
                    let l3 = (0..20).map(|_| pass(small, w, false)).fold(0f64, f64::max);
                    let (mut frac, mut plain_sum) = ([0f64; 2], 0f64);
                    for _ in 0..rounds {
                        for (j, prefetch) in [false, true].into_iter().enumerate() {
                            let a = plain(&big);
                            let c = pass(bytes, w, prefetch);
                            let b = plain(&big);
                            frac[j] += c / ((a + b) / 2.0);
                            plain_sum += (a + b) / 2.0;
                        }
                    }
                    let n = rounds as f64;
                    say(format!(
                        "{threads} thread(s), W = {w}: consumer in L3 {l3:.1} GB/s; plain read {:.1} GB/s; consumer from DRAM \
                         {:.0}% of it without prefetch, {:.0}% with a T2 prefetch 8 KiB ahead",
                        plain_sum / (2.0 * n),
                        100.0 * frac[0] / n,
                        100.0 * frac[1] / n
                    ));
                }
            });
        }
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    if consumer::supported() {
        let args: Vec<String> = std::env::args().collect();
        let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
        let rounds = arg("--rounds").and_then(|v| v.parse().ok()).unwrap_or(10);
        match arg("--kernel") {
            Some(spec) => consumer::run_kernel(spec, rounds),
            None => {
                let ws: Vec<usize> =
                    arg("--w").map(|v| v.split(',').filter_map(|w| w.parse().ok()).collect()).unwrap_or(vec![1, 4, 16]);
                consumer::run(rounds, &ws)
            }
        }
        return;
    }
    eprintln!("read_consumer: needs x86-64 with AVX-512 VNNI");
    std::process::exit(1);
}
