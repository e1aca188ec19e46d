//! INT2 and INT3 by table lookup: the scheme of `lut.rs` (T-MAC's idea, lanes as rows) for integer
//! weights, where one 64-entry lookup serves *three* INT2 weights, or two INT3 weights, of each of
//! 32 rows.
//!
//! # The scheme
//!
//! INT-b weight `(r, c)` is `s (q - z)` with `s`, `z` its row and group's scale and zero point.
//! Writing `q - z = (q - m) + (m - z)` with `m = (2^b - 1) / 2` the middle code, a row's group sum
//! is `s (sum_c x_c (q_c - m) + (m - z) X_g)`, `X_g` the sum of the group's inputs. The first part
//! is looked up: for the columns of one lookup (three INT2, two INT3) and the 6-bit index of their
//! codes `i = q_c + 2^b q_{c+1} (+ 4^b q_{c+2})`,
//!
//! ```text
//! T[i] = round(sum_j x'_{c+j} (q_{c+j} - m))
//! ```
//!
//! (`x' = x / d_s`, one scale `d_s` per span of `SPAN` columns: the span's largest
//! `m sum_j |x_{c+j}|` over `EMAX`). Centred codes halve the entries' range against `q` itself.
//! A *unit* of columns fills whole words: INT2 32 columns, 10 triples and a pair (the pair's table
//! has a third input of 0, so its index needs only 4 bits), 11 indices in 64 bits; INT3 16 columns,
//! 8 pairs in 48 bits; both `b` bits a weight like the file. A span's lookups sum exactly in 16 bits
//! (INT2 `11 * 2978`, INT3 `16 * 2047`, below `2^15`). A row's result:
//! `sum_g s_g (sum_span d_s P_s + (m - z_g) X_g)`.
//!
//! # The layout (repacked from the `.bd2` one)
//!
//! Rows in blocks of 32 (`lut::BLOCK`), the last block padded with zero scales. Per block, per
//! unit: `WORDS` registers of 32 words, word `r` of register `i` holding bits `16i..16i + 16` of row
//! `r`'s unit field, lookup `k`'s index at bits [`Shape::field`]. Per block and group: the 32 rows'
//! `s` then their `m - z`, as f16 (both exact).

use super::lut::BLOCK;
use super::reference::decode_chunk;
use bd_formats::quant::{GroupParams, PackedMatrix, QuantFormat, CHUNK};
use rayon::prelude::*;

/// Columns per table scale (and per exact 16-bit sum): a multiple of both units.
pub const SPAN: usize = 32;
/// Columns per column pass (whole groups of every group size the format allows, 16-256): a pass's
/// tables (88 KiB for INT2, 128 KiB for INT3) stay in L2 while every block of rows reads them.
pub const PASS_COLS: usize = 2048;
/// Words of one lookup's table.
pub const ENTRIES: usize = 64;

/// The scheme's shape for one bit width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub bits: u32,
    /// Columns per unit.
    pub unit: usize,
    /// Lookups per unit.
    pub lookups: usize,
    /// Codes per lookup (the last of an INT2 unit has one fewer).
    pub per: usize,
    /// 16-bit words of indices per row and unit.
    pub words: usize,
    /// The middle code `m`.
    pub mid: f32,
    /// Largest table entry.
    pub emax: f32,
}

impl Shape {
    pub const INT2: Shape = Shape { bits: 2, unit: 32, lookups: 11, per: 3, words: 4, mid: 1.5, emax: 2978.0 };
    pub const INT3: Shape = Shape { bits: 3, unit: 16, lookups: 8, per: 2, words: 3, mid: 3.5, emax: 2047.0 };

    pub const fn of(bits: u32) -> Shape {
        if bits == 2 {
            Shape::INT2
        } else {
            Shape::INT3
        }
    }

    /// Bytes of indices per block and unit.
    pub const fn code_bytes(&self) -> usize {
        self.words * 64
    }

    /// Bit offset and width of lookup `k`'s index in a row's unit field.
    pub fn field(&self, k: usize) -> (u32, u32) {
        let width = self.bits * (self.unit - k * self.per).min(self.per) as u32;
        (6 * k as u32, width)
    }

    /// Columns (within the unit) of lookup `k`.
    pub fn columns(&self, k: usize) -> std::ops::Range<usize> {
        k * self.per..((k + 1) * self.per).min(self.unit)
    }

    /// Lane `i` of a lookup's table: the code of its column `j`.
    pub fn code_of(&self, i: usize, j: usize) -> usize {
        (i >> (self.bits as usize * j)) & ((1 << self.bits) - 1)
    }

    /// The value of code `q` in the tables: `q - m`.
    pub fn centred(&self, q: usize) -> f32 {
        q as f32 - self.mid
    }
}

/// An INT2 or INT3 matrix in the table kernel's layout.
#[derive(Clone)]
pub struct LutInt {
    pub shape: Shape,
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    pub groups: usize,
    /// Columns rounded up to a whole number of spans.
    pub pcols: usize,
    pub blocks: usize,
    /// `[block][pcols / unit][words][32]` words.
    pub codes: Vec<u16>,
    /// `[block][group][s 32, m - z 32]` f16 bits.
    pub scales: Vec<u16>,
}

impl std::fmt::Debug for LutInt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LutInt {{ bits: {}, rows: {}, cols: {}, group: {} }}", self.shape.bits, self.rows, self.cols, self.group)
    }
}

impl LutInt {
    /// Whether `p` can be repacked: INT2 or INT3 with groups of whole spans.
    pub fn supports(p: &PackedMatrix) -> bool {
        matches!(p.format(), QuantFormat::Int2 | QuantFormat::Int3)
            && p.layout.group >= SPAN
            && p.layout.group.is_multiple_of(SPAN)
            && PASS_COLS.is_multiple_of(p.layout.group)
    }

    /// Repack `p` (`None` where [`LutInt::supports`] says no). Blocks in parallel on the current
    /// rayon pool.
    pub fn new(p: &PackedMatrix) -> Option<Self> {
        if !Self::supports(p) {
            return None;
        }
        let sh = Shape::of(p.format().bits());
        let l = &p.layout;
        let (rows, cols, group, groups) = (l.rows, l.cols, l.group, l.groups);
        let pcols = cols.div_ceil(SPAN) * SPAN;
        let blocks = rows.div_ceil(BLOCK);
        let (codes, scales) = repack(p, sh, 0, |r, g| {
            let GroupParams::Int { scale, zero } = p.params(r, g) else { unreachable!("INT formats have integer parameters") };
            // Exact in f16 for any 8-bit zero point.
            (scale.to_bits(), half::f16::from_f32(sh.mid - zero as f32).to_bits())
        });
        Some(Self { shape: sh, rows, cols, group, groups, pcols, blocks, codes, scales })
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        2 * (self.codes.len() + self.scales.len())
    }

    /// Row `r`'s unit field of unit `u`.
    fn unit_field(&self, r: usize, u: usize) -> u64 {
        let (b, lane, w) = (r / BLOCK, r % BLOCK, self.shape.words);
        let units = self.pcols / self.shape.unit;
        (0..w).fold(0u64, |f, i| f | (self.codes[((b * units + u) * w + i) * BLOCK + lane] as u64) << (16 * i))
    }

    /// Row `r`'s index of lookup `k` in unit `u` (tests and the twin).
    pub fn index(&self, r: usize, u: usize, k: usize) -> usize {
        let (at, width) = self.shape.field(k);
        ((self.unit_field(r, u) >> at) & ((1 << width) - 1)) as usize
    }

    /// The code of weight `(r, c)` as the layout holds it (tests).
    pub fn code(&self, r: usize, c: usize) -> u8 {
        let sh = self.shape;
        let (u, j) = (c / sh.unit, c % sh.unit);
        sh.code_of(self.index(r, u, j / sh.per), j % sh.per) as u8
    }
}

/// Repack `p` into blocks of 32 rows for a table kernel (this module's layout, which NF3's
/// (`lut.rs`) shares with `Shape::INT3`): per block and unit of `sh.unit` columns, `sh.words` words
/// a row with lookup `k`'s index at `sh.field(k)`, codes past the matrix and in padding rows being
/// `pad`; per block and group, the 32 rows' two f16 parameters `params(r, g)`, zero for padding
/// rows. Blocks in parallel on the current rayon pool; each row's chunks are unpacked once.
pub(super) fn repack(
    p: &PackedMatrix,
    sh: Shape,
    pad: u8,
    params: impl Fn(usize, usize) -> (u16, u16) + Sync,
) -> (Vec<u16>, Vec<u16>) {
    let l = &p.layout;
    let (rows, cols, groups) = (l.rows, l.cols, l.groups);
    let units = cols.div_ceil(SPAN) * SPAN / sh.unit;
    let blocks = rows.div_ceil(BLOCK);
    let mut codes = vec![0u16; blocks * units * sh.words * BLOCK];
    let mut scales = vec![0u16; blocks * groups * 2 * BLOCK];
    let cb = l.row_code_bytes / (l.padded_cols() / CHUNK);
    codes.par_chunks_mut(units * sh.words * BLOCK).zip(scales.par_chunks_mut(groups * 2 * BLOCK)).enumerate().for_each(
        |(b, (codes, scales))| {
            let mut q = vec![pad; l.padded_cols()];
            let mut chunk = [0u8; CHUNK];
            for lane in 0..BLOCK {
                let r = b * BLOCK + lane;
                if r < rows {
                    let rc = p.row_codes(r);
                    for cc in 0..l.padded_cols() / CHUNK {
                        decode_chunk(p.format(), &rc[cc * cb..][..cb], &mut chunk);
                        q[cc * CHUNK..][..CHUNK].copy_from_slice(&chunk);
                    }
                    q[cols..].fill(pad);
                    for g in 0..groups {
                        let (a, c) = params(r, g);
                        scales[g * 2 * BLOCK + lane] = a;
                        scales[g * 2 * BLOCK + BLOCK + lane] = c;
                    }
                } else {
                    q.fill(pad);
                }
                for u in 0..units {
                    // Lookup `k` takes `per` codes of `bits` at bit `6k = bits * per * k`, so a
                    // unit's field is simply its codes in order, `bits` each.
                    let f = q[u * sh.unit..][..sh.unit].iter().rev().fold(0u64, |f, &c| f << sh.bits | c as u64);
                    for i in 0..sh.words {
                        codes[(u * sh.words + i) * BLOCK + lane] = (f >> (16 * i)) as u16;
                    }
                }
            }
        },
    );
    (codes, scales)
}

/// The activation tables of one input: per unit, its lookups' 64 words; per span its scale `d_s`;
/// per group the sum of its inputs `X_g`. Allocated for a capacity of columns (either width, groups
/// of 32 or more); a build fills those of its input.
pub struct IntTables {
    pub tabs: Vec<i16>,
    pub d: Vec<f32>,
    pub xsum: Vec<f32>,
}

impl IntTables {
    /// Room for inputs of up to `cols` values.
    pub fn new(cols: usize) -> Self {
        let pcols = cols.div_ceil(SPAN) * SPAN;
        // INT3's 8 lookups per 16 columns are the larger of the two.
        Self { tabs: vec![0; pcols / 2 * ENTRIES], d: vec![0.0; pcols / SPAN], xsum: vec![0.0; pcols / SPAN] }
    }

    /// Columns the tables can cover.
    pub fn pcols(&self) -> usize {
        self.d.len() * SPAN
    }

    /// Spans a build for an input of `cols` values fills (checked against the capacity).
    pub(crate) fn spans(&self, cols: usize) -> usize {
        assert!(cols <= self.pcols(), "input of {cols} values for tables of {} columns", self.pcols());
        cols.div_ceil(SPAN)
    }

    /// Set the group sums of `x` for groups of `group` columns ([`group_sum`]).
    pub(crate) fn sum_groups(&mut self, x: &[f32], group: usize) {
        assert!(group >= SPAN, "groups of {group} columns for the INT tables");
        for g in 0..x.len().div_ceil(group) {
            self.xsum[g] = group_sum(x, group, g);
        }
    }

    /// Build the tables of `x` for a matrix of shape `sh` with groups of `group` columns in plain
    /// Rust (columns past `x`, up to the next span, are zero): the definition the SIMD builder is
    /// tested against.
    pub fn build_twin(&mut self, x: &[f32], sh: Shape, group: usize) {
        let xv = |c: usize| if c < x.len() { x[c] } else { 0.0 };
        self.sum_groups(x, group);
        for s in 0..self.spans(x.len()) {
            let inv = self.scale_span(x, sh, s);
            for u in s * SPAN / sh.unit..(s + 1) * SPAN / sh.unit {
                for k in 0..sh.lookups {
                    let mut xs = [0.0f32; 3];
                    for (j, c) in sh.columns(k).enumerate() {
                        xs[j] = xv(u * sh.unit + c) * inv;
                    }
                    entries(sh, xs, &mut self.tabs[(u * sh.lookups + k) * ENTRIES..][..ENTRIES]);
                }
            }
        }
    }

    /// Set span `s`'s scale `d_s` from `x` ([`span_scale`]) and return `1 / d_s`.
    #[inline]
    pub(crate) fn scale_span(&mut self, x: &[f32], sh: Shape, s: usize) -> f32 {
        let (d, inv) = span_scale(x, sh, s);
        self.d[s] = d;
        inv
    }

    /// Raw pointers to the tables, for builders and kernels that split the columns across threads
    /// (each thread writing, then reading, only its own spans: disjoint parts no `&mut` to the
    /// whole could hand out).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn raw(&mut self) -> IntTablesRaw {
        IntTablesRaw { tabs: self.tabs.as_mut_ptr(), d: self.d.as_mut_ptr(), xsum: self.xsum.as_mut_ptr() }
    }

    /// Read-only raw pointers (the kernels' view of tables built before them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn view(&self) -> IntTablesRaw {
        IntTablesRaw {
            tabs: self.tabs.as_ptr() as *mut i16,
            d: self.d.as_ptr() as *mut f32,
            xsum: self.xsum.as_ptr() as *mut f32,
        }
    }
}

/// [`IntTables`] as raw pointers (see [`IntTables::raw`]).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct IntTablesRaw {
    pub tabs: *mut i16,
    pub d: *mut f32,
    pub xsum: *mut f32,
}

// Shared across the pool's threads, which touch disjoint spans (`IntTables::raw`).
unsafe impl Send for IntTablesRaw {}
unsafe impl Sync for IntTablesRaw {}

/// The sum of group `g` of `x` (sequential f32 sums; a NaN or infinite input makes its group's sum
/// so, and that reaches every output).
#[inline]
pub(crate) fn group_sum(x: &[f32], group: usize, g: usize) -> f32 {
    x[g * group..((g + 1) * group).min(x.len())].iter().fold(0.0f32, |a, &v| a + v)
}

/// Span `s`'s scale `d_s` from `x` and `1 / d_s`: 0 for an all-zero span, and for one with a NaN or
/// infinite value, whose scale is NaN so that every output it reaches is NaN.
#[inline]
pub(crate) fn span_scale(x: &[f32], sh: Shape, s: usize) -> (f32, f32) {
    let xv = |c: usize| if c < x.len() { x[c].abs() } else { 0.0 };
    let mut m = 0.0f32;
    for u in s * SPAN / sh.unit..(s + 1) * SPAN / sh.unit {
        for k in 0..sh.lookups {
            let v = sh.mid * sh.columns(k).fold(0.0f32, |a, c| a + xv(u * sh.unit + c));
            // `f32::max` skips NaN; a NaN or infinite input must reach the output instead.
            m = if m.is_nan() || !v.is_finite() { f32::NAN } else { m.max(v) };
        }
    }
    match m {
        _ if m.is_nan() => (f32::NAN, 0.0),
        _ if m > 1e-30 => (m / sh.emax, sh.emax / m),
        _ => (0.0, 0.0),
    }
}

/// A lookup's 64 table entries from its scaled inputs (`xs[j]` for its column `j`; 0 past its
/// columns), with the f32 operations of the SIMD builder: the first column's product, then one FMA
/// per further column.
pub fn entries(sh: Shape, xs: [f32; 3], t: &mut [i16]) {
    for (i, e) in t[..ENTRIES].iter_mut().enumerate() {
        let mut v = xs[0] * sh.centred(sh.code_of(i, 0));
        for (j, &x) in xs.iter().enumerate().take(sh.per).skip(1) {
            v = x.mul_add(sh.centred(sh.code_of(i, j)), v);
        }
        *e = v.round_ties_even() as i16;
    }
}

/// The scalar twin: row `r` of `m` times the input whose tables are `t`, with the arithmetic of
/// the SIMD kernel (exact integer span sums; per group `u = sum d_s P_s` in span order, then
/// `y += s (u + (m - z) X_g)` by FMAs; per column pass of `PASS_COLS` columns a partial sum, the
/// passes added in order).
pub fn row_twin(m: &LutInt, t: &IntTables, r: usize) -> f32 {
    row_twin_parts(m, t, r, 1)
}

/// [`row_twin`] as the table product splits its columns into `parts` (`lut::column_part`): each
/// part's sum as above over its own spans, the parts added in order.
pub fn row_twin_parts(m: &LutInt, t: &IntTables, r: usize, parts: usize) -> f32 {
    let spans = m.pcols / SPAN;
    let mut y = 0.0f32;
    for j in 0..parts {
        let (c0, c1) = super::lut::column_part(spans, m.group / SPAN, parts, j);
        let part = twin_spans(m, t, r, c0, c1);
        y = if j == 0 { part } else { y + part };
    }
    y
}

fn twin_spans(m: &LutInt, t: &IntTables, r: usize, c0: usize, c1: usize) -> f32 {
    let (b, lane, sh) = (r / BLOCK, r % BLOCK, m.shape);
    let (spg, spp) = (m.group / SPAN, PASS_COLS / SPAN);
    let mut y = 0.0f32;
    for (pass, s0) in (c0..c1).step_by(spp).enumerate() {
        let s1 = (s0 + spp).min(c1);
        let mut part = 0.0f32;
        for g in s0 / spg..s1.div_ceil(spg) {
            let mut acc = 0.0f32;
            for s in g * spg..((g + 1) * spg).min(s1) {
                let mut p = 0i32;
                for u in s * SPAN / sh.unit..(s + 1) * SPAN / sh.unit {
                    for k in 0..sh.lookups {
                        p += t.tabs[(u * sh.lookups + k) * ENTRIES + m.index(r, u, k)] as i32;
                    }
                }
                acc = (p as f32).mul_add(t.d[s], acc);
            }
            let at = (b * m.groups + g) * 2 * BLOCK + lane;
            let sc = half::f16::from_bits(m.scales[at]).to_f32();
            let c = half::f16::from_bits(m.scales[at + BLOCK]).to_f32();
            part = sc.mul_add(c.mul_add(t.xsum[g], acc), part);
        }
        y = if pass == 0 { part } else { y + part };
    }
    y
}
