//! `bd-train quantize`: a Hugging Face checkpoint to a packed `.bd2`, tensor by tensor.

use crate::clip::ClipFile;
use crate::fake_quant::QuantSpec;
use anyhow::{bail, Context, Result};
use bd_formats::bd2::{Bd2Writer, Provenance, QuantRecipe, TensorDecl};
use bd_formats::config::{ModelConfig, TensorRole, TensorSpec};
use bd_formats::hf::HfCheckpoint;
use bd_formats::quant::check_group_size;
use bd_formats::DType;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// What to write.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Type of the block linears (a float type or a quantized format).
    pub format: DType,
    /// Group size for quantized formats.
    pub group: usize,
    /// Type of the tensors that stay in floating point (embeddings, norms, head).
    pub float_dtype: DType,
    pub clipping: String,
    pub training: Option<serde_json::Value>,
    pub progress: bool,
}

/// The tensor declarations a conversion writes, in file order.
pub fn plan(config: &ModelConfig, opts: &ConvertOptions) -> Result<Vec<(TensorSpec, TensorDecl)>> {
    if opts.float_dtype.quant().is_some() {
        bail!("--float-dtype must be f32, f16 or bf16, got {}", opts.float_dtype);
    }
    let quantized = opts.format.quant().is_some();
    if quantized {
        check_group_size(opts.group).map_err(|e| anyhow::anyhow!("--group: {e}"))?;
    }
    let mut out = Vec::new();
    for spec in config.tensor_specs() {
        let block = spec.role == TensorRole::BlockLinear;
        let dtype = if block {
            opts.format
        } else if quantized {
            opts.float_dtype
        } else {
            opts.format
        };
        let group_size = dtype.quant().map(|_| opts.group);
        if let (Some(g), true) = (group_size, block) {
            if g > spec.shape[1] {
                bail!(
                    "group size {g} is larger than the input dimension {} of {}; use a group size of at most {}",
                    spec.shape[1],
                    spec.name,
                    spec.shape[1]
                );
            }
        }
        let decl = TensorDecl { name: spec.name.clone(), dtype, group_size, shape: spec.shape.clone() };
        out.push((spec, decl));
    }
    Ok(out)
}

/// Convert `ckpt` to `out` with round-to-nearest quantization of the block linears. `weights`
/// gives each tensor's f32 values (the checkpoint's own, or clipped or trained ones).
pub fn write_bd2(
    ckpt: &HfCheckpoint,
    out: &Path,
    opts: &ConvertOptions,
    mut weights: impl FnMut(&TensorSpec) -> Result<Vec<f32>>,
) -> Result<()> {
    let config = ckpt.config();
    let plan = plan(config, opts)?;
    let decls: Vec<TensorDecl> = plan.iter().map(|(_, d)| d.clone()).collect();
    let source = ckpt.dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let recipe = QuantRecipe {
        format: opts.format.name().to_string(),
        group_size: opts.format.quant().map(|_| opts.group),
        clipping: opts.clipping.clone(),
        training: opts.training.clone(),
    };
    let provenance = Provenance { source, tool: format!("bd-train {}", env!("CARGO_PKG_VERSION")), notes: String::new() };
    let mut writer = Bd2Writer::create(out, config, recipe, provenance, ckpt.tokenizer_json(), &decls)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let bar = if opts.progress { ProgressBar::new(plan.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} tensors  {msg}").unwrap());
    for (spec, decl) in &plan {
        bar.set_message(spec.name.clone());
        let values = weights(spec)?;
        writer.write_tensor_f32(decl, &values).with_context(|| format!("cannot write {}", out.display()))?;
        bar.inc(1);
    }
    writer.finish().with_context(|| format!("cannot finish {}", out.display()))?;
    bar.finish_and_clear();
    Ok(())
}

/// `bd-train quantize`: the checkpoint's own weights, round to nearest.
pub fn quantize_checkpoint(teacher: &Path, out: &Path, opts: &ConvertOptions) -> Result<()> {
    quantize_clipped(teacher, out, opts, None)
}

/// `bd-train quantize --clip`: the checkpoint's weights clamped to the clip bounds (searched for
/// the same format and group size), then round to nearest: what the trainer evaluates as clip+RTN.
pub fn quantize_clipped(teacher: &Path, out: &Path, opts: &ConvertOptions, clip: Option<&ClipFile>) -> Result<()> {
    let ckpt = HfCheckpoint::open(teacher).context("cannot load teacher")?;
    let mut opts = opts.clone();
    if let Some(clip) = clip {
        let format = opts.format.quant().context("--clip needs a quantized --format (int2, int3, int4, nf3, nf4)")?;
        clip.check_spec(QuantSpec::for_model(format, opts.group, ckpt.config())?)?;
        clip.check_model(ckpt.config())?;
        opts.clipping = clip.describe();
    }
    write_bd2(&ckpt, out, &opts, |spec| {
        let mut values = ckpt.tensor_f32(&spec.name)?;
        if let Some(bounds) = clip.and_then(|c| c.get(&spec.name)) {
            bounds.apply(opts.group, &mut values);
        }
        Ok(values)
    })
}
