//! Asymmetric clipping at initialization (ALGORITHM.md section 2).
//!
//! Block by block on the fp model, the inputs of each block's linears are captured on the
//! calibration blocks (q/k/v share the attention input, gate/up the MLP input, o gets the attention
//! output, down gets `silu(gate) * up`); every block sees activations of the unclipped model, and
//! about 512 tokens are subsampled per layer (seeded). For every (output row, group) with max `M`
//! and min `m`, the joint grid `beta = M (1 - i/20)`, `alpha = m (1 - j/20)`, `i, j in 0..10`,
//! clamps the group to `[alpha, beta]`, quantizes it with the target format's bd-formats quantizer,
//! and scores the mean over tokens of the squared error of the group's partial dot product:
//! `mean_t (Q(clip(w)) . x_t - w . x_t)^2`. The best pair of each (row, group) is kept; the grid
//! holds `i = j = 0` (no clip), tried first, and only a strictly smaller error replaces it, so
//! clipping never makes a group worse. q_proj and k_proj are not clipped.
//!
//! The error is computed as `d^T H d` with `d = Q(clip(w)) - w` and `H = X^T X / T` per group:
//! the same quantity as the mean over `T` tokens, at `G^2` instead of `T G` operations per pair.
//! Work is one rayon task per output row; memory is the weights, one `H` per group (`cols * G`
//! floats per linear) and the captured rows, not anything of size rows x grid.
//!
//! # Clip file (`.bin`), version 1; all integers little-endian
//! ```text
//! 0   8  magic  "BDCLIP\0\n"
//! 8   4  version (u32) = 1
//! 12  4  header_len (u32)
//! 16  header_len bytes: JSON {"format", "group_size", "grid", "tokens", "seed", "source", "calib",
//!        "data_crc32", "tensors": [{"name", "rows", "cols", "err_noclip", "err_clip"}]}
//! then, per tensor in header order: rows * groups alpha (f32), then rows * groups beta (f32),
//!        row-major over (row, group), groups = ceil(cols / group_size); the file ends there.
//! ```
//! `data_crc32` is the CRC-32 (IEEE) of everything after the header. `err_*` are the summed
//! per-group errors without and with the chosen clip (for reports; nothing reads meaning from them).

use crate::atomic::write_atomic;
use crate::fake_quant::QuantSpec;
use crate::model::{BlockInputs, Llama};
use crate::rng::Rng;
use anyhow::{ensure, Context, Result};
use bd_formats::config::{ModelConfig, TensorSpec};
use bd_formats::quant::{check_group_size, dequantize_group, quantize_group, QuantFormat};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Grid steps per bound (10 x 10 pairs), and the denominator of the shrink fraction.
pub const GRID: usize = 10;
const GRID_DIV: f64 = 20.0;
/// The linears that are clipped (q and k feed q.k and are left alone).
pub const CLIPPED: [&str; 5] = ["self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

const MAGIC: &[u8; 8] = b"BDCLIP\0\n";
const VERSION: u32 = 1;

/// Clip bounds of one linear: `alpha`/`beta` per (row, group), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearClip {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub alpha: Vec<f32>,
    pub beta: Vec<f32>,
    /// Sum over groups of the output error without clipping and with the chosen bounds.
    pub err_noclip: f64,
    pub err_clip: f64,
}

/// Everything a clip search produced.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipFile {
    pub spec: QuantSpec,
    pub tokens: usize,
    pub seed: u64,
    pub source: String,
    pub calib: String,
    pub tensors: Vec<LinearClip>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    group_size: usize,
    grid: [usize; 2],
    tokens: usize,
    seed: u64,
    source: String,
    calib: String,
    data_crc32: u32,
    tensors: Vec<HeaderTensor>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderTensor {
    name: String,
    rows: usize,
    cols: usize,
    err_noclip: f64,
    err_clip: f64,
}

impl ClipFile {
    /// Write atomically: a temporary file next to `path`, synced, then renamed over it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut data = Vec::new();
        for t in &self.tensors {
            for v in t.alpha.iter().chain(&t.beta) {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        let header = Header {
            format: self.spec.format.name().into(),
            group_size: self.spec.group,
            grid: [GRID, GRID],
            tokens: self.tokens,
            seed: self.seed,
            source: self.source.clone(),
            calib: self.calib.clone(),
            data_crc32: crc32fast::hash(&data),
            tensors: self
                .tensors
                .iter()
                .map(|t| HeaderTensor {
                    name: t.name.clone(),
                    rows: t.rows,
                    cols: t.cols,
                    err_noclip: t.err_noclip,
                    err_clip: t.err_clip,
                })
                .collect(),
        };
        let header = serde_json::to_vec(&header)?;
        let mut bytes = Vec::with_capacity(16 + header.len() + data.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(header.len()).context("clip header too large")?.to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&data);
        write_atomic(path, &bytes)
    }

    /// Read and check a clip file; every error names the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read clip file {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("{} is not a valid clip file", path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<Self> {
        ensure!(bytes.len() >= 16 && &bytes[..8] == MAGIC, "bad magic (not written by bd-train clip)");
        let version = u32::from_le_bytes(bytes[8..12].try_into()?);
        ensure!(version == VERSION, "version {version} is not supported (only {VERSION})");
        let header_len = u32::from_le_bytes(bytes[12..16].try_into()?) as usize;
        let header_end = 16usize.checked_add(header_len).filter(|&e| e <= bytes.len()).context("truncated header")?;
        let h: Header = serde_json::from_slice(&bytes[16..header_end]).context("malformed header")?;
        let format = QuantFormat::parse(&h.format).with_context(|| format!("unknown format {:?}", h.format))?;
        check_group_size(h.group_size)?;
        ensure!(h.grid == [GRID, GRID], "grid {:?} is not the {GRID}x{GRID} this version searches", h.grid);
        let data = &bytes[header_end..];
        let mut expected = 0usize;
        for t in &h.tensors {
            ensure!(t.rows > 0 && t.cols > 0, "tensor {} has an empty shape", t.name);
            let n = t.rows.checked_mul(t.cols.div_ceil(h.group_size)).and_then(|n| n.checked_mul(8));
            expected = n.and_then(|n| expected.checked_add(n)).context("tensor shapes overflow")?;
        }
        ensure!(data.len() == expected, "data section is {} bytes, the header implies {expected}", data.len());
        ensure!(crc32fast::hash(data) == h.data_crc32, "data CRC-32 mismatch (corrupted file)");
        let mut at = 0;
        let mut floats = |n: usize| -> Vec<f32> {
            let v = data[at..at + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            at += 4 * n;
            v
        };
        let mut tensors = Vec::new();
        for t in h.tensors {
            let n = t.rows * t.cols.div_ceil(h.group_size);
            let (alpha, beta) = (floats(n), floats(n));
            ensure!(alpha.iter().chain(&beta).all(|v| v.is_finite()), "tensor {} has non-finite bounds", t.name);
            tensors.push(LinearClip {
                name: t.name,
                rows: t.rows,
                cols: t.cols,
                alpha,
                beta,
                err_noclip: t.err_noclip,
                err_clip: t.err_clip,
            });
        }
        Ok(ClipFile {
            spec: QuantSpec { format, group: h.group_size },
            tokens: h.tokens,
            seed: h.seed,
            source: h.source,
            calib: h.calib,
            tensors,
        })
    }

    pub fn get(&self, name: &str) -> Option<&LinearClip> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Refuse bounds searched for another format or group size than the one being quantized.
    pub fn check_spec(&self, spec: QuantSpec) -> Result<()> {
        ensure!(
            self.spec == spec,
            "the clip file was searched for {}, but the model is being quantized to {}; clip again or use the same --format and --group",
            self.spec.describe(),
            spec.describe()
        );
        Ok(())
    }

    /// Every bounded tensor must be a tensor of `config` with the same shape.
    pub fn check_model(&self, config: &ModelConfig) -> Result<()> {
        let specs = config.tensor_specs();
        for t in &self.tensors {
            let spec = specs
                .iter()
                .find(|s| s.name == t.name)
                .with_context(|| format!("the clip file names tensor {}, which the model does not have", t.name))?;
            ensure!(
                spec.shape == [t.rows, t.cols],
                "clip bounds for {} are {}x{}, but the model's tensor is {:?} (a clip file of another model?)",
                t.name,
                t.rows,
                t.cols,
                spec.shape
            );
        }
        Ok(())
    }

    /// Clamp, in place, every tensor of `tensors` that has bounds; every bounded tensor must be
    /// there with the same shape. Returns how many weights changed.
    pub fn apply_all(&self, tensors: &mut [(TensorSpec, Vec<f32>)]) -> Result<usize> {
        let mut changed = 0;
        for t in &self.tensors {
            let (spec, values) = tensors
                .iter_mut()
                .find(|(s, _)| s.name == t.name)
                .with_context(|| format!("clip file names tensor {}, which the model does not have", t.name))?;
            ensure!(
                spec.shape == [t.rows, t.cols],
                "clip bounds for {} are {}x{}, the tensor is {:?}",
                t.name,
                t.rows,
                t.cols,
                spec.shape
            );
            changed += t.apply(self.spec.group, values);
        }
        Ok(changed)
    }

    /// A short description for the `.bd2` header's `clipping` field.
    pub fn describe(&self) -> String {
        format!(
            "asymmetric clip search ({GRID}x{GRID} grid, {} g{}, {} tokens per layer, seed {}, calibration {})",
            self.spec.format, self.spec.group, self.tokens, self.seed, self.calib
        )
    }
}

impl LinearClip {
    /// Clamp each group of `w` (`rows x cols`, row-major) to its `[alpha, beta]`; returns how many
    /// weights changed. `max` then `min`, as the search clamps (and as `torch.clamp` does when a
    /// group's alpha exceeds its beta).
    pub fn apply(&self, group: usize, w: &mut [f32]) -> usize {
        let groups = self.cols.div_ceil(group);
        let mut changed = 0;
        for (r, row) in w.chunks_exact_mut(self.cols).enumerate() {
            for (g, chunk) in row.chunks_mut(group).enumerate() {
                let (a, b) = (self.alpha[r * groups + g], self.beta[r * groups + g]);
                for x in chunk {
                    let c = x.max(a).min(b);
                    changed += (c != *x) as usize;
                    *x = c;
                }
            }
        }
        changed
    }
}

/// `H_g = X_g^T X_g / T` for every group of columns of `x` (`tokens x cols`, row-major).
fn grams(x: &[f32], tokens: usize, cols: usize, group: usize) -> Result<Vec<Vec<f32>>> {
    let xt = Tensor::from_slice(x, (tokens, cols), &Device::Cpu)?;
    let inv = 1.0 / tokens as f64;
    (0..cols.div_ceil(group))
        .map(|g| {
            let (lo, hi) = (g * group, ((g + 1) * group).min(cols));
            let xg = xt.narrow(1, lo, hi - lo)?;
            Ok(xg.t()?.matmul(&xg)?.affine(inv, 0.0)?.flatten_all()?.to_vec1::<f32>()?)
        })
        .collect()
}

/// `d^T H d` for a symmetric `H` (`n x n`, row-major), with `hd` (`n` floats) as scratch.
/// `H d` is built as a sum of rows scaled by `d_k` (element-wise work the compiler vectorizes),
/// then dotted with `d`. On x86-64 with AVX2 the same code is compiled for 8-wide vectors: the
/// search spends most of its time here. Deterministic: equal `d` give equal errors, so exact ties
/// fall to the first pair (no clip).
fn quad_form(h: &[f32], d: &[f32], hd: &mut [f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { quad_form_avx2(h, d, hd) };
    }
    quad_form_portable(h, d, hd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quad_form_avx2(h: &[f32], d: &[f32], hd: &mut [f32]) -> f64 {
    quad_form_portable(h, d, hd)
}

#[inline(always)]
fn quad_form_portable(h: &[f32], d: &[f32], hd: &mut [f32]) -> f64 {
    let n = d.len();
    let hd = &mut hd[..n];
    hd.fill(0.0);
    for (k, &dk) in d.iter().enumerate() {
        for (o, &hk) in hd.iter_mut().zip(&h[k * n..(k + 1) * n]) {
            *o += hk * dk;
        }
    }
    dot(d, hd) as f64
}

/// Eight independent partial sums, which the compiler keeps in SIMD lanes (a single running sum
/// is a serial chain it may not reorder).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The best `(alpha, beta)` of every (row, group) of one linear `w` (`rows x cols`) for inputs `x`
/// (`tokens x cols`). `bar` advances one step per row.
pub fn search_linear(
    name: &str,
    w: &[f32],
    (rows, cols): (usize, usize),
    x: &[f32],
    spec: QuantSpec,
    bar: &ProgressBar,
) -> Result<LinearClip> {
    ensure!(w.len() == rows * cols && rows > 0 && cols > 0, "{name}: {} weights for a {rows}x{cols} matrix", w.len());
    ensure!(!x.is_empty() && x.len() / cols * cols == x.len(), "{name}: captured inputs are not rows of width {cols}");
    let g = spec.group;
    let groups = cols.div_ceil(g);
    let h = grams(x, x.len() / cols, cols, g)?;
    let per_row: Vec<Vec<(f32, f32, f64, f64)>> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            let (mut clipped, mut codes, mut q, mut d, mut hd) =
                (vec![0f32; g], vec![0u8; g], vec![0f32; g], vec![0f32; g], vec![0f32; g]);
            let mut out = Vec::with_capacity(groups);
            for (gi, wg) in row.chunks(g).enumerate() {
                let n = wg.len();
                let (lo, hi) = wg.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
                let (mut best, mut err0) = ((f64::INFINITY, lo, hi), 0.0);
                for i in 0..GRID {
                    let beta = hi * (1.0 - i as f64 / GRID_DIV) as f32;
                    for j in 0..GRID {
                        let alpha = lo * (1.0 - j as f64 / GRID_DIV) as f32;
                        for (c, &v) in clipped[..n].iter_mut().zip(wg) {
                            *c = v.max(alpha).min(beta);
                        }
                        let params = quantize_group(spec.format, &clipped[..n], &mut codes[..n])
                            .map_err(|e| anyhow::anyhow!("{name} row {r} group {gi}: {e}"))?;
                        dequantize_group(spec.format, params, &codes[..n], &mut q[..n]);
                        for k in 0..n {
                            d[k] = q[k] - wg[k];
                        }
                        let err = quad_form(&h[gi], &d[..n], &mut hd);
                        if i == 0 && j == 0 {
                            err0 = err;
                        }
                        if err < best.0 {
                            best = (err, alpha, beta);
                        }
                    }
                }
                out.push((best.1, best.2, err0, best.0));
            }
            bar.inc(1);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    let flat = per_row.into_iter().flatten();
    let (mut alpha, mut beta) = (Vec::with_capacity(rows * groups), Vec::with_capacity(rows * groups));
    let (mut err_noclip, mut err_clip) = (0.0, 0.0);
    for (a, b, e0, e) in flat {
        alpha.push(a);
        beta.push(b);
        err_noclip += e0;
        err_clip += e;
    }
    Ok(LinearClip { name: name.into(), rows, cols, alpha, beta, err_noclip, err_clip })
}

/// How to run the search.
#[derive(Clone, Debug)]
pub struct ClipOptions {
    pub spec: QuantSpec,
    /// Tokens subsampled per layer (512 in the reference).
    pub tokens: usize,
    pub seed: u64,
    /// Calibration sequences per forward pass.
    pub batch: usize,
    pub progress: bool,
    /// For the file header: the model and the calibration source.
    pub source: String,
    pub calib: String,
}

/// Search clip bounds for every clipped linear of the fp `model` on calibration `blocks` (all the
/// same length).
pub fn clip_model(model: &Llama, blocks: &[Vec<u32>], opts: &ClipOptions) -> Result<ClipFile> {
    ensure!(model.quant.is_none(), "clipping runs on the fp model, not on a fake-quantized student");
    ensure!(!blocks.is_empty() && opts.tokens > 0 && opts.batch > 0, "clipping needs calibration blocks and tokens");
    let len = blocks[0].len();
    ensure!(blocks.iter().all(|b| b.len() == len), "calibration blocks differ in length");
    let c = &model.config;
    let dev = model.device();
    let mut hidden: Vec<Tensor> = blocks
        .chunks(opts.batch)
        .map(|chunk| {
            let rows: Vec<&[u32]> = chunk.iter().map(|b| b.as_slice()).collect();
            model.embed_tokens(&crate::model::ids_tensor(&rows, dev)?)
        })
        .collect::<Result<_>>()?;
    let total = blocks.len() * len;
    let mut tensors = Vec::new();
    for layer in 0..c.num_layers {
        let pick = Rng::derive(opts.seed, layer as u64).sample_sorted(total, opts.tokens);
        let mut taken: Vec<[Tensor; 4]> = Vec::new();
        let mut first = 0;
        for h in hidden.iter_mut() {
            let n = h.dims3()?.0 * len;
            let local: Vec<u32> = pick.iter().filter(|&&p| p >= first && p < first + n).map(|&p| (p - first) as u32).collect();
            let mut cap = None;
            *h = model.block(layer, h, Some(&mut cap))?;
            let BlockInputs { attn_in, attn_out, mlp_in, down_in } = cap.context("block did not capture its inputs")?;
            if !local.is_empty() {
                let idx = Tensor::new(local.as_slice(), dev)?;
                let sel = |t: Tensor| t.index_select(&idx, 0);
                taken.push([sel(attn_in)?, sel(attn_out)?, sel(mlp_in)?, sel(down_in)?]);
            }
            first += n;
        }
        let inputs: Vec<Vec<f32>> = (0..4)
            .map(|i| {
                let parts: Vec<&Tensor> = taken.iter().map(|t| &t[i]).collect();
                Ok(Tensor::cat(&parts, 0)?.flatten_all()?.to_vec1::<f32>()?)
            })
            .collect::<Result<_>>()?;
        let blk = &model.blocks[layer];
        let linears = [(&blk.v_proj, 0), (&blk.o_proj, 1), (&blk.gate_proj, 2), (&blk.up_proj, 2), (&blk.down_proj, 3)];
        let rows_total: usize = linears.iter().map(|(w, _)| w.dims()[0]).sum();
        let bar = if opts.progress { ProgressBar::new(rows_total as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} rows {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("clip layer {}/{}", layer + 1, c.num_layers));
        for ((w, input), suffix) in linears.into_iter().zip(CLIPPED) {
            let name = format!("model.layers.{layer}.{suffix}.weight");
            bar.set_message(suffix.to_string());
            let (rows, cols) = w.dims2()?;
            let values = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            tensors.push(search_linear(&name, &values, (rows, cols), &inputs[input], opts.spec, &bar)?);
        }
        bar.finish();
    }
    Ok(ClipFile {
        spec: opts.spec,
        tokens: opts.tokens.min(total),
        seed: opts.seed,
        source: opts.source.clone(),
        calib: opts.calib.clone(),
        tensors,
    })
}
