//! INT2 by table lookup: the scheme of `lut.rs` (T-MAC's idea, lanes as rows) for 2-bit integer
//! weights, where one 64-entry lookup serves *three* weights of each of 32 rows.
//!
//! # The scheme
//!
//! INT2 weight `(r, c)` is `s (q - z)` with `s`, `z` its row and group's scale and zero point.
//! Writing `q - z = (q - 3/2) + (3/2 - z)`, a row's group sum is
//! `s (sum_c x_c (q_c - 3/2) + (3/2 - z) X_g)`, `X_g` the sum of the group's inputs. The first
//! part is looked up: for three columns and the 6-bit index `i = q_c + 4 q_{c+1} + 16 q_{c+2}`,
//!
//! ```text
//! T[i] = round(x'_c (q_c - 3/2) + x'_{c+1} (q_{c+1} - 3/2) + x'_{c+2} (q_{c+2} - 3/2))
//! ```
//!
//! (`x' = x / d_s`, one scale `d_s` per span of `SPAN` columns, the largest `3/2 (|x_c| +
//! |x_{c+1}| + |x_{c+2}|)` of the span over `EMAX`). A *unit* of 32 columns is 10 triples and a
//! pair (the pair's table has a third input of 0, so its index needs only 4 bits): 11 lookups, and
//! its indices fill exactly 64 bits, 2 bits a weight like the file. Centred codes halve the
//! entries' range against `q` itself, so a span's lookups sum exactly in 16 bits with `EMAX`
//! ~12 bits (`11 * EMAX < 2^15`). A row's result: `sum_g s_g (sum_span d_s P_s + (3/2 - z_g) X_g)`.
//!
//! # The layout (repacked from the `.bd2` one)
//!
//! Rows in blocks of 32 (`lut::BLOCK`), the last block padded with zero scales. Per block, per
//! unit: four registers `z0..z3` of 32 words, word `r` of `z_i` holding bits `16i..16i + 16` of row
//! `r`'s 64-bit field `F_r`: triple `k` (0-9) at bits `6k..6k + 6`, the pair at bits 60-63.
//! Per block and group: the 32 rows' `s` then their `3/2 - z`, as f16 (both exact).

use super::lut::BLOCK;
use super::reference::decode_chunk;
use bd_formats::quant::{GroupParams, PackedMatrix, QuantFormat, CHUNK};
use rayon::prelude::*;

/// Columns per unit: 10 triples and a pair, 4 words of indices a row.
pub const UNIT: usize = 32;
/// Lookups per unit.
pub const LOOKUPS: usize = 11;
/// Columns per table scale (and per exact 16-bit sum): a multiple of `UNIT`.
pub const SPAN: usize = 32;
/// Largest table entry: a span's lookups sum without overflow in 16 bits.
pub const EMAX: f32 = (32767 / (LOOKUPS * SPAN / UNIT)) as f32;
/// Units per column pass (2048 columns, whole groups of any size): a pass's tables (88 KiB) stay
/// in L2 while every block of rows reads them.
pub const PASS_UNITS: usize = 64;
/// Bytes of codes per block and unit.
pub const CODE_BYTES: usize = 4 * 64;
/// Words of one lookup's table.
pub const ENTRIES: usize = 64;

/// An INT2 matrix in the table kernel's layout.
#[derive(Clone)]
pub struct LutInt2 {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    pub groups: usize,
    /// Columns rounded up to a whole number of units.
    pub pcols: usize,
    pub blocks: usize,
    /// `[block][pcols / UNIT][4][32]` words.
    pub codes: Vec<u16>,
    /// `[block][group][s 32, 3/2 - z 32]` f16 bits.
    pub scales: Vec<u16>,
}

impl std::fmt::Debug for LutInt2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LutInt2 {{ rows: {}, cols: {}, group: {} }}", self.rows, self.cols, self.group)
    }
}

/// Bit offset and width of lookup `k`'s index in a row's 64-bit unit field.
pub fn field(k: usize) -> (u32, u32) {
    if k < 10 {
        (6 * k as u32, 6)
    } else {
        (60, 4)
    }
}

impl LutInt2 {
    /// Whether `p` can be repacked: INT2 with groups of whole spans.
    pub fn supports(p: &PackedMatrix) -> bool {
        p.format() == QuantFormat::Int2 && p.layout.group >= SPAN && p.layout.group.is_multiple_of(SPAN)
    }

    /// Repack `p` (`None` where [`LutInt2::supports`] says no). Blocks in parallel on the current
    /// rayon pool.
    pub fn new(p: &PackedMatrix) -> Option<Self> {
        if !Self::supports(p) {
            return None;
        }
        let l = &p.layout;
        let (rows, cols, group, groups) = (l.rows, l.cols, l.group, l.groups);
        let pcols = cols.div_ceil(UNIT) * UNIT;
        let blocks = rows.div_ceil(BLOCK);
        let units = pcols / UNIT;
        let mut codes = vec![0u16; blocks * units * 4 * BLOCK];
        let mut scales = vec![0u16; blocks * groups * 2 * BLOCK];
        let cb = l.row_code_bytes / (l.padded_cols() / CHUNK);
        codes.par_chunks_mut(units * 4 * BLOCK).zip(scales.par_chunks_mut(groups * 2 * BLOCK)).enumerate().for_each(
            |(b, (codes, scales))| {
                let mut q = vec![0u8; units * UNIT];
                let mut chunk = [0u8; CHUNK];
                for lane in 0..BLOCK {
                    let r = b * BLOCK + lane;
                    if r >= rows {
                        // Padding rows: zero codes and zero scales (left as allocated).
                        continue;
                    }
                    let rc = p.row_codes(r);
                    for cc in 0..l.padded_cols() / CHUNK {
                        decode_chunk(QuantFormat::Int2, &rc[cc * cb..][..cb], &mut chunk);
                        let n = CHUNK.min(cols - (cc * CHUNK).min(cols));
                        q[cc * CHUNK..][..n].copy_from_slice(&chunk[..n]);
                    }
                    for u in 0..units {
                        let qs = &q[u * UNIT..][..UNIT];
                        let f = (0..LOOKUPS).fold(0u64, |f, k| {
                            let i = qs[3 * k] as u64
                                | (qs[3 * k + 1] as u64) << 2
                                | qs.get(3 * k + 2).map_or(0, |&v| (v as u64) << 4);
                            f | i << field(k).0
                        });
                        for i in 0..4 {
                            codes[(u * 4 + i) * BLOCK + lane] = (f >> (16 * i)) as u16;
                        }
                    }
                    for g in 0..groups {
                        let GroupParams::Int { scale, zero } = p.params(r, g) else {
                            unreachable!("INT2 has integer parameters")
                        };
                        scales[g * 2 * BLOCK + lane] = scale.to_bits();
                        // Exact in f16 for any 8-bit zero point.
                        scales[g * 2 * BLOCK + BLOCK + lane] = half::f16::from_f32(1.5 - zero as f32).to_bits();
                    }
                }
            },
        );
        Some(Self { rows, cols, group, groups, pcols, blocks, codes, scales })
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        2 * (self.codes.len() + self.scales.len())
    }

    /// The code of weight `(r, c)` as the layout holds it (tests).
    pub fn code(&self, r: usize, c: usize) -> u8 {
        let (b, lane, u, j) = (r / BLOCK, r % BLOCK, c / UNIT, c % UNIT);
        let w = |i: usize| self.codes[((b * (self.pcols / UNIT) + u) * 4 + i) * BLOCK + lane] as u64;
        let f = w(0) | w(1) << 16 | w(2) << 32 | w(3) << 48;
        ((f >> (field(j / 3).0 + 2 * (j % 3) as u32)) & 3) as u8
    }

    /// Row `r`'s index of lookup `k` in unit `u` (tests and the twin).
    pub fn index(&self, r: usize, u: usize, k: usize) -> usize {
        let (b, lane) = (r / BLOCK, r % BLOCK);
        let w = |i: usize| self.codes[((b * (self.pcols / UNIT) + u) * 4 + i) * BLOCK + lane] as u64;
        let f = w(0) | w(1) << 16 | w(2) << 32 | w(3) << 48;
        let (at, bits) = field(k);
        ((f >> at) & ((1 << bits) - 1)) as usize
    }
}

/// The activation tables of one input: per unit, its 11 lookups' 64 words; per span its scale
/// `d_s`; per group the sum of its inputs `X_g`. Allocated for a capacity of columns and groups; a
/// build fills those of its input.
pub struct Int2Tables {
    pub tabs: Vec<i16>,
    pub d: Vec<f32>,
    pub xsum: Vec<f32>,
}

/// The value of code `q` in the tables: `q - 3/2`.
pub fn centred(q: usize) -> f32 {
    q as f32 - 1.5
}

impl Int2Tables {
    /// Room for inputs of up to `cols` values (and groups of 32 or more).
    pub fn new(cols: usize) -> Self {
        let pcols = cols.div_ceil(UNIT) * UNIT;
        Self { tabs: vec![0; pcols / UNIT * LOOKUPS * ENTRIES], d: vec![0.0; pcols / SPAN], xsum: vec![0.0; pcols / UNIT] }
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

    /// Set the group sums of `x` for groups of `group` columns (sequential f32 sums; a NaN or
    /// infinite input makes its group's sum so, and that reaches every output).
    pub(crate) fn sum_groups(&mut self, x: &[f32], group: usize) {
        assert!(group >= UNIT, "groups of {group} columns for the INT2 tables");
        for (g, s) in x.chunks(group).zip(self.xsum.iter_mut()) {
            *s = g.iter().fold(0.0f32, |a, &v| a + v);
        }
    }

    /// Build the tables of `x` for a matrix with groups of `group` columns in plain Rust (columns
    /// past `x`, up to the next span, are zero): the definition the SIMD builder is tested against.
    pub fn build_twin(&mut self, x: &[f32], group: usize) {
        let xv = |c: usize| if c < x.len() { x[c] } else { 0.0 };
        self.sum_groups(x, group);
        for s in 0..self.spans(x.len()) {
            let inv = self.scale_span(x, s);
            for u in s * SPAN / UNIT..(s + 1) * SPAN / UNIT {
                for k in 0..LOOKUPS {
                    let c = u * UNIT + 3 * k;
                    let x3 = if k < 10 { xv(c + 2) * inv } else { 0.0 };
                    entries(xv(c) * inv, xv(c + 1) * inv, x3, &mut self.tabs[(u * LOOKUPS + k) * ENTRIES..][..ENTRIES]);
                }
            }
        }
    }

    /// Set span `s`'s scale `d_s` from `x` and return `1 / d_s`: 0 for an all-zero span, and for
    /// one with a NaN or infinite value, whose scale is NaN so that every output it reaches is NaN.
    pub(crate) fn scale_span(&mut self, x: &[f32], s: usize) -> f32 {
        let xv = |c: usize| if c < x.len() { x[c].abs() } else { 0.0 };
        let sums = (s * SPAN / UNIT..(s + 1) * SPAN / UNIT).flat_map(|u| {
            (0..LOOKUPS).map(move |k| {
                let c = u * UNIT + 3 * k;
                1.5 * (xv(c) + xv(c + 1) + if k < 10 { xv(c + 2) } else { 0.0 })
            })
        });
        // `f32::max` skips NaN; a NaN or infinite input must reach the output instead.
        let m = sums.fold(0.0f32, |m, v| if m.is_nan() || !v.is_finite() { f32::NAN } else { m.max(v) });
        let (d, inv) = match m {
            _ if m.is_nan() => (f32::NAN, 0.0),
            _ if m > 1e-30 => (m / EMAX, EMAX / m),
            _ => (0.0, 0.0),
        };
        self.d[s] = d;
        inv
    }
}

/// A lookup's 64 table entries from its three scaled inputs (lane `i`: codes `i % 4`, `i / 4 % 4`,
/// `i / 16`), with the f32 operations of the SIMD builder.
pub fn entries(x1: f32, x2: f32, x3: f32, t: &mut [i16]) {
    for (i, e) in t[..ENTRIES].iter_mut().enumerate() {
        let v = x3.mul_add(centred(i / 16), x2.mul_add(centred(i / 4 % 4), x1 * centred(i % 4)));
        *e = v.round_ties_even() as i16;
    }
}

/// The scalar twin: row `r` of `m` times the input whose tables are `t`, with the arithmetic of
/// the SIMD kernel (exact integer span sums; per group `u = sum d_s P_s` in span order, then
/// `y += s (u + c X_g)` by FMAs; per column pass of `PASS_UNITS` units a partial sum, the passes
/// added in order).
pub fn row_twin(m: &LutInt2, t: &Int2Tables, r: usize) -> f32 {
    let (b, lane) = (r / BLOCK, r % BLOCK);
    let units = m.pcols / UNIT;
    let upg = m.group / UNIT;
    let mut y = 0.0f32;
    for (pass, u0) in (0..units).step_by(PASS_UNITS).enumerate() {
        let u1 = (u0 + PASS_UNITS).min(units);
        let mut part = 0.0f32;
        for g in u0 / upg..u1.div_ceil(upg) {
            let mut acc = 0.0f32;
            for s in (g * upg).max(u0) * UNIT / SPAN..((g + 1) * upg).min(u1) * UNIT / SPAN {
                let mut p = 0i32;
                for u in s * SPAN / UNIT..(s + 1) * SPAN / UNIT {
                    for k in 0..LOOKUPS {
                        p += t.tabs[(u * LOOKUPS + k) * ENTRIES + m.index(r, u, k)] as i32;
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
