//! The LLaMA decoder on candle: the fp teacher, and the student whose block linears compute with
//! `fake_quant(W)` of their latent f32 weights through the STE.
//!
//! Every op on the training path has a gradient: candle-nn's fused `softmax_last_dim`, `rms_norm`
//! and `rotary_emb::rope` run a backward pass without error but give their input no gradient, so
//! RMSNorm, rotate-half RoPE and the softmax are written here from basic ops
//! (tests/model.rs checks that every parameter gets a nonzero gradient).

use crate::causal_softmax::causal_softmax;
use crate::fake_quant::{fake_quant, ste, QuantSpec};
use anyhow::{bail, ensure, Context, Result};
use bd_formats::config::{ModelConfig, TensorRole, TensorSpec};
use bd_formats::hf::HfCheckpoint;
use candle_core::{Device, Tensor, Var, D};
use std::collections::HashMap;

/// One decoder block's parameters (HF names in comments where they differ).
pub struct Block {
    /// `input_layernorm`
    pub attn_norm: Var,
    pub q_proj: Var,
    pub k_proj: Var,
    pub v_proj: Var,
    pub o_proj: Var,
    /// `post_attention_layernorm`
    pub mlp_norm: Var,
    pub gate_proj: Var,
    pub up_proj: Var,
    pub down_proj: Var,
}

impl Block {
    /// The seven block linears in `bd_formats::config::BLOCK_LINEARS` order.
    pub fn linears(&self) -> [&Var; 7] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj, &self.gate_proj, &self.up_proj, &self.down_proj]
    }
}

/// The inputs of a block's linears, one row per token (`[batch * seq, width]`): q/k/v share
/// `attn_in`, o gets `attn_out`, gate/up share `mlp_in`, down gets `down_in = silu(gate) * up`.
pub struct BlockInputs {
    pub attn_in: Tensor,
    pub attn_out: Tensor,
    pub mlp_in: Tensor,
    pub down_in: Tensor,
}

/// Keys and values of the positions seen so far, per layer (before GQA repetition).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct Llama {
    pub config: ModelConfig,
    pub embed: Var,
    pub blocks: Vec<Block>,
    pub norm: Var,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<Var>,
    /// `Some` for a student: block linears compute with `fake_quant(W)` through the STE.
    pub quant: Option<QuantSpec>,
    /// Record the autograd graph. Off for evaluation and clipping: with it on, every intermediate
    /// of every layer stays alive until the output is dropped.
    pub grad: bool,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Llama {
    /// The fp model of an HF checkpoint, in f32 on `device`.
    pub fn load(ckpt: &HfCheckpoint, device: &Device) -> Result<Self> {
        let tensors = ckpt.load_all().with_context(|| format!("cannot load the weights of {}", ckpt.dir().display()))?;
        Self::from_tensors(ckpt.config().clone(), tensors, device)
    }

    /// Build from every tensor `config.tensor_specs()` names, each with its f32 values.
    pub fn from_tensors(config: ModelConfig, tensors: Vec<(TensorSpec, Vec<f32>)>, device: &Device) -> Result<Self> {
        config.validate().map_err(|e| anyhow::anyhow!("bad model config: {e}"))?;
        let mut map: HashMap<String, (Vec<usize>, Vec<f32>)> = tensors.into_iter().map(|(s, v)| (s.name, (s.shape, v))).collect();
        let mut take = |name: &str, shape: &[usize]| -> Result<Var> {
            let (got_shape, values) = map.remove(name).with_context(|| format!("tensor {name} is missing"))?;
            ensure!(got_shape == shape, "tensor {name} has shape {got_shape:?}, expected {shape:?}");
            Ok(Var::from_vec(values, shape, device)?)
        };
        let specs = config.tensor_specs();
        let shape_of = |name: &str| specs.iter().find(|s| s.name == name).map(|s| s.shape.clone()).unwrap_or_default();
        let embed = take("model.embed_tokens.weight", &shape_of("model.embed_tokens.weight"))?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let mut t = |suffix: &str| {
                let name = format!("model.layers.{i}.{suffix}.weight");
                take(&name, &shape_of(&name))
            };
            blocks.push(Block {
                attn_norm: t("input_layernorm")?,
                q_proj: t("self_attn.q_proj")?,
                k_proj: t("self_attn.k_proj")?,
                v_proj: t("self_attn.v_proj")?,
                o_proj: t("self_attn.o_proj")?,
                mlp_norm: t("post_attention_layernorm")?,
                gate_proj: t("mlp.gate_proj")?,
                up_proj: t("mlp.up_proj")?,
                down_proj: t("mlp.down_proj")?,
            });
        }
        let norm = take("model.norm.weight", &shape_of("model.norm.weight"))?;
        let lm_head = if config.tied_embeddings { None } else { Some(take("lm_head.weight", &shape_of("lm_head.weight"))?) };
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Llama { config, embed, blocks, norm, lm_head, quant: None, grad: true, cos, sin, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every parameter with its HF name, in `config.tensor_specs()` order.
    pub fn named_vars(&self) -> Vec<(TensorSpec, &Var)> {
        let mut vars: Vec<&Var> = vec![&self.embed];
        for b in &self.blocks {
            vars.push(&b.attn_norm);
            vars.extend(b.linears());
            vars.push(&b.mlp_norm);
        }
        vars.push(&self.norm);
        vars.extend(self.lm_head.as_ref());
        self.config.tensor_specs().into_iter().zip(vars).collect()
    }

    /// Every parameter's f32 values (for export with `convert::write_bd2`).
    pub fn to_tensors(&self) -> Result<Vec<(TensorSpec, Vec<f32>)>> {
        self.named_vars().into_iter().map(|(s, v)| Ok((s, v.as_tensor().flatten_all()?.to_vec1::<f32>()?))).collect()
    }

    /// A copy whose block linears hold `fake_quant(W)` and compute without further quantization:
    /// the same forward values as the student, computed once instead of at every call (for
    /// evaluation).
    pub fn bake_fake_quant(&self, spec: QuantSpec) -> Result<Llama> {
        let tensors = self
            .named_vars()
            .into_iter()
            .map(|(s, v)| {
                let t = v.as_detached_tensor();
                let t = if s.role == TensorRole::BlockLinear { fake_quant(&t, spec)? } else { t };
                Ok((s, t.flatten_all()?.to_vec1::<f32>()?))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut baked = Self::from_tensors(self.config.clone(), tensors, &self.device)?;
        baked.grad = self.grad;
        Ok(baked)
    }

    /// Without gradients: for evaluation and clipping.
    pub fn inference(mut self) -> Self {
        self.grad = false;
        self
    }

    /// A parameter as it enters the graph (detached when not recording gradients).
    fn param(&self, v: &Var) -> Tensor {
        if self.grad {
            v.as_tensor().clone()
        } else {
            v.as_detached_tensor()
        }
    }

    /// The weight a block linear computes with: the latent weight, or its fake quantization (STE).
    fn weight(&self, w: &Var) -> Result<Tensor> {
        let w = self.param(w);
        match self.quant {
            Some(spec) => ste(&w, spec),
            None => Ok(w),
        }
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (u32), causal, from position 0.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, s) = ids.dims2()?;
        let mut x = self.embed_tokens(ids)?;
        let (cos, sin) = self.rope_at(0, s)?;
        for blk in &self.blocks {
            x = self.block_forward(blk, &x, &cos, &sin, &Mask::Causal { past: 0 }, None, None)?;
        }
        self.head(&x)
    }

    /// Logits for `ids` `[batch, seq]` following the positions already in `cache`, which grows by
    /// `seq` (generation: a prompt first, then one token at a time).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_cached_padded(ids, cache, None)
    }

    /// [`forward_cached`](Self::forward_cached) for a batch of left-padded rows: row `b` holds
    /// `left_pad[b]` padding tokens before its text, and no real position attends to them. A
    /// padding position attends to itself only, so its values stay finite (a query that sees no
    /// key would make NaNs, and NaN times a zero attention weight is still NaN). RoPE depends on
    /// relative positions only, so a shifted row scores as it would alone.
    pub fn forward_cached_padded(&self, ids: &Tensor, cache: &mut KvCache, left_pad: Option<&[usize]>) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let past = cache.len;
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.blocks.len()];
        }
        let mut x = self.embed_tokens(ids)?;
        let mask = match left_pad {
            None => Mask::Causal { past },
            Some(pad) => {
                ensure!(pad.len() == b, "left_pad has {} rows, the batch {b}", pad.len());
                Mask::Additive(padded_causal_mask(s, past, pad, &self.device)?)
            }
        };
        let (cos, sin) = self.rope_at(past, s)?;
        for (blk, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = self.block_forward(blk, &x, &cos, &sin, &mask, Some(kv), None)?;
        }
        cache.len += s;
        self.head(&x)
    }

    /// Embeddings `[batch, seq, hidden]` of token ids `[batch, seq]`.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if s == 0 || s > self.config.max_context {
            bail!("sequence length {s} is outside 1..={} (the model's context)", self.config.max_context);
        }
        Ok(self.param(&self.embed).index_select(&ids.flatten_all()?, 0)?.reshape((b, s, self.config.hidden_size))?)
    }

    /// Final norm and output head.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = rms_norm(x, &self.param(&self.norm), self.config.rms_eps)?;
        linear(&x, &self.param(self.lm_head.as_ref().unwrap_or(&self.embed)))
    }

    /// Block `layer` on hidden states `[batch, seq, hidden]` starting at position 0; with
    /// `capture`, also the inputs of its linears (for clipping).
    pub fn block(&self, layer: usize, x: &Tensor, capture: Option<&mut Option<BlockInputs>>) -> Result<Tensor> {
        let (_, s, _) = x.dims3()?;
        let (cos, sin) = self.rope_at(0, s)?;
        self.block_forward(&self.blocks[layer], x, &cos, &sin, &Mask::Causal { past: 0 }, None, capture)
    }

    fn rope_at(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        if start + len > self.config.max_context {
            bail!("positions {start}..{} go past the model's context {}", start + len, self.config.max_context);
        }
        Ok((self.cos.narrow(0, start, len)?, self.sin.narrow(0, start, len)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        blk: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Mask,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        capture: Option<&mut Option<BlockInputs>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, s, h) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);

        let attn_in = rms_norm(x, &self.param(&blk.attn_norm), c.rms_eps)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()?) };
        let q = heads(linear(&attn_in, &self.weight(&blk.q_proj)?)?, nh)?;
        let k = heads(linear(&attn_in, &self.weight(&blk.k_proj)?)?, nkv)?;
        let v = heads(linear(&attn_in, &self.weight(&blk.v_proj)?)?, nkv)?;
        let q = rope(&q, cos, sin)?;
        let mut k = rope(&k, cos, sin)?;
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let k = repeat_kv(&k, nh / nkv)?;
        let v = repeat_kv(&v, nh / nkv)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let probs = match mask {
            Mask::Causal { past } => causal_softmax(&q.matmul(&k.t()?)?, scale, *past)?,
            Mask::Additive(m) => softmax(&q.matmul(&k.t()?)?.affine(scale, 0.0)?.broadcast_add(m)?)?,
        };
        let attn = probs.matmul(&v)?;
        let attn_out = attn.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        let x = (x + linear(&attn_out, &self.weight(&blk.o_proj)?)?)?;

        let mlp_in = rms_norm(&x, &self.param(&blk.mlp_norm), c.rms_eps)?;
        let gate = linear(&mlp_in, &self.weight(&blk.gate_proj)?)?;
        let up = linear(&mlp_in, &self.weight(&blk.up_proj)?)?;
        let down_in = (gate.silu()? * up)?;
        let out = (&x + linear(&down_in, &self.weight(&blk.down_proj)?)?)?;
        if let Some(cap) = capture {
            let rows = |t: &Tensor, w: usize| -> Result<Tensor> { Ok(t.reshape((b * s, w))?) };
            *cap = Some(BlockInputs {
                attn_in: rows(&attn_in, h)?,
                attn_out: rows(&attn_out, nh * hd)?,
                mlp_in: rows(&mlp_in, h)?,
                down_in: rows(&down_in, c.intermediate_size)?,
            });
        }
        Ok(out)
    }
}

/// `x W^T` for `x` `[.., in]` and `W` `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (last, lead) = dims.split_last().context("linear of a scalar")?;
    let rows: usize = lead.iter().product();
    let (out, inp) = w.dims2()?;
    ensure!(inp == *last, "linear: input width {last} but weight {out} x {inp}");
    let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
    let mut shape = lead.to_vec();
    shape.push(out);
    Ok(y.reshape(shape)?)
}

/// RMSNorm from basic ops: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let denom = ms.affine(1.0, eps as f64)?.sqrt()?;
    Ok(x.broadcast_div(&denom)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension from basic ops (the max is a constant shift: detached).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension from basic ops.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Rotate-half RoPE (HF layout) on `[batch, heads, seq, head_dim]` with tables `[seq, head_dim]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// cos and sin `[max_context, head_dim]`: angle `p * theta^(-2i/d)` for the pair (i, i + d/2),
/// computed in f64 and rounded once to f32.
fn rope_tables(c: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = c.head_dim;
    let (mut cos, mut sin) = (Vec::with_capacity(c.max_context * d), Vec::with_capacity(c.max_context * d));
    for p in 0..c.max_context {
        for j in 0..d {
            let i = j % (d / 2);
            let angle = p as f64 * (c.rope_theta as f64).powf(-2.0 * i as f64 / d as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((Tensor::from_vec(cos, (c.max_context, d), device)?, Tensor::from_vec(sin, (c.max_context, d), device)?))
}

/// Which keys each query sees.
enum Mask {
    /// Query `i` (at position `past + i`) sees keys `0..=past + i`: the fused [`causal_softmax`].
    Causal { past: usize },
    /// An additive mask broadcast onto the scores (left-padded generation).
    Additive(Tensor),
}

/// `[batch, 1, s, past + s]`: the causal mask with, for row `b`, the keys before `pad[b]` hidden
/// from every query but their own position.
fn padded_causal_mask(s: usize, past: usize, pad: &[usize], device: &Device) -> Result<Tensor> {
    let total = past + s;
    let mut m = Vec::with_capacity(pad.len() * s * total);
    for &p in pad {
        for i in 0..s {
            let q = past + i;
            m.extend((0..total).map(|j| if j > q || (j < p && j != q) { f32::NEG_INFINITY } else { 0.0 }));
        }
    }
    Ok(Tensor::from_vec(m, (pad.len(), 1, s, total), device)?)
}

/// GQA: `[b, kv_heads, s, d]` to `[b, kv_heads * rep, s, d]`, query head `h` using kv head `h / rep`.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, n, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?.broadcast_as((b, n, rep, s, d))?.reshape((b, n * rep, s, d))?)
}

/// Token ids as a `[batch, seq]` u32 tensor (all rows the same length).
pub fn ids_tensor(rows: &[&[u32]], device: &Device) -> Result<Tensor> {
    let s = rows.first().map_or(0, |r| r.len());
    ensure!(rows.iter().all(|r| r.len() == s), "token rows of different lengths");
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), s), device)?)
}
