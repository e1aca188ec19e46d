//! End to end across crates and binaries: an HF checkpoint written by the test is converted by
//! `bd-train quantize` and inspected by `bd-run info`, for every format; bad input gives clear
//! errors and never a panic.

use bd_formats::bd2::{Bd2File, ReadOptions};
use bd_formats::hf::fixture::{tiny_tensors, write_tiny_checkpoint, TinySpec};
use bd_formats::quant::{fake_quant_matrix, QuantFormat};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's binaries sit next to this test's own directory (target/<profile>/).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run the tests with `cargo test --workspace`", path.display());
    path
}

fn run(name: &str, args: &[&str]) -> Output {
    let out = Command::new(bin(name)).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{name} {args:?} panicked: {stderr}");
    out
}

fn checkpoint(dir: &Path, spec: &TinySpec) -> String {
    let ckpt = dir.join("hf");
    write_tiny_checkpoint(&ckpt, spec).unwrap();
    ckpt.to_str().unwrap().to_string()
}

#[test]
fn quantize_then_info_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let ckpt = checkpoint(dir.path(), &spec);
    let source = tiny_tensors(&spec);
    for format in ["int2", "int3", "int4", "nf3", "nf4", "f16", "bf16", "f32"] {
        let out = dir.path().join(format!("{format}.bd2"));
        let o = run(
            "bd-train",
            &["quantize", "--teacher", &ckpt, "--format", format, "--group", "32", "--out", out.to_str().unwrap()],
        );
        assert!(o.status.success(), "{format}: {}", String::from_utf8_lossy(&o.stderr));

        let o = run("bd-run", &["info", out.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let info: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(info["format"], format);
        assert_eq!(info["file_bytes"].as_u64().unwrap(), std::fs::metadata(&out).unwrap().len());
        assert_eq!(info["tensors"].as_array().unwrap().len(), source.len());
        let bpw = &info["bits_per_weight"];
        match QuantFormat::parse(format) {
            Some(q) => {
                assert_eq!(info["group_size"], 32);
                let b = bpw.as_f64().unwrap();
                // g32: b + (16 * scales + zero bits) / 32, a little more for the partial groups of 172.
                let base =
                    q.bits() as f64 + (16.0 * q.scales_per_group() as f64 + if q.is_nf() { 0.0 } else { q.bits() as f64 }) / 32.0;
                assert!(b >= base && b < base + 0.1, "{format}: {b} vs {base}");
            }
            None => assert!(bpw.is_null()),
        }
        let text = run("bd-run", &["info", out.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&text.stdout).contains("model.layers.1.mlp.down_proj.weight"));

        // The file holds exactly the quantizer's result of the checkpoint's weights.
        let file = Bd2File::open(&out, ReadOptions::default()).unwrap();
        for (spec, values) in &source {
            let t = file.tensor(&spec.name).unwrap();
            let got = file.tensor_f32(t);
            let want = match t.dtype.quant() {
                Some(q) => fake_quant_matrix(q, 32, spec.shape[0], spec.shape[1], values).unwrap(),
                None if format == "f16" => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
                None if format == "bf16" => values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
                None => values.clone(),
            };
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{format}: {}", spec.name);
        }
    }
}

#[test]
fn half_precision_and_untied_checkpoints_convert() {
    for (dtype, tied) in [("f16", true), ("bf16", false)] {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = checkpoint(dir.path(), &TinySpec { dtype, tied, ..TinySpec::default() });
        let out = dir.path().join("m.bd2");
        let o = run(
            "bd-train",
            &["quantize", "--teacher", &ckpt, "--format", "nf3", "--group", "64", "--out", out.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let file = Bd2File::open(&out, ReadOptions::default()).unwrap();
        assert_eq!(file.config().tied_embeddings, tied);
        assert_eq!(file.tensor("lm_head.weight").is_some(), !tied);
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), &TinySpec::default());
    let out = dir.path().join("m.bd2");
    let o = out.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("bd-train", vec!["quantize", "--teacher", "/nonexistent/model", "--format", "int2", "--out", o], "/nonexistent/model"),
        ("bd-train", vec!["quantize", "--teacher", &ckpt, "--format", "int5", "--out", o], "int5"),
        ("bd-train", vec!["quantize", "--teacher", &ckpt, "--format", "int2", "--group", "48", "--out", o], "group size 48"),
        (
            "bd-train",
            vec!["quantize", "--teacher", &ckpt, "--format", "int2", "--group", "128", "--out", o],
            "larger than the input dimension 64",
        ),
        (
            "bd-train",
            vec!["quantize", "--teacher", &ckpt, "--format", "int2", "--float-dtype", "nf3", "--out", o],
            "--float-dtype",
        ),
        ("bd-run", vec!["info", "/nonexistent/m.bd2"], "/nonexistent/m.bd2"),
    ];
    for (name, args, needle) in cases {
        let r = run(name, &args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name} {args:?} succeeded");
        assert!(stderr.contains(needle), "{name} {args:?}: {stderr:?} lacks {needle:?}");
    }
    assert!(!out.exists(), "a failed conversion leaves no output file");
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "hf").collect();
    assert!(leftovers.is_empty(), "no temporary files are left behind: {leftovers:?}");

    // A NaN in the checkpoint is named, and nothing is written.
    let spec = TinySpec::default();
    let nan_dir = dir.path().join("nan");
    write_tiny_checkpoint(&nan_dir, &spec).unwrap();
    poison_first_weight(&nan_dir.join("model.safetensors"), "model.layers.0.mlp.up_proj.weight");
    let r =
        run("bd-train", &["quantize", "--teacher", nan_dir.to_str().unwrap(), "--format", "int2", "--group", "32", "--out", o]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && stderr.contains("up_proj") && stderr.contains("NaN"), "{stderr}");
    assert!(!out.exists());
}

/// Overwrite the first f32 of a tensor in a safetensors file with NaN.
fn poison_first_weight(path: &Path, name: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn malformed_files_never_make_bd_run_panic() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), &TinySpec::default());
    let good = dir.path().join("good.bd2");
    let o =
        run("bd-train", &["quantize", "--teacher", &ckpt, "--format", "int3", "--group", "16", "--out", good.to_str().unwrap()]);
    assert!(o.status.success());
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.bd2");
    let mut x = 99u64;
    for i in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.clone();
        if i % 3 == 0 {
            b.truncate((x as usize) % bytes.len());
        } else {
            let at = (x as usize) % b.len();
            b[at] ^= (x >> 40) as u8 | 1;
        }
        std::fs::write(&bad, &b).unwrap();
        let r = run("bd-run", &["info", bad.to_str().unwrap()]);
        assert!(!r.status.success(), "corruption {i} went unnoticed");
        assert!(String::from_utf8_lossy(&r.stderr).starts_with("bd-run: error:"));
    }
}
