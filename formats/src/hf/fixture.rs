//! Tiny random LLaMA checkpoints written as HF directories, for tests across the workspace.
//!
//! Everything is deterministic in the seed: the same [`TinySpec`] writes the same bytes.

use crate::config::{ModelConfig, TensorRole, TensorSpec};
use serde_json::{json, Value};
use std::io;
use std::path::Path;

/// The shape of a tiny checkpoint. `dtype` is the stored float type: "f32", "f16" or "bf16".
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub tied: bool,
    pub dtype: &'static str,
    pub seed: u64,
    pub max_context: usize,
    pub rope_theta: f32,
}

impl Default for TinySpec {
    /// intermediate 172 is deliberately not a multiple of 32, so a row of `down_proj` ends in a
    /// partial group.
    fn default() -> Self {
        TinySpec {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 172,
            tied: true,
            dtype: "f32",
            seed: 1,
            max_context: 256,
            rope_theta: 10000.0,
        }
    }
}

/// One tensor as raw little-endian bytes, for [`write_safetensors`]. `dtype` is a safetensors dtype
/// name ("F32", "F16", "BF16", "I64", ...).
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Characters that get their own token (so merges have something to start from); anything else
/// falls back to byte tokens.
const CHARS: [&str; 13] = ["▁", "e", "t", "h", "a", "o", "n", "i", "l", "d", "r", "w", "s"];
/// Merges in rank order; each result becomes a token after the characters.
const MERGES: [(&str, &str); 7] = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "n"), ("o", "n"), ("l", "l")];

/// Number of tokens in [`tiny_tokenizer_json`]: 3 specials, 256 bytes, the characters, the merges.
pub const TINY_VOCAB: usize = 3 + 256 + CHARS.len() + MERGES.len();

/// A SentencePiece-style BPE `tokenizer.json` with byte fallback, shaped like LLaMA's.
pub fn tiny_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    let mut add = |piece: String| {
        let id = vocab.len();
        vocab.insert(piece, json!(id));
    };
    for special in ["<unk>", "<s>", "</s>"] {
        add(special.to_string());
    }
    for b in 0..=255u8 {
        add(format!("<0x{b:02X}>"));
    }
    for c in CHARS {
        add(c.to_string());
    }
    for (a, b) in MERGES {
        add(format!("{a}{b}"));
    }
    debug_assert_eq!(vocab.len(), TINY_VOCAB);
    let merges: Vec<Value> = MERGES.iter().map(|(a, b)| json!([a, b])).collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    // Serializing a Value cannot fail.
    serde_json::to_string_pretty(&tok).unwrap_or_default()
}

/// The [`ModelConfig`] a checkpoint written from `spec` reads back as.
pub fn tiny_config(spec: &TinySpec) -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        hidden_size: spec.hidden,
        num_layers: spec.layers,
        num_heads: spec.heads,
        num_kv_heads: spec.kv_heads,
        head_dim: spec.hidden.checked_div(spec.heads).unwrap_or(0),
        intermediate_size: spec.intermediate,
        vocab_size: TINY_VOCAB,
        rope_theta: spec.rope_theta,
        rms_eps: 1e-5,
        max_context: spec.max_context,
        tied_embeddings: spec.tied,
        bos_id: 1,
        eos_id: 2,
    }
}

/// The HF `config.json` for `spec`.
pub fn tiny_config_json(spec: &TinySpec) -> String {
    let torch_dtype = match spec.dtype {
        "f16" => "float16",
        "bf16" => "bfloat16",
        _ => "float32",
    };
    hf_config_json(&tiny_config(spec), torch_dtype)
}

/// A LLaMA `config.json` for `c`, as transformers writes it (`torch_dtype`: "float32", "float16", ...).
pub fn hf_config_json(c: &ModelConfig, torch_dtype: &str) -> String {
    // Through the shortest decimal of the f32, so the file reads 1e-05 rather than f32 noise.
    let f = |x: f32| x.to_string().parse::<f64>().unwrap_or(x as f64);
    let v = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "mlp_bias": false,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
        "rope_theta": f(c.rope_theta),
        "rms_norm_eps": f(c.rms_eps),
        "max_position_embeddings": c.max_context,
        "rope_scaling": null,
        "tie_word_embeddings": c.tied_embeddings,
        "bos_token_id": c.bos_id,
        "eos_token_id": c.eos_id,
        "torch_dtype": torch_dtype,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Every tensor of the tiny model with its f32 values before rounding to `spec.dtype`.
/// Each tensor draws from its own stream (seed and name), so tied and untied models share values.
pub fn tiny_tensors(spec: &TinySpec) -> Vec<(TensorSpec, Vec<f32>)> {
    tiny_config(spec)
        .tensor_specs()
        .into_iter()
        .map(|t| {
            let n: usize = t.shape.iter().product();
            let mut rng = SplitMix64(spec.seed ^ fnv1a(t.name.as_bytes()));
            let values = if t.name.ends_with("embed_tokens.weight") || t.name == "lm_head.weight" {
                (0..n).map(|_| rng.uniform(0.5)).collect()
            } else if t.role == TensorRole::Float {
                // Norm weights: near one, like a trained model's.
                (0..n).map(|_| 1.0 + rng.uniform(0.05)).collect()
            } else {
                (0..n).map(|_| rng.uniform(0.1)).collect()
            };
            (t, values)
        })
        .collect()
}

/// Write `config.json`, `model.safetensors` and `tokenizer.json` for `spec` into `dir` (created if
/// needed).
pub fn write_tiny_checkpoint(dir: &Path, spec: &TinySpec) -> io::Result<()> {
    let dtype = st_dtype(spec.dtype)?;
    let config = tiny_config(spec);
    config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TinySpec: {e}")))?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), tiny_config_json(spec))?;
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json())?;
    let tensors: Vec<RawTensor> = tiny_tensors(spec)
        .into_iter()
        .map(|(t, v)| RawTensor { name: t.name, dtype, shape: t.shape, data: encode_f32(&v, dtype) })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors)
}

/// `values` as little-endian bytes of the safetensors dtype "F32", "F16" or "BF16" (round to
/// nearest even). Any other name gives f32 bytes.
pub fn encode_f32(values: &[f32], dtype: &str) -> Vec<u8> {
    match dtype {
        "F16" => values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        "BF16" => values.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

/// Write a safetensors file by hand, so tests can also write what the safetensors crate would
/// refuse to serialize for them (any dtype name, shapes that disagree with a config).
/// Tensors are laid out in the given order; the caller keeps `data` consistent with dtype and shape.
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) -> io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.len();
        header.insert(t.name.clone(), json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).map_err(io::Error::other)?;
    // The safetensors writer pads its header with spaces to 8 bytes so the data starts aligned.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    std::fs::write(path, out)
}

fn st_dtype(dtype: &str) -> io::Result<&'static str> {
    match dtype {
        "f32" => Ok("F32"),
        "f16" => Ok("F16"),
        "bf16" => Ok("BF16"),
        other => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("TinySpec.dtype {other:?} is not f32, f16 or bf16"))),
    }
}

/// FNV-1a, to give each tensor name its own PRNG stream.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// SplitMix64 (Steele, Lea and Flood): tiny, fast, and good enough for test weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale), from the top 24 bits so every value is exact in f32.
    fn uniform(&mut self, scale: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * unit - 1.0) * scale
    }
}
