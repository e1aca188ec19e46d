//! Fake quantization of block linears with candle ops, and the straight-through estimator (STE).
//!
//! `fake_quant` is `bd_formats::quant::fake_quant_matrix` written with tensor ops, so it runs on
//! whatever device the student lives on, and it is bit-identical to it: every step is the same IEEE
//! operation in the same order (tests/fake_quant.rs checks every format and group size, partial
//! groups included, against both `fake_quant_matrix` and the dequantized packed tensor).
//! What makes that hold:
//! - scalars enter as f32 tensors and divide with `broadcast_div`: candle's `tensor / f64` is an
//!   `affine` by the reciprocal, which rounds differently;
//! - scales are rounded through an f16 cast, as `half::f16::from_f32` does in bd-formats;
//! - `round` is candle's `Round`, i.e. `f32::round` (half away from zero), as in bd-formats;
//! - a partial last group is padded with copies of the row's last element, which is in that group,
//!   so the padding cannot move the group's max or min; padded outputs are cut away.

use anyhow::{bail, ensure, Result};
use bd_formats::config::{ModelConfig, TensorRole};
use bd_formats::quant::{check_group_size, QuantFormat, SCALE_EPS};
use candle_core::{DType, Tensor, D};

/// The target format of the block linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantSpec {
    pub format: QuantFormat,
    pub group: usize,
}

impl QuantSpec {
    /// Check that `format`/`group` can quantize every block linear of `config`: a supported group
    /// size no larger than any input dimension (the same rule `bd-train quantize` applies).
    pub fn for_model(format: QuantFormat, group: usize, config: &ModelConfig) -> Result<Self> {
        check_group_size(group).map_err(|e| anyhow::anyhow!("--group: {e}"))?;
        for spec in config.tensor_specs().iter().filter(|s| s.role == TensorRole::BlockLinear) {
            if group > spec.shape[1] {
                bail!(
                    "group size {group} is larger than the input dimension {} of {}; use a group size of at most {}",
                    spec.shape[1],
                    spec.name,
                    spec.shape[1]
                );
            }
        }
        Ok(QuantSpec { format, group })
    }

    pub fn describe(&self) -> String {
        format!("{} g{}", self.format, self.group)
    }
}

/// Parse a `--format` value that must be a quantized format.
pub fn parse_format(s: &str) -> Result<QuantFormat> {
    QuantFormat::parse(s).ok_or_else(|| {
        anyhow::anyhow!("--format {s:?} is not a supported quantized format (use one of int2, int3, int4, nf3, nf4)")
    })
}

/// `dequantize(quantize(w))` of a `[rows, cols]` f32 matrix, group by group along rows. Outside any
/// autograd graph: call it on a detached tensor (see [`ste`]).
pub fn fake_quant(w: &Tensor, spec: QuantSpec) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    ensure!(w.dtype() == DType::F32, "fake_quant needs an f32 weight, got {:?}", w.dtype());
    ensure!(rows > 0 && cols > 0, "fake_quant of an empty {rows} x {cols} matrix");
    check_group_size(spec.group)?;
    let g = spec.group;
    let groups = cols.div_ceil(g);
    let pad = groups * g - cols;
    let padded = if pad == 0 {
        w.contiguous()?
    } else {
        let last = w.narrow(1, cols - 1, 1)?.broadcast_as((rows, pad))?;
        Tensor::cat(&[w, &last], 1)?
    };
    let wg = padded.reshape((rows, groups, g))?;
    let out = if spec.format.is_nf() { fq_nf(&wg, spec.format)? } else { fq_int(&wg, spec.format)? };
    let out = out.reshape((rows, groups * g))?;
    Ok(if pad == 0 { out } else { out.narrow(1, 0, cols)?.contiguous()? })
}

/// A scalar f32 constant on `like`'s device, for exact broadcast arithmetic.
fn scalar(v: f32, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(v, like.device())?)
}

/// Round an f32 tensor of scales to f16 and back, as `to_f16_scale` does.
fn f16_round(s: &Tensor) -> Result<Tensor> {
    Ok(s.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

/// INT-k: `s = f16(max(M - m, eps) / qmax)`, `z = clamp(-round(m / s), 0, qmax)`,
/// `q = clamp(round(w / s) + z, 0, qmax)`, value `(q - z) * s`.
fn fq_int(wg: &Tensor, format: QuantFormat) -> Result<Tensor> {
    let qmax = format.qmax() as f32;
    let hi = wg.max_keepdim(D::Minus1)?;
    let lo = wg.min_keepdim(D::Minus1)?;
    let range = (hi - &lo)?.maximum(SCALE_EPS)?;
    let s = f16_round(&range.broadcast_div(&scalar(qmax, wg)?)?)?;
    let z = lo.div(&s)?.round()?.neg()?.clamp(0f32, qmax)?;
    let q = wg.broadcast_div(&s)?.round()?.broadcast_add(&z)?.clamp(0f32, qmax)?;
    // q and z can be -0.0 where bd-formats has the integer 0 (a u8); adding +0.0 turns the only
    // possible -0.0 result, (-0 - +0) * s, into the +0.0 that bd-formats writes.
    Ok(q.broadcast_sub(&z)?.broadcast_mul(&s)?.affine(1.0, 0.0)?)
}

/// NF-k: positive weights are divided by `f16(max(|max w|, eps))`, the others by
/// `f16(max(|min w|, eps))`, and each goes to the nearest level on its side, a value exactly on a
/// midpoint going away from zero. Counting the midpoints a value passes is the same walk that
/// bd-formats' `nearest_up`/`nearest_down` make, because the midpoints are increasing.
fn fq_nf(wg: &Tensor, format: QuantFormat) -> Result<Tensor> {
    let levels = format.levels().expect("NF format has levels");
    let zero = levels.iter().position(|&l| l == 0.0).expect("NF codebooks hold 0");
    let hi = wg.max_keepdim(D::Minus1)?;
    let lo = wg.min_keepdim(D::Minus1)?;
    let sp = f16_round(&hi.abs()?.maximum(SCALE_EPS)?)?;
    let sn = f16_round(&lo.abs()?.maximum(SCALE_EPS)?)?;
    let vp = wg.broadcast_div(&sp)?;
    let vn = wg.broadcast_div(&sn)?;
    let mut idx_up = vp.zeros_like()?.affine(1.0, zero as f64)?;
    for i in zero..levels.len() - 1 {
        let mid = (levels[i] + levels[i + 1]) * 0.5;
        idx_up = (idx_up + vp.ge(mid)?.to_dtype(DType::F32)?)?;
    }
    let mut idx_down = idx_up.zeros_like()?.affine(1.0, zero as f64)?;
    for i in (1..=zero).rev() {
        let mid = (levels[i] + levels[i - 1]) * 0.5;
        idx_down = (idx_down - vn.le(mid)?.to_dtype(DType::F32)?)?;
    }
    let positive = wg.gt(0f32)?;
    let idx = positive.where_cond(&idx_up, &idx_down)?.to_dtype(DType::U32)?;
    let table = Tensor::new(levels, wg.device())?;
    let level = table.index_select(&idx.flatten_all()?, 0)?.reshape(wg.shape())?;
    let scale = positive.where_cond(&sp.broadcast_as(wg.shape())?, &sn.broadcast_as(wg.shape())?)?;
    // A level of 0 times a positive scale is +0.0, as bd-formats writes it.
    Ok((level * scale)?)
}

/// The straight-through estimator: the forward value is exactly `fake_quant(w)`, the gradient
/// reaches `w` unchanged. `w + (fq - w).detach()` would round `fq - w` and then `w + ...` and miss
/// `fq` by an ulp now and then, so the student would train on weights that are not the ones it
/// exports; `fq + (w - w.detach())` adds an exact +0.0 instead.
pub fn ste(w: &Tensor, spec: QuantSpec) -> Result<Tensor> {
    let fq = fake_quant(&w.detach(), spec)?;
    Ok(fq.add(&w.sub(&w.detach())?)?)
}
