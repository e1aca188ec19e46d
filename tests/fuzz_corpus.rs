//! Writes the seed corpus of the `.bd2` reader's fuzz target (fuzz/corpus/bd2_reader/): one valid
//! file per format, from a tiny checkpoint, and checks that each is accepted.

use bd_formats::bd2::{Bd2File, ReadOptions};
use bd_formats::hf::fixture::{write_tiny_checkpoint, TinySpec};
use bd_formats::DType;
use bd_trainer::convert::{quantize_checkpoint, ConvertOptions};
use std::path::Path;

#[test]
fn write_seed_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bd2_reader");
    std::fs::create_dir_all(&corpus).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Small shapes keep seeds short, which helps the fuzzer.
    let spec = TinySpec { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 40, ..TinySpec::default() };
    write_tiny_checkpoint(&dir.path().join("hf"), &spec).unwrap();
    for (format, group) in [("int2", 16), ("int3", 32), ("int4", 16), ("nf3", 16), ("nf4", 32), ("f16", 16), ("f32", 16)] {
        let opts = ConvertOptions {
            format: DType::parse(format).unwrap(),
            group,
            float_dtype: DType::F16,
            clipping: "none".into(),
            training: None,
            progress: false,
        };
        let out = corpus.join(format!("seed-{format}.bd2"));
        quantize_checkpoint(&dir.path().join("hf"), &out, &opts).unwrap();
        Bd2File::open(&out, ReadOptions::default()).unwrap();
    }
}
