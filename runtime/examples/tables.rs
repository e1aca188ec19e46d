//! The table kernels (`kernels::lut` for NF3, `kernels::lut_int` for INT2 and INT3; AVX-512 VBMI2) beside
//! the other kernels of their format on one thread, in cache: that their SIMD tables and products
//! equal the scalar twins', each method's normwise error against the exact f32 product, and ns per
//! weight (best of 15).
//!
//! `cargo run --release -p bd-runtime --example tables` (`FORMATS=int2,int3,nf3`,
//! `SHAPES=4096x4096,11008x4096`)
use bd_formats::quant::{pack_matrix, PackedLayout, PackedMatrix, QuantFormat};
use bd_runtime::kernels::lut::{LutNf3, LutTables};
use bd_runtime::kernels::lut_int::{IntTables, LutInt};
use bd_runtime::kernels::{lut_int_matvec, lut_int_tables, lut_matvec, lut_tables, Kernels, Scratch, Weight, WeightData};
use std::time::Instant;

const GROUP: usize = 128;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn best(f: &mut dyn FnMut()) -> f64 {
    let mut v = vec![];
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..4 {
            f();
        }
        v.push(t.elapsed().as_secs_f64() / 4.0);
    }
    v.sort_by(f64::total_cmp);
    v[0]
}

/// A repacked matrix with its tables.
enum Repacked {
    Nf3(LutNf3, LutTables),
    Int(LutInt, IntTables),
}

impl Repacked {
    fn new(p: &PackedMatrix) -> Self {
        match p.format() {
            QuantFormat::Nf3 => Repacked::Nf3(LutNf3::new(p).unwrap(), LutTables::new(p.layout.cols)),
            _ => Repacked::Int(LutInt::new(p).unwrap(), IntTables::new(p.layout.cols)),
        }
    }
    /// Build the tables of `x`; returns the words of the tables.
    fn build(&mut self, x: &[f32], simd: bool) -> Vec<i16> {
        match self {
            Repacked::Nf3(_, t) => {
                lut_tables(x, t, simd);
                t.tabs.clone()
            }
            Repacked::Int(m, t) => {
                lut_int_tables(x, m, t, simd);
                t.tabs.clone()
            }
        }
    }
    fn build_only(&mut self, x: &[f32]) {
        match self {
            Repacked::Nf3(_, t) => lut_tables(x, t, true),
            Repacked::Int(m, t) => lut_int_tables(x, m, t, true),
        }
    }
    fn matvec(&self, y: &mut [f32], simd: bool) {
        match self {
            Repacked::Nf3(m, t) => lut_matvec(m, t, y, simd),
            Repacked::Int(m, t) => lut_int_matvec(m, t, y, simd),
        }
    }
}

fn main() {
    let mut rng = Rng(0x1234_5678);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let formats: Vec<QuantFormat> = std::env::var("FORMATS")
        .unwrap_or_else(|_| "int2,int3,nf3".into())
        .split(',')
        .map(|f| match f.trim() {
            "int2" => QuantFormat::Int2,
            "int3" => QuantFormat::Int3,
            "nf3" => QuantFormat::Nf3,
            other => panic!("FORMATS: {other} has no table kernel (int2, int3, nf3)"),
        })
        .collect();
    let shapes: Vec<(usize, usize)> = match std::env::var("SHAPES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                let (a, b) = s.split_once('x').unwrap();
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect(),
        Err(_) => vec![(4096, 4096), (11008, 4096), (4096, 11008)],
    };
    for format in formats {
        for &(rows, cols) in &shapes {
            let w: Vec<f32> = (0..rows * cols).map(|_| 0.02 * rng.next()).collect();
            let layout = PackedLayout::new(format, GROUP, rows, cols).unwrap();
            let blob = pack_matrix(format, GROUP, rows, cols, &w).unwrap();
            let p = PackedMatrix::new(layout, &blob).unwrap();
            let wt = Weight { rows, cols, data: WeightData::Quant(p), lut: None };
            let x: Vec<f32> = (0..cols).map(|_| rng.next()).collect();
            let mut m = Repacked::new(&p);
            let twin_tabs = m.build(&x, false);
            assert!(twin_tabs == m.build(&x, true), "SIMD tables differ from the twin's");
            let (mut y, mut yt) = (vec![0f32; rows], vec![0f32; rows]);
            m.matvec(&mut y, true);
            m.matvec(&mut yt, false);
            let same = y.iter().zip(&yt).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
            // exact f32 reference
            let deq = p.dequantize();
            let exact: Vec<f64> = (0..rows).map(|r| (0..cols).map(|c| deq[r * cols + c] as f64 * x[c] as f64).sum()).collect();
            let err = |v: &[f32]| {
                let num: f64 = v.iter().zip(&exact).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
                let den: f64 = exact.iter().map(|b| b * b).sum();
                (num / den).sqrt()
            };
            let k16 = Kernels::detect().with_act8(false).with_tables(false);
            let k8 = Kernels::detect().with_act8(true).with_tables(false);
            let mut scratch = Scratch::new(cols, 1);
            let (mut y16, mut y8) = (vec![0f32; rows], vec![0f32; rows]);
            k16.matvec(&wt, &x, &mut y16, &mut scratch);
            k8.matvec(&wt, &x, &mut y8, &mut scratch);
            println!(
                "{format} g{GROUP} {rows}x{cols}: simd==twin {same}/{rows}; normwise error vs exact: tables {:.2e}, \
                 16-bit {:.2e}, 8-bit {:.2e}",
                err(&y),
                err(&y16),
                err(&y8)
            );
            pool.install(|| {
                let nw = (rows * cols) as f64;
                let a = best(&mut || m.matvec(&mut y, true));
                let b = best(&mut || m.build_only(&x));
                let c = best(&mut || k16.matvec(&wt, &x, &mut y16, &mut scratch));
                let d = best(&mut || k8.matvec(&wt, &x, &mut y8, &mut scratch));
                println!(
                    "  ns/weight: tables {:.4} (+build {:.4}), 16-bit {:.4}, 8-bit {:.4}",
                    a * 1e9 / nw,
                    b * 1e9 / nw,
                    c * 1e9 / nw,
                    d * 1e9 / nw
                );
            });
        }
    }
}
