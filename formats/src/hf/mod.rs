//! Reading a Hugging Face LLaMA-family checkpoint directory: `config.json`, `tokenizer.json` and
//! the weights (`model.safetensors`, or shards named by `model.safetensors.index.json`).
//!
//! The weight files are memory-mapped and only their headers are parsed at open time; a tensor's
//! bytes are touched when it is converted to f32, so opening a large checkpoint is cheap.

pub mod fixture;
#[cfg(test)]
mod tests;

use crate::config::{ModelConfig, TensorSpec};
use crate::dtype::DType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

/// Everything that can go wrong reading a checkpoint. Every message names the path, tensor or
/// field concerned.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: {what}", path.display())]
    NotFound { path: PathBuf, what: &'static str },
    #[error("{}: malformed JSON: {err}", path.display())]
    Json { path: PathBuf, err: serde_json::Error },
    #[error("{}: {msg}", path.display())]
    BadConfig { path: PathBuf, msg: String },
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("{}: {msg}", path.display())]
    BadIndex { path: PathBuf, msg: String },
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    BadSafetensors { path: PathBuf, msg: String },
    #[error("tensor {name:?} appears in both {} and {}", first.display(), second.display())]
    DuplicateTensor { name: String, first: PathBuf, second: PathBuf },
    #[error("tensor {name:?} not found in the weights of {}{note}", dir.display())]
    MissingTensor { name: String, dir: PathBuf, note: &'static str },
    #[error("tensor {name:?} in {}: expected shape {expected:?}, found {found:?}", path.display())]
    ShapeMismatch { name: String, path: PathBuf, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name:?} in {}: dtype {dtype} is not supported (only F32, F16, BF16)", path.display())]
    UnsupportedDtype { name: String, path: PathBuf, dtype: String },
}

/// Where one tensor lives: which map, which bytes, and how to read them.
#[derive(Debug, Clone)]
struct TensorEntry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the whole mapped file (header included).
    bytes: Range<usize>,
}

/// One opened HF checkpoint directory. Weight files stay mapped for the life of the value.
pub struct HfCheckpoint {
    dir: PathBuf,
    config: ModelConfig,
    tokenizer_json: Vec<u8>,
    tensors: BTreeMap<String, TensorEntry>,
    shards: Vec<(PathBuf, Mmap)>,
}

/// By hand, so a failed `unwrap_err` does not print the whole tokenizer as a list of bytes.
impl std::fmt::Debug for HfCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfCheckpoint")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("tokenizer_json_len", &self.tokenizer_json.len())
            .field("tensors", &self.tensors.len())
            .field("shards", &self.shards.iter().map(|(p, _)| p).collect::<Vec<_>>())
            .finish()
    }
}

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

impl HfCheckpoint {
    /// Open `dir`, read and check its config and tokenizer, and index the tensors of its weights.
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(HfError::NotFound { path: dir.into(), what: "not a directory" }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HfError::NotFound { path: dir.into(), what: "checkpoint directory does not exist" })
            }
            Err(source) => return Err(HfError::Io { path: dir.into(), err: source }),
        }
        let config_path = dir.join("config.json");
        let config = parse_config(&read_required(&config_path, "config.json is missing")?, &config_path)?;

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = read_required(&tokenizer_path, "tokenizer.json is missing (the .bd2 file embeds it)")?;
        serde_json::from_slice::<Value>(&tokenizer_json)
            .map_err(|source| HfError::Json { path: tokenizer_path.clone(), err: source })?;

        let mut ckpt = HfCheckpoint { dir: dir.into(), config, tokenizer_json, tensors: BTreeMap::new(), shards: Vec::new() };
        // A single file wins over an index, as in transformers.
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.is_file() {
            ckpt.add_shard(single)?;
        } else if index.is_file() {
            ckpt.add_sharded(&index)?;
        } else {
            return Err(HfError::NotFound {
                path: dir.into(),
                what: "no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)",
            });
        }
        Ok(ckpt)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The raw bytes of `tokenizer.json`, known to be valid JSON.
    pub fn tokenizer_json(&self) -> &[u8] {
        &self.tokenizer_json
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every tensor in the weight files, sorted by name (including ones the model does not use).
    pub fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>, HfError> {
        Ok(self.entry(name)?.shape.clone())
    }

    /// The tensor's values converted to f32 (row-major, as stored).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, HfError> {
        let e = self.entry(name)?;
        let (path, map) = &self.shards[e.shard];
        // The ranges were checked against the file length when the header was read.
        let bytes = map.get(e.bytes.clone()).ok_or_else(|| HfError::BadSafetensors {
            path: path.clone(),
            msg: format!("tensor {name:?} lies outside the file"),
        })?;
        // Data offsets in safetensors need not be aligned, so decode from bytes rather than cast.
        let out = match e.dtype {
            Dtype::F32 => DType::F32.decode(bytes),
            Dtype::F16 => DType::F16.decode(bytes),
            Dtype::BF16 => DType::Bf16.decode(bytes),
            other => return Err(unsupported_dtype(name, path, other)),
        };
        Ok(out)
    }

    /// Every tensor the config requires ([`ModelConfig::tensor_specs`]), in that order, converted to
    /// f32. All names, shapes and dtypes are checked before any tensor is converted, so a bad
    /// checkpoint fails fast. An `lm_head.weight` in a tied checkpoint is ignored.
    pub fn load_all(&self) -> Result<Vec<(TensorSpec, Vec<f32>)>, HfError> {
        let specs = self.config.tensor_specs();
        for spec in &specs {
            let e = self.tensors.get(&spec.name).ok_or_else(|| HfError::MissingTensor {
                name: spec.name.clone(),
                dir: self.dir.clone(),
                note: if spec.name == "lm_head.weight" {
                    " (config.json has tie_word_embeddings false, so the output head must be stored)"
                } else {
                    ""
                },
            })?;
            let path = &self.shards[e.shard].0;
            if e.shape != spec.shape {
                return Err(HfError::ShapeMismatch {
                    name: spec.name.clone(),
                    path: path.clone(),
                    expected: spec.shape.clone(),
                    found: e.shape.clone(),
                });
            }
            if !matches!(e.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(unsupported_dtype(&spec.name, path, e.dtype));
            }
        }
        specs
            .into_iter()
            .map(|spec| {
                let values = self.tensor_f32(&spec.name)?;
                Ok((spec, values))
            })
            .collect()
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry, HfError> {
        self.tensors.get(name).ok_or_else(|| HfError::MissingTensor { name: name.into(), dir: self.dir.clone(), note: "" })
    }

    /// Map one safetensors file and index its tensors; returns the shard number.
    fn add_shard(&mut self, path: PathBuf) -> Result<usize, HfError> {
        let file = File::open(&path).map_err(|source| HfError::Io { path: path.clone(), err: source })?;
        // SAFETY: the map is read-only and private to this value. Another process truncating the
        // file while it is mapped could still fault; that is the usual price of mapping weights.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| HfError::Io { path: path.clone(), err: source })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| HfError::BadSafetensors { path: path.clone(), msg: e.to_string() })?;
        // read_metadata checked that the offsets tile the data section, so these cannot overflow.
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (name, info) in metadata.tensors() {
            let (s, e) = info.data_offsets;
            let entry =
                TensorEntry { shard, dtype: info.dtype, shape: info.shape.clone(), bytes: data_start + s..data_start + e };
            if let Some(prev) = self.tensors.get(&name) {
                return Err(HfError::DuplicateTensor { name, first: self.shards[prev.shard].0.clone(), second: path });
            }
            self.tensors.insert(name, entry);
        }
        self.shards.push((path, map));
        Ok(shard)
    }

    /// Open every shard an index names, and check that each tensor is where the index says.
    fn add_sharded(&mut self, index_path: &Path) -> Result<(), HfError> {
        let bytes = read_required(index_path, "index file is missing")?;
        let index: Value =
            serde_json::from_slice(&bytes).map_err(|source| HfError::Json { path: index_path.into(), err: source })?;
        let bad = |msg: String| HfError::BadIndex { path: index_path.into(), msg };
        let map = index.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        if map.is_empty() {
            return Err(bad("\"weight_map\" is empty".into()));
        }
        let mut shard_of_file: BTreeMap<String, usize> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
            if !is_plain_relative(file) {
                return Err(bad(format!("weight_map[{tensor:?}] = {file:?} is not a file inside the checkpoint directory")));
            }
            let shard = match shard_of_file.get(file) {
                Some(&s) => s,
                None => {
                    let s = self.add_shard(self.dir.join(file))?;
                    shard_of_file.insert(file.to_string(), s);
                    s
                }
            };
            match self.tensors.get(tensor) {
                Some(e) if e.shard == shard => {}
                _ => {
                    return Err(bad(format!("weight_map says tensor {tensor:?} is in {file:?}, but that file does not hold it")))
                }
            }
        }
        Ok(())
    }
}

fn unsupported_dtype(name: &str, path: &Path, dtype: Dtype) -> HfError {
    HfError::UnsupportedDtype { name: name.into(), path: path.into(), dtype: format!("{dtype:?}") }
}

/// A shard name must stay inside the checkpoint directory: no absolute paths, no `..`.
fn is_plain_relative(file: &str) -> bool {
    !file.is_empty() && Path::new(file).components().all(|c| matches!(c, Component::Normal(_)))
}

fn read_required(path: &Path, missing: &'static str) -> Result<Vec<u8>, HfError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            HfError::NotFound { path: path.into(), what: missing }
        } else {
            HfError::Io { path: path.into(), err: source }
        }
    })
}

/// Turn an HF `config.json` into a [`ModelConfig`], refusing what the runtime would compute wrongly.
fn parse_config(bytes: &[u8], path: &Path) -> Result<ModelConfig, HfError> {
    let root: Value = serde_json::from_slice(bytes).map_err(|source| HfError::Json { path: path.into(), err: source })?;
    let obj = root
        .as_object()
        .ok_or_else(|| HfError::BadConfig { path: path.into(), msg: "the top level is not a JSON object".into() })?;
    let bad = |msg: String| HfError::BadConfig { path: path.into(), msg };
    let unsupported = |what: String| HfError::Unsupported { path: path.into(), what };
    // A JSON null counts as absent: transformers writes nulls for "use the default".
    let field = |key: &str| obj.get(key).filter(|v| !v.is_null());

    let archs: Vec<&str> = match field("architectures") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().ok_or_else(|| bad("`architectures` holds a non-string".into())))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("`architectures` is not a list of strings".into())),
    };
    let model_type = match field("model_type") {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| bad("`model_type` is not a string".into()))?),
    };
    let is_llama = archs.contains(&"LlamaForCausalLM") || model_type == Some("llama");
    let is_mistral = archs.contains(&"MistralForCausalLM") || model_type == Some("mistral");
    if !is_llama && !is_mistral {
        let named = match (archs.is_empty(), model_type) {
            (false, _) => format!("architectures {archs:?}"),
            (true, Some(t)) => format!("model_type {t:?}"),
            (true, None) => "no `architectures` or `model_type`".to_string(),
        };
        return Err(unsupported(format!("{named} (only LlamaForCausalLM / llama and MistralForCausalLM / mistral)")));
    }

    let get_usize = |key: &str| -> Result<Option<usize>, HfError> {
        match field(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("`{key}` = {v} is not a non-negative integer"))),
        }
    };
    let require = |key: &str| get_usize(key)?.ok_or_else(|| bad(format!("`{key}` is missing")));
    let get_f32 = |key: &str, default: f32| -> Result<f32, HfError> {
        match field(key) {
            None => Ok(default),
            Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| bad(format!("`{key}` = {v} is not a number"))),
        }
    };
    let get_bool = |key: &str, default: bool| -> Result<bool, HfError> {
        match field(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| bad(format!("`{key}` = {v} is not true or false"))),
        }
    };
    // Token ids: an integer, or (for eos in newer configs) a list whose first entry is the main one.
    let get_token = |key: &str, default: u32| -> Result<u32, HfError> {
        let v = match field(key) {
            None => return Ok(default),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(default),
                Some(first) => first,
            },
            Some(v) => v,
        };
        v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(format!("`{key}` = {v} is not a token id")))
    };

    if let Some(act) = field("hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(unsupported(format!("`hidden_act` = {act} (only \"silu\")")));
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        if get_bool(key, false)? {
            return Err(unsupported(format!("`{key}` = true (biases in the block linears)")));
        }
    }
    if let Some(scaling) = field("rope_scaling") {
        return Err(unsupported(format!("`rope_scaling` = {scaling} (only plain rotary embeddings)")));
    }

    let hidden_size = require("hidden_size")?;
    let num_heads = require("num_attention_heads")?;
    if num_heads == 0 {
        return Err(bad("`num_attention_heads` = 0 is out of range".into()));
    }
    let max_context = get_usize("max_position_embeddings")?.unwrap_or(2048);
    if is_mistral {
        // A window at least as long as the context never drops anything, so it is plain attention.
        if let Some(window) = get_usize("sliding_window")? {
            if window < max_context {
                return Err(unsupported(format!(
                    "`sliding_window` = {window} is shorter than max_position_embeddings {max_context} (sliding-window attention)"
                )));
            }
        }
    }

    let config = ModelConfig {
        architecture: "llama".into(),
        hidden_size,
        num_layers: require("num_hidden_layers")?,
        num_heads,
        num_kv_heads: get_usize("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim: get_usize("head_dim")?.unwrap_or(hidden_size / num_heads),
        intermediate_size: require("intermediate_size")?,
        vocab_size: require("vocab_size")?,
        rope_theta: get_f32("rope_theta", 10000.0)?,
        rms_eps: get_f32("rms_norm_eps", 1e-6)?,
        max_context,
        tied_embeddings: get_bool("tie_word_embeddings", false)?,
        bos_id: get_token("bos_token_id", 1)?,
        eos_id: get_token("eos_token_id", 2)?,
    };
    config.validate().map_err(bad)?;
    Ok(config)
}
