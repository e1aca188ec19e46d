//! Training checkpoints: named f32 tensors and a JSON state in one safetensors file, written
//! atomically (a killed run leaves the previous checkpoint whole).
//!
//! The state travels in the safetensors metadata under the key `bd_train_state`; tensors are named
//! `student/<hf name>` (the latent f32 master weights) and, in the resumable checkpoint,
//! `adam_m/<hf name>` and `adam_v/<hf name>` (the optimizer moments).

use crate::atomic::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

const STATE_KEY: &str = "bd_train_state";

/// A tensor by name: shape and f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Write `tensors` and `state` to `path` atomically.
pub fn save(path: &Path, state: &serde_json::Value, tensors: &[NamedTensor]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    let out = safetensors::serialize(views, &Some(meta)).with_context(|| format!("cannot serialize {}", path.display()))?;
    write_atomic(path, &out)
}

/// Read a checkpoint written by [`save`]; errors name the file.
pub fn load(path: &Path) -> Result<(serde_json::Value, Vec<NamedTensor>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a bd-train checkpoint", path.display()))
}

fn parse(bytes: &[u8]) -> Result<(serde_json::Value, Vec<NamedTensor>)> {
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let state = meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)).context("no training state in its metadata")?;
    let state: serde_json::Value = serde_json::from_str(state).context("its training state is not JSON")?;
    let st = SafeTensors::deserialize(bytes)?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("tensor {name} is {:?}, expected F32", view.dtype());
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        ensure!(values.iter().all(|v| v.is_finite()), "tensor {name} holds a NaN or infinite value");
        tensors.push((name, view.shape().to_vec(), values));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((state, tensors))
}

/// The tensors of `list` whose names start with `prefix`, keyed by the rest of the name.
pub fn with_prefix<'a>(list: &'a [NamedTensor], prefix: &str) -> HashMap<&'a str, &'a NamedTensor> {
    list.iter().filter_map(|t| t.0.strip_prefix(prefix).map(|rest| (rest, t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let state = serde_json::json!({"step": 3, "gamma": 0.75});
        let t = vec![("student/a".to_string(), vec![2, 2], vec![1.0, -2.0, 0.5, 3.0]), ("adam_m/a".into(), vec![1], vec![0.25])];
        save(&p, &state, &t).unwrap();
        let (s, back) = load(&p).unwrap();
        assert_eq!(s, state);
        assert_eq!(back.len(), 2);
        let m = with_prefix(&back, "student/");
        assert_eq!(m["a"].2, vec![1.0, -2.0, 0.5, 3.0]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let err = format!("{:#}", load(&p).unwrap_err());
        assert!(err.contains("is not a bd-train checkpoint"), "{err}");
        assert!(format!("{:#}", load(&dir.path().join("none")).unwrap_err()).contains("cannot read checkpoint"));
    }
}
