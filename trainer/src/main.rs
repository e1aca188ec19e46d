//! `bd-train`: BitDistiller's trainer.

mod cli;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, ensure, Context, Result};
use bd_formats::hf::fixture::{write_tiny_checkpoint, TinySpec};
use bd_formats::hf::HfCheckpoint;
use bd_formats::DType;
use bd_trainer::clip::{clip_model, ClipFile, ClipOptions};
use bd_trainer::convert::{quantize_clipped, ConvertOptions};
use bd_trainer::data::{calibration_blocks, encode, load_tokenizer, read_documents, CalibOptions};
use bd_trainer::eval::{continuation_loglik, perplexity, read_mc, score_mc};
use bd_trainer::fake_quant::{parse_format, QuantSpec};
use bd_trainer::model::Llama;
use candle_core::Device;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "bd-train", version, about = "BitDistiller: quantize, clip and self-distill LLaMA models to 2-4 bits")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where tensors live: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face checkpoint to .bd2 with round-to-nearest quantization.
    Quantize {
        /// Hugging Face model directory (config.json, model.safetensors or shards, tokenizer.json).
        #[arg(long)]
        teacher: PathBuf,
        /// Format of the block linears: int2, int3, int4, nf3, nf4, f16, bf16 or f32.
        #[arg(long)]
        format: String,
        /// Weights per quantization group along the input dimension (16, 32, 64, 128, 256).
        #[arg(long, default_value_t = 128)]
        group: usize,
        /// Type of the tensors kept in floating point (embeddings, norms, head): f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        float_dtype: String,
        /// Clip bounds from `bd-train clip` (same format and group), applied before quantizing.
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Output .bd2 file (written atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Search asymmetric clip bounds for the block linears on calibration text (ALGORITHM.md section 2).
    Clip {
        /// Hugging Face model directory.
        #[arg(long)]
        teacher: PathBuf,
        /// Target format: int2, int3, int4, nf3 or nf4.
        #[arg(long)]
        format: String,
        /// Weights per quantization group (16, 32, 64, 128, 256).
        #[arg(long, default_value_t = 128)]
        group: usize,
        /// Calibration text: a .jsonl file of {"text": ...} lines, or plain text whose documents are
        /// separated by blank lines.
        #[arg(long)]
        calib: PathBuf,
        /// Documents taken from the shuffled calibration file.
        #[arg(long, default_value_t = 128)]
        calib_docs: usize,
        /// Documents longer than this many tokens (BOS included) are skipped.
        #[arg(long, default_value_t = 512)]
        calib_doc_tokens: usize,
        /// Tokens per calibration block (capped at the model's context).
        #[arg(long, default_value_t = 1024)]
        calib_block: usize,
        /// Keep at most this many blocks (default: all the documents give).
        #[arg(long)]
        calib_blocks: Option<usize>,
        /// Tokens subsampled per layer for the error estimate.
        #[arg(long, default_value_t = 512)]
        tokens: usize,
        /// Seed for the document shuffle and the token subsample.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Calibration blocks per forward pass (more is faster on small models, but holds
        /// `batch x heads x block^2` attention scores at once).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Output clip file (written atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Perplexity and multiple-choice accuracy of the fp teacher, RTN or clip+RTN.
    Eval {
        /// Hugging Face model directory.
        #[arg(long)]
        teacher: PathBuf,
        /// Fake-quantize the block linears to this format (default: fp, or the clip file's format).
        #[arg(long)]
        format: Option<String>,
        /// Group size (default 128, or the clip file's).
        #[arg(long)]
        group: Option<usize>,
        /// Clip bounds from `bd-train clip`, applied before quantizing.
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Text for perplexity (one stream, windows of ctx-1 tokens, BOS before each).
        #[arg(long)]
        text: Option<PathBuf>,
        /// Multiple-choice JSONL: {"context": str, "choices": [str], "answer": int} per line.
        #[arg(long)]
        mc: Option<PathBuf>,
        /// Text between context and choice (lm-eval-harness's target_delimiter).
        #[arg(long, default_value = " ")]
        mc_delimiter: String,
        /// Window length including BOS (default: the model's context).
        #[arg(long)]
        ctx: Option<usize>,
        /// Score only the first N windows (the runtime's and llama-perplexity's --chunks).
        #[arg(long)]
        chunks: Option<usize>,
        /// Print results as JSON: {"ppl", "tokens", "windows"} and {"acc", "acc_norm", "items"}.
        #[arg(long)]
        json: bool,
    },
    /// Teacher data: the fp model samples continuations of prompts (appends to --out; a rerun
    /// completes an interrupted file).
    GenData {
        /// Hugging Face model directory.
        #[arg(long)]
        teacher: PathBuf,
        #[command(flatten)]
        prompt: cli::PromptArgs,
        #[command(flatten)]
        sample: cli::SampleArgs,
        /// Seed for the prompt shuffle and the sampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output JSONL.
        #[arg(long)]
        out: PathBuf,
    },
    /// Self-distillation QAT: the fake-quantized student learns from the fp teacher on teacher data.
    Train {
        /// Hugging Face model directory (the teacher, and the student's initial weights).
        #[arg(long)]
        teacher: PathBuf,
        /// Student format: int2, int3, int4, nf3 or nf4.
        #[arg(long)]
        format: String,
        #[arg(long, default_value_t = 128)]
        group: usize,
        /// Clip bounds from `bd-train clip` applied to the student's initial weights.
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Training data: gen-data output, or JSONL of {"text": ...}.
        #[arg(long)]
        data: PathBuf,
        /// Run directory: checkpoints, metrics.jsonl, loss.svg, summary.json.
        #[arg(long)]
        out_dir: PathBuf,
        /// Continue the run in --out-dir from its last checkpoint.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        train: cli::TrainArgs,
    },
    /// Pack a trained student (a `train` directory or checkpoint file) into a .bd2 file.
    Export {
        /// The Hugging Face teacher the run started from (config and tokenizer).
        #[arg(long)]
        teacher: PathBuf,
        /// A `bd-train train` directory (its best.safetensors) or a checkpoint file.
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// The whole pipeline: clip, gen-data, train, export and a perplexity table, every stage cached.
    Run {
        /// Hugging Face model directory.
        #[arg(long)]
        teacher: PathBuf,
        /// int2, int3, int4, nf3 or nf4.
        #[arg(long)]
        format: String,
        #[arg(long, default_value_t = 128)]
        group: usize,
        /// Output .bd2 file.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        args: cli::RunArgs,
    },
    /// Pretrain a small teacher on a generated corpus, then run the whole 2-bit pipeline on it.
    Demo {
        /// Work directory (corpus, teacher, cached stages).
        #[arg(long, default_value = "demo-work")]
        work: PathBuf,
        #[arg(long, default_value = "demo.bd2")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Optimizer steps of teacher pretraining (32 windows of 127 tokens each).
        #[arg(long, default_value_t = 500)]
        pretrain_steps: usize,
        /// Optimizer steps of distillation (16 sequences each).
        #[arg(long, default_value_t = 250)]
        qat_steps: usize,
    },
    /// Write a random LLaMA checkpoint (the test fixture's tokenizer) for speed and memory runs.
    #[command(hide = true)]
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 768)]
        hidden: usize,
        #[arg(long, default_value_t = 14)]
        layers: usize,
        #[arg(long, default_value_t = 12)]
        heads: usize,
        #[arg(long, default_value_t = 12)]
        kv_heads: usize,
        #[arg(long, default_value_t = 2048)]
        intermediate: usize,
        #[arg(long, default_value_t = 1024)]
        max_context: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bd-train: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_dtype(flag: &str, s: &str) -> Result<DType> {
    DType::parse(s).ok_or_else(|| anyhow::anyhow!("{flag} {s:?} is not one of int2, int3, int4, nf3, nf4, f16, bf16, f32"))
}

fn progress() -> bool {
    std::io::stderr().is_terminal()
}

fn open_teacher(dir: &Path) -> Result<HfCheckpoint> {
    HfCheckpoint::open(dir).context("cannot load teacher")
}

fn run(cli: Cli) -> Result<()> {
    let dev = cli::parse_device(&cli.device)?;
    let device = || -> Result<Device> { Ok(dev.clone()) };
    match cli.command {
        Command::GenData { teacher, prompt, sample, seed, out } => {
            cli::gen_data(&teacher, &prompt, &sample, seed, &out, &dev, progress())
        }
        Command::Train { teacher, format, group, clip, data, out_dir, resume, train } => {
            cli::train_cmd(&teacher, &format, group, clip.as_deref(), &data, &out_dir, resume, &train, &dev, progress())
        }
        Command::Export { teacher, run, out } => cli::export_cmd(&teacher, &run, &out, progress()),
        Command::Run { teacher, format, group, out, args } => {
            cli::run_cmd(&teacher, &format, group, &out, &args, &dev, progress())
        }
        Command::Demo { work, out, seed, pretrain_steps, qat_steps } => {
            cli::demo_cmd(&work, &out, seed, pretrain_steps, qat_steps, &dev, progress())
        }
        Command::Quantize { teacher, format, group, float_dtype, clip, out } => {
            let opts = ConvertOptions {
                format: parse_dtype("--format", &format)?,
                group,
                float_dtype: parse_dtype("--float-dtype", &float_dtype)?,
                clipping: "none".into(),
                training: None,
                progress: progress(),
            };
            let clip = clip.map(|p| ClipFile::load(&p)).transpose()?;
            quantize_clipped(&teacher, &out, &opts, clip.as_ref())?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Clip {
            teacher,
            format,
            group,
            calib,
            calib_docs,
            calib_doc_tokens,
            calib_block,
            calib_blocks,
            tokens,
            seed,
            batch,
            out,
        } => {
            let format = parse_format(&format)?;
            let ckpt = open_teacher(&teacher)?;
            let config = ckpt.config().clone();
            let spec = QuantSpec::for_model(format, group, &config)?;
            let docs = read_documents(&calib)?;
            let tok = load_tokenizer(ckpt.tokenizer_json())?;
            let copts = CalibOptions {
                docs: calib_docs,
                max_doc_tokens: calib_doc_tokens,
                block_len: calib_block.min(config.max_context),
                blocks: calib_blocks,
                seed,
            };
            let (blocks, stats) = calibration_blocks(&tok, config.bos_id, &docs, &copts)?;
            eprintln!(
                "calibration: {} blocks of {} tokens from {} documents of {} ({} skipped as longer than {} tokens)",
                blocks.len(),
                copts.block_len,
                stats.docs_used,
                calib.display(),
                stats.docs_skipped,
                copts.max_doc_tokens
            );
            let model = Llama::load(&ckpt, &device()?)?.inference();
            let start = Instant::now();
            let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let opts =
                ClipOptions { spec, tokens, seed, batch, progress: progress(), source: name(&teacher), calib: name(&calib) };
            let clip = clip_model(&model, &blocks, &opts)?;
            clip.save(&out)?;
            let (e0, e1) = clip.tensors.iter().fold((0.0, 0.0), |(a, b), t| (a + t.err_noclip, b + t.err_clip));
            eprintln!(
                "clip {}: {} tensors in {:.1} s; summed output error {e0:.6e} -> {e1:.6e} ({:.1}% lower); wrote {}",
                spec.describe(),
                clip.tensors.len(),
                start.elapsed().as_secs_f64(),
                100.0 * (1.0 - e1 / e0.max(f64::MIN_POSITIVE)),
                out.display()
            );
            Ok(())
        }
        Command::Eval { teacher, format, group, clip, text, mc, mc_delimiter, ctx, chunks, json } => {
            ensure!(text.is_some() || mc.is_some(), "nothing to evaluate: give --text FILE and/or --mc FILE");
            let format = format.as_deref().map(parse_format).transpose()?;
            let ckpt = open_teacher(&teacher)?;
            let config = ckpt.config().clone();
            let clip = clip.map(|p| ClipFile::load(&p)).transpose()?;
            let format = format.or(clip.as_ref().map(|c| c.spec.format));
            if format.is_none() && group.is_some() {
                bail!("--group needs --format (or --clip)");
            }
            let group = group.or(clip.as_ref().map(|c| c.spec.group)).unwrap_or(128);
            let spec = format.map(|f| QuantSpec::for_model(f, group, &config)).transpose()?;
            let mut tensors = ckpt.load_all().context("cannot load teacher")?;
            let label = match (&spec, &clip) {
                (None, _) => "fp".to_string(),
                (Some(s), None) => format!("rtn {}", s.describe()),
                (Some(s), Some(c)) => {
                    c.check_spec(*s)?;
                    c.check_model(&config)?;
                    let n = c.apply_all(&mut tensors)?;
                    eprintln!("clip: {n} weights clamped");
                    format!("clip+rtn {}", s.describe())
                }
            };
            let mut model = Llama::from_tensors(config.clone(), tensors, &device()?)?.inference();
            if let Some(s) = spec {
                model = model.bake_fake_quant(s)?;
            }
            let tok = load_tokenizer(ckpt.tokenizer_json())?;
            if let Some(path) = text {
                let body = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let mut stream = encode(&tok, &body)?;
                let ctx = ctx.unwrap_or(config.max_context);
                match chunks {
                    Some(0) => bail!("--chunks 0: nothing to score"),
                    Some(n) => stream.truncate(n.saturating_mul(ctx.saturating_sub(1))),
                    None => {}
                }
                let start = Instant::now();
                let p = perplexity(&model, &stream, ctx, progress())?;
                if json {
                    println!("{}", serde_json::json!({"ppl": p.ppl, "tokens": p.tokens, "windows": p.windows}));
                } else {
                    println!(
                        "{label}: ppl {:.4} on {} ({} tokens, {} windows of {} tokens, {:.1} s)",
                        p.ppl,
                        path.display(),
                        p.tokens,
                        p.windows,
                        ctx - 1,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
            if let Some(path) = mc {
                let items = read_mc(&path)?;
                let r = score_mc(&items, &tok, &mc_delimiter, |c, k| continuation_loglik(&model, c, k))?;
                if json {
                    println!("{}", serde_json::json!({"acc": r.acc, "acc_norm": r.acc_norm, "items": r.items}));
                } else {
                    println!("{label}: acc {:.4} acc_norm {:.4} on {} ({} items)", r.acc, r.acc_norm, path.display(), r.items);
                }
            }
            Ok(())
        }
        Command::Synth { out, hidden, layers, heads, kv_heads, intermediate, max_context, seed } => {
            let spec =
                TinySpec { hidden, layers, heads, kv_heads, intermediate, tied: false, seed, max_context, ..TinySpec::default() };
            write_tiny_checkpoint(&out, &spec).with_context(|| format!("cannot write {}", out.display()))?;
            let params = bd_formats::hf::fixture::tiny_config(&spec).num_params();
            eprintln!("wrote {} ({params} parameters)", out.display());
            Ok(())
        }
    }
}
