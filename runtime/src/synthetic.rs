//! Models of a real model's shape with random weights, so speed can be measured at 7B scale without
//! a download (`bd-run bench --synthetic llama2-7b`).
//!
//! Large quantized matrices get random codes and zero points with valid f16 scales instead of being
//! quantized from random floats: the kernels do the same work on any codes, and quantizing 7 billion
//! weights would take minutes.

use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::sampler::Rng;
use bd_formats::bd2::{encode_tensor, Bd2File, Bd2Writer, Provenance, QuantRecipe, ReadOptions, TensorDecl};
use bd_formats::config::TensorRole;
use bd_formats::hf::fixture::tiny_tokenizer_json;
use bd_formats::quant::{check_group_size, PackedLayout, CHUNK};
use bd_formats::{DType, ModelConfig};
use half::f16;
use std::path::{Path, PathBuf};

/// Preset names for `--synthetic`.
pub const PRESETS: [&str; 4] = ["tiny", "llama-110m", "llama2-7b", "llama2-13b"];

/// The shape of a preset: `tiny` is stories260K's, `llama-110m` llama2.c's stories110M, the others
/// LLaMA-2's.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let (hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size, max_context) = match name {
        "tiny" => (64, 5, 8, 4, 172, 512, 512),
        "llama-110m" => (768, 12, 12, 12, 2048, 32000, 1024),
        "llama2-7b" => (4096, 32, 32, 32, 11008, 32000, 4096),
        "llama2-13b" => (5120, 40, 40, 40, 13824, 32000, 4096),
        _ => return None,
    };
    Some(ModelConfig {
        architecture: "llama".into(),
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim: hidden_size / num_heads,
        intermediate_size,
        vocab_size,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        max_context,
        tied_embeddings: false,
        bos_id: 1,
        eos_id: 2,
    })
}

/// Build a model of `config`'s shape with block linears in `format` (group size `group` for quantized
/// formats) and random weights drawn from `seed`. Floats stay f16 next to quantized block linears, as
/// in a converted model. The file is written to the temporary directory, mapped, and unlinked.
pub fn build(config: &ModelConfig, format: DType, group: usize, seed: u64) -> Result<Model> {
    if format.quant().is_some() {
        check_group_size(group).map_err(|e| RuntimeError::InvalidArgument(format!("--group: {e}")))?;
    }
    let float = if format.quant().is_some() { DType::F16 } else { format };
    let decls: Vec<TensorDecl> = config
        .tensor_specs()
        .into_iter()
        .map(|s| {
            let dtype = if s.role == TensorRole::BlockLinear { format } else { float };
            TensorDecl { name: s.name, dtype, group_size: dtype.quant().map(|_| group), shape: s.shape }
        })
        .collect();
    let recipe = QuantRecipe {
        format: format.name().into(),
        group_size: format.quant().map(|_| group),
        clipping: "none".into(),
        training: None,
    };
    let provenance =
        Provenance { source: "synthetic".into(), tool: format!("bd-run {}", env!("CARGO_PKG_VERSION")), notes: String::new() };
    let io = |e: bd_formats::bd2::Bd2Error| RuntimeError::Model(e);
    check_memory(decls.iter().map(TensorDecl::byte_len).sum::<Result<u64, _>>().map_err(io)?)?;
    remove_stale_files();
    let path = temp_path();
    let mut w = Bd2Writer::create(&path, config, recipe, provenance, tiny_tokenizer_json().as_bytes(), &decls).map_err(io)?;
    let mut rng = Rng::new(seed);
    for d in &decls {
        let bytes = random_tensor(d, &mut rng).map_err(io)?;
        w.write_tensor(&d.name, &bytes).map_err(io)?;
    }
    w.finish().map_err(io)?;
    // The checksums were computed a moment ago from these very bytes.
    let file = Bd2File::open(&path, ReadOptions { verify_checksums: false });
    // The mapping keeps the data alive; on systems where an open file cannot be removed it stays
    // behind in the temporary directory.
    let _ = std::fs::remove_file(&path);
    Model::from_file(file.map_err(io)?)
}

/// Refuse a model that cannot stay in memory: its file would be written out to disk (possibly
/// filling it: llama2-13b in f32 is 52 GB) and the bench would then time the disk, not the kernels.
fn check_memory(bytes: u64) -> Result<()> {
    let Some(available) = available_memory() else { return Ok(()) };
    if bytes > available {
        return Err(RuntimeError::InvalidArgument(format!(
            "this synthetic model needs {:.1} GB, more than the {:.1} GB of memory available",
            bytes as f64 / 1e9,
            available as f64 / 1e9
        )));
    }
    Ok(())
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux; `None` elsewhere or when unreadable).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Remove the files of synthetic models whose process is gone. A build killed while writing (a
/// 7B model is a few GB) leaves its temporary file behind; a finished one is unlinked at once.
/// Linux only: a process is alive while /proc/PID exists.
fn remove_stale_files() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.trim_start_matches('.').strip_prefix("bd-run-synthetic-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn temp_path() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("bd-run-synthetic-{}-{n}.bd2", std::process::id()))
}

fn random_tensor(d: &TensorDecl, rng: &mut Rng) -> Result<Vec<u8>, bd_formats::bd2::Bd2Error> {
    let n: usize = d.shape.iter().product();
    let norm = d.shape.len() == 1;
    // Keep activations of a deep random model in range: weights of standard deviation ~1/sqrt(in).
    let scale = if norm { 0.05 } else { 1.0 / (d.shape[d.shape.len() - 1] as f32).sqrt() };
    let value = |rng: &mut Rng| {
        let u = 2.0 * rng.next_f32() - 1.0;
        if norm {
            1.0 + scale * u
        } else {
            1.7 * scale * u
        }
    };
    match d.dtype {
        DType::F16 => Ok((0..n).flat_map(|_| f16::from_f32(value(rng)).to_le_bytes()).collect()),
        DType::Quant(format) if d.shape[1].is_multiple_of(CHUNK) => {
            let (rows, cols) = (d.shape[0], d.shape[1]);
            let group = d.group_size.unwrap_or(0);
            let l = PackedLayout::new(format, group, rows, cols)
                .map_err(|source| bd_formats::bd2::Bd2Error::Quant { tensor: d.name.clone(), source })?;
            let mut bytes = vec![0u8; l.len];
            for c in bytes.chunks_mut(8) {
                let r = rng.next_u64().to_le_bytes();
                c.copy_from_slice(&r[..c.len()]);
            }
            // Codes spread over about qmax / 2 steps either side of the zero point.
            let step = 2.0 * scale / format.qmax() as f32;
            let scales = &mut bytes[l.scales_offset..l.scales_offset + rows * l.row_scale_bytes];
            for s in scales.chunks_exact_mut(2) {
                s.copy_from_slice(&f16::from_f32(step * (0.75 + 0.5 * rng.next_f32())).to_le_bytes());
            }
            Ok(bytes)
        }
        // f32, bf16, and quantized matrices whose rows end in padding (which must hold the zero code):
        // small in every preset, so quantize them for real.
        _ => {
            let values: Vec<f32> = (0..n).map(|_| value(rng)).collect();
            encode_tensor(d, &values)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_larger_than_memory_is_refused() {
        if available_memory().is_none() {
            return; // not Linux: nothing to check against
        }
        let e = check_memory(u64::MAX).unwrap_err().to_string();
        assert!(e.contains("GB of memory available"), "{e}");
        assert!(check_memory(1).is_ok());
    }

    #[test]
    fn files_of_finished_processes_are_removed_and_live_ones_kept() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        // Above Linux's largest pid_max (2^22), so no live process has it.
        let dead = std::env::temp_dir().join(".bd-run-synthetic-4999999-0.bd2.tmp4999999");
        let live = std::env::temp_dir().join(format!("bd-run-synthetic-{}-999.bd2", std::process::id()));
        std::fs::write(&dead, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        remove_stale_files();
        let (dead_gone, live_kept) = (!dead.exists(), live.exists());
        let _ = std::fs::remove_file(&live);
        assert!(dead_gone, "{} left behind", dead.display());
        assert!(live_kept, "{} removed while its process runs", live.display());
    }
}
