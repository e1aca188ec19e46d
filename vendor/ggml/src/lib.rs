//! A safe bridge over ggml's quantized CPU kernels (ggml of April 2024, llama.cpp b2757, through
//! `ggml-sys-bleedingedge`), for side-by-side benchmarks and cross-checks. Never a runtime
//! dependency.
//!
//! What it exposes, for Q2_K, Q3_K, Q4_0 and IQ2_XXS weights (and the activation types their dot
//! products take, Q8_K and Q8_0):
//! - [`quantize`]: `ggml_quantize_chunk` over a row-major f32 matrix (rows split over threads).
//!   IQ2_XXS needs an importance matrix: a uniform one (all ones) is passed.
//! - [`dequantize`]: the type's `to_float`.
//! - [`quantize_activations`]: the activation type's `from_float` (`quantize_row_q8_K`, ...).
//! - [`vec_dot`] and the single-thread [`matvec`]: the type's `vec_dot` from
//!   `ggml_internal_get_type_traits`, one row at a time, exactly what `ggml_mul_mat` runs per row.
//! - [`mul_mat`] and [`MulMatGraph`]: `ggml_mul_mat` nodes in a ggml graph computed with ggml's own
//!   threads (`ggml_graph_plan` + `ggml_graph_compute`).
//!
//! What a [`MulMatGraph::compute`] call includes: setting the tensors' data pointers, planning the
//! graph for the thread count (`ggml_graph_plan`), creating and joining `threads - 1` worker threads
//! (ggml of this era has no persistent pool: llama.cpp pays this once per token, for a graph of ~200
//! products), converting the f32 input to the vec_dot type in each node (as llama.cpp does per
//! product), the products themselves, and ggml's spin barrier between nodes. A graph of many nodes
//! amortizes the thread start as llama.cpp's per-token graph does. The work buffer is kept between
//! calls; `ggml_graph_compute_with_ctx` would allocate a new one inside the context on every call.
//!
//! Build note: `ggml-sys-bleedingedge` without its cmake feature compiles ggml with the host's
//! `-mavx -mavx2 -mfma -mf16c -msse3` only (no AVX-512 flags), see [`build_features`].

use ggml_sys_bleedingedge as sys;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::ptr::{self, NonNull};
use std::sync::Once;

/// The ggml tensor types this bridge handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 2-bit k-quant: 256-weight super-blocks of 16 groups with 4-bit scales and mins (2.625 bpw).
    Q2K,
    /// 3-bit k-quant: 256-weight super-blocks, 6-bit group scales (3.4375 bpw).
    Q3K,
    /// 4-bit, 32-weight blocks with an f16 scale (4.5 bpw).
    Q4_0,
    /// 2.06-bit "i-quant": lattice codebook, quantization needs an importance matrix.
    IQ2XXS,
    /// 8-bit activations of the k-quant and i-quant dot products (256 per block).
    Q8K,
    /// 8-bit activations of Q4_0's dot product (32 per block).
    Q8_0,
}

impl GgmlType {
    /// The weight types benchmarked against ours.
    pub const WEIGHTS: [GgmlType; 4] = [GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q4_0, GgmlType::IQ2XXS];
    pub const ALL: [GgmlType; 6] =
        [GgmlType::Q2K, GgmlType::Q3K, GgmlType::Q4_0, GgmlType::IQ2XXS, GgmlType::Q8K, GgmlType::Q8_0];

    /// ggml's enum value.
    pub fn raw(self) -> sys::ggml_type {
        match self {
            GgmlType::Q2K => sys::ggml_type_GGML_TYPE_Q2_K,
            GgmlType::Q3K => sys::ggml_type_GGML_TYPE_Q3_K,
            GgmlType::Q4_0 => sys::ggml_type_GGML_TYPE_Q4_0,
            GgmlType::IQ2XXS => sys::ggml_type_GGML_TYPE_IQ2_XXS,
            GgmlType::Q8K => sys::ggml_type_GGML_TYPE_Q8_K,
            GgmlType::Q8_0 => sys::ggml_type_GGML_TYPE_Q8_0,
        }
    }

    /// ggml's own name of the type (`q2_K`, `q3_K`, `q4_0`, `iq2_xxs`, `q8_K`, `q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::Q2K => "q2_K",
            GgmlType::Q3K => "q3_K",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::IQ2XXS => "iq2_xxs",
            GgmlType::Q8K => "q8_K",
            GgmlType::Q8_0 => "q8_0",
        }
    }

    fn traits(self) -> sys::ggml_type_traits_t {
        // SAFETY: a plain read of ggml's static type table with a valid type.
        unsafe { sys::ggml_internal_get_type_traits(self.raw()) }
    }

    /// Weights per block (256 for k-quants and IQ2_XXS, 32 for Q4_0 / Q8_0).
    pub fn block_size(self) -> usize {
        self.traits().blck_size as usize
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.traits().type_size
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_size() * self.block_bytes()
    }

    /// Storage bits per weight, block parameters included.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.block_bytes() as f64 / self.block_size() as f64
    }

    /// The type the activations are converted to for this type's `vec_dot`.
    pub fn vec_dot_type(self) -> Option<GgmlType> {
        let t = self.traits();
        t.vec_dot?;
        GgmlType::ALL.into_iter().find(|x| x.raw() == t.vec_dot_type)
    }

    fn check_cols(self, cols: usize) -> Result<(), GgmlError> {
        let block = self.block_size();
        if !cols.is_multiple_of(block) {
            return Err(GgmlError::BadCols { ty: self.name(), cols, block });
        }
        Ok(())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GgmlError {
    #[error("ggml {ty}: {cols} columns is not a multiple of the type's block size {block}")]
    BadCols { ty: &'static str, cols: usize, block: usize },
    #[error("ggml {ty}: a matrix needs at least one row and one column, got {rows} x {cols}")]
    Empty { ty: &'static str, rows: usize, cols: usize },
    #[error("ggml {ty}: a {rows} x {cols} matrix needs {expected} values, got {got}")]
    ShapeMismatch { ty: &'static str, rows: usize, cols: usize, expected: usize, got: usize },
    #[error("ggml {ty}: {what} has {got} elements, expected {expected}")]
    LengthMismatch { ty: &'static str, what: &'static str, expected: usize, got: usize },
    #[error("ggml {ty} has no {what} (ggml's type traits leave it out)")]
    Unsupported { ty: &'static str, what: &'static str },
    #[error("ggml {ty}: {what} is not aligned to {align} bytes")]
    Misaligned { ty: &'static str, what: &'static str, align: usize },
    #[error("ggml mul_mat: every weight must be {expected}, got {got}")]
    WeightMismatch { expected: String, got: String },
    #[error("ggml graph compute failed with status {0}")]
    Compute(i32),
    #[error("ggml could not create a context of {0} bytes")]
    Context(usize),
}

static INIT: Once = Once::new();

/// ggml_init once per process: it fills ggml's f16 conversion tables and timer.
fn init() {
    INIT.call_once(|| {
        // SAFETY: a small context created and freed again; only the one-time table setup in
        // ggml_init's first call matters.
        unsafe {
            let ctx = sys::ggml_init(sys::ggml_init_params { mem_size: 1024, mem_buffer: ptr::null_mut(), no_alloc: true });
            if !ctx.is_null() {
                sys::ggml_free(ctx);
            }
        }
    });
}

/// The SIMD ggml was compiled with, as ggml reports it (`avx2 fma f16c ...`).
pub fn build_features() -> String {
    let flags: [(&str, unsafe extern "C" fn() -> c_int); 8] = [
        ("avx", sys::ggml_cpu_has_avx),
        ("avx2", sys::ggml_cpu_has_avx2),
        ("fma", sys::ggml_cpu_has_fma),
        ("f16c", sys::ggml_cpu_has_f16c),
        ("avx512", sys::ggml_cpu_has_avx512),
        ("avx512_vnni", sys::ggml_cpu_has_avx512_vnni),
        ("avx_vnni", sys::ggml_cpu_has_avx_vnni),
        ("neon", sys::ggml_cpu_has_neon),
    ];
    // SAFETY: each reports a compile-time constant.
    flags.iter().filter(|(_, f)| unsafe { f() } != 0).map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
}

/// A 64-byte aligned, zero-initialized byte buffer (ggml blocks hold f16/f32 fields).
pub struct AlignedBytes {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain owned bytes.
unsafe impl Send for AlignedBytes {}
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    const ALIGN: usize = 64;

    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self { ptr: NonNull::<u64>::dangling().cast(), len: 0 };
        }
        let layout = Layout::from_size_align(len, Self::ALIGN).expect("buffer size overflows");
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut b = Self::zeroed(bytes.len());
        b.copy_from_slice(bytes);
        b
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.len, Self::ALIGN)) }
        }
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialized bytes (or a dangling pointer with length 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we own the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

/// A quantized row-major `[rows, cols]` matrix in ggml's block layout.
#[derive(Clone, Debug)]
pub struct GgmlMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: AlignedBytes,
}

impl GgmlMatrix {
    /// A matrix over existing ggml blocks (for example ggml bytes quantized elsewhere).
    pub fn from_bytes(ty: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, GgmlError> {
        ty.check_cols(cols)?;
        let expected = rows * ty.row_bytes(cols);
        if bytes.len() != expected {
            return Err(GgmlError::LengthMismatch { ty: ty.name(), what: "the matrix bytes", expected, got: bytes.len() });
        }
        Ok(Self { ty, rows, cols, data: AlignedBytes::from_slice(bytes) })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The ggml blocks, row after row.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.ty.row_bytes(self.cols);
        &self.data[r * n..(r + 1) * n]
    }
}

fn rows_per_thread(rows: usize) -> (usize, usize) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(rows).max(1);
    (threads, rows.div_ceil(threads))
}

/// Quantize a row-major `[rows, cols]` f32 matrix to `ty` with `ggml_quantize_chunk`.
///
/// `cols` must be a multiple of the type's block size (256 for k-quants and IQ2_XXS, 32 for Q4_0).
/// Types that need an importance matrix (IQ2_XXS) get a uniform one (all ones), after
/// `ggml_quantize_init`. Row chunks are quantized on all cores.
pub fn quantize(ty: GgmlType, rows: usize, cols: usize, w: &[f32]) -> Result<GgmlMatrix, GgmlError> {
    init();
    if ty == GgmlType::Q8K {
        return Err(GgmlError::Unsupported { ty: ty.name(), what: "matrix quantizer (ggml_quantize_chunk)" });
    }
    if rows == 0 || cols == 0 {
        return Err(GgmlError::Empty { ty: ty.name(), rows, cols });
    }
    ty.check_cols(cols)?;
    let expected = rows.saturating_mul(cols);
    if w.len() != expected {
        return Err(GgmlError::ShapeMismatch { ty: ty.name(), rows, cols, expected, got: w.len() });
    }
    let row_bytes = ty.row_bytes(cols);
    let mut data = AlignedBytes::zeroed(rows * row_bytes);
    // SAFETY: a read of a constant predicate.
    let imatrix = if unsafe { sys::ggml_quantize_requires_imatrix(ty.raw()) } { vec![1.0f32; cols] } else { Vec::new() };
    // SAFETY: builds the type's lookup grids once (a no-op for most types); ggml guards it with a
    // critical section, and later quantize calls only read the grids.
    unsafe { sys::ggml_quantize_init(ty.raw()) };
    let (_, per) = rows_per_thread(rows);
    let imatrix_ptr = if imatrix.is_empty() { ptr::null() } else { imatrix.as_ptr() } as usize;
    let written: usize = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks_mut(per * row_bytes)
            .zip(w.chunks(per * cols))
            .map(|(dst, src)| {
                s.spawn(move || {
                    let n = src.len() / cols;
                    // SAFETY: `src` holds `n` rows of `cols` values and `dst` room for `n` quantized
                    // rows; `start = 0` so ggml reads `src[0..n*cols]` and writes `dst[0..n*row_bytes]`.
                    unsafe {
                        sys::ggml_quantize_chunk(
                            ty.raw(),
                            src.as_ptr(),
                            dst.as_mut_ptr() as *mut c_void,
                            0,
                            n as i64,
                            cols as i64,
                            imatrix_ptr as *const f32,
                        )
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ggml quantize thread panicked")).sum()
    });
    debug_assert_eq!(written, rows * row_bytes);
    Ok(GgmlMatrix { ty, rows, cols, data })
}

/// Dequantize a whole matrix to row-major f32 with the type's `to_float`.
pub fn dequantize(m: &GgmlMatrix) -> Result<Vec<f32>, GgmlError> {
    init();
    let to_float = m.ty.traits().to_float.ok_or(GgmlError::Unsupported { ty: m.ty.name(), what: "to_float" })?;
    let mut out = vec![0f32; m.rows * m.cols];
    for r in 0..m.rows {
        // SAFETY: one row of blocks in, `cols` floats out.
        unsafe { to_float(m.row(r).as_ptr() as *const c_void, out[r * m.cols..].as_mut_ptr(), m.cols as i64) };
    }
    Ok(out)
}

/// Quantize activations to `ty` (the `vec_dot_type` of a weight type: Q8_K or Q8_0) with its
/// `from_float`. `x.len()` must be a multiple of the block size.
pub fn quantize_activations(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, GgmlError> {
    let mut out = vec![0u8; ty.row_bytes(x.len())];
    quantize_activations_into(ty, x, &mut out)?;
    Ok(out)
}

/// [`quantize_activations`] into a buffer of `ty.row_bytes(x.len())` bytes (no allocation).
pub fn quantize_activations_into(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), GgmlError> {
    init();
    let from_float = ty.traits().from_float.ok_or(GgmlError::Unsupported { ty: ty.name(), what: "from_float" })?;
    ty.check_cols(x.len())?;
    let expected = ty.row_bytes(x.len());
    if out.len() != expected {
        return Err(GgmlError::LengthMismatch { ty: ty.name(), what: "the activation buffer", expected, got: out.len() });
    }
    check_align(ty, out.as_ptr(), "the activation buffer")?;
    // SAFETY: `x.len()` values in, exactly `expected` bytes out.
    unsafe { from_float(x.as_ptr(), out.as_mut_ptr() as *mut c_void, x.len() as i64) };
    Ok(())
}

/// Activation buffers hold f32 fields (Q8_K's scale) or f16 ones.
fn check_align(ty: GgmlType, p: *const u8, what: &'static str) -> Result<(), GgmlError> {
    let align = if ty == GgmlType::Q8K { 4 } else { 2 };
    if !(p as usize).is_multiple_of(align) {
        return Err(GgmlError::Misaligned { ty: ty.name(), what, align });
    }
    Ok(())
}

type VecDotFn = unsafe extern "C" fn(c_int, *mut f32, usize, *const c_void, usize, *const c_void, usize, c_int);

fn vec_dot_parts(ty: GgmlType, cols: usize, qx: &[u8]) -> Result<VecDotFn, GgmlError> {
    init();
    let traits = ty.traits();
    let f = traits.vec_dot.ok_or(GgmlError::Unsupported { ty: ty.name(), what: "vec_dot" })?;
    let vdt = ty.vec_dot_type().ok_or(GgmlError::Unsupported { ty: ty.name(), what: "vec_dot type" })?;
    ty.check_cols(cols)?;
    let expected = vdt.row_bytes(cols);
    if qx.len() != expected {
        return Err(GgmlError::LengthMismatch {
            ty: vdt.name(),
            what: "the quantized activations (bytes)",
            expected,
            got: qx.len(),
        });
    }
    check_align(vdt, qx.as_ptr(), "the quantized activations")?;
    Ok(f)
}

/// The dot product of one row of `ty` blocks (`n` weights) with activations quantized to the type's
/// `vec_dot_type` (see [`quantize_activations`]).
pub fn vec_dot(ty: GgmlType, n: usize, row: &[u8], qx: &[u8]) -> Result<f32, GgmlError> {
    let f = vec_dot_parts(ty, n, qx)?;
    if row.len() != ty.row_bytes(n) {
        return Err(GgmlError::LengthMismatch {
            ty: ty.name(),
            what: "the row (bytes)",
            expected: ty.row_bytes(n),
            got: row.len(),
        });
    }
    let mut s = 0f32;
    // SAFETY: lengths checked above; nrc = 1 (one row, one result).
    unsafe { f(n as c_int, &mut s, 0, row.as_ptr() as *const c_void, 0, qx.as_ptr() as *const c_void, 0, 1) };
    Ok(s)
}

/// `y = W x` on the calling thread: the type's `vec_dot` once per row, with `qx` the activations
/// already quantized to `w.ty().vec_dot_type()`.
pub fn matvec(w: &GgmlMatrix, qx: &[u8], y: &mut [f32]) -> Result<(), GgmlError> {
    let f = vec_dot_parts(w.ty, w.cols, qx)?;
    if y.len() != w.rows {
        return Err(GgmlError::LengthMismatch { ty: w.ty.name(), what: "the output", expected: w.rows, got: y.len() });
    }
    let row_bytes = w.ty.row_bytes(w.cols);
    let base = w.data.as_ptr();
    for (r, out) in y.iter_mut().enumerate() {
        // SAFETY: row `r` of the matrix, `qx` checked by `vec_dot_parts`.
        unsafe { f(w.cols as c_int, out, 0, base.add(r * row_bytes) as *const c_void, 0, qx.as_ptr() as *const c_void, 0, 1) };
    }
    Ok(())
}

/// A ggml graph of `products` independent `ggml_mul_mat` nodes that share one f32 input
/// `[n_inputs, cols]`, each against its own `[rows, cols]` weight of type `ty`: build once, compute
/// many times. The tensors point at the caller's memory (no copies): the weights and the input are
/// passed to every [`compute`](Self::compute).
pub struct MulMatGraph {
    ctx: *mut sys::ggml_context,
    graph: *mut sys::ggml_cgraph,
    input: *mut sys::ggml_tensor,
    weights: Vec<*mut sys::ggml_tensor>,
    outputs: Vec<*mut sys::ggml_tensor>,
    out_data: Vec<Vec<f32>>,
    work: AlignedBytes,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    n_inputs: usize,
}

// SAFETY: the context is owned by this struct and only used through `&mut self`.
unsafe impl Send for MulMatGraph {}

impl MulMatGraph {
    pub fn new(ty: GgmlType, rows: usize, cols: usize, n_inputs: usize, products: usize) -> Result<Self, GgmlError> {
        init();
        if rows == 0 || cols == 0 || n_inputs == 0 || products == 0 {
            return Err(GgmlError::Empty { ty: ty.name(), rows, cols });
        }
        ty.check_cols(cols)?;
        ty.traits().vec_dot.ok_or(GgmlError::Unsupported { ty: ty.name(), what: "vec_dot" })?;
        // SAFETY: plain size queries.
        let mem_size = unsafe {
            sys::ggml_tensor_overhead() * (1 + 2 * products) + sys::ggml_graph_overhead_custom(graph_size(products), false) + 4096
        };
        // SAFETY: no_alloc context: tensors get metadata only, their data pointers are set later.
        let ctx = unsafe { sys::ggml_init(sys::ggml_init_params { mem_size, mem_buffer: ptr::null_mut(), no_alloc: true }) };
        if ctx.is_null() {
            return Err(GgmlError::Context(mem_size));
        }
        let mut g = MulMatGraph {
            ctx,
            graph: ptr::null_mut(),
            input: ptr::null_mut(),
            weights: Vec::with_capacity(products),
            outputs: Vec::with_capacity(products),
            out_data: (0..products).map(|_| vec![0f32; rows * n_inputs]).collect(),
            work: AlignedBytes::zeroed(0),
            ty,
            rows,
            cols,
            n_inputs,
        };
        // SAFETY: shapes valid for ggml_mul_mat (a: [cols, rows], b: [cols, n] in ggml's ne order);
        // the context was sized for these tensors and the graph.
        unsafe {
            g.input = sys::ggml_new_tensor_2d(ctx, sys::ggml_type_GGML_TYPE_F32, cols as i64, n_inputs as i64);
            g.graph = sys::ggml_new_graph_custom(ctx, graph_size(products), false);
            for i in 0..products {
                let w = sys::ggml_new_tensor_2d(ctx, ty.raw(), cols as i64, rows as i64);
                let out = sys::ggml_mul_mat(ctx, w, g.input);
                (*out).data = g.out_data[i].as_mut_ptr() as *mut c_void;
                sys::ggml_build_forward_expand(g.graph, out);
                g.weights.push(w);
                g.outputs.push(out);
            }
        }
        Ok(g)
    }

    /// Number of `ggml_mul_mat` nodes.
    pub fn products(&self) -> usize {
        self.weights.len()
    }

    /// Compute every node with `threads` ggml threads: node `i` multiplies `weights[i]` by `x`
    /// (`[n_inputs, cols]` row-major).
    pub fn compute(&mut self, weights: &[&GgmlMatrix], x: &[f32], threads: usize) -> Result<(), GgmlError> {
        if weights.len() != self.weights.len() {
            return Err(GgmlError::LengthMismatch {
                ty: self.ty.name(),
                what: "the weight list",
                expected: self.weights.len(),
                got: weights.len(),
            });
        }
        for w in weights {
            if (w.ty, w.rows, w.cols) != (self.ty, self.rows, self.cols) {
                return Err(GgmlError::WeightMismatch {
                    expected: format!("{} {}x{}", self.ty, self.rows, self.cols),
                    got: format!("{} {}x{}", w.ty, w.rows, w.cols),
                });
            }
        }
        if x.len() != self.n_inputs * self.cols {
            return Err(GgmlError::LengthMismatch {
                ty: "f32",
                what: "the input",
                expected: self.n_inputs * self.cols,
                got: x.len(),
            });
        }
        let threads = threads.max(1);
        // SAFETY: the tensors were created in `new` and point at live buffers for the whole
        // compute: weights and input borrowed for this call (ggml only reads them), outputs owned.
        unsafe {
            (*self.input).data = x.as_ptr() as *mut c_void;
            for (t, w) in self.weights.iter().zip(weights) {
                (**t).data = w.data.as_ptr() as *mut c_void;
            }
            let mut plan = sys::ggml_graph_plan(self.graph, threads as c_int);
            if plan.work_size > self.work.len() {
                self.work = AlignedBytes::zeroed(plan.work_size);
            }
            plan.work_data = if plan.work_size > 0 { self.work.as_mut_ptr() } else { ptr::null_mut() };
            let status = sys::ggml_graph_compute(self.graph, &mut plan);
            (*self.input).data = ptr::null_mut();
            if status != sys::ggml_status_GGML_STATUS_SUCCESS {
                return Err(GgmlError::Compute(status));
            }
        }
        Ok(())
    }

    /// The output of node `i`: `[n_inputs, rows]` row-major.
    pub fn output(&self, i: usize) -> &[f32] {
        &self.out_data[i]
    }
}

fn graph_size(products: usize) -> usize {
    (2 * products + 2).max(sys::GGML_DEFAULT_GRAPH_SIZE as usize)
}

impl Drop for MulMatGraph {
    fn drop(&mut self) {
        // SAFETY: created by ggml_init in `new`, freed once.
        unsafe { sys::ggml_free(self.ctx) }
    }
}

/// `Y = X W^T` through one `ggml_mul_mat` in a ggml graph computed with `threads` threads: `x` is
/// `[n_inputs, cols]` and the result `[n_inputs, rows]`, both row-major. Builds the graph on every
/// call; use [`MulMatGraph`] to time repeated products.
pub fn mul_mat(w: &GgmlMatrix, x: &[f32], n_inputs: usize, threads: usize) -> Result<Vec<f32>, GgmlError> {
    let mut g = MulMatGraph::new(w.ty, w.rows, w.cols, n_inputs, 1)?;
    g.compute(&[w], x, threads)?;
    Ok(g.out_data.swap_remove(0))
}

/// ggml's name for a raw type (for messages).
pub fn type_name(ty: GgmlType) -> String {
    let p = ty.traits().type_name;
    if p.is_null() {
        return ty.name().to_string();
    }
    // SAFETY: ggml's static NUL-terminated type name.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests;
