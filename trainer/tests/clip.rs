//! The clipping search: never worse than no clip, better with an outlier, deterministic, and its
//! file round-trips and refuses corruption.

mod common;

use bd_formats::hf::fixture::TinySpec;
use bd_formats::quant::{fake_quant_group, QuantFormat};
use bd_trainer::clip::{clip_model, search_linear, ClipFile, ClipOptions, LinearClip};
use bd_trainer::fake_quant::QuantSpec;
use common::{random, tiny_model, tokens};
use indicatif::ProgressBar;

/// `mean_t (Q(clip(w_g)) . x_tg - w_g . x_tg)^2` computed directly in f64: an independent check of
/// the search's `d^T H d`.
fn group_error(format: QuantFormat, wg: &[f32], x: &[f32], cols: usize, lo: usize, bounds: (f32, f32)) -> f64 {
    let clipped: Vec<f32> = wg.iter().map(|v| v.max(bounds.0).min(bounds.1)).collect();
    let mut q = vec![0f32; wg.len()];
    fake_quant_group(format, &clipped, &mut q).unwrap();
    let tokens = x.len() / cols;
    let mut total = 0f64;
    for t in 0..tokens {
        let xt = &x[t * cols + lo..t * cols + lo + wg.len()];
        let d: f64 = q.iter().zip(wg).zip(xt).map(|((&a, &b), &c)| (a as f64 - b as f64) * c as f64).sum();
        total += d * d;
    }
    total / tokens as f64
}

fn check_never_worse(format: QuantFormat, group: usize, w: &[f32], rows: usize, cols: usize, x: &[f32]) -> (f64, f64) {
    let spec = QuantSpec { format, group };
    let c = search_linear("t", w, (rows, cols), x, spec, &ProgressBar::hidden()).unwrap();
    let groups = cols.div_ceil(group);
    let (mut sum0, mut sum1) = (0.0, 0.0);
    for r in 0..rows {
        for g in 0..groups {
            let (lo, hi) = (g * group, ((g + 1) * group).min(cols));
            let wg = &w[r * cols + lo..r * cols + hi];
            let (m, mx) = wg.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let e0 = group_error(format, wg, x, cols, lo, (m, mx));
            let e1 = group_error(format, wg, x, cols, lo, (c.alpha[r * groups + g], c.beta[r * groups + g]));
            assert!(e1 <= e0 * (1.0 + 1e-4) + 1e-12, "{format} row {r} group {g}: clipped error {e1} > unclipped {e0}");
            sum0 += e0;
            sum1 += e1;
        }
    }
    assert!(c.err_clip <= c.err_noclip);
    assert!((c.err_noclip - sum0).abs() <= 1e-3 * sum0, "search's no-clip error {} vs direct {sum0}", c.err_noclip);
    (sum0, sum1)
}

#[test]
fn clipping_never_increases_a_groups_error() {
    let (rows, cols, tokens) = (12, 100, 64);
    // Heavy-ish tails: a cube of uniforms, plus one large weight per row.
    let mut w: Vec<f32> = random(rows * cols, 1, 1.0).iter().map(|v| v * v * v * 0.3).collect();
    for r in 0..rows {
        w[r * cols + (r * 7) % cols] = 0.9;
    }
    let x = random(tokens * cols, 2, 1.0);
    for format in [QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Nf3, QuantFormat::Nf4] {
        for group in [16, 32] {
            let (e0, e1) = check_never_worse(format, group, &w, rows, cols, &x);
            assert!(e1 < e0, "{format} g{group}: clipping found nothing to gain ({e1} vs {e0})");
        }
    }
}

#[test]
fn clipping_an_outlier_reduces_the_error() {
    // One row, one group: small weights and one outlier whose input is almost always tiny.
    let cols = 32;
    let mut w = random(cols, 3, 0.1);
    w[5] = 0.4;
    let tokens = 256;
    let mut x = random(tokens * cols, 4, 1.0);
    for t in 0..tokens {
        x[t * cols + 5] *= 0.01;
    }
    let spec = QuantSpec { format: QuantFormat::Int2, group: 32 };
    let c = search_linear("t", &w, (1, cols), &x, spec, &ProgressBar::hidden()).unwrap();
    assert!(c.beta[0] < 0.4, "the outlier should be clipped, beta = {}", c.beta[0]);
    let e0 = group_error(QuantFormat::Int2, &w, &x, cols, 0, (f32::NEG_INFINITY, f32::INFINITY));
    let e1 = group_error(QuantFormat::Int2, &w, &x, cols, 0, (c.alpha[0], c.beta[0]));
    assert!(e1 < 0.7 * e0, "clipped error {e1} should be well below unclipped {e0}");
    check_never_worse(QuantFormat::Int2, 32, &w, 1, cols, &x);
}

#[test]
fn a_group_with_nothing_to_gain_keeps_its_bounds() {
    // Eight values on the INT3 grid exactly: no clip quantizes them losslessly.
    let w: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 0.75).collect();
    let x = random(16 * 8, 5, 1.0);
    let spec = QuantSpec { format: QuantFormat::Int3, group: 16 };
    let c = search_linear("t", &w, (1, 8), &x, spec, &ProgressBar::hidden()).unwrap();
    assert_eq!((c.alpha[0], c.beta[0]), (-0.75, 1.0));
    assert_eq!(c.err_noclip, 0.0);
}

fn small_clip_file() -> ClipFile {
    let t = |name: &str, rows: usize, cols: usize, seed: u64| {
        let n = rows * cols.div_ceil(32);
        let alpha: Vec<f32> = random(n, seed, 1.0).iter().map(|v| -v.abs()).collect();
        let beta: Vec<f32> = random(n, seed + 1, 1.0).iter().map(|v| v.abs()).collect();
        LinearClip { name: name.into(), rows, cols, alpha, beta, err_noclip: 2.0, err_clip: 1.0 }
    };
    ClipFile {
        spec: QuantSpec { format: QuantFormat::Int2, group: 32 },
        tokens: 512,
        seed: 3,
        source: "tiny".into(),
        calib: "calib.txt".into(),
        tensors: vec![t("a", 4, 70, 1), t("b", 3, 32, 9)],
    }
}

#[test]
fn clip_file_round_trips_and_refuses_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.bin");
    let clip = small_clip_file();
    clip.save(&path).unwrap();
    assert_eq!(ClipFile::load(&path).unwrap(), clip);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");

    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.bin");
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    for (what, b) in
        [("CRC", flipped), ("data section", bytes[..bytes.len() - 4].to_vec()), ("magic", b"not a clip file".to_vec())]
    {
        std::fs::write(&bad, b).unwrap();
        let err = format!("{:#}", ClipFile::load(&bad).unwrap_err());
        assert!(err.contains("bad.bin") && err.contains(what), "{what}: {err}");
    }
    let err = format!("{:#}", ClipFile::load(&dir.path().join("missing.bin")).unwrap_err());
    assert!(err.contains("missing.bin"), "{err}");
}

#[test]
fn apply_clamps_each_group_to_its_bounds() {
    let clip = small_clip_file();
    let t = &clip.tensors[0];
    let mut w = random(t.rows * t.cols, 7, 2.0);
    let before = w.clone();
    let changed = t.apply(32, &mut w);
    assert!(changed > 0);
    let groups = t.cols.div_ceil(32);
    for r in 0..t.rows {
        for c in 0..t.cols {
            let (a, b) = (t.alpha[r * groups + c / 32], t.beta[r * groups + c / 32]);
            let v = w[r * t.cols + c];
            assert!(v >= a && v <= b, "row {r} col {c}: {v} outside [{a}, {b}]");
            assert_eq!(v, before[r * t.cols + c].clamp(a, b));
        }
    }
    assert!(clip.check_spec(QuantSpec { format: QuantFormat::Nf3, group: 32 }).is_err());
    assert!(clip.check_spec(QuantSpec { format: QuantFormat::Int2, group: 64 }).is_err());
}

#[test]
fn clip_model_searches_every_clipped_linear_deterministically() {
    let (_d, _c, model) = tiny_model(&TinySpec::default());
    let model = model.inference();
    let blocks: Vec<Vec<u32>> = (0..3).map(|i| tokens(40, 100 + i, model.config.vocab_size)).collect();
    let opts = ClipOptions {
        spec: QuantSpec { format: QuantFormat::Int2, group: 32 },
        tokens: 50,
        seed: 9,
        batch: 2,
        progress: false,
        source: "tiny".into(),
        calib: "random".into(),
    };
    let clip = clip_model(&model, &blocks, &opts).unwrap();
    let names: Vec<&str> = clip.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 5 * model.config.num_layers);
    assert!(names.iter().all(|n| !n.contains("q_proj") && !n.contains("k_proj")));
    assert!(names.contains(&"model.layers.1.mlp.down_proj.weight"));
    for t in &clip.tensors {
        assert!(t.err_clip <= t.err_noclip, "{}", t.name);
    }
    assert!(clip.tensors.iter().any(|t| t.err_clip < t.err_noclip));
    assert_eq!(clip_model(&model, &blocks, &opts).unwrap(), clip);
    clip.check_model(&model.config).unwrap();
    let mut tensors = model.to_tensors().unwrap();
    assert!(clip.apply_all(&mut tensors).unwrap() > 0);
}
