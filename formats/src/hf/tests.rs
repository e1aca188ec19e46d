use super::fixture::{self, RawTensor, TinySpec};
use super::{HfCheckpoint, HfError};
use std::path::Path;
use tempfile::TempDir;

fn write(spec: &TinySpec) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    fixture::write_tiny_checkpoint(dir.path(), spec).unwrap();
    dir
}

/// The fixture's tensors as raw f32 tensors, for tests that rewrite the weights.
fn raw_tensors(spec: &TinySpec) -> Vec<RawTensor> {
    fixture::tiny_tensors(spec)
        .into_iter()
        .map(|(t, v)| RawTensor { name: t.name, dtype: "F32", shape: t.shape, data: fixture::encode_f32(&v, "F32") })
        .collect()
}

/// Write the default fixture, then replace its weights with `edit` applied to them.
fn with_weights(edit: impl FnOnce(&mut Vec<RawTensor>)) -> TempDir {
    let spec = TinySpec::default();
    let dir = write(&spec);
    let mut tensors = raw_tensors(&spec);
    edit(&mut tensors);
    fixture::write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
    dir
}

fn open_err(dir: &Path) -> String {
    match HfCheckpoint::open(dir) {
        Ok(_) => panic!("{} opened, expected an error", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn load_err(dir: &Path) -> (HfError, String) {
    let ckpt = HfCheckpoint::open(dir).unwrap();
    let e = ckpt.load_all().expect_err("load_all succeeded, expected an error");
    let msg = e.to_string();
    (e, msg)
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
}

fn roundtrip(spec: &TinySpec, tol: f32) {
    let dir = write(spec);
    let ckpt = HfCheckpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.config(), &fixture::tiny_config(spec));
    assert_eq!(ckpt.dir(), dir.path());
    assert_eq!(ckpt.tokenizer_json(), fixture::tiny_tokenizer_json().as_bytes());

    let expected = fixture::tiny_tensors(spec);
    let mut names: Vec<String> = expected.iter().map(|(t, _)| t.name.clone()).collect();
    names.sort();
    assert_eq!(ckpt.tensor_names(), names);
    assert_eq!(names.iter().any(|n| n == "lm_head.weight"), !spec.tied);

    let loaded = ckpt.load_all().unwrap();
    assert_eq!(loaded.len(), expected.len());
    for ((spec_l, got), (spec_e, want)) in loaded.iter().zip(&expected) {
        assert_eq!(spec_l, spec_e);
        assert_eq!(ckpt.tensor_shape(&spec_l.name).unwrap(), spec_e.shape);
        assert_eq!(got.len(), want.len(), "{}", spec_l.name);
        for (g, w) in got.iter().zip(want) {
            // Relative tolerance: the rounding error of f16/bf16 scales with the value.
            assert!((g - w).abs() <= tol * w.abs().max(1e-3), "{}: {g} vs {w}", spec_l.name);
        }
    }
    let total: usize = loaded.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(total, ckpt.config().num_params());
}

#[test]
fn hf_fixture_f32_roundtrips_exactly() {
    roundtrip(&TinySpec::default(), 0.0);
}

#[test]
fn hf_fixture_f16_roundtrips_within_rounding() {
    roundtrip(&TinySpec { dtype: "f16", seed: 7, ..TinySpec::default() }, 1.0 / 2048.0);
}

#[test]
fn hf_fixture_bf16_roundtrips_within_rounding() {
    roundtrip(&TinySpec { dtype: "bf16", seed: 9, ..TinySpec::default() }, 1.0 / 256.0);
}

#[test]
fn hf_fixture_untied_has_lm_head() {
    let spec = TinySpec { tied: false, layers: 3, ..TinySpec::default() };
    roundtrip(&spec, 0.0);
    // Tied and untied models of the same seed share their other tensors.
    let tied = fixture::tiny_tensors(&TinySpec { tied: true, ..spec.clone() });
    let untied = fixture::tiny_tensors(&spec);
    assert_eq!(tied[..], untied[..tied.len()]);
}

#[test]
fn hf_fixture_is_deterministic_and_seeded() {
    let a = write(&TinySpec::default());
    let b = write(&TinySpec::default());
    let c = write(&TinySpec { seed: 2, ..TinySpec::default() });
    let read = |d: &TempDir| std::fs::read(d.path().join("model.safetensors")).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
}

#[test]
fn hf_fixture_tokenizer_loads_and_roundtrips() {
    let json = fixture::tiny_tokenizer_json();
    let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
    assert_eq!(tok.get_vocab_size(true), fixture::TINY_VOCAB);
    assert_eq!(tok.get_vocab_size(true), fixture::tiny_config(&TinySpec::default()).vocab_size);

    let text = "hello the world";
    let enc = tok.encode(text, true).unwrap();
    let ids = enc.get_ids();
    assert_eq!(ids[0], 1, "BOS first: {ids:?}");
    // The merges must fire: "▁the" is one token, not four characters.
    let the = tok.token_to_id("▁the").unwrap();
    assert!(ids.contains(&the), "{:?}", enc.get_tokens());
    assert_eq!(tok.decode(ids, true).unwrap(), text);

    // Characters outside the vocabulary go through byte tokens and come back intact.
    let odd = "Zürich, 42 €!";
    let enc = tok.encode(odd, true).unwrap();
    assert!(enc.get_tokens().iter().any(|t| t == "<0xC3>"), "{:?}", enc.get_tokens());
    assert!(!enc.get_ids().contains(&0), "no <unk> with byte fallback");
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), odd);
}

#[test]
fn hf_sharded_checkpoint_loads() {
    let spec = TinySpec { tied: false, ..TinySpec::default() };
    let dir = write(&spec);
    let single = HfCheckpoint::open(dir.path()).unwrap().load_all().unwrap();

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut tensors = raw_tensors(&spec);
    let second = tensors.split_off(tensors.len() / 2);
    let files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    let mut weight_map = serde_json::Map::new();
    for (file, part) in files.iter().zip([&tensors, &second]) {
        fixture::write_safetensors(&dir.path().join(file), part).unwrap();
        for t in part {
            weight_map.insert(t.name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let ckpt = HfCheckpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.load_all().unwrap(), single);

    // An index that points at the wrong shard is caught at open.
    weight_map.insert("model.norm.weight".into(), serde_json::json!(files[0]));
    let index = serde_json::json!({"weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_contains(&open_err(dir.path()), &["model.safetensors.index.json", "model.norm.weight", files[0]]);

    // A shard name may not leave the directory.
    let index = serde_json::json!({"weight_map": {"model.norm.weight": "../x.safetensors"}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_contains(&open_err(dir.path()), &["../x.safetensors", "not a file inside"]);
}

#[test]
fn hf_error_missing_dir() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no-such-model");
    assert_contains(&open_err(&gone), &["no-such-model", "does not exist"]);
}

#[test]
fn hf_error_missing_or_malformed_files() {
    let dir = write(&TinySpec::default());
    let p = dir.path();

    std::fs::write(p.join("tokenizer.json"), "{ not json").unwrap();
    assert_contains(&open_err(p), &["tokenizer.json", "malformed JSON"]);
    std::fs::remove_file(p.join("tokenizer.json")).unwrap();
    assert_contains(&open_err(p), &["tokenizer.json", "missing"]);
    std::fs::write(p.join("tokenizer.json"), fixture::tiny_tokenizer_json()).unwrap();

    std::fs::write(p.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0garbage!").unwrap();
    assert_contains(&open_err(p), &["model.safetensors", "not a valid safetensors file"]);
    std::fs::remove_file(p.join("model.safetensors")).unwrap();
    assert_contains(&open_err(p), &["no model.safetensors"]);

    std::fs::write(p.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    assert_contains(&open_err(p), &["config.json", "malformed JSON"]);
    std::fs::remove_file(p.join("config.json")).unwrap();
    assert_contains(&open_err(p), &["config.json", "missing"]);
}

/// Write the default fixture with `edit` applied to its config.json.
fn with_config(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> TempDir {
    let dir = write(&TinySpec::default());
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, v.to_string()).unwrap();
    dir
}

type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>;

fn set(key: &'static str, v: serde_json::Value) -> Edit {
    Box::new(move |c| {
        c.insert(key.into(), v);
    })
}

#[test]
fn hf_error_unsupported_configs() {
    use serde_json::json;
    let cases: Vec<(Edit, Vec<&str>)> = vec![
        (
            Box::new(|c| {
                c.insert("architectures".into(), json!(["GPT2LMHeadModel"]));
                c.insert("model_type".into(), json!("gpt2"));
            }),
            vec!["unsupported", "GPT2LMHeadModel"],
        ),
        (set("hidden_act", json!("gelu")), vec!["hidden_act", "gelu"]),
        (set("attention_bias", json!(true)), vec!["attention_bias"]),
        (set("mlp_bias", json!(true)), vec!["mlp_bias"]),
        (set("rope_scaling", json!({"type": "linear", "factor": 2.0})), vec!["unsupported", "rope_scaling"]),
        (
            Box::new(|c| {
                c.insert("architectures".into(), json!(["MistralForCausalLM"]));
                c.insert("sliding_window".into(), json!(128));
            }),
            vec!["unsupported", "sliding_window"],
        ),
        (
            Box::new(|c| {
                c.remove("hidden_size");
            }),
            vec!["hidden_size", "missing"],
        ),
        (set("vocab_size", json!(-3)), vec!["vocab_size", "-3"]),
        (set("num_key_value_heads", json!(3)), vec!["num_kv_heads", "3"]),
        (set("eos_token_id", json!([999, 2])), vec!["eos_id", "999"]),
        (set("rope_theta", json!("big")), vec!["rope_theta"]),
        (set("architectures", json!("LlamaForCausalLM")), vec!["architectures"]),
    ];
    for (edit, parts) in cases {
        let dir = with_config(edit);
        let msg = open_err(dir.path());
        assert_contains(&msg, &parts);
        assert_contains(&msg, &["config.json"]);
    }
}

#[test]
fn hf_config_defaults_and_accepted_variants() {
    use serde_json::json;
    let dir = with_config(|c| {
        for key in ["num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "bos_token_id", "architectures"] {
            c.remove(key);
        }
        c.insert("eos_token_id".into(), json!([2, 0]));
        c.insert("max_position_embeddings".into(), json!(null));
    });
    let cfg = HfCheckpoint::open(dir.path()).unwrap().config().clone();
    assert_eq!((cfg.num_kv_heads, cfg.head_dim, cfg.max_context), (4, 16, 2048));
    assert_eq!((cfg.rope_theta, cfg.rms_eps, cfg.bos_id, cfg.eos_id), (10000.0, 1e-6, 1, 2));

    // Mistral without a sliding window (or with one covering the whole context) is plain LLaMA.
    for window in [json!(null), json!(256)] {
        let dir = with_config(|c| {
            c.insert("architectures".into(), json!(["MistralForCausalLM"]));
            c.insert("model_type".into(), json!("mistral"));
            c.insert("sliding_window".into(), window);
        });
        assert_eq!(HfCheckpoint::open(dir.path()).unwrap().config().architecture, "llama");
    }
}

#[test]
fn hf_error_missing_tensor() {
    let dir = with_weights(|t| t.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight"));
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, HfError::MissingTensor { .. }), "{e:?}");
    assert_contains(&msg, &["model.layers.1.mlp.up_proj.weight", "not found"]);

    let ckpt = HfCheckpoint::open(dir.path()).unwrap();
    assert_contains(&ckpt.tensor_f32("nope").unwrap_err().to_string(), &["\"nope\"", "not found"]);
    assert_contains(&ckpt.tensor_shape("nope").unwrap_err().to_string(), &["\"nope\""]);
}

#[test]
fn hf_untied_without_lm_head_fails_and_tied_with_it_is_fine() {
    let spec = TinySpec { tied: false, ..TinySpec::default() };
    let dir = write(&spec);
    let mut tensors = raw_tensors(&spec);
    tensors.retain(|t| t.name != "lm_head.weight");
    fixture::write_safetensors(&dir.path().join("model.safetensors"), &tensors).unwrap();
    let (_, msg) = load_err(dir.path());
    assert_contains(&msg, &["lm_head.weight", "tie_word_embeddings"]);

    // A tied checkpoint that stores the head anyway (as some exports do) loads without it.
    let spec = TinySpec { tied: false, ..TinySpec::default() };
    let dir = write(&TinySpec::default());
    fixture::write_safetensors(&dir.path().join("model.safetensors"), &raw_tensors(&spec)).unwrap();
    let ckpt = HfCheckpoint::open(dir.path()).unwrap();
    assert!(ckpt.tensor_names().contains(&"lm_head.weight".to_string()));
    assert!(ckpt.load_all().unwrap().iter().all(|(s, _)| s.name != "lm_head.weight"));
}

#[test]
fn hf_error_misshapen_tensor() {
    let dir = with_weights(|t| {
        let k = t.iter_mut().find(|t| t.name == "model.layers.0.self_attn.k_proj.weight").unwrap();
        k.shape = vec![64, 32];
    });
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, HfError::ShapeMismatch { .. }), "{e:?}");
    assert_contains(&msg, &["model.layers.0.self_attn.k_proj.weight", "[32, 64]", "[64, 32]", "model.safetensors"]);
}

#[test]
fn hf_error_unsupported_dtype() {
    let dir = with_weights(|t| {
        let n = t.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
        n.dtype = "I64";
        n.data = (0..64i64).flat_map(|i| i.to_le_bytes()).collect();
    });
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, HfError::UnsupportedDtype { .. }), "{e:?}");
    assert_contains(&msg, &["model.norm.weight", "I64"]);
    let ckpt = HfCheckpoint::open(dir.path()).unwrap();
    assert_contains(&ckpt.tensor_f32("model.norm.weight").unwrap_err().to_string(), &["I64"]);
    assert_eq!(ckpt.tensor_shape("model.norm.weight").unwrap(), vec![64]);
}

#[test]
fn hf_stories260k_opens() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/models/stories260K-hf");
    if !dir.exists() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    let ckpt = HfCheckpoint::open(&dir).unwrap();
    let c = ckpt.config();
    assert_eq!((c.num_layers, c.num_kv_heads, c.intermediate_size, c.vocab_size), (5, 4, 172, 512));
    assert!(c.tied_embeddings);
    let total: usize = ckpt.load_all().unwrap().iter().map(|(_, v)| v.len()).sum();
    assert_eq!(total, 260_032);
}
