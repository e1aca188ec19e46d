//! `bd-run`: run and inspect `.bd2` models.

use anyhow::Context;
use bd_runtime::{info, Bd2File, ReadOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "bd-run", version, about = "Run and inspect BitDistiller .bd2 models on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bd-run: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info { model, json, no_verify } => {
            let file = Bd2File::open(&model, ReadOptions { verify_checksums: !no_verify })
                .context("cannot load model")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info::info_json(&file))?);
            } else {
                print!("{}", info::info_text(&file));
            }
            Ok(())
        }
    }
}
