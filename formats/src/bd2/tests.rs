use super::*;
use crate::config::{ModelConfig, TensorRole};
use crate::dtype::DType;
use crate::quant::{fake_quant_matrix, QuantFormat};
use half::f16;
use serde_json::{json, Value};

fn tiny_config() -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        hidden_size: 32,
        num_layers: 1,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        intermediate_size: 40,
        vocab_size: 16,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        max_context: 64,
        tied_embeddings: true,
        bos_id: 1,
        eos_id: 2,
    }
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

const TOKENIZER: &[u8] = br#"{"model": {"type": "test"}}"#;

/// Declarations: block linears in `format` (g16, so the 40-wide down_proj has a partial group),
/// embeddings in f16, norms in f32.
fn decls(format: DType) -> Vec<TensorDecl> {
    tiny_config()
        .tensor_specs()
        .into_iter()
        .map(|s| {
            let dtype = match (s.role, s.shape.len()) {
                (TensorRole::BlockLinear, _) => format,
                (_, 2) => DType::F16,
                _ => DType::F32,
            };
            TensorDecl { name: s.name, dtype, group_size: dtype.quant().map(|_| 16), shape: s.shape }
        })
        .collect()
}

/// Write a model; `notes` pads the header so tests can rewrite it in place.
fn write_model(path: &std::path::Path, format: DType, notes: &str) -> Vec<(TensorDecl, Vec<f32>)> {
    let decls = decls(format);
    let recipe = QuantRecipe {
        format: format.name().into(),
        group_size: format.quant().map(|_| 16),
        clipping: "none".into(),
        training: None,
    };
    let prov = Provenance { source: "test".into(), tool: "tests".into(), notes: notes.into() };
    let mut w = Bd2Writer::create(path, &tiny_config(), recipe, prov, TOKENIZER, &decls).unwrap();
    let mut out = Vec::new();
    for (i, d) in decls.iter().enumerate() {
        let v = values(d.shape.iter().product(), i as u64 + 1);
        w.write_tensor_f32(d, &v).unwrap();
        out.push((d.clone(), v));
    }
    w.finish().unwrap();
    out
}

fn expected_f32(d: &TensorDecl, v: &[f32]) -> Vec<f32> {
    match d.dtype {
        DType::F32 => v.to_vec(),
        DType::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        DType::Bf16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        DType::Quant(q) => fake_quant_matrix(q, 16, d.shape[0], d.shape[1], v).unwrap(),
    }
}

#[test]
fn write_then_read_is_identity_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let formats = [DType::F32, DType::F16, DType::Bf16].into_iter().chain(QuantFormat::ALL.map(DType::Quant));
    for format in formats {
        let path = dir.path().join(format!("m-{format}.bd2"));
        let written = write_model(&path, format, "");
        let f = Bd2File::open(&path, ReadOptions::default()).unwrap();
        assert_eq!(f.config(), &tiny_config());
        assert_eq!(f.tokenizer_json(), TOKENIZER);
        assert_eq!(f.tensors().len(), written.len());
        for (d, v) in &written {
            let t = f.tensor(&d.name).unwrap();
            assert_eq!((t.dtype, &t.shape), (d.dtype, &d.shape));
            assert_eq!(t.offset % ALIGN, 0);
            assert_eq!(f.tensor_bytes(t).as_ptr() as usize % ALIGN, 0, "mapped views are 64-byte aligned");
            let got = f.tensor_f32(t);
            let want = expected_f32(d, v);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{format} {}", d.name);
        }
        let bytes = std::fs::read(&path).unwrap();
        let g = Bd2File::from_bytes(&bytes, ReadOptions::default()).unwrap();
        assert_eq!(g.header(), f.header());
        let t = g.tensors()[1].clone();
        assert_eq!(g.tensor_bytes(&t).as_ptr() as usize % ALIGN, 0, "in-memory views are 64-byte aligned");
        match format.quant() {
            Some(q) => {
                let bpw = f.bits_per_weight().unwrap();
                assert!(bpw > q.bits() as f64 && bpw < q.bits() as f64 + 3.0, "{format}: {bpw}");
            }
            None => assert_eq!(f.bits_per_weight(), None),
        }
    }
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.bd2"), dir.path().join("b.bd2"));
    write_model(&a, DType::Quant(QuantFormat::Nf3), "");
    write_model(&b, DType::Quant(QuantFormat::Nf3), "");
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn writer_rejects_misuse_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bd2");
    let decls = decls(DType::Quant(QuantFormat::Int2));
    let recipe = QuantRecipe { format: "int2".into(), group_size: Some(16), clipping: "none".into(), training: None };
    let create = || Bd2Writer::create(&path, &tiny_config(), recipe.clone(), Provenance::default(), TOKENIZER, &decls).unwrap();

    let mut w = create();
    let err = w.write_tensor(&decls[1].name, &[0u8; 4]).unwrap_err();
    assert!(err.to_string().contains("expected tensor \"model.embed_tokens.weight\" next"), "{err}");
    let err = w.write_tensor(&decls[0].name, &[0u8; 4]).unwrap_err();
    assert!(matches!(err, Bd2Error::LengthMismatch { .. }), "{err}");
    let err = w.finish().unwrap_err();
    assert!(err.to_string().contains("only 0 of"), "{err}");

    let mut w = create();
    let mut bad = values(16 * 32, 1);
    bad[5] = f32::NAN;
    let err = w.write_tensor_f32(&decls[0], &bad).unwrap_err();
    assert!(err.to_string().contains("value 5 is NaN"), "{err}");
    drop(w);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no temporary or partial file is left: {left:?}");
}

// ---- malformed files -------------------------------------------------------------------------

fn good_file(slack: usize) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bd2");
    write_model(&path, DType::Quant(QuantFormat::Int3), &"x".repeat(slack));
    let bytes = std::fs::read(&path).unwrap();
    (dir, bytes)
}

fn open(bytes: &[u8]) -> Result<Bd2File, Bd2Error> {
    Bd2File::from_bytes(bytes, ReadOptions::default())
}

fn header_range(bytes: &[u8]) -> std::ops::Range<usize> {
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    PREAMBLE_LEN..PREAMBLE_LEN + len
}

/// Rewrite the header in place (same length: the slack in `provenance.notes` absorbs growth, JSON
/// whitespace fills the rest) and fix its CRC, so only the intended fault remains.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let range = header_range(bytes);
    let mut v: Value = serde_json::from_slice(&bytes[range.clone()]).unwrap();
    v["provenance"]["notes"] = json!("");
    edit(&mut v);
    let mut h = serde_json::to_vec(&v).unwrap();
    assert!(h.len() <= range.len(), "edit needs more slack");
    h.resize(range.len(), b' ');
    let mut out = bytes.to_vec();
    out[range.clone()].copy_from_slice(&h);
    out[12..16].copy_from_slice(&crc32fast::hash(&h).to_le_bytes());
    out
}

fn expect_err(bytes: &[u8], needle: &str) -> Bd2Error {
    match open(bytes) {
        Ok(_) => panic!("a malformed file was accepted (expected an error containing {needle:?})"),
        Err(e) => {
            assert!(e.to_string().contains(needle), "error {e:?} / {e} lacks {needle:?}");
            e
        }
    }
}

#[test]
fn truncation_inside_every_section_is_reported() {
    let (_d, bytes) = good_file(0);
    let hdr = header_range(&bytes);
    let f = open(&bytes).unwrap();
    let tok = f.header().tokenizer.offset as usize;
    let t = f.tensors()[3].clone();
    for (cut, needle) in [
        (0, "preamble"),
        (10, "preamble"),
        (63, "preamble"),
        (hdr.start + 5, "header"),
        (hdr.end - 1, "header"),
        (tok + 3, "truncated"),
        (t.offset + t.len / 2, "truncated"),
        (bytes.len() - 1, "truncated"),
    ] {
        expect_err(&bytes[..cut], needle);
    }
    let mut longer = bytes.clone();
    longer.push(0);
    expect_err(&longer, "does not match");
}

#[test]
fn preamble_faults_are_reported() {
    let (_d, bytes) = good_file(0);
    let mut b = bytes.clone();
    b[0] = b'X';
    expect_err(&b, "bad magic");
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    expect_err(&b, "version 2 is not supported");
    let mut b = bytes.clone();
    b[50] = 1;
    expect_err(&b, "reserved");
    let mut b = bytes.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_err(&b, "64 MiB");
    let mut b = bytes.clone();
    b[24..32].copy_from_slice(&65u64.to_le_bytes());
    expect_err(&b, "data section offset");
    let mut b = bytes.clone();
    let d = u64::from_le_bytes(b[24..32].try_into().unwrap());
    b[24..32].copy_from_slice(&(d + 64).to_le_bytes());
    expect_err(&b, "data section offset");
    let (end, data) = (header_range(&bytes).end, u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize);
    if end < data {
        let mut b = bytes.clone();
        b[end] = 7;
        expect_err(&b, "padding before tokenizer");
    }
    let mut b = bytes.clone();
    let h = header_range(&b).start + 20;
    b[h] ^= 0x20;
    expect_err(&b, "header checksum");
}

#[test]
fn header_faults_are_reported() {
    let (_d, bytes) = good_file(600);
    let q = 3; // a quantized tensor (layer 0 q_proj comes after embeddings and input norm)
    let cases: Vec<(Box<dyn FnOnce(&mut Value)>, &str)> = vec![
        (Box::new(|v| v["surprise"] = json!(1)), "unknown field"),
        (Box::new(|v| v["config"]["num_kv_heads"] = json!(3)), "not a multiple"),
        (Box::new(|v| v["config"]["architecture"] = json!("gpt2")), "not supported"),
        (
            Box::new(move |v| v["tensors"][q]["offset"] = json!(v["tensors"][q]["offset"].as_u64().unwrap() + 8)),
            "not a multiple of 64",
        ),
        (Box::new(move |v| v["tensors"][q]["offset"] = json!(1u64 << 40)), "outside the data section"),
        (Box::new(move |v| v["tensors"][q]["offset"] = json!(u64::MAX - 63)), "outside the data section"),
        (Box::new(move |v| v["tensors"][q]["offset"] = v["tensors"][q - 1]["offset"].clone()), "overlap"),
        (Box::new(|v| v["tokenizer"]["offset"] = json!(0)), "outside the data section"),
        (Box::new(move |v| v["tensors"][q]["shape"] = json!([u64::MAX, 4])), "shape"),
        (Box::new(move |v| v["tensors"][q]["shape"] = json!([1u64 << 62, 1u64 << 62])), "shape"),
        (Box::new(move |v| v["tensors"][q]["dtype"] = json!("int7")), "unknown dtype \"int7\""),
        (Box::new(move |v| v["tensors"][q]["len"] = json!(v["tensors"][q]["len"].as_u64().unwrap() - 1)), "length"),
        (Box::new(move |v| v["tensors"][q]["group_size"] = json!(48)), "group size 48"),
        (Box::new(move |v| v["tensors"][q]["group_size"] = Value::Null), "needs a group_size"),
        (Box::new(|v| v["tensors"][1]["dtype"] = json!("int2")), "only block linears"),
        (Box::new(move |v| v["tensors"][q]["crc32"] = json!("xyz")), "8 hex digits"),
        (Box::new(move |v| v["tensors"][q]["name"] = v["tensors"][q - 1]["name"].clone()), "more than once"),
        (Box::new(move |v| v["tensors"][q]["name"] = json!("model.layers.7.mlp.up_proj.weight")), "not part of a llama model"),
        (
            Box::new(|v| {
                v["tensors"].as_array_mut().unwrap().pop();
            }),
            "is missing",
        ),
    ];
    for (edit, needle) in cases {
        expect_err(&rewrite(&bytes, edit), needle);
    }
    // Control: the rewrite itself produces a valid file.
    open(&rewrite(&bytes, |_| {})).unwrap();
}

#[test]
fn corrupt_data_fails_its_checksum_unless_skipped() {
    let (_d, bytes) = good_file(0);
    let f = open(&bytes).unwrap();
    let t = f.tensors()[4].clone();
    let mut b = bytes.clone();
    b[t.offset + 1] ^= 1;
    let e = expect_err(&b, "checksum mismatch");
    assert!(e.to_string().contains(&t.name), "{e}");
    assert!(Bd2File::from_bytes(&b, ReadOptions { verify_checksums: false }).is_ok());
    let mut b = bytes.clone();
    b[f.header().tokenizer.offset as usize] ^= 1;
    expect_err(&b, "tokenizer: checksum mismatch");
}

#[test]
fn every_changed_byte_is_detected_and_nothing_panics() {
    let (_d, bytes) = good_file(0);
    let mut x = 12345u64;
    for round in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.clone();
        let i = (x as usize) % b.len();
        b[i] = (x >> 32) as u8;
        if b[i] != bytes[i] {
            assert!(Bd2File::from_bytes(&b, ReadOptions::default()).is_err(), "round {round}: byte {i} changed unnoticed");
        }
        let _ = Bd2File::from_bytes(&b[..i], ReadOptions::default());
    }
}

#[test]
fn missing_file_names_the_path() {
    let e = Bd2File::open(std::path::Path::new("/nonexistent/model.bd2"), ReadOptions::default()).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/model.bd2"), "{e}");
}
