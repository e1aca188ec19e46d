//! Our matrix-vector kernels side by side with ggml's (Q2_K, Q3_K, Q4_0, IQ2_XXS) and candle's
//! (Q2K, Q3K, Q4_0), interleaved in one process: round-robin over the kernels, several rounds, the
//! median per kernel. Shapes 4096x4096 and 11008x4096, one matrix in cache and a set of copies larger
//! than 4x the L3 from DRAM, 1 thread and all threads; plus the machine's streaming read bandwidth
//! measured in the same rounds.
//!
//! ```text
//! cargo run --release --example kernel_compare -- --json     # {"rows": [...]} on stdout
//! cargo run --release --example kernel_compare               # a table and the issue's targets
//! cargo run --release --example kernel_compare -- --quick    # 4096x4096 only, 3 short rounds
//! ```
//! Other flags: `--rounds N`, `--shape ROWSxCOLS` (repeatable), `--kernels a,b,...`,
//! `--threads 1,2`, `--where cache|dram`. Progress and the kernel ISA go to stderr.
//!
//! JSON rows: `{"kernel", "shape", "threads", "where", "ns_per_weight", "gb_s"}`; `gb_s` counts each
//! format's real bytes (codes and group parameters) at 10^9 bytes per GB. `read_bandwidth` rows
//! (where `dram`, shape `stream_256MiB`) give the streaming read bandwidth, their `ns_per_weight`
//! being nanoseconds per byte read.

#[path = "../benches/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::ExitCode;
use support::*;

struct Options {
    json: bool,
    rounds: usize,
    sample_s: f64,
    shapes: Vec<(usize, usize)>,
    kinds: Vec<KernelKind>,
    threads: Vec<usize>,
    wheres: Vec<Where>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        json: false,
        rounds: 7,
        sample_s: 0.15,
        shapes: SHAPES.to_vec(),
        kinds: KernelKind::all(),
        threads: thread_counts(),
        wheres: Where::ALL.to_vec(),
    };
    let (mut shapes, mut rounds) = (Vec::new(), None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--json" => o.json = true,
            "--quick" => {
                o.rounds = 3;
                o.sample_s = 0.05;
                o.shapes = vec![SHAPES[0]];
            }
            "--rounds" => {
                let v = value("--rounds")?;
                rounds = Some(v.parse::<usize>().ok().filter(|&n| n > 0).ok_or(format!("--rounds {v}: expected a positive integer"))?);
            }
            "--shape" => {
                let v = value("--shape")?;
                let parsed = v.split_once('x').and_then(|(r, c)| Some((r.parse::<usize>().ok()?, c.parse::<usize>().ok()?)));
                match parsed {
                    Some((r, c)) if r > 0 && r % 4 == 0 && c > 0 && c % 256 == 0 => shapes.push((r, c)),
                    _ => return Err(format!("--shape {v}: expected ROWSxCOLS with rows a multiple of 4 and cols of 256")),
                }
            }
            "--kernels" => {
                let v = value("--kernels")?;
                o.kinds = v
                    .split(',')
                    .map(|n| KernelKind::parse(n.trim()).ok_or(format!("--kernels: unknown kernel {n:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--threads" => {
                let v = value("--threads")?;
                o.threads = v
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().ok().filter(|&t| (1..=256).contains(&t)).ok_or(format!("--threads: bad count {n:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--where" => {
                let v = value("--where")?;
                o.wheres = match v.as_str() {
                    "cache" => vec![Where::Cache],
                    "dram" => vec![Where::Dram],
                    _ => return Err(format!("--where {v}: expected cache or dram")),
                };
            }
            "-h" | "--help" => {
                return Err("usage: kernel_compare [--json] [--quick] [--rounds N] [--shape RxC]... [--kernels a,b] [--threads 1,2] [--where cache|dram]".into())
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if !shapes.is_empty() {
        o.shapes = shapes;
    }
    if let Some(r) = rounds {
        o.rounds = r;
    }
    Ok(o)
}

struct Row {
    kernel: String,
    shape: String,
    threads: usize,
    where_: &'static str,
    ns_per_weight: f64,
    gb_s: f64,
    /// Fastest sample, ns per weight (table only: robust to other processes on a shared machine).
    best_ns_per_weight: f64,
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kernel_compare: {e}");
            return ExitCode::from(2);
        }
    };
    let max_threads = *o.threads.iter().max().unwrap();
    let load_before = loadavg();
    let candle_threads = configure_candle_threads(max_threads);
    eprintln!("{}", describe_machine());

    let pools: HashMap<usize, _> = o.threads.iter().map(|&t| (t, thread_pool(t))).collect();
    let probe = o.wheres.contains(&Where::Dram).then(|| read_probe_buffer(read_probe_bytes()));
    let mut bw_samples: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut errors: Vec<(String, String, f64)> = Vec::new();

    for &(r, c) in &o.shapes {
        let shape = format!("{r}x{c}");
        eprintln!("{shape}: quantizing");
        let src = Sources::new(r, c, &o.kinds);
        for &where_ in &o.wheres {
            for &t in &o.threads {
                // candle's multi-thread path uses its own process-wide pool.
                let kinds: Vec<KernelKind> = o
                    .kinds
                    .iter()
                    .copied()
                    .filter(|k| k.runs_with(t) && !(matches!(k, KernelKind::Candle(_)) && t > 1 && t != candle_threads))
                    .collect();
                let mut ks: Vec<Box<dyn Kernel>> = kinds.iter().map(|&k| instantiate(k, &src, where_, t, &pools[&t])).collect();
                let calls: Vec<usize> = ks.iter_mut().map(|k| calls_for(k.as_mut(), o.sample_s)).collect();
                if where_ == *o.wheres.first().unwrap() {
                    for k in ks.iter_mut() {
                        let e = relative_error(&k.output(), &src.y_exact);
                        errors.push((k.kind().name(), format!("{shape} {t}t"), e));
                    }
                }
                eprintln!("{shape} {} {t} thread(s): {} kernels x {} rounds", where_.name(), ks.len(), o.rounds);
                let mut samples: Vec<Vec<f64>> = vec![Vec::new(); ks.len()];
                for _ in 0..o.rounds {
                    for (i, k) in ks.iter_mut().enumerate() {
                        samples[i].push(seconds_per_product(k.as_mut(), calls[i]));
                    }
                    if let (Where::Dram, Some(buf)) = (where_, &probe) {
                        let passes = 4;
                        let s: f64 = (0..passes).map(|_| read_pass(buf, &pools[&t])).sum::<f64>() / passes as f64;
                        bw_samples.entry(t).or_default().push(s);
                    }
                }
                for (k, s) in ks.iter().zip(samples.iter_mut()) {
                    let sec = median(s);
                    let best = s.iter().copied().fold(f64::INFINITY, f64::min);
                    rows.push(Row {
                        best_ns_per_weight: best * 1e9 / k.weights() as f64,
                        kernel: k.kind().name(),
                        shape: shape.clone(),
                        threads: t,
                        where_: where_.name(),
                        ns_per_weight: sec * 1e9 / k.weights() as f64,
                        gb_s: k.matrix_bytes() as f64 / sec / 1e9,
                    });
                }
            }
        }
    }
    let mut bw: Vec<(usize, f64, f64)> =
        bw_samples.into_iter().map(|(t, mut s)| (t, median(&mut s), s.iter().copied().fold(f64::INFINITY, f64::min))).collect();
    bw.sort_by_key(|b| b.0);
    for &(t, sec, best) in &bw {
        let bytes = (read_probe_bytes() / 8 * 8) as f64;
        rows.push(Row {
            best_ns_per_weight: best * 1e9 / bytes,
            kernel: "read_bandwidth".into(),
            shape: format!("stream_{}MiB", read_probe_bytes() >> 20),
            threads: t,
            where_: "dram",
            ns_per_weight: sec * 1e9 / bytes,
            gb_s: bytes / sec / 1e9,
        });
    }

    let load_after = loadavg();
    eprintln!("load average (1 min) before {load_before}, after {load_after}");
    if o.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"kernel\": \"{}\", \"shape\": \"{}\", \"threads\": {}, \"where\": \"{}\", \"ns_per_weight\": {}, \"gb_s\": {}}}",
                    r.kernel,
                    r.shape,
                    r.threads,
                    r.where_,
                    json_num(r.ns_per_weight),
                    json_num(r.gb_s)
                )
            })
            .collect();
        println!("{{\"rows\": [\n  {}\n]}}", items.join(",\n  "));
    }
    // With --json the table still goes to stderr, so one run gives both.
    let mut table = format!(
        "load average (1 min): {load_before} before, {load_after} after ({} cores)\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    table += &format_table(&rows, &errors);
    if o.json {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    ExitCode::SUCCESS
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

fn format_table(rows: &[Row], errors: &[(String, String, f64)]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let bw: HashMap<usize, f64> = rows.iter().filter(|r| r.kernel == "read_bandwidth").map(|r| (r.threads, r.gb_s)).collect();
    writeln!(
        out,
        "{:<20} {:<13} {:>7} {:<6} {:>10} {:>8} {:>10} {:>10}",
        "kernel", "shape", "threads", "where", "ns/weight", "GB/s", "% read BW", "best ns/w"
    )
    .unwrap();
    for r in rows {
        let pct = match (r.where_, bw.get(&r.threads)) {
            ("dram", Some(b)) if r.kernel != "read_bandwidth" => format!("{:.0}%", 100.0 * r.gb_s / b),
            _ => String::new(),
        };
        writeln!(
            out,
            "{:<20} {:<13} {:>7} {:<6} {:>10.4} {:>8.2} {:>10} {:>10.4}",
            r.kernel, r.shape, r.threads, r.where_, r.ns_per_weight, r.gb_s, pct, r.best_ns_per_weight
        )
        .unwrap();
    }

    let find = |k: &str, shape: &str, t: usize, w: &str| {
        rows.iter().find(|r| r.kernel == k && r.shape == shape && r.threads == t && r.where_ == w)
    };
    let shapes: Vec<&str> = {
        let mut s: Vec<&str> = rows.iter().filter(|r| r.kernel != "read_bandwidth").map(|r| r.shape.as_str()).collect();
        s.dedup();
        s
    };
    writeln!(out, "\nTargets (issue 3):").unwrap();
    for shape in &shapes {
        for (ours, theirs, want) in [
            ("int2_g128", "ggml_q2_K", 2.0),
            ("nf3_g128", "ggml_q3_K", 1.8),
            ("int3_g128", "ggml_q3_K", 1.8),
            // 8-bit activations (`--act-bits 8`), as ggml's own kernels use.
            ("int2_g128_a8", "ggml_q2_K", 2.0),
            ("nf3_g128_a8", "ggml_q3_K", 1.8),
            ("int3_g128_a8", "ggml_q3_K", 1.8),
            // The table kernels (`BD_TABLES=1`), where the CPU has them.
            ("int2_g128_lut", "ggml_q2_K", 2.0),
            ("nf3_g128_lut", "ggml_q3_K", 1.8),
            ("int3_g128_lut", "ggml_q3_K", 1.8),
        ] {
            if let (Some(a), Some(b)) = (find(ours, shape, 1, "cache"), find(theirs, shape, 1, "cache")) {
                let x = b.ns_per_weight / a.ns_per_weight;
                writeln!(
                    out,
                    "  {shape} 1t cache: {ours} {x:.2}x faster per weight than {theirs} (target >= {want}x) {}",
                    verdict(x >= want)
                )
                .unwrap();
            }
        }
        let maxt = rows.iter().map(|r| r.threads).max().unwrap_or(1);
        for (t, want) in [(1, 0.85), (maxt, 0.90)] {
            let Some(b) = bw.get(&t) else { continue };
            for k in [
                "int2_g128",
                "int3_g128",
                "nf3_g128",
                "int4_g128",
                "nf4_g128",
                "int2_g128_a8",
                "int3_g128_a8",
                "int4_g128_a8",
                "nf3_g128_a8",
                "nf4_g128_a8",
                "int2_g128_lut",
                "int3_g128_lut",
                "nf3_g128_lut",
                "ggml_q2_K",
            ] {
                if let Some(r) = find(k, shape, t, "dram") {
                    let f = r.gb_s / b;
                    let check = if k.starts_with("ggml") { String::from("(reference point)") } else { verdict(f >= want) };
                    writeln!(
                        out,
                        "  {shape} {t}t dram: {k} at {:.0}% of read bandwidth {b:.1} GB/s (target >= {:.0}%) {check}",
                        100.0 * f,
                        100.0 * want
                    )
                    .unwrap();
                }
            }
            if t == maxt {
                break;
            }
        }
    }
    let mut worst: Vec<(String, f64, String)> = Vec::new();
    for (ours, candle) in [
        ("int2_g128", "candle_q2k"),
        ("int3_g128", "candle_q3k"),
        ("nf3_g128", "candle_q3k"),
        ("int4_g128", "candle_q4_0"),
        ("nf4_g128", "candle_q4_0"),
        ("int2_g128_a8", "candle_q2k"),
        ("int3_g128_a8", "candle_q3k"),
        ("nf3_g128_a8", "candle_q3k"),
        ("int4_g128_a8", "candle_q4_0"),
        ("int2_g128_lut", "candle_q2k"),
        ("int3_g128_lut", "candle_q3k"),
        ("nf3_g128_lut", "candle_q3k"),
    ] {
        for a in rows.iter().filter(|r| r.kernel == ours) {
            if let Some(b) = find(candle, &a.shape, a.threads, a.where_) {
                let x = b.ns_per_weight / a.ns_per_weight;
                let at = format!("{} {}t {}", a.shape, a.threads, a.where_);
                match worst.iter_mut().find(|w| w.0 == ours) {
                    Some(w) if x < w.1 => *w = (ours.to_string(), x, at),
                    Some(_) => {}
                    None => worst.push((ours.to_string(), x, at)),
                }
            }
        }
    }
    for (ours, x, at) in worst {
        writeln!(out, "  vs candle: {ours} at worst {x:.2}x candle's speed per weight ({at}) {}", verdict(x > 1.0)).unwrap();
    }
    if !errors.is_empty() {
        writeln!(out, "\nRelative error of each output against the exact f32 product (sanity: same matrix, same input):")
            .unwrap();
        for (k, at, e) in errors {
            writeln!(out, "  {k:<20} {at:<16} {e:.4}").unwrap();
        }
    }
    out
}

/// The 1-minute load average (`/proc/loadavg`), or `?`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn verdict(ok: bool) -> String {
    if ok { "MET" } else { "NOT MET" }.to_string()
}
