//! Matrix-vector and matrix-matrix products over the weights of a `.bd2` file.
//!
//! This is the interface the forward pass uses. The kernels behind it are chosen once, when
//! [`Kernels`] is made; the forward pass never asks which ISA runs.
//!
//! Threading: `matvec` and `matmul` split output rows over the rayon pool they are called from (the
//! session runs its forward pass inside its own pool's `install`).
//!
//! # Methods (measured choices; see `examples/kernel_speed.rs`)
//!
//! - INT formats (`x86_int.rs`, `avx512_int.rs`, `neon.rs`): activations quantized to 16-bit
//!   integers, one f32 scale per 128-block ([`act`]); codes unpacked to bytes straight from the
//!   32-byte lanes of the packed layout; each product uses both signed bytes of the activation
//!   (`X = 256 hi + lo`): `vpdpbusd` (AVX-512 VNNI; for one input on 512-bit registers holding two
//!   rows, `avx512_int.rs`, since the 256-bit tile was bound by instruction throughput),
//!   `vpmaddubsw` (AVX2; `vpdpbusd` with AVX-VNNI), `sdot` (NEON dot product; `smlal` on 16-bit
//!   `X` without it). Integer sums are exact; scale and zero point are applied once per group:
//!   `y += (s d) sum q X - s z sum d X`. Against the exact f32 dot product the rounding of `X`
//!   costs ~7e-5 (normwise, N(0,1) activations with 1% outliers x10; the tests check 1e-4 and
//!   the per-row bound `sum |w| d / 2`). The scalar twin `act::int_row_twin` computes the same
//!   integer sums; SIMD equals it up to f32 summation order.
//! - NF formats, AVX-512 and AVX2, groups >= 32 (`avx512_nf.rs`, `avx2_nf.rs`, scheme in
//!   [`nf_int`]): per group of a row a 16-bit table of its dequantized levels (scaled to +-4095),
//!   looked up with `vpermw` from the packed code words (AVX2: its low and high bytes with
//!   `vpshufb`), times the same 16-bit activations with `vpdpwssd` (AVX2: `vpmaddwd`). The table
//!   rounding adds ~1.5e-4 (normwise) to the activations' error; tests check SIMD against the
//!   scalar twin `nf_int::nf_row_twin` and the twin against the exact product within the per-row
//!   bound of both roundings. 2x the speed of the exact f32 method it replaces (Zen 4 AVX-512,
//!   Zen 3 AVX2).
//! - `--act-bits 8` ([`Kernels::with_act8`]): the same integer schemes on 8-bit activations stored
//!   in the high byte ([`act`]); AVX2, AVX-512 and NEON `sdot` skip the zero low plane. The
//!   integer NF scheme then takes 8-bit tables too (`nf_int::TMAX8`), which AVX-512 with VBMI
//!   looks up 64 weights at a time with `vpermb` and multiplies with `vpdpbusd`
//!   (`avx512_nf8.rs`, groups of 64 and more; smaller groups and CPUs without VBMI run the
//!   16-bit code on the 8-bit tables), and AVX2 with one `vpshufb` per 32 weights and
//!   `vpmaddubsw` on the activations' absolute values (`avx2_nf.rs`).
//! - NF formats elsewhere (`avx512.rs` and `avx2.rs` for g16, `neon.rs`): exact f32: a group's 16
//!   dequantized levels live in registers and the codes index them (`vpermps`; NEON `tbl`), FMA
//!   with f32 inputs.
//! - f32 / f16 / bf16 weights (`*_float.rs`): converted in registers, FMA in f32.
//! - Reference (`reference.rs`): every weight dequantized by `bd_formats::quant`, sums in f64.
//!
//! Rows are processed several at a time so one activation load serves several rows, codes of the
//! next block of rows are prefetched into L2 (the per-row streams are too short for the hardware
//! prefetcher), and `matmul` tiles rows x inputs so each chunk of codes is unpacked once for
//! several inputs, with the inputs as the outer loop (their activations stay in L1 while the
//! weights stream by) in panels that fit L2.

/// Repeat a block for each listed value of a `usize` constant. Kernels use it so that loops whose
/// body branches on the index (which field, which bit) are straight-line code with constants: a
/// plain `for` loop left rolled turns those branches into jump tables and spills.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {
        $( { #[allow(non_upper_case_globals)] const $i: usize = $n; $body } )*
    };
}

/// The AVX-512 NF kernels' tiling of rows `r0..r1` x inputs `k0..k1`: 2 rows x 4 inputs while four
/// inputs remain (each row's lookups serve four inputs), then 2 x 2, then 4 rows (and single rows)
/// for the last input. `$tile!(R, C, r, k)` runs one tile. Measured on Zen 5 (nf3 g128, 64 inputs,
/// 1 thread, ns per weight and input): 2 x 4 0.0080 against 0.0122-0.0129 for 2 x 2 (8-bit
/// activations 0.0068 against 0.0101-0.0109); 1 x 8 0.0103 (8-bit 0.0065).
#[cfg(target_arch = "x86_64")]
macro_rules! nf_tiles {
    ($tile:ident, $k0:expr, $k1:expr, $r0:expr, $r1:expr) => {{
        let (k1, r1) = ($k1, $r1);
        let mut k = $k0;
        while k + 4 <= k1 {
            let mut r = $r0;
            while r + 2 <= r1 {
                $tile!(2, 4, r, k);
                r += 2;
            }
            if r < r1 {
                $tile!(1, 4, r, k);
            }
            k += 4;
        }
        while k + 2 <= k1 {
            let mut r = $r0;
            while r + 2 <= r1 {
                $tile!(2, 2, r, k);
                r += 2;
            }
            if r < r1 {
                $tile!(1, 2, r, k);
            }
            k += 2;
        }
        if k < k1 {
            let mut r = $r0;
            while r + 4 <= r1 {
                $tile!(4, 1, r, k);
                r += 4;
            }
            while r < r1 {
                $tile!(1, 1, r, k);
                r += 1;
            }
        }
    }};
}

/// The entry point of an integer NF kernel: call the instance of its generic
/// `rows::<BITS, GROUP>` (`rows[A, ...]`: `rows::<BITS, GROUP, A, ...>`) that fits the matrix (NF3
/// or NF4, groups of 32 to 256).
#[cfg(target_arch = "x86_64")]
macro_rules! nf_dispatch {
    ($rows:ident($p:expr, $($arg:expr),*)) => {
        nf_dispatch!($rows[]($p, $($arg),*))
    };
    // `rows[c, ...]`: more const arguments after the bits and the group.
    ($rows:ident[$($c:tt),*]($p:expr, $($arg:expr),*)) => {{
        type F = unsafe fn(&PackedMatrix, &ActQ, usize, usize, usize, usize, *mut f32, usize, f32);
        let f = match ($p.format().bits(), $p.layout.group) {
            (3, 32) => $rows::<3, 32 $(, $c)*> as F,
            (3, 64) => $rows::<3, 64 $(, $c)*>,
            (3, 128) => $rows::<3, 128 $(, $c)*>,
            (3, 256) => $rows::<3, 256 $(, $c)*>,
            (4, 32) => $rows::<4, 32 $(, $c)*>,
            (4, 64) => $rows::<4, 64 $(, $c)*>,
            (4, 128) => $rows::<4, 128 $(, $c)*>,
            (4, 256) => $rows::<4, 256 $(, $c)*>,
            other => unreachable!("NF format / group {other:?}"),
        };
        f($p, $($arg),*)
    }};
}

mod act;
mod aligned;
pub mod lut;
pub mod lut_int;
mod nf_int;
mod reference;
mod tables;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lut;
#[cfg(test)]
mod tests_lut_int;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_float;
#[cfg(target_arch = "x86_64")]
mod avx2_nf;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_float;
#[cfg(target_arch = "x86_64")]
mod avx512_int;
#[cfg(target_arch = "x86_64")]
mod avx512_lut;
#[cfg(target_arch = "x86_64")]
mod avx512_lut_int;
#[cfg(target_arch = "x86_64")]
mod avx512_nf;
#[cfg(target_arch = "x86_64")]
mod avx512_nf8;
#[cfg(target_arch = "x86_64")]
mod avx512_nf_window;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_float;
#[cfg(target_arch = "x86_64")]
mod x86_int;

use act::ActBuf;
use bd_formats::quant::PackedMatrix;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
pub use tables::{lut_int_matvec, lut_int_tables, lut_matvec, lut_tables, tables_setting};

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
    /// NF3, INT2 and INT3 only: the same matrix repacked for its table kernel (`lut.rs`,
    /// `lut_int.rs`), which then serves single inputs (decode) where [`Kernels::uses_tables`]
    /// says so.
    pub lut: Option<&'a lut::Lut>,
}

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain scalar Rust: the definition every other kernel is tested against.
    Reference,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (Ice Lake, Zen 4 and later), plus FMA and F16C.
    Avx512,
    /// aarch64 Advanced SIMD, with the dot-product extension when the CPU has it.
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Reference, Isa::Avx2, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Reference => "reference",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Self::ALL.into_iter().find(|i| i.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run the kernels of this ISA.
    pub fn supported(self) -> bool {
        match self {
            Isa::Reference => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Per-session scratch memory for the kernels, allocated once (no allocation per token).
pub struct Scratch {
    act: ActBuf,
    /// The table kernels' tables (empty where the CPU cannot run them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    tables: lut::LutTables,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    tables_int: lut_int::IntTables,
    /// The table kernels' partial sums of column parts after the first (`tables.rs`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    partials: Vec<f32>,
}

impl Scratch {
    /// Room for inputs of up to `max_cols` values and batches of up to `max_batch` rows.
    ///
    /// Larger inputs still work: a wider input grows the scratch once, and a larger batch is
    /// processed `max_batch` inputs at a time.
    pub fn new(max_cols: usize, max_batch: usize) -> Self {
        let table_cols = if vbmi2_supported() { max_cols } else { 0 };
        Self {
            act: ActBuf::new(max_cols, max_batch.max(1)),
            tables: lut::LutTables::new(table_cols),
            tables_int: lut_int::IntTables::new(table_cols),
            partials: Vec::new(),
        }
    }

    /// Make room for the table kernels' partial sums of `rows` outputs for column parts after the
    /// first of products split across `threads` threads (a session does this when it starts, so
    /// that no decode step allocates).
    pub fn reserve_partials(&mut self, threads: usize, rows: usize) {
        #[cfg(target_arch = "x86_64")]
        if vbmi2_supported() && threads <= tables::MAX_PARTS {
            self.grow_partials(threads.saturating_sub(1) * rows);
        }
        let _ = (threads, rows);
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn grow_partials(&mut self, len: usize) {
        if self.partials.len() < len {
            self.partials = vec![0.0; len];
        }
    }

    /// Outputs' room for the table kernels' partial sums (tests).
    pub(crate) fn reserved_partials(&self) -> usize {
        self.partials.len()
    }

    /// `n` partial sums of `rows` outputs each (grown once if the session did not reserve them).
    #[cfg(target_arch = "x86_64")]
    fn partials(&mut self, n: usize, rows: usize) -> OutPtr {
        self.grow_partials(n * rows);
        OutPtr(self.partials.as_mut_ptr())
    }
}

/// The kernels chosen for this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    isa: Isa,
    /// NEON only: use the dot-product extension (`sdot`).
    dotprod: bool,
    /// AVX-512 only: unpack 2-bit fields with GFNI affine transforms (`gf2p8affineqb`).
    gfni: bool,
    /// AVX-512 only: byte permutes (`vpermb`, AVX512-VBMI) for the NF byte kernel with `act8`.
    vbmi: bool,
    /// AVX2 only: AVX-VNNI (`{vex} vpdpbusd` / `vpdpwssd` on 256-bit registers) in place of
    /// `vpmaddubsw` / `vpmaddwd` and their widening adds. What it is for: Intel's client CPUs since
    /// Alder Lake have it without AVX-512, so they run the AVX2 kernels (CPUs with AVX-512 as well,
    /// such as Zen 5, run the AVX-512 ones).
    avxvnni: bool,
    /// Quantize activations of the integer kernels to 8 bits instead of 16 (`act.rs`).
    act8: bool,
    /// AVX-512 only: NF3, INT2 and INT3 single inputs by table lookup (`lut.rs`, `lut_int.rs`) where
    /// the weight carries its repacked copy; needs AVX512-VBMI2 (`vpshrdw`).
    tables: bool,
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl Kernels {
    /// The best kernels this CPU supports. `BD_KERNELS=reference|avx2|avx512|neon` forces one
    /// (with `-plain` appended, without its optional extensions); a forced ISA this CPU cannot run
    /// (or an unknown name) falls back to the reference, with one line on stderr.
    ///
    /// `BD_ACT_BITS=8` selects 8-bit activations ([`Kernels::with_act8`]); `16` or unset, 16-bit.
    /// `BD_TABLES=1` turns on the table kernels ([`Kernels::with_tables`]; `BD_NF3_TABLES=1`, its
    /// earlier name, still does).
    pub fn detect() -> Self {
        let (k, warning) = Self::from_setting(std::env::var("BD_KERNELS").ok().as_deref());
        let (act8, warning_bits) = act8_setting(std::env::var("BD_ACT_BITS").ok().as_deref());
        let (tables, warning_tables) = tables_setting("BD_TABLES", std::env::var("BD_TABLES").ok().as_deref());
        let (tables_nf3, warning_nf3) = tables_setting("BD_NF3_TABLES", std::env::var("BD_NF3_TABLES").ok().as_deref());
        let tables = tables || tables_nf3;
        let warnings: Vec<String> = [warning, warning_bits, warning_tables, warning_nf3].into_iter().flatten().collect();
        if !warnings.is_empty() && !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
            for w in warnings {
                eprintln!("bd-run: {w}");
            }
        }
        k.with_act8(act8).with_tables(tables)
    }

    /// What `detect` picks for a `BD_KERNELS` value, and the warning it prints, if any. A name
    /// with `-plain` (`avx2-plain`) leaves out the ISA's optional extensions
    /// ([`Kernels::without_extensions`]), as on CPUs that lack them.
    pub fn from_setting(setting: Option<&str>) -> (Self, Option<String>) {
        match setting.map(str::trim) {
            Some(v) if !v.is_empty() => {
                let lower = v.to_ascii_lowercase();
                let (name, plain) = match lower.strip_suffix("-plain") {
                    Some(n) => (n, true),
                    None => (lower.as_str(), false),
                };
                match Isa::parse(name) {
                    Some(isa) if isa.supported() => {
                        let k = Self::with_isa(isa);
                        (if plain { k.without_extensions() } else { k }, None)
                    }
                    other => {
                        let why = if other.is_some() { "is not supported by this CPU" } else { "is not a known kernel set" };
                        let msg = format!(
                            "BD_KERNELS={v} {why} (known: reference, avx2, avx512, neon, each also with -plain: \
                             without optional extensions); using the scalar reference"
                        );
                        (Self::with_isa(Isa::Reference), Some(msg))
                    }
                }
            }
            _ => (Self::with_isa(*Self::available().last().expect("reference is always available")), None),
        }
    }

    /// The ISAs this CPU supports, from the reference to the fastest.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// Kernels of one ISA. Panics if this CPU does not support it (see [`Kernels::available`]).
    pub fn with_isa(isa: Isa) -> Self {
        assert!(isa.supported(), "the {} kernels are not supported by this CPU", isa.name());
        Self {
            isa,
            dotprod: isa == Isa::Neon && dotprod_supported(),
            gfni: isa == Isa::Avx512 && gfni_supported(),
            vbmi: isa == Isa::Avx512 && vbmi_supported(),
            avxvnni: isa == Isa::Avx2 && avxvnni_supported(),
            act8: false,
            tables: false,
        }
    }

    /// The same ISA without its optional extensions (NEON dot product, GFNI, VBMI, AVX-VNNI):
    /// what CPUs without them run, for the tests and for measuring what an extension brings
    /// (`kernel_speed --plain`).
    #[doc(hidden)]
    pub fn without_extensions(self) -> Self {
        Self { dotprod: false, gfni: false, vbmi: false, avxvnni: false, tables: false, ..self }
    }

    /// Whether any optional extension is in use (see [`Kernels::without_extensions`]).
    #[doc(hidden)]
    pub fn has_extensions(&self) -> bool {
        *self != self.without_extensions()
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The same kernels with 8-bit (`true`) or 16-bit (`false`, the default) activations for the
    /// integer methods. 8 bits trade accuracy (~1e-2 of a dot product on inputs with outliers,
    /// against 7e-5) for speed where the kernels are compute-bound (AVX2 and NEON `sdot` skip the
    /// low byte plane); float weights and the exact NF method are unaffected.
    pub fn with_act8(self, act8: bool) -> Self {
        Self { act8, ..self }
    }

    pub fn act8(&self) -> bool {
        self.act8
    }

    /// The same kernels with or without (the default) the table kernels for single inputs: NF3
    /// (`lut.rs`), INT2 and INT3 (`lut_int.rs`), AVX-512 with VBMI2 only (elsewhere this stays
    /// off). Opt-in: they need a repacked copy of every such matrix (made at load: the memory of
    /// those weights twice, and more time to load) and their tables keep ~11-12 bits of each
    /// lookup's contribution (normwise error ~4-6e-4, against ~1e-4 or less for the 16-bit
    /// activations and ~4e-3 for the 8-bit ones). They pay where the default kernel computes
    /// slower than memory (NF3, INT2); a 7B INT3 model, whose default kernel keeps up with DRAM,
    /// decoded ~20% slower with them on 2 threads (docs/BENCHMARKS.md).
    pub fn with_tables(self, tables: bool) -> Self {
        Self { tables: tables && self.isa == Isa::Avx512 && vbmi2_supported(), ..self }
    }

    /// Whether the table kernels are on (see [`Kernels::with_tables`]).
    pub fn tables(&self) -> bool {
        self.tables
    }

    /// Whether matrices like `p` are worth repacking for these kernels ([`Weight::lut`]).
    pub fn wants_tables(&self, p: &PackedMatrix) -> bool {
        self.tables && lut::Lut::supports(p)
    }

    /// Whether a single input times `w` runs a table kernel.
    pub fn uses_tables(&self, w: &Weight) -> bool {
        self.tables && w.lut.is_some()
    }

    /// A short description for logs, e.g. `avx512+gfni`, `neon+dotprod` or `avx2+act8`.
    pub fn describe(&self) -> String {
        let mut d = self.isa.name().to_string();
        if self.dotprod {
            d += "+dotprod";
        }
        if self.gfni {
            d += "+gfni";
        }
        if self.vbmi {
            d += "+vbmi";
        }
        if self.avxvnni {
            d += "+avxvnni";
        }
        if self.act8 {
            d += "+act8";
        }
        if self.tables {
            d += "+tables";
        }
        d
    }

    /// `y = W x`: `x.len() == w.cols`, `y.len() == w.rows`.
    pub fn matvec(&self, w: &Weight, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
        assert_eq!(x.len(), w.cols, "matvec: input length");
        assert_eq!(y.len(), w.rows, "matvec: output length");
        self.run(w, x, 1, y, scratch);
    }

    /// `Y = X W^T` for `n` inputs: `x` is `[n, cols]`, `y` is `[n, rows]`, both row-major.
    pub fn matmul(&self, w: &Weight, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Scratch) {
        assert_eq!(x.len(), n * w.cols, "matmul: input length");
        assert_eq!(y.len(), n * w.rows, "matmul: output length");
        let batch = scratch.act.cap_n.max(1);
        let mut k = 0;
        while k < n {
            let nb = batch.min(n - k);
            self.run(w, &x[k * w.cols..(k + nb) * w.cols], nb, &mut y[k * w.rows..(k + nb) * w.rows], scratch);
            k += nb;
        }
    }

    fn run(&self, w: &Weight, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Scratch) {
        if w.rows == 0 || n == 0 {
            return;
        }
        let (rows, cols) = (w.rows, w.cols);
        let out = OutPtr(y.as_mut_ptr());
        // Inputs per panel: a panel's activations stay in L2 while every row block reads them.
        let panel = |bytes_per_input: usize| ((256 << 10) / bytes_per_input.max(1)).clamp(4, 256) / 4 * 4;
        match (self.isa, w.data) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, WeightData::Quant(_)) if n == 1 && self.uses_tables(w) => {
                let lut = w.lut.expect("uses_tables");
                assert_eq!(lut.shape(), (rows, cols), "weight shape");
                tables::matvec(lut, x, out, scratch);
            }
            (Isa::Reference, _) => {
                let f = |r0: usize, r1: usize, k0: usize, k1: usize| unsafe {
                    reference::rows(w, &x[k0 * cols..k1 * cols], k1 - k0, r0, r1, out.at(k0 * rows), rows)
                };
                par_rows(rows, cols, n, n, f);
            }
            (_, WeightData::Quant(p)) if !p.format().is_nf() || self.nf_integer(&p) => {
                assert_eq!((p.layout.rows, p.layout.cols), (rows, cols), "weight shape");
                let act = scratch.act.quantize(x, n, cols, p.layout.group, self.xp_order(&p), self.act8);
                let f =
                    |r0: usize, r1: usize, k0: usize, k1: usize| unsafe { self.int_rows(&p, &act, k0, k1, r0, r1, out, rows) };
                par_rows(rows, cols, n, panel(2 * cols), f);
            }
            _ => {
                if let WeightData::Quant(p) = w.data {
                    assert_eq!((p.layout.rows, p.layout.cols), (rows, cols), "weight shape");
                }
                let f = |r0: usize, r1: usize, k0: usize, k1: usize| unsafe {
                    self.float_rows(w, &x[k0 * cols..k1 * cols], k1 - k0, r0, r1, out.at(k0 * rows), rows)
                };
                par_rows(rows, cols, n, panel(4 * cols), f);
            }
        }
    }

    /// Whether NF weights `p` take the integer scheme (`nf_int.rs`) rather than exact f32: the
    /// AVX-512 and AVX2 kernels, groups of at least 32.
    #[doc(hidden)]
    pub fn nf_integer(&self, p: &PackedMatrix) -> bool {
        p.format().is_nf() && matches!(self.isa, Isa::Avx512 | Isa::Avx2) && p.layout.group >= nf_int::MIN_GROUP
    }

    /// The activation order the integer NF kernel of this ISA reads (`None`: not needed).
    fn xp_order(&self, p: &PackedMatrix) -> Option<nf_int::XpOrder> {
        match self.isa {
            _ if !self.nf_integer(p) => None,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if self.act8 => None,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(nf_int::unpack_order),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if !avx512_nf::uses_pair_order(p, self.act8, self.vbmi) => None,
            _ => Some(nf_int::pair_order),
        }
    }

    /// INT formats (and NF ones where `nf_integer`), inputs `k0..k1` of `act`, rows `r0..r1`.
    #[allow(clippy::too_many_arguments, unused_variables)]
    unsafe fn int_rows(
        &self,
        p: &PackedMatrix,
        act: &act::ActQ,
        k0: usize,
        k1: usize,
        r0: usize,
        r1: usize,
        out: OutPtr,
        ys: usize,
    ) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if p.format().is_nf() => avx512_nf::nf_rows(p, act, k0, k1, r0, r1, out.0, ys, self.act8, self.vbmi),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if p.format().is_nf() => avx2_nf::nf_rows(p, act, k0, k1, r0, r1, out.0, ys, self.act8, self.avxvnni),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86_int::int_rows(p, act, k0, k1, r0, r1, out.0, ys, true, self.gfni, false, self.act8),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86_int::int_rows(p, act, k0, k1, r0, r1, out.0, ys, false, false, self.avxvnni, self.act8),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::int_rows(p, act, k0, k1, r0, r1, out.0, ys, self.dotprod, self.act8),
            _ => {
                for k in k0..k1 {
                    for r in r0..r1 {
                        *out.0.add(k * ys + r) = if p.format().is_nf() {
                            nf_int::nf_row_twin(p, r, act, k, nf_int::tmax(self.act8))
                        } else {
                            act::int_row_twin(p, r, act, k)
                        };
                    }
                }
            }
        }
    }

    /// NF formats and float weights: exact f32 arithmetic.
    #[allow(clippy::too_many_arguments, unused_variables)]
    unsafe fn float_rows(&self, w: &Weight, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
        match (self.isa, w.data) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, WeightData::Quant(p)) => avx512::nf_rows(&p, x, n, r0, r1, y, ys),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, _) => avx512_float::rows(w, x, n, r0, r1, y, ys),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, WeightData::Quant(p)) => avx2::nf_rows(&p, x, n, r0, r1, y, ys),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, _) => avx2_float::rows(w, x, n, r0, r1, y, ys),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, WeightData::Quant(p)) => neon::nf_rows(&p, x, n, r0, r1, y, ys),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, _) => neon_float::rows(w, x, n, r0, r1, y, ys),
            _ => reference::rows(w, x, n, r0, r1, y, ys),
        }
    }

    /// The scalar twin of the integer kernels, INT or NF (tests and `kernel_speed` compare
    /// against it).
    #[doc(hidden)]
    pub fn int_twin_matvec(w: &Weight, x: &[f32], y: &mut [f32], act8: bool) {
        let WeightData::Quant(p) = w.data else { panic!("int_twin_matvec needs a quantized weight") };
        let nf = p.format().is_nf();
        let mut buf = ActBuf::new(w.cols, 1);
        let act = buf.quantize(x, 1, w.cols, p.layout.group, None, act8);
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = if nf { nf_int::nf_row_twin(&p, r, &act, 0, nf_int::tmax(act8)) } else { act::int_row_twin(&p, r, &act, 0) };
        }
    }
}

/// What a `BD_ACT_BITS` value selects (`true`: 8-bit activations), and the warning for a value
/// that is neither 8 nor 16 (which keeps 16).
pub fn act8_setting(v: Option<&str>) -> (bool, Option<String>) {
    match v.map(str::trim) {
        None | Some("") | Some("16") => (false, None),
        Some("8") => (true, None),
        Some(other) => (false, Some(format!("BD_ACT_BITS={other} is not 8 or 16; using 16-bit activations"))),
    }
}

fn gfni_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("gfni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn vbmi2_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vbmi2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avxvnni_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn vbmi_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn dotprod_supported() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// The output matrix, shared by the tasks (each writes its own rows).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn at(self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }
}

/// Rows per block of the widest kernel tile (tasks start on whole blocks).
const ROW_ALIGN: usize = 8;
/// Below this many multiply-adds a product runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;

/// Guided self-scheduling of `blocks` row blocks: each grab takes a share of what is left
/// (`left / (2 threads)`, at least `min` blocks), so the chunks shrink towards the end and the
/// threads finish within a small chunk of each other. With fixed tasks (four per thread) the threads
/// of a 7B decode sat idle for 6-12% of each product's wall time (Zen 5, 2 threads), waiting at the
/// join for the other's last task; with guided chunks, 4-6%: per ~230 us product the second thread
/// starts 3-8 us late (waking) and the two finish 2-10 us apart (the host preempts vCPUs).
struct Guided {
    next: AtomicUsize,
    blocks: usize,
    divisor: usize,
    min: usize,
}

/// The least work (multiply-adds) of a chunk: about a microsecond of one thread's time for the
/// quantized kernels, far above the cost of a grab (one compare-and-swap).
const MIN_CHUNK_WORK: usize = 1 << 16;

impl Guided {
    fn new(blocks: usize, threads: usize, min: usize) -> Self {
        Guided { next: AtomicUsize::new(0), blocks, divisor: 2 * threads.max(1), min: min.max(1) }
    }

    /// The next chunk `[b0, b1)` of row blocks, or `None` when all are taken.
    fn next(&self) -> Option<(usize, usize)> {
        let mut b0 = self.next.load(Ordering::Relaxed);
        loop {
            if b0 >= self.blocks {
                return None;
            }
            let b1 = (b0 + ((self.blocks - b0) / self.divisor).max(self.min)).min(self.blocks);
            match self.next.compare_exchange_weak(b0, b1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((b0, b1)),
                Err(now) => b0 = now,
            }
        }
    }
}

/// Run `f(r0, r1, k0, k1)` over panels of `panel` inputs and, within each, over row ranges spread
/// across the current rayon pool.
fn par_rows(rows: usize, cols: usize, n: usize, panel: usize, f: impl Fn(usize, usize, usize, usize) + Sync) {
    let panel = panel.max(1);
    let threads = rayon::current_num_threads();
    let work = rows * cols * n;
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + panel).min(n);
        if threads <= 1 || work < SERIAL_WORK || rows < 2 * ROW_ALIGN {
            f(0, rows, k0, k1);
        } else {
            let min = MIN_CHUNK_WORK / (ROW_ALIGN * cols * (k1 - k0)).max(1);
            let chunks = Guided::new(rows.div_ceil(ROW_ALIGN), threads, min);
            // One job per thread, each taking chunks until none are left: a thread that is slow to
            // wake finds less work, and the job it would have run finds none.
            (0..threads).into_par_iter().for_each(|_| {
                while let Some((b0, b1)) = chunks.next() {
                    f(b0 * ROW_ALIGN, (b1 * ROW_ALIGN).min(rows), k0, k1)
                }
            });
        }
        k0 = k1;
    }
}
