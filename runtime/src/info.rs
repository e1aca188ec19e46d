//! What `bd-run info` reports about a `.bd2` file.

use bd_formats::bd2::Bd2File;
use serde_json::{json, Value};
use std::fmt::Write;

/// The report as one JSON object. Scripts depend on `bits_per_weight`, `file_bytes`, `format`,
/// `group_size` and `tensors`.
pub fn info_json(file: &Bd2File) -> Value {
    let h = file.header();
    let tensors: Vec<Value> = file
        .tensors()
        .iter()
        .map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "group_size": t.group_size, "shape": t.shape, "bytes": t.len}))
        .collect();
    let quantized: usize = file.tensors().iter().filter(|t| t.dtype.quant().is_some()).map(|t| t.numel()).sum();
    json!({
        "file_bytes": file.file_len(),
        "format": h.quant.format,
        "group_size": h.quant.group_size,
        "bits_per_weight": file.bits_per_weight(),
        "params": file.tensors().iter().map(|t| t.numel()).sum::<usize>(),
        "quantized_params": quantized,
        "clipping": h.quant.clipping,
        "training": h.quant.training,
        "config": h.config,
        "provenance": h.provenance,
        "tokenizer_bytes": file.tokenizer_json().len(),
        "tensors": tensors,
    })
}

/// The report for people.
pub fn info_text(file: &Bd2File) -> String {
    let h = file.header();
    let c = &h.config;
    let mut s = String::new();
    let group = h.quant.group_size.map(|g| format!(" g{g}")).unwrap_or_default();
    let _ = writeln!(s, "format       {}{}  (clipping: {})", h.quant.format, group, h.quant.clipping);
    match file.bits_per_weight() {
        Some(b) => {
            let _ = writeln!(s, "bits/weight  {b:.4} (quantized block linears: codes + group parameters)");
        }
        None => {
            let _ = writeln!(s, "bits/weight  - (no quantized tensors)");
        }
    }
    let _ = writeln!(s, "file         {} bytes ({:.2} MiB)", file.file_len(), file.file_len() as f64 / (1 << 20) as f64);
    let _ = writeln!(
        s,
        "model        {} layers, hidden {}, heads {} (kv {}), head_dim {}, ffn {}, vocab {}, context {}",
        c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size, c.max_context
    );
    let _ = writeln!(
        s,
        "             rope_theta {}, rms_eps {:e}, tied embeddings {}, bos {}, eos {}",
        c.rope_theta, c.rms_eps, c.tied_embeddings, c.bos_id, c.eos_id
    );
    let params: usize = file.tensors().iter().map(|t| t.numel()).sum();
    let _ = writeln!(s, "parameters   {params}");
    if let Some(t) = &h.quant.training {
        let _ = writeln!(s, "training     {t}");
    }
    let _ = writeln!(s, "source       {} ({})", h.provenance.source, h.provenance.tool);
    let _ = writeln!(s, "tokenizer    {} bytes of tokenizer.json", file.tokenizer_json().len());
    let _ = writeln!(s, "\n{:<48} {:>6} {:>6} {:>14} {:>12}", "tensor", "dtype", "group", "shape", "bytes");
    for t in file.tensors() {
        let shape = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let g = t.group_size.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "{:<48} {:>6} {:>6} {:>14} {:>12}", t.name, t.dtype.name(), g, shape, t.len);
    }
    s
}
