//! Shared by `benches/kernels.rs` (criterion) and `examples/kernel_compare.rs` (interleaved rounds):
//! the kernels under comparison, their weights (one matrix in cache, or a set of copies larger
//! than the last-level cache read from DRAM), and a streaming-read bandwidth probe.
//!
//! What one timed product includes, per kernel family:
//! - ours (`int2_g128`, ...): `Kernels::detect().matvec` on a `.bd2` packed matrix, run inside a
//!   rayon pool of the measured size (activation quantization inside, as in the forward pass).
//! - `ggml_<type>`: one `ggml_mul_mat` node of a ggml graph computed with `threads` ggml threads.
//!   The graph holds one node per product of the call (all of a DRAM set, or the cache repetitions),
//!   so ggml's per-graph thread start is amortized as in llama.cpp's per-token graph; each node
//!   converts the input to Q8_K / Q8_0 itself.
//! - `ggml_<type>_vec_dot` (1 thread): the input converted with the vec_dot type's `from_float`, then
//!   ggml's `vec_dot` row after row on the calling thread.
//! - `candle_<type>`: at 1 thread, candle's own k_quants kernels on the calling thread (`from_float`
//!   on the input, then `vec_dot_4` over quads of rows: what `QMatMul::forward` runs with a pool of
//!   one); at more threads, `QMatMul::forward` on candle's barrier pool, sized by
//!   `CANDLE_NUM_THREADS` (fixed per process, see [`configure_candle_threads`]).
//!
//! Every matrix is quantized once per shape; DRAM sets are byte copies of it (distinct memory, same
//! values: the kernels' speed does not depend on the values).

#![allow(dead_code)]

use bd_formats::quant::{pack_matrix, PackedLayout, PackedMatrix, QuantFormat};
use bd_ggml::{AlignedBytes, GgmlMatrix, GgmlType, MulMatGraph};
use bd_runtime::kernels::lut::Lut;
use bd_runtime::kernels::{Kernels, Scratch, Weight, WeightData};
use candle_core::quantized::k_quants::{BlockQ2K, BlockQ3K, BlockQ4_0};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, GgmlType as CandleBlock, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::ThreadPool;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// Last-level cache assumed when sysfs does not say (the benchmark machine's: 32 MiB L3).
pub const DEFAULT_L3_BYTES: usize = 32 << 20;

/// This machine's last-level cache (`/sys/devices/system/cpu/cpu0/cache/index*/size` of the
/// highest level), or [`DEFAULT_L3_BYTES`].
pub fn llc_bytes() -> usize {
    let mut best: Option<(u32, usize)> = None;
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok().map(|s| s.trim().to_string());
        let (Some(level), Some(size)) = (read("level"), read("size")) else { continue };
        let Ok(level) = level.parse::<u32>() else { continue };
        let bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<usize>().ok().map(|k| k << 10),
            None => match size.strip_suffix('M') {
                Some(m) => m.parse::<usize>().ok().map(|m| m << 20),
                None => size.parse::<usize>().ok(),
            },
        };
        if let Some(bytes) = bytes {
            if best.is_none_or(|(l, _)| level > l) {
                best = Some((level, bytes));
            }
        }
    }
    best.map(|b| b.1).unwrap_or(DEFAULT_L3_BYTES)
}

/// Each DRAM set is at least this large: 4.5x the last-level cache (144 MiB for 32 MiB), so every
/// product misses it.
pub fn dram_set_bytes() -> usize {
    llc_bytes() * 9 / 2
}
/// Products per timed call when one matrix stays in cache.
pub const CACHE_REPS: usize = 8;
/// The shapes, `(rows, cols)`: LLaMA-7B's square projections and its MLP up/gate.
pub const SHAPES: [(usize, usize); 2] = [(4096, 4096), (11008, 4096)];
/// Group size of our formats in the comparison.
pub const GROUP: usize = 128;
/// Bytes the bandwidth probe streams per pass (at least 8x the last-level cache; 256 MiB here).
pub fn read_probe_bytes() -> usize {
    (llc_bytes() * 8).max(256 << 20)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Where {
    Cache,
    Dram,
}

impl Where {
    pub const ALL: [Where; 2] = [Where::Cache, Where::Dram];
    pub fn name(self) -> &'static str {
        match self {
            Where::Cache => "cache",
            Where::Dram => "dram",
        }
    }
}

/// 1 and every core of this machine.
pub fn thread_counts() -> Vec<usize> {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if n > 1 {
        vec![1, n]
    } else {
        vec![1]
    }
}

/// candle's barrier pool is sized once per process from `CANDLE_NUM_THREADS`: call this before any
/// candle product. Returns the size in effect.
pub fn configure_candle_threads(threads: usize) -> usize {
    match std::env::var("CANDLE_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n > 0 => {
            if n != threads {
                eprintln!("note: CANDLE_NUM_THREADS={n} is set; candle's multi-thread rows use {n} threads");
            }
            n
        }
        _ => {
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
            threads
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    Ours(QuantFormat),
    /// Ours with 8-bit activations (`Kernels::with_act8`): `int2_g128_a8`, ...
    OursAct8(QuantFormat),
    /// Ours by table lookup (`kernels::lut`, `kernels::lut_int`; NF3, INT2 and INT3, AVX-512
    /// VBMI2 only): `nf3_g128_lut`, `int2_g128_lut`, `int3_g128_lut`.
    OursLut(QuantFormat),
    GgmlMulMat(GgmlType),
    GgmlVecDot(GgmlType),
    Candle(GgmlDType),
}

impl KernelKind {
    /// Every kernel in the comparison, ours first.
    pub fn all() -> Vec<KernelKind> {
        let mut v: Vec<KernelKind> =
            [QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Nf3, QuantFormat::Int4, QuantFormat::Nf4]
                .into_iter()
                .map(KernelKind::Ours)
                .collect();
        v.extend(
            [QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Nf3, QuantFormat::Int4, QuantFormat::Nf4]
                .map(KernelKind::OursAct8),
        );
        if Kernels::detect().with_tables(true).tables() {
            v.extend([QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Nf3].map(KernelKind::OursLut));
        }
        v.extend(GgmlType::WEIGHTS.into_iter().map(KernelKind::GgmlMulMat));
        v.extend(GgmlType::WEIGHTS.into_iter().map(KernelKind::GgmlVecDot));
        v.extend([GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q4_0].into_iter().map(KernelKind::Candle));
        v
    }

    /// The name in reports: `int2_g128`, `ggml_q2_K`, `ggml_q2_K_vec_dot`, `candle_q2k`, ...
    pub fn name(self) -> String {
        match self {
            KernelKind::Ours(f) => format!("{}_g{GROUP}", f.name()),
            KernelKind::OursAct8(f) => format!("{}_g{GROUP}_a8", f.name()),
            KernelKind::OursLut(f) => format!("{}_g{GROUP}_lut", f.name()),
            KernelKind::GgmlMulMat(t) => format!("ggml_{}", t.name()),
            KernelKind::GgmlVecDot(t) => format!("ggml_{}_vec_dot", t.name()),
            KernelKind::Candle(d) => format!("candle_{}", candle_name(d)),
        }
    }

    pub fn parse(name: &str) -> Option<KernelKind> {
        Self::all().into_iter().find(|k| k.name() == name)
    }

    /// The ggml vec_dot loop is single-threaded by construction.
    pub fn runs_with(self, threads: usize) -> bool {
        !matches!(self, KernelKind::GgmlVecDot(_)) || threads == 1
    }

    /// The quantized matrix this kernel reads (vec_dot and mul_mat share ggml's).
    fn source(self) -> Source {
        match self {
            KernelKind::Ours(f) | KernelKind::OursAct8(f) | KernelKind::OursLut(f) => Source::Ours(f),
            KernelKind::GgmlMulMat(t) | KernelKind::GgmlVecDot(t) => Source::Ggml(t),
            KernelKind::Candle(d) => Source::Candle(d),
        }
    }
}

fn candle_name(d: GgmlDType) -> &'static str {
    match d {
        GgmlDType::Q2K => "q2k",
        GgmlDType::Q3K => "q3k",
        GgmlDType::Q4_0 => "q4_0",
        _ => "other",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    Ours(QuantFormat),
    Ggml(GgmlType),
    Candle(GgmlDType),
}

/// Deterministic pseudo-normal values (xorshift64*, sum of four uniforms), LLaMA-like scale.
pub fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| ((next() + next() + next() + next()) - 2.0) * 1.7 * scale).collect()
}

/// One quantized matrix per source, for one shape.
pub struct Sources {
    pub rows: usize,
    pub cols: usize,
    ours: HashMap<QuantFormat, (PackedLayout, AlignedBytes)>,
    ggml: HashMap<GgmlType, GgmlMatrix>,
    candle: HashMap<GgmlDType, Vec<u8>>,
    /// The input vector every kernel multiplies.
    pub x: Vec<f32>,
    /// The exact f32 product `W x` (to check that every kernel computes the same thing).
    pub y_exact: Vec<f32>,
}

impl Sources {
    /// Quantize one random `[rows, cols]` matrix into every format the `kinds` read (progress on
    /// stderr).
    pub fn new(rows: usize, cols: usize, kinds: &[KernelKind]) -> Sources {
        let t = Instant::now();
        let w = random_values(rows * cols, (rows * 31 + cols) as u64, 0.02);
        let mut s = Sources {
            rows,
            cols,
            ours: HashMap::new(),
            ggml: HashMap::new(),
            candle: HashMap::new(),
            x: random_values(cols, 7, 1.0),
            y_exact: Vec::new(),
        };
        s.y_exact = w
            .chunks_exact(cols)
            .map(|row| row.iter().zip(&s.x).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32)
            .collect();
        let mut sources: Vec<Source> = kinds.iter().map(|k| k.source()).collect();
        sources.dedup();
        for src in sources {
            let t0 = Instant::now();
            match src {
                Source::Ours(f) if !s.ours.contains_key(&f) => {
                    let layout = PackedLayout::new(f, GROUP, rows, cols).expect("layout");
                    let blob = pack_parallel(f, rows, cols, &w);
                    s.ours.insert(f, (layout, AlignedBytes::from_slice(&blob)));
                }
                Source::Ggml(ty) if !s.ggml.contains_key(&ty) => {
                    s.ggml.insert(ty, bd_ggml::quantize(ty, rows, cols, &w).expect("ggml quantize"));
                }
                Source::Candle(d) if !s.candle.contains_key(&d) => {
                    let t = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).expect("tensor");
                    let q = QTensor::quantize(&t, d).expect("candle quantize");
                    s.candle.insert(d, q.data().expect("candle bytes").into_owned());
                }
                _ => continue,
            }
            eprintln!("  quantized {rows}x{cols} {src:?} in {:.1} s", t0.elapsed().as_secs_f64());
        }
        eprintln!("  sources for {rows}x{cols} ready in {:.1} s", t.elapsed().as_secs_f64());
        s
    }

    /// Bytes of one matrix as the kernel reads it.
    pub fn matrix_bytes(&self, kind: KernelKind) -> usize {
        match kind.source() {
            Source::Ours(f) => self.ours[&f].1.len(),
            Source::Ggml(t) => self.ggml[&t].bytes().len(),
            Source::Candle(d) => self.candle[&d].len(),
        }
    }
}

/// `pack_matrix` over row bands on every core (the quantizer is per row, so bands pack
/// independently and their blobs splice into the whole one section by section).
pub fn pack_parallel(f: QuantFormat, rows: usize, cols: usize, w: &[f32]) -> Vec<u8> {
    let whole = PackedLayout::new(f, GROUP, rows, cols).expect("layout");
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, rows);
    let band = rows.div_ceil(threads);
    let parts: Vec<(usize, usize, Vec<u8>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..rows)
            .step_by(band)
            .map(|r0| {
                let n = band.min(rows - r0);
                s.spawn(move || (r0, n, pack_matrix(f, GROUP, n, cols, &w[r0 * cols..(r0 + n) * cols]).expect("pack")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut blob = vec![0u8; whole.len];
    for (r0, n, part) in parts {
        let l = PackedLayout::new(f, GROUP, n, cols).unwrap();
        blob[r0 * whole.row_code_bytes..][..n * l.row_code_bytes].copy_from_slice(&part[..n * l.row_code_bytes]);
        blob[whole.scales_offset + r0 * whole.row_scale_bytes..][..n * l.row_scale_bytes]
            .copy_from_slice(&part[l.scales_offset..][..n * l.row_scale_bytes]);
        if whole.row_zero_bytes > 0 {
            blob[whole.zeros_offset + r0 * whole.row_zero_bytes..][..n * l.row_zero_bytes]
                .copy_from_slice(&part[l.zeros_offset..][..n * l.row_zero_bytes]);
        }
    }
    blob
}

/// A kernel ready to time: its matrices (one, or a DRAM set of copies), input and output.
pub trait Kernel {
    fn kind(&self) -> KernelKind;
    fn threads(&self) -> usize;
    /// Bytes of one weight matrix in this kernel's format.
    fn matrix_bytes(&self) -> usize;
    /// Weights of one matrix (`rows * cols`).
    fn weights(&self) -> usize;
    /// Matrix-vector products one `call` performs.
    fn products(&self) -> usize;
    /// Run `products()` matrix-vector products.
    fn call(&mut self);
    /// The output of the last product.
    fn output(&mut self) -> Vec<f32>;
}

/// How many copies make a DRAM set of this matrix, and products per call.
fn plan(where_: Where, matrix_bytes: usize) -> (usize, usize) {
    match where_ {
        Where::Cache => (1, CACHE_REPS),
        Where::Dram => {
            let copies = dram_set_bytes().div_ceil(matrix_bytes).max(2);
            (copies, copies)
        }
    }
}

pub fn thread_pool(threads: usize) -> Arc<ThreadPool> {
    Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool"))
}

/// A kernel of `kind` over `src`'s matrix, for `threads` threads (`pool` is a rayon pool of that size).
pub fn instantiate(kind: KernelKind, src: &Sources, where_: Where, threads: usize, pool: &Arc<ThreadPool>) -> Box<dyn Kernel> {
    let (rows, cols) = (src.rows, src.cols);
    let (copies, products) = plan(where_, src.matrix_bytes(kind));
    let x = src.x.clone();
    match kind {
        KernelKind::Ours(f) | KernelKind::OursAct8(f) | KernelKind::OursLut(f) => {
            let (layout, blob) = &src.ours[&f];
            let blobs: Vec<AlignedBytes> = (0..copies).map(|_| blob.clone()).collect();
            // The table kernel's repacked copies, one per copy of the matrix (distinct memory).
            let luts = match kind {
                KernelKind::OursLut(_) => blobs
                    .iter()
                    .map(|b| Lut::new(&PackedMatrix::new(*layout, b).expect("packed matrix")).expect("NF3, INT2 or INT3, g128"))
                    .collect(),
                _ => Vec::new(),
            };
            Box::new(Ours {
                kind,
                threads,
                layout: *layout,
                blobs,
                luts,
                products,
                x,
                y: vec![0.0; rows],
                scratch: Scratch::new(cols, 1),
                kernels: Kernels::detect()
                    .with_act8(matches!(kind, KernelKind::OursAct8(_)))
                    .with_tables(matches!(kind, KernelKind::OursLut(_))),
                pool: pool.clone(),
            })
        }
        KernelKind::GgmlVecDot(ty) => {
            assert_eq!(threads, 1, "the ggml vec_dot loop runs on one thread");
            let vdt = ty.vec_dot_type().expect("vec_dot type");
            Box::new(GgmlVecDot {
                kind,
                mats: (0..copies).map(|_| src.ggml[&ty].clone()).collect(),
                products,
                qx: vec![0u8; vdt.row_bytes(cols)],
                vdt,
                x,
                y: vec![0.0; rows],
            })
        }
        KernelKind::GgmlMulMat(ty) => Box::new(GgmlMulMat {
            kind,
            threads,
            mats: (0..copies).map(|_| src.ggml[&ty].clone()).collect(),
            graph: MulMatGraph::new(ty, rows, cols, 1, products).expect("ggml graph"),
            x,
        }),
        KernelKind::Candle(d) if threads == 1 => {
            let bytes = &src.candle[&d];
            match d {
                GgmlDType::Q2K => Box::new(CandleDirect::<BlockQ2K>::new(kind, bytes, rows, cols, copies, products, x)),
                GgmlDType::Q3K => Box::new(CandleDirect::<BlockQ3K>::new(kind, bytes, rows, cols, copies, products, x)),
                GgmlDType::Q4_0 => Box::new(CandleDirect::<BlockQ4_0>::new(kind, bytes, rows, cols, copies, products, x)),
                _ => unreachable!("candle kernels: q2k, q3k, q4_0"),
            }
        }
        KernelKind::Candle(d) => {
            let bytes = &src.candle[&d];
            let mats = (0..copies)
                .map(|_| {
                    let q = qtensor_from_ggml(d, bytes, vec![rows, cols], &Device::Cpu).expect("candle qtensor");
                    QMatMul::from_qtensor(q).expect("candle qmatmul")
                })
                .collect();
            Box::new(CandleForward {
                kind,
                threads,
                matrix_bytes: bytes.len(),
                rows,
                cols,
                mats,
                products,
                x: Tensor::from_slice(&x, (1, cols), &Device::Cpu).expect("tensor"),
                last: None,
            })
        }
    }
}

struct Ours {
    kind: KernelKind,
    threads: usize,
    layout: PackedLayout,
    blobs: Vec<AlignedBytes>,
    luts: Vec<Lut>,
    products: usize,
    x: Vec<f32>,
    y: Vec<f32>,
    scratch: Scratch,
    kernels: Kernels,
    pool: Arc<ThreadPool>,
}

impl Kernel for Ours {
    fn kind(&self) -> KernelKind {
        self.kind
    }
    fn threads(&self) -> usize {
        self.threads
    }
    fn matrix_bytes(&self) -> usize {
        self.layout.len
    }
    fn weights(&self) -> usize {
        self.layout.rows * self.layout.cols
    }
    fn products(&self) -> usize {
        self.products
    }
    fn call(&mut self) {
        let Ours { layout, blobs, luts, products, x, y, scratch, kernels, pool, .. } = self;
        let (layout, products, kernels) = (*layout, *products, *kernels);
        pool.install(|| {
            for i in 0..products {
                let m = PackedMatrix::new(layout, &blobs[i % blobs.len()]).expect("packed matrix");
                let lut = luts.get(i % blobs.len());
                let w = Weight { rows: layout.rows, cols: layout.cols, data: WeightData::Quant(m), lut };
                kernels.matvec(&w, x, y, scratch);
            }
        });
        black_box(&self.y);
    }
    fn output(&mut self) -> Vec<f32> {
        self.y.clone()
    }
}

struct GgmlVecDot {
    kind: KernelKind,
    mats: Vec<GgmlMatrix>,
    products: usize,
    vdt: GgmlType,
    qx: Vec<u8>,
    x: Vec<f32>,
    y: Vec<f32>,
}

impl Kernel for GgmlVecDot {
    fn kind(&self) -> KernelKind {
        self.kind
    }
    fn threads(&self) -> usize {
        1
    }
    fn matrix_bytes(&self) -> usize {
        self.mats[0].bytes().len()
    }
    fn weights(&self) -> usize {
        self.mats[0].rows() * self.mats[0].cols()
    }
    fn products(&self) -> usize {
        self.products
    }
    fn call(&mut self) {
        for i in 0..self.products {
            bd_ggml::quantize_activations_into(self.vdt, &self.x, &mut self.qx).expect("ggml from_float");
            bd_ggml::matvec(&self.mats[i % self.mats.len()], &self.qx, &mut self.y).expect("ggml matvec");
        }
        black_box(&self.y);
    }
    fn output(&mut self) -> Vec<f32> {
        self.y.clone()
    }
}

struct GgmlMulMat {
    kind: KernelKind,
    threads: usize,
    mats: Vec<GgmlMatrix>,
    graph: MulMatGraph,
    x: Vec<f32>,
}

impl Kernel for GgmlMulMat {
    fn kind(&self) -> KernelKind {
        self.kind
    }
    fn threads(&self) -> usize {
        self.threads
    }
    fn matrix_bytes(&self) -> usize {
        self.mats[0].bytes().len()
    }
    fn weights(&self) -> usize {
        self.mats[0].rows() * self.mats[0].cols()
    }
    fn products(&self) -> usize {
        self.graph.products()
    }
    fn call(&mut self) {
        let n = self.mats.len();
        let refs: Vec<&GgmlMatrix> = (0..self.graph.products()).map(|i| &self.mats[i % n]).collect();
        self.graph.compute(&refs, &self.x, self.threads).expect("ggml graph compute");
    }
    fn output(&mut self) -> Vec<f32> {
        self.graph.output(self.graph.products() - 1).to_vec()
    }
}

/// candle's k_quants kernels called directly on this thread (what `QMatMul::forward` runs with a
/// pool of one: activations to the vec_dot type, then `vec_dot_4` over quads of rows).
struct CandleDirect<T: CandleBlock> {
    kind: KernelKind,
    mats: Vec<Vec<T>>,
    rows: usize,
    cols: usize,
    products: usize,
    x: Vec<f32>,
    xq: Vec<T::VecDotType>,
    y: Vec<f32>,
}

impl<T: CandleBlock> CandleDirect<T> {
    fn new(kind: KernelKind, bytes: &[u8], rows: usize, cols: usize, copies: usize, products: usize, x: Vec<f32>) -> Self {
        let n = bytes.len() / std::mem::size_of::<T>();
        assert_eq!(n * std::mem::size_of::<T>(), bytes.len(), "candle blocks");
        assert_eq!(n, rows * cols / T::BLCK_SIZE, "candle block count");
        assert_eq!(rows % 4, 0, "rows in quads");
        let blocks = || {
            let mut v: Vec<T> = (0..n).map(|_| T::zeros()).collect();
            // SAFETY: `v` holds exactly `bytes.len()` bytes of plain-data blocks (#[repr(C)]),
            // which candle's own loader fills the same way.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len()) };
            v
        };
        let xq = (0..cols / T::VecDotType::BLCK_SIZE).map(|_| T::VecDotType::zeros()).collect();
        Self { kind, mats: (0..copies).map(|_| blocks()).collect(), rows, cols, products, x, xq, y: vec![0.0; rows] }
    }
}

impl<T: CandleBlock> Kernel for CandleDirect<T> {
    fn kind(&self) -> KernelKind {
        self.kind
    }
    fn threads(&self) -> usize {
        1
    }
    fn matrix_bytes(&self) -> usize {
        self.mats[0].len() * std::mem::size_of::<T>()
    }
    fn weights(&self) -> usize {
        self.rows * self.cols
    }
    fn products(&self) -> usize {
        self.products
    }
    fn call(&mut self) {
        let kb = self.cols / T::BLCK_SIZE;
        for i in 0..self.products {
            T::VecDotType::from_float(&self.x, &mut self.xq);
            let m = &self.mats[i % self.mats.len()];
            for (q, y) in self.y.chunks_exact_mut(4).enumerate() {
                let r = 4 * q;
                let row = |j: usize| &m[(r + j) * kb..(r + j + 1) * kb];
                let (a, b, c, d) = T::vec_dot_4(self.cols, row(0), row(1), row(2), row(3), &self.xq);
                y.copy_from_slice(&[a, b, c, d]);
            }
        }
        black_box(&self.y);
    }
    fn output(&mut self) -> Vec<f32> {
        self.y.clone()
    }
}

/// candle's `QMatMul::forward` (its barrier pool of `CANDLE_NUM_THREADS` threads).
struct CandleForward {
    kind: KernelKind,
    threads: usize,
    matrix_bytes: usize,
    rows: usize,
    cols: usize,
    mats: Vec<QMatMul>,
    products: usize,
    x: Tensor,
    last: Option<Tensor>,
}

impl Kernel for CandleForward {
    fn kind(&self) -> KernelKind {
        self.kind
    }
    fn threads(&self) -> usize {
        self.threads
    }
    fn matrix_bytes(&self) -> usize {
        self.matrix_bytes
    }
    fn weights(&self) -> usize {
        self.rows * self.cols
    }
    fn products(&self) -> usize {
        self.products
    }
    fn call(&mut self) {
        for i in 0..self.products {
            self.last = Some(self.mats[i % self.mats.len()].forward(&self.x).expect("candle forward"));
        }
    }
    fn output(&mut self) -> Vec<f32> {
        let t = self.last.as_ref().expect("call() first");
        t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("candle output")
    }
}

/// `|y - exact| / |exact|` (Euclidean norms).
pub fn relative_error(y: &[f32], exact: &[f32]) -> f64 {
    assert_eq!(y.len(), exact.len(), "output length");
    let (mut e, mut n) = (0f64, 0f64);
    for (&a, &b) in y.iter().zip(exact) {
        e += (a as f64 - b as f64).powi(2);
        n += (b as f64).powi(2);
    }
    (e / n.max(f64::MIN_POSITIVE)).sqrt()
}

/// Seconds per product: one untimed call (loads a cache-resident matrix, faults in pages), then
/// `calls` timed calls.
pub fn seconds_per_product(k: &mut dyn Kernel, calls: usize) -> f64 {
    k.call();
    let t = Instant::now();
    for _ in 0..calls {
        k.call();
    }
    t.elapsed().as_secs_f64() / (calls * k.products()) as f64
}

/// Calls per sample so that one sample lasts about `target_s`.
pub fn calls_for(k: &mut dyn Kernel, target_s: f64) -> usize {
    let t = Instant::now();
    k.call();
    let once = t.elapsed().as_secs_f64().max(1e-6);
    ((target_s / once).round() as usize).clamp(1, 1000)
}

/// A buffer for the streaming-read probe (non-zero: untouched zero pages all map one physical page).
pub fn read_probe_buffer(bytes: usize) -> Vec<u64> {
    (0..bytes / 8).map(|i| i as u64 | 1).collect()
}

/// Seconds to read `buf` once with `pool`'s threads (each its own contiguous part): the faster
/// of one stream and eight per thread, with the widest loads the CPU has (`bd_runtime::probe`,
/// the same probe `bd-run bench` takes).
pub fn read_pass(buf: &[u64], pool: &ThreadPool) -> f64 {
    pool.install(|| bd_runtime::probe::read_pass(buf))
}

/// The kernel ISA ours run with, and what ggml was compiled with.
pub fn describe_machine() -> String {
    format!(
        "ours: {} kernels (Kernels::detect); ggml built with: {}; candle pool: CANDLE_NUM_THREADS={}; \
         last-level cache {} MiB, DRAM sets >= {} MiB",
        Kernels::detect().describe(),
        bd_ggml::build_features(),
        std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "default".into()),
        llc_bytes() >> 20,
        dram_set_bytes() >> 20
    )
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
