//! The model configuration: what a `.bd2` header records and what an HF `config.json` is read into.

use serde::{Deserialize, Serialize};

/// A LLaMA-family decoder's shape (docs/FORMAT.md, header `config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Always "llama" in version 1.
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub max_context: usize,
    pub tied_embeddings: bool,
    pub bos_id: u32,
    pub eos_id: u32,
}

/// Upper bound on any one dimension: far above real models, low enough that products of a few
/// dimensions cannot overflow 64 bits.
pub const MAX_DIM: usize = 1 << 24;

/// What a tensor is for, which decides whether it is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// A block linear (q, k, v, o, gate, up, down): quantized.
    BlockLinear,
    /// Embeddings, norms, output head: kept in floating point.
    Float,
}

/// One tensor the configuration requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

/// The names of the seven block linears of layer `i`, in forward order.
pub const BLOCK_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl ModelConfig {
    /// Check that the configuration describes a model we can run. The message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.architecture != "llama" {
            return Err(format!("architecture {:?} is not supported (only \"llama\")", self.architecture));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_context", self.max_context),
        ] {
            if v == 0 || v > MAX_DIM {
                return Err(format!("{name} = {v} is out of range (1..={MAX_DIM})"));
            }
        }
        if self.num_layers > 4096 {
            return Err(format!("num_layers = {} is out of range (1..=4096)", self.num_layers));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!("num_heads {} is not a multiple of num_kv_heads {}", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for rotary embeddings", self.head_dim));
        }
        if self.num_heads.saturating_mul(self.head_dim) > MAX_DIM {
            return Err(format!("num_heads * head_dim = {} x {} is out of range", self.num_heads, self.head_dim));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!("rope_theta = {} must be positive and finite", self.rope_theta));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err(format!("rms_eps = {} must be non-negative and finite", self.rms_eps));
        }
        for (name, id) in [("bos_id", self.bos_id), ("eos_id", self.eos_id)] {
            if id as usize >= self.vocab_size {
                return Err(format!("{name} = {id} is not below vocab_size {}", self.vocab_size));
            }
        }
        Ok(())
    }

    /// Width of the attention output (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key and value projections (`num_kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Every tensor the model needs, with its shape, in a stable order.
    pub fn tensor_specs(&self) -> Vec<TensorSpec> {
        let (h, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.q_dim(), self.kv_dim());
        let spec = |name: String, shape: Vec<usize>, role| TensorSpec { name, shape, role };
        let mut out = vec![spec("model.embed_tokens.weight".into(), vec![v, h], TensorRole::Float)];
        for i in 0..self.num_layers {
            let p = format!("model.layers.{i}");
            out.push(spec(format!("{p}.input_layernorm.weight"), vec![h], TensorRole::Float));
            let shapes = [[q, h], [kv, h], [kv, h], [h, q], [f, h], [f, h], [h, f]];
            for (lin, shape) in BLOCK_LINEARS.iter().zip(shapes) {
                out.push(spec(format!("{p}.{lin}.weight"), shape.to_vec(), TensorRole::BlockLinear));
            }
            out.push(spec(format!("{p}.post_attention_layernorm.weight"), vec![h], TensorRole::Float));
        }
        out.push(spec("model.norm.weight".into(), vec![h], TensorRole::Float));
        if !self.tied_embeddings {
            out.push(spec("lm_head.weight".into(), vec![v, h], TensorRole::Float));
        }
        out
    }

    /// Number of parameters (tied head counted once).
    pub fn num_params(&self) -> usize {
        self.tensor_specs().iter().map(|s| s.shape.iter().product::<usize>()).sum()
    }
}
