//! NF3 by table lookup (T-MAC's idea, with lanes as rows): the activations, not the weights, become
//! tables, and one 64-entry lookup serves two weights of each of 32 rows.
//!
//! # The scheme
//!
//! NF3 weight `(r, c)` is `L[q] * pos` for the positive levels (codes 4-7) and `L[q] * neg` for the
//! negative ones (codes 0-2), with `pos`/`neg` the f16 scales of its row and group. For a pair of
//! columns `(c, c + 1)` and the 6-bit index `i = q_c + 8 q_{c+1}`, the activation tables
//!
//! ```text
//! T+[i] = round(x'_c L+[q_c] + x'_{c+1} L+[q_{c+1}]),   L+[q] = L[q] for q >= 4, else 0
//! T-[i] = the same with L-[q] = L[q] for q <= 2, else 0
//! ```
//!
//! (`x' = x / d_s`, `d_s = max over the segment's pairs of (|x_c| + |x_{c+1}|) / EMAX`, one scale
//! per *segment* of 32 columns) hold every value a pair can contribute. So for 32 rows at once,
//! one `vpermi2w` per table looks up 64 weights, and 16-bit adds sum a segment exactly
//! (`16 * EMAX < 2^15`): a row's result is `sum_seg d_s * (pos_g * P_seg + neg_g * N_seg)`.
//!
//! Precision: each table entry is rounded to 1/EMAX of its segment's largest pair sum, ~11 bits,
//! between the 16-bit (15 bits per activation) and the 8-bit activations (7 bits).
//!
//! # The layout (repacked from the `.bd2` one)
//!
//! Rows in blocks of 32 (the word lanes of a 512-bit register), the last block padded with the
//! zero code. Per block, per 16 columns: three registers `z0..z2` of 32 words, word `r` of `z_i`
//! holding bits `16i..16i + 16` of row `r`'s 48-bit field `F_r = sum_j q_{c0 + j} << 3j`. Pair `k`
//! of the 16 columns is bits `6k..6k + 6` of `F_r`: a shift or a funnel shift of one or two words.
//! Scales: per block and group, the 32 rows' `pos` then their `neg`, as f16.

use super::lut_int::{repack, Shape};
use bd_formats::quant::{GroupParams, PackedMatrix, QuantFormat, NF3_LEVELS};

/// Rows per block: the word lanes of a 512-bit register.
pub const BLOCK: usize = 32;
/// Columns per table scale (and per exact 16-bit sum).
pub const SEG: usize = 32;
/// Largest table entry: 16 of them (a segment's pairs) sum without overflow in 16 bits.
pub const EMAX: f32 = 2047.0;
/// Segments per column pass (2048 columns): a pass's tables (256 KiB) stay in L2 while every block
/// of rows reads them; a row's result is the sum of its passes' partial sums (and, split across
/// threads, of its column parts', `column_part`).
pub const COL_SEGS: usize = 64;
/// Bytes of codes per block and 16 columns.
pub const CODE_BYTES: usize = 3 * 64;
/// The code of level 0.
const ZERO_CODE: u8 = 3;

/// An NF3 matrix in the table kernels' layout.
#[derive(Clone)]
pub struct LutNf3 {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    pub groups: usize,
    /// Columns rounded up to a whole number of segments.
    pub pcols: usize,
    pub blocks: usize,
    /// `[block][pcols / 16][3][32]` words.
    pub codes: Vec<u16>,
    /// `[block][group][pos 32, neg 32]` f16 bits.
    pub scales: Vec<u16>,
}

impl std::fmt::Debug for LutNf3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LutNf3 {{ rows: {}, cols: {}, group: {} }}", self.rows, self.cols, self.group)
    }
}

impl LutNf3 {
    /// Whether `p` can be repacked: NF3 with groups of whole segments.
    pub fn supports(p: &PackedMatrix) -> bool {
        p.format() == QuantFormat::Nf3 && p.layout.group >= SEG && p.layout.group.is_multiple_of(SEG)
    }

    /// Repack `p` (`None` where [`LutNf3::supports`] says no), by `lut_int::repack`.
    pub fn new(p: &PackedMatrix) -> Option<Self> {
        if !Self::supports(p) {
            return None;
        }
        let l = &p.layout;
        let (rows, cols, group, groups) = (l.rows, l.cols, l.group, l.groups);
        let pcols = cols.div_ceil(SEG) * SEG;
        let blocks = rows.div_ceil(BLOCK);
        // NF3's pairs of 3-bit codes lie as INT3's do; padding holds the code of level 0.
        let (codes, scales) = repack(p, Shape::INT3, ZERO_CODE, |r, g| match p.params(r, g) {
            GroupParams::Nf { pos, neg } => (pos.to_bits(), neg.to_bits()),
            GroupParams::Int { .. } => unreachable!("NF3 has NF parameters"),
        });
        Some(Self { rows, cols, group, groups, pcols, blocks, codes, scales })
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        2 * (self.codes.len() + self.scales.len())
    }

    /// The code of weight `(r, c)` as the layout holds it (tests).
    pub fn code(&self, r: usize, c: usize) -> u8 {
        let (b, lane, j16, j) = (r / BLOCK, r % BLOCK, c / 16, c % 16);
        let w = |i: usize| self.codes[((b * (self.pcols / 16) + j16) * 3 + i) * BLOCK + lane] as u64;
        let f = w(0) | w(1) << 16 | w(2) << 32;
        ((f >> (3 * j)) & 7) as u8
    }
}

/// The activation tables of one input: per pair of columns `[T+ low, T+ high, T- low, T- high]`,
/// 32 words each (`high`: the second code is 4-7), and per segment its scale `d_s`. Allocated for
/// a capacity of columns; a build fills the segments of its input.
pub struct LutTables {
    pub tabs: Vec<i16>,
    pub d: Vec<f32>,
}

impl LutTables {
    /// Room for inputs of up to `cols` values.
    pub fn new(cols: usize) -> Self {
        let pcols = cols.div_ceil(SEG) * SEG;
        Self { tabs: vec![0; pcols / 2 * 128], d: vec![0.0; pcols / SEG] }
    }

    /// Columns the tables can cover.
    pub fn pcols(&self) -> usize {
        self.d.len() * SEG
    }

    /// Segments a build for an input of `cols` values fills (checked against the capacity).
    pub(crate) fn segs(&self, cols: usize) -> usize {
        assert!(cols <= self.pcols(), "input of {cols} values for tables of {} columns", self.pcols());
        cols.div_ceil(SEG)
    }

    /// Build the tables of `x` in plain Rust (the columns past it, up to the next segment, are
    /// zero): the definition the SIMD builders are tested against.
    pub fn build_twin(&mut self, x: &[f32]) {
        let xv = |c: usize| if c < x.len() { x[c] } else { 0.0 };
        for s in 0..self.segs(x.len()) {
            let inv = self.scale_segment(x, s);
            for k in 0..SEG / 2 {
                let c = s * SEG + 2 * k;
                entries(xv(c) * inv, xv(c + 1) * inv, &mut self.tabs[c / 2 * 128..][..128]);
            }
        }
    }

    /// Set segment `s`'s scale `d_s` from `x` ([`segment_scale`]) and return `1 / d_s`.
    pub(crate) fn scale_segment(&mut self, x: &[f32], s: usize) -> f32 {
        let (d, inv) = segment_scale(x, s);
        self.d[s] = d;
        inv
    }

    /// Raw pointers to the tables, for builders and kernels that split the columns across threads
    /// (each thread writing, then reading, only its own segments).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn raw(&mut self) -> TablesRaw {
        TablesRaw { tabs: self.tabs.as_mut_ptr(), d: self.d.as_mut_ptr() }
    }

    /// Read-only raw pointers (the kernels' view of tables built before them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn view(&self) -> TablesRaw {
        TablesRaw { tabs: self.tabs.as_ptr() as *mut i16, d: self.d.as_ptr() as *mut f32 }
    }
}

/// [`LutTables`] as raw pointers (see [`LutTables::raw`]).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct TablesRaw {
    pub tabs: *mut i16,
    pub d: *mut f32,
}

// Shared across the pool's threads, which touch disjoint segments (`LutTables::raw`).
unsafe impl Send for TablesRaw {}
unsafe impl Sync for TablesRaw {}

/// Segment `s`'s scale `d_s` from `x` and `1 / d_s`: 0 for an all-zero segment, which then has
/// all-zero tables, and for one with a NaN or infinite value, whose scale is NaN so that every
/// output it reaches is NaN.
pub(crate) fn segment_scale(x: &[f32], s: usize) -> (f32, f32) {
    let xv = |c: usize| if c < x.len() { x[c] } else { 0.0 };
    let sums = (0..SEG / 2).map(|k| xv(s * SEG + 2 * k).abs() + xv(s * SEG + 2 * k + 1).abs());
    // `f32::max` skips NaN; a NaN or infinite input must reach the output instead.
    let m = sums.fold(0.0f32, |m, v| if m.is_nan() || !v.is_finite() { f32::NAN } else { m.max(v) });
    match m {
        _ if m.is_nan() => (f32::NAN, 0.0),
        _ if m > 1e-30 => (m / EMAX, EMAX / m),
        _ => (0.0, 0.0),
    }
}

/// A pair's 128 table entries from its scaled activations (the order of `LutTables::tabs`).
pub fn entries(x1: f32, x2: f32, t: &mut [i16]) {
    for side in 0..2 {
        for i in 0..64 {
            let (q1, q2) = (i % 8, i / 8);
            let l = |q: usize| if (side == 0 && q >= 4) || (side == 1 && q <= 2) { NF3_LEVELS[q] } else { 0.0 };
            t[side * 64 + i] = x2.mul_add(l(q2), x1 * l(q1)).round_ties_even() as i16;
        }
    }
}

/// The scalar twin: row `r` of `m` times the input whose tables are `t`, with the arithmetic of
/// the SIMD kernel (exact integer segment sums, then the same f32 operations in the same order:
/// a partial sum per column pass of `COL_SEGS` segments, the passes added in order).
pub fn row_twin(m: &LutNf3, t: &LutTables, r: usize) -> f32 {
    row_twin_parts(m, t, r, 1)
}

/// [`row_twin`] as the table product splits its columns into `parts` ([`column_part`]): each
/// part's sum as above over its own segments, the parts added in order.
pub fn row_twin_parts(m: &LutNf3, t: &LutTables, r: usize, parts: usize) -> f32 {
    let mut y = 0.0f32;
    for j in 0..parts {
        let (c0, c1) = column_part(m.pcols / SEG, m.group / SEG, parts, j);
        let part = twin_segs(m, t, r, c0, c1);
        y = if j == 0 { part } else { y + part };
    }
    y
}

fn twin_segs(m: &LutNf3, t: &LutTables, r: usize, c0: usize, c1: usize) -> f32 {
    let (b, lane) = (r / BLOCK, r % BLOCK);
    let mut y = 0.0f32;
    let mut part = 0.0f32;
    for s in c0..c1 {
        if s > c0 && (s - c0).is_multiple_of(COL_SEGS) {
            y = if s - c0 == COL_SEGS { part } else { y + part };
            part = 0.0;
        }
        let g = s * SEG / m.group;
        let (mut p, mut n) = (0i32, 0i32);
        for k in 0..SEG / 2 {
            let c = s * SEG + 2 * k;
            let i = (m.code(r, c) + 8 * m.code(r, c + 1)) as usize;
            let tab = &t.tabs[c / 2 * 128..];
            p += tab[i] as i32;
            n += tab[64 + i] as i32;
        }
        let at = (b * m.groups + g) * 2 * BLOCK + lane;
        let pos = half::f16::from_bits(m.scales[at]).to_f32();
        let neg = half::f16::from_bits(m.scales[at + BLOCK]).to_f32();
        part = (p as f32).mul_add(pos * t.d[s], part);
        part = (n as f32).mul_add(neg * t.d[s], part);
    }
    if c1 - c0 <= COL_SEGS {
        part
    } else {
        y + part
    }
}

/// Part `j` of `parts` of `units` column units (spans or segments), `per_group` to a group: the
/// units of groups `groups * j / parts` up to `groups * (j + 1) / parts` (whole groups, so that a
/// part's sums start and end on its own groups). The table products split their columns so across
/// threads (`tables.rs`).
pub fn column_part(units: usize, per_group: usize, parts: usize, j: usize) -> (usize, usize) {
    let groups = units.div_ceil(per_group);
    (groups * j / parts * per_group, (groups * (j + 1) / parts * per_group).min(units))
}

/// A matrix repacked for a table kernel: NF3 (this module), INT2 or INT3 (`lut_int.rs`).
#[derive(Clone, Debug)]
pub enum Lut {
    Nf3(LutNf3),
    Int(super::lut_int::LutInt),
}

impl Lut {
    /// Whether `p` has a table kernel (NF3, INT2 or INT3 with groups of 32 or more).
    pub fn supports(p: &PackedMatrix) -> bool {
        LutNf3::supports(p) || super::lut_int::LutInt::supports(p)
    }

    /// Repack `p` for its table kernel (`None` where [`Lut::supports`] says no).
    pub fn new(p: &PackedMatrix) -> Option<Self> {
        match p.format() {
            QuantFormat::Nf3 => LutNf3::new(p).map(Lut::Nf3),
            QuantFormat::Int2 | QuantFormat::Int3 => super::lut_int::LutInt::new(p).map(Lut::Int),
            _ => None,
        }
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        match self {
            Lut::Nf3(m) => m.bytes(),
            Lut::Int(m) => m.bytes(),
        }
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Lut::Nf3(m) => (m.rows, m.cols),
            Lut::Int(m) => (m.rows, m.cols),
        }
    }
}
