//! `bd-run`: run, score, benchmark and inspect `.bd2` models.
//!
//! Generated text goes to stdout as it is produced; progress, timings and errors go to stderr, so
//! `bd-run m.bd2 -p "..." > story.txt` captures only the story.

use anyhow::{bail, Context, Result};
use bd_formats::DType;
use bd_runtime::bench;
use bd_runtime::kernels::Kernels;
use bd_runtime::{
    default_threads, generate, info, perplexity, synthetic, Bd2File, GenerateOptions, Model, ReadOptions, Sampler, SamplerConfig,
    Session, Tokenizer,
};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "bd-run",
    version,
    about = "Run and inspect BitDistiller .bd2 models on the CPU",
    after_help = "Environment:\n  BD_KERNELS=reference|avx2|avx512|neon  force a kernel set (default: the best this CPU runs); \
                  append -plain (avx2-plain) to leave out optional extensions such as AVX-VNNI\n  \
                  BD_ACT_BITS=8|16  default of --act-bits\n  \
                  BD_TABLES=1  NF3, INT2 and INT3 decode by table lookup (AVX-512 with VBMI2; repacks those weights at load; \
                  BD_NF3_TABLES=1 is its earlier name)",
    args_conflicts_with_subcommands = true,
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// `bd-run MODEL.bd2 [--prompt ...]`: generate text (interactively when no prompt is given).
#[derive(Args)]
struct RunArgs {
    /// The .bd2 model file.
    model: Option<PathBuf>,
    /// Text to continue. Without it, prompts are read from stdin, one per line.
    #[arg(short, long)]
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens up to this total probability (1 = all).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = none).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty on recently seen tokens (1 = off), llama.cpp's semantics.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: from the clock, printed to stderr).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Context length (default: the model's maximum).
    #[arg(long)]
    ctx: Option<usize>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct Common {
    /// Threads, 1 to 1024 (default: physical cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Skip the CRC-32 check of every tensor at load (structure is still validated).
    #[arg(long)]
    no_verify: bool,
    /// Activation precision of the quantized kernels: 16 (default; matches the trainer's f32
    /// numbers to ~1e-4) or 8 (faster where the kernels are compute-bound, e.g. AVX2; ~1e-2 per
    /// dot product, as llama.cpp). Default: the BD_ACT_BITS environment variable, else 16.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["8", "16"]))]
    act_bits: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's configuration, tensors, size and bits per weight.
    Info {
        /// The .bd2 file.
        model: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Skip the CRC-32 check of every tensor (faster on large files; structure is still validated).
        #[arg(long)]
        no_verify: bool,
    },
    /// Perplexity of a text file (llama.cpp's convention: windows of ctx-1 tokens, BOS in front of each).
    Perplexity {
        /// The .bd2 file.
        model: PathBuf,
        /// The text (UTF-8), tokenized as one stream.
        #[arg(long)]
        file: PathBuf,
        /// Window size in positions, BOS included (default: 512, or the model's maximum if smaller).
        #[arg(long)]
        ctx: Option<usize>,
        /// Score only the first N windows (llama-perplexity's --chunks).
        #[arg(long)]
        chunks: Option<usize>,
        /// Print {"ppl", "tokens", "windows"} as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Prompt and generation speed, next to the bound the memory bandwidth sets.
    Bench {
        /// The .bd2 file (or --synthetic).
        #[arg(conflicts_with = "synthetic")]
        model: Option<PathBuf>,
        /// Random weights of a known shape, built in memory: tiny, llama-110m, llama2-7b, llama2-13b.
        #[arg(long)]
        synthetic: Option<String>,
        /// Block-linear format of a synthetic model: int2, int3, int4, nf3, nf4, f16, bf16, f32.
        #[arg(long, default_value = "int2", requires = "synthetic")]
        format: String,
        /// Group size of a synthetic model's quantized linears.
        #[arg(long, default_value_t = 128, requires = "synthetic")]
        group: usize,
        /// Prompt tokens to time (0 skips).
        #[arg(long, default_value_t = 512)]
        pp: usize,
        /// Generated tokens to time (0 skips).
        #[arg(long, default_value_t = 128)]
        tg: usize,
        /// Repetitions, 1 to 1000; the best is reported.
        #[arg(long, default_value_t = 1)]
        reps: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bd-run: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Info { model, json, no_verify }) => {
            let file = Bd2File::open(&model, ReadOptions { verify_checksums: !no_verify })
                .with_context(|| format!("cannot load model {}", model.display()))?;
            let text = if json { serde_json::to_string_pretty(&info::info_json(&file))? + "\n" } else { info::info_text(&file) };
            write_stdout(&text)
        }
        Some(Command::Perplexity { model, file, ctx, chunks, json, common }) => {
            run_perplexity(&model, &file, ctx, chunks, json, &common)
        }
        Some(Command::Bench { model, synthetic, format, group, pp, tg, reps, json, common }) => {
            run_bench(model.as_deref(), synthetic.as_deref(), &format, group, pp, tg, reps, json, &common)
        }
        None => run_generate(cli.run),
    }
}

/// Write to stdout; a closed pipe (`bd-run ... | head`) ends quietly rather than with a panic.
fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

/// The kernels for this machine, with the activation precision `--act-bits` asks for.
fn kernels(common: &Common) -> Kernels {
    let k = Kernels::detect();
    match common.act_bits.as_deref() {
        Some(bits) => k.with_act8(bits == "8"),
        None => k,
    }
}

fn threads(common: &Common) -> Result<usize> {
    match common.threads {
        Some(0) => bail!("--threads 0: at least one thread is needed"),
        Some(t) if t > bd_runtime::session::MAX_THREADS => {
            bail!("--threads {t}: at most {} threads", bd_runtime::session::MAX_THREADS)
        }
        Some(t) => Ok(t),
        None => Ok(default_threads()),
    }
}

fn load(path: &Path, common: &Common) -> Result<Model> {
    let t = Instant::now();
    let model = Model::open(path, ReadOptions { verify_checksums: !common.no_verify })
        .with_context(|| format!("cannot load model {}", path.display()))?;
    let c = model.config();
    eprintln!(
        "bd-run: loaded {} ({}, {} layers, hidden {}, vocab {}) in {:.2} s",
        path.display(),
        model.file().header().quant.format,
        c.num_layers,
        c.hidden_size,
        c.vocab_size,
        t.elapsed().as_secs_f64()
    );
    Ok(model)
}

fn context_len(flag: Option<usize>, default: usize, model: &Model) -> Result<usize> {
    let max = model.config().max_context;
    match flag {
        Some(c) if c == 0 || c > max => bail!("--ctx {c} is out of range (1..={max}, the model's maximum context)"),
        Some(c) => Ok(c),
        None => Ok(default.min(max)),
    }
}

fn run_generate(a: RunArgs) -> Result<()> {
    let Some(path) = a.model.as_deref() else {
        bail!("no model given; usage: bd-run MODEL.bd2 [--prompt TEXT] (see bd-run --help)");
    };
    if a.prompt.as_deref() == Some("") {
        bail!("the prompt is empty (--prompt \"\"); give some text, or leave --prompt out for interactive mode");
    }
    let seed = a
        .seed
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let cfg = SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed,
    };
    cfg.validate()?;
    if a.stop.iter().any(String::is_empty) {
        bail!("--stop \"\": a stop string must not be empty");
    }
    let threads = threads(&a.common)?;
    let model = load(path, &a.common)?;
    let ctx = context_len(a.ctx, usize::MAX, &model)?;
    let tokenizer = Tokenizer::from_model(&model)?;
    let mut session = Session::with_kernels(&model, ctx, threads, kernels(&a.common))?;
    // A window longer than the context holds no more tokens than the context does.
    let cfg = SamplerConfig { repeat_last_n: cfg.repeat_last_n.min(ctx), ..cfg };
    let mut sampler = Sampler::new(cfg, model.config().vocab_size)?;
    eprintln!("bd-run: {} threads, {} kernels, context {ctx}, seed {seed}", threads, session.kernels().describe());
    let opts = GenerateOptions { max_tokens: a.n, stop: a.stop.clone() };
    match a.prompt {
        Some(prompt) => complete(&mut session, &tokenizer, &mut sampler, &prompt, &opts),
        None => {
            let interactive = std::io::stdin().is_terminal();
            if interactive {
                eprintln!("bd-run: interactive mode: each line is a prompt to continue; Ctrl-D ends");
            }
            let mut line = String::new();
            loop {
                if interactive {
                    eprint!("> ");
                }
                line.clear();
                if std::io::stdin().lock().read_line(&mut line).context("cannot read stdin")? == 0 {
                    return Ok(());
                }
                let prompt = line.trim_end_matches(['\n', '\r']);
                if prompt.trim().is_empty() {
                    continue;
                }
                // One bad line (too long for the context) should not end the session.
                if let Err(e) = complete(&mut session, &tokenizer, &mut sampler, prompt, &opts) {
                    eprintln!("bd-run: error: {e:#}");
                }
            }
        }
    }
}

/// Print `prompt` and its continuation to stdout, timings to stderr.
fn complete(
    session: &mut Session,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt: &str,
    opts: &GenerateOptions,
) -> Result<()> {
    let ids = tokenizer.encode(prompt, true)?;
    if ids.len() > session.ctx() {
        bail!("the prompt is {} tokens, longer than the context of {} positions (--ctx)", ids.len(), session.ctx());
    }
    let mut out = std::io::stdout().lock();
    let mut print = |t: &str| {
        // A closed stdout is not worth an error; generation just runs to its end.
        let _ = out.write_all(t.as_bytes()).and_then(|()| out.flush());
    };
    print(prompt);
    let g = generate(session, tokenizer, sampler, &ids, opts, &mut print)?;
    print("\n");
    let n = g.generated.len();
    eprintln!(
        "bd-run: prompt {} tokens in {:.3} s ({:.1} tok/s); generated {n} tokens in {:.3} s ({:.1} tok/s); stop: {:?}",
        g.prompt_tokens,
        g.prefill_secs,
        g.prompt_tokens as f64 / g.prefill_secs.max(1e-9),
        g.decode_secs,
        n as f64 / g.decode_secs.max(1e-9),
        g.stop
    );
    Ok(())
}

fn run_perplexity(
    path: &Path,
    file: &Path,
    ctx: Option<usize>,
    chunks: Option<usize>,
    json: bool,
    common: &Common,
) -> Result<()> {
    let threads = threads(common)?;
    if chunks == Some(0) {
        bail!("--chunks 0: nothing to score");
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read text file {}", file.display()))?;
    let model = load(path, common)?;
    let ctx = context_len(ctx, 512, &model)?;
    if ctx < 2 {
        bail!("--ctx {ctx} is too small for perplexity (BOS plus at least one token)");
    }
    let tokenizer = Tokenizer::from_model(&model)?;
    let t = Instant::now();
    let mut tokens = tokenizer.encode(&text, false)?;
    if tokens.is_empty() {
        bail!("{} holds no text to score", file.display());
    }
    if let Some(n) = chunks {
        tokens.truncate(n.saturating_mul(ctx - 1));
    }
    eprintln!("bd-run: {} tokens from {} in {:.2} s", tokens.len(), file.display(), t.elapsed().as_secs_f64());
    let mut session = Session::with_kernels(&model, ctx, threads, kernels(common))?;
    let t = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let p = perplexity(&mut session, &tokens, tokenizer.bos_id(), ctx, |done, all, ppl| {
        // About twenty lines in a log, a live counter on a terminal.
        if tty {
            eprint!("\rbd-run: window {done}/{all}, perplexity so far {ppl:.4}");
        } else if done == all || done % all.div_ceil(20) == 0 {
            eprintln!("bd-run: window {done}/{all}, perplexity so far {ppl:.4}");
        }
    })?;
    if tty {
        eprintln!();
    }
    let secs = t.elapsed().as_secs_f64();
    let text = if json {
        json!({"ppl": p.ppl, "tokens": p.tokens, "windows": p.windows, "ctx": ctx, "seconds": secs}).to_string() + "\n"
    } else {
        format!("perplexity {:.4} over {} tokens in {} windows of {ctx} ({secs:.2} s)\n", p.ppl, p.tokens, p.windows)
    };
    write_stdout(&text)
}

#[allow(clippy::too_many_arguments)]
fn run_bench(
    path: Option<&Path>,
    synthetic: Option<&str>,
    format: &str,
    group: usize,
    pp: usize,
    tg: usize,
    reps: usize,
    json: bool,
    common: &Common,
) -> Result<()> {
    let threads = threads(common)?;
    if pp == 0 && tg == 0 {
        bail!("--pp 0 and --tg 0: nothing to measure");
    }
    if !(1..=1000).contains(&reps) {
        bail!("--reps {reps} is out of range (1..=1000)");
    }
    let model = match (path, synthetic) {
        (Some(p), _) => load(p, common)?,
        (None, Some(name)) => {
            let Some(config) = synthetic::preset(name) else {
                bail!("--synthetic {name:?} is not one of {}", synthetic::PRESETS.join(", "));
            };
            let format = DType::parse(format)
                .with_context(|| format!("--format {format:?} is not one of int2, int3, int4, nf3, nf4, f16, bf16, f32"))?;
            let t = Instant::now();
            let model = synthetic::build(&config, format, group, 1)?;
            eprintln!("bd-run: built synthetic {name} ({format}) in {:.1} s", t.elapsed().as_secs_f64());
            model
        }
        (None, None) => bail!("give a model file or --synthetic PRESET"),
    };
    let ctx = pp.max(tg);
    let max = model.config().max_context;
    if ctx > max {
        bail!("--pp {pp} / --tg {tg} need a context of {ctx}, the model's maximum is {max}");
    }
    let mut session = Session::with_kernels(&model, ctx, threads, kernels(common))?;
    eprintln!("bd-run: benchmarking with {threads} threads, {} kernels", session.kernels().describe());
    let r = bench::run(&mut session, pp, tg, reps, 0)?;
    let text = if json {
        json!({
            "pp_tokens_per_s": r.pp_tokens_per_s,
            "tg_tokens_per_s": r.tg_tokens_per_s,
            "bytes_per_token": r.bytes_per_token,
            "bandwidth_gb_s": r.bandwidth_gb_s,
            "bandwidth_bound_tokens_per_s": r.bandwidth_bound_tokens_per_s,
            "threads": r.threads,
            "handoff_ns": r.handoff_ns,
            "products_per_token": r.products_per_token,
            "pp": pp,
            "tg": tg,
            "format": model.file().header().quant.format,
            "kernels": session.kernels().with_act8(false).describe(),
            "act_bits": if session.kernels().act8() { 8 } else { 16 },
        })
        .to_string()
            + "\n"
    } else {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let bound = r.bandwidth_bound_tokens_per_s;
        let share = r.tg_tokens_per_s.map_or("-".to_string(), |t| format!("{:.0}%", 100.0 * t / bound));
        let handoff_ms = r.handoff_ns * r.products_per_token as f64 / 1e6;
        format!(
            "pp{pp}: {} tok/s   tg{tg}: {} tok/s ({share} of the bandwidth bound)\n\
             bandwidth {:.2} GB/s, {} bytes/token -> bound {bound:.2} tok/s, {} threads\n\
             thread hand-off {:.2} us per matrix product, x{} per token = {handoff_ms:.3} ms/token\n",
            f(r.pp_tokens_per_s),
            f(r.tg_tokens_per_s),
            r.bandwidth_gb_s,
            r.bytes_per_token,
            r.threads,
            r.handoff_ns / 1e3,
            r.products_per_token,
        )
    };
    write_stdout(&text)
}
