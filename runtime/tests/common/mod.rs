//! Shared by the runtime's integration tests: tiny `.bd2` models written by the test itself, and a
//! plain f32 LLaMA forward pass to check the runtime against.
//!
//! The reference is deliberately naive: whole-sequence causal attention recomputed from scratch,
//! no KV cache, no batching, no threads, so it shares no structure with the session it checks.

#![allow(dead_code)]

use bd_formats::bd2::{Bd2File, Bd2Writer, Provenance, QuantRecipe, ReadOptions, TensorDecl};
use bd_formats::config::TensorRole;
use bd_formats::hf::fixture::{tiny_config, tiny_tensors, tiny_tokenizer_json, TinySpec};
use bd_formats::{DType, ModelConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Write the fixture model of `spec` to `dir/name`: block linears in `block` (group `group` when
/// quantized), everything else in `float`.
pub fn write_model(dir: &Path, name: &str, spec: &TinySpec, block: DType, float: DType, group: usize) -> PathBuf {
    let config = tiny_config(spec);
    let tensors = tiny_tensors(spec);
    let decls: Vec<TensorDecl> = tensors
        .iter()
        .map(|(t, _)| {
            let dtype = if t.role == TensorRole::BlockLinear { block } else { float };
            TensorDecl { name: t.name.clone(), dtype, group_size: dtype.quant().map(|_| group), shape: t.shape.clone() }
        })
        .collect();
    let recipe = QuantRecipe {
        format: block.name().into(),
        group_size: block.quant().map(|_| group),
        clipping: "none".into(),
        training: None,
    };
    let path = dir.join(name);
    let provenance = Provenance { source: "fixture".into(), tool: "runtime tests".into(), notes: String::new() };
    let mut w = Bd2Writer::create(&path, &config, recipe, provenance, tiny_tokenizer_json().as_bytes(), &decls).unwrap();
    for ((_, values), decl) in tensors.iter().zip(&decls) {
        w.write_tensor_f32(decl, values).unwrap();
    }
    w.finish().unwrap();
    path
}

/// An all-f32 fixture model.
pub fn write_f32_model(dir: &Path, spec: &TinySpec) -> PathBuf {
    write_model(dir, "model.bd2", spec, DType::F32, DType::F32, 32)
}

/// The reference model: named f32 tensors and a config.
pub struct Reference {
    pub cfg: ModelConfig,
    pub w: HashMap<String, Vec<f32>>,
}

impl Reference {
    /// From the fixture's own f32 values (exactly what an all-f32 file holds).
    pub fn from_spec(spec: &TinySpec) -> Self {
        Self { cfg: tiny_config(spec), w: tiny_tensors(spec).into_iter().map(|(t, v)| (t.name, v)).collect() }
    }

    /// From the values a file decodes to: f16/bf16 widened, quantized tensors dequantized. For a
    /// quantized file this is the fake-quantized f32 model.
    pub fn from_file(path: &Path) -> Self {
        let f = Bd2File::open(path, ReadOptions::default()).unwrap();
        Self { cfg: f.config().clone(), w: f.tensors().iter().map(|t| (t.name.clone(), f.tensor_f32(t))).collect() }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.w[name]
    }

    /// Logits after every token of `tokens` (positions 0, 1, ...).
    pub fn forward(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let c = &self.cfg;
        let (dim, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let emb = self.get("model.embed_tokens.weight");
        let mut x: Vec<Vec<f32>> = tokens.iter().map(|&t| emb[t as usize * dim..(t as usize + 1) * dim].to_vec()).collect();
        for l in 0..c.num_layers {
            let p = |n: &str| format!("model.layers.{l}.{n}.weight");
            let xn: Vec<Vec<f32>> = x.iter().map(|v| rmsnorm(v, self.get(&p("input_layernorm")), c.rms_eps)).collect();
            let mut q: Vec<Vec<f32>> = xn.iter().map(|v| matvec(self.get(&p("self_attn.q_proj")), v)).collect();
            let mut k: Vec<Vec<f32>> = xn.iter().map(|v| matvec(self.get(&p("self_attn.k_proj")), v)).collect();
            let v: Vec<Vec<f32>> = xn.iter().map(|v| matvec(self.get(&p("self_attn.v_proj")), v)).collect();
            for t in 0..tokens.len() {
                rope(&mut q[t], t, hd, c.rope_theta);
                rope(&mut k[t], t, hd, c.rope_theta);
            }
            for t in 0..tokens.len() {
                let mut out = vec![0f32; nh * hd];
                for h in 0..nh {
                    let kvh = h / (nh / nkv);
                    let qh = &q[t][h * hd..(h + 1) * hd];
                    let mut scores: Vec<f32> = (0..=t)
                        .map(|s| {
                            qh.iter().zip(&k[s][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = scores
                        .iter_mut()
                        .map(|s| {
                            *s = (*s - max).exp();
                            *s
                        })
                        .sum();
                    for s in 0..=t {
                        for i in 0..hd {
                            out[h * hd + i] += scores[s] / sum * v[s][kvh * hd + i];
                        }
                    }
                }
                let o = matvec(self.get(&p("self_attn.o_proj")), &out);
                x[t].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let xn = rmsnorm(&x[t], self.get(&p("post_attention_layernorm")), c.rms_eps);
                let gate = matvec(self.get(&p("mlp.gate_proj")), &xn);
                let up = matvec(self.get(&p("mlp.up_proj")), &xn);
                let hidden: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                let down = matvec(self.get(&p("mlp.down_proj")), &hidden);
                x[t].iter_mut().zip(&down).for_each(|(a, b)| *a += b);
            }
        }
        let head = if c.tied_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        x.iter().map(|v| matvec(self.get(head), &rmsnorm(v, self.get("model.norm.weight"), c.rms_eps))).collect()
    }

    /// Perplexity in llama.cpp's convention, computed from [`Reference::forward`].
    pub fn perplexity(&self, tokens: &[u32], ctx: usize) -> f64 {
        let (mut nll, mut n) = (0f64, 0usize);
        for window in tokens.chunks(ctx - 1) {
            let mut input = vec![self.cfg.bos_id];
            input.extend_from_slice(&window[..window.len() - 1]);
            for (logits, &target) in self.forward(&input).iter().zip(window) {
                let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
                nll += lse - logits[target as usize] as f64;
                n += 1;
            }
        }
        (nll / n as f64).exp()
    }
}

/// `W x` for a row-major `[rows, x.len()]` matrix.
fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    x.iter().zip(w).map(|(v, w)| w * v / (ms + eps).sqrt()).collect()
}

/// Hugging Face rotate_half: `x * cos + rotate_half(x) * sin`, `rotate_half(x) = [-x2, x1]`.
fn rope(v: &mut [f32], pos: usize, hd: usize, theta: f32) {
    for head in v.chunks_exact_mut(hd) {
        let orig = head.to_vec();
        for i in 0..hd {
            let j = i % (hd / 2);
            let angle = pos as f64 * (theta as f64).powf(-2.0 * j as f64 / hd as f64);
            let rotated = if i < hd / 2 { -orig[i + hd / 2] } else { orig[i - hd / 2] };
            head[i] = orig[i] * angle.cos() as f32 + rotated * angle.sin() as f32;
        }
    }
}

/// Largest absolute difference between two equally long vectors.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Deterministic pseudo-random token ids in `3..vocab` (no special tokens).
pub fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            3 + (s % (vocab as u64 - 3)) as u32
        })
        .collect()
}
