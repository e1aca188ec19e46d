//! Shared by the integration tests: tiny checkpoints written by the tests themselves.
#![allow(dead_code)]

use bd_formats::hf::fixture::{write_tiny_checkpoint, TinySpec};
use bd_formats::hf::HfCheckpoint;
use bd_trainer::model::Llama;
use candle_core::Device;
use std::path::PathBuf;
use tempfile::TempDir;

/// A tiny checkpoint in a temporary directory (kept alive by the returned `TempDir`).
pub fn tiny_checkpoint(spec: &TinySpec) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf");
    write_tiny_checkpoint(&path, spec).unwrap();
    (dir, path)
}

/// The default tiny model (GQA, partial groups in down_proj at g32) loaded into the trainer.
pub fn tiny_model(spec: &TinySpec) -> (TempDir, HfCheckpoint, Llama) {
    let (dir, path) = tiny_checkpoint(spec);
    let ckpt = HfCheckpoint::open(&path).unwrap();
    let model = Llama::load(&ckpt, &Device::Cpu).unwrap();
    (dir, ckpt, model)
}

/// Deterministic pseudo-random values in [-scale, scale) (SplitMix64).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Token ids in `0..vocab` for tests.
pub fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    random(n, seed, 1.0).iter().map(|x| (((x + 1.0) * 0.5 * vocab as f32) as usize).min(vocab - 1) as u32).collect()
}
