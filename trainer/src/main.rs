//! `bd-train`: BitDistiller's trainer.

use anyhow::{anyhow, Result};
use bd_formats::DType;
use bd_trainer::convert::{quantize_checkpoint, ConvertOptions};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "bd-train", version, about = "BitDistiller: quantize, clip and self-distill LLaMA models to 2-4 bits")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Output .bd2 file (written atomically).
        #[arg(long)]
        out: PathBuf,
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
    DType::parse(s).ok_or_else(|| anyhow!("{flag} {s:?} is not one of int2, int3, int4, nf3, nf4, f16, bf16, f32"))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Quantize { teacher, format, group, float_dtype, out } => {
            let opts = ConvertOptions {
                format: parse_dtype("--format", &format)?,
                group,
                float_dtype: parse_dtype("--float-dtype", &float_dtype)?,
                clipping: "none".into(),
                training: None,
                progress: std::io::stderr().is_terminal(),
            };
            quantize_checkpoint(&teacher, &out, &opts)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
