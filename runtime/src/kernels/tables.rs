//! The table kernels' entry points (`lut.rs` for NF3, `lut_int.rs` for INT2 and INT3): the decode step
//! `Kernels` runs for a single input, the products and builders the tests and benchmarks call, and
//! the `BD_TABLES` setting.

use super::lut::{LutNf3, LutTables};
use super::lut_int::{IntTables, LutInt};
#[cfg(target_arch = "x86_64")]
use super::{
    lut::{column_part, SEG},
    lut_int::SPAN,
};
#[cfg(target_arch = "x86_64")]
use super::{
    lut::{Lut, BLOCK},
    par_rows, vbmi2_supported, Isa, OutPtr, Scratch,
};
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

/// `y = W x` for a single input by the table kernel of `lut` (the caller checked the CPU and the
/// shapes), its tables in the session's scratch. On a pool of 2 to `MAX_PARTS` threads the columns
/// are split ([`column_parts`]); otherwise the tables are built first and the blocks of 32 rows
/// split across the pool.
#[cfg(target_arch = "x86_64")]
pub(super) fn matvec(lut: &Lut, x: &[f32], out: OutPtr, scratch: &mut Scratch) {
    let cols = x.len();
    let parts = column_parts(lut);
    match lut {
        Lut::Nf3(m) => {
            if scratch.tables.pcols() < cols {
                // A wider input than the session was made for: grow once.
                scratch.tables = LutTables::new(cols);
            }
            if parts <= 1 {
                let t = &mut scratch.tables;
                unsafe { super::avx512_lut::build(x, t) };
                let t = &*t;
                // Each "row" of the split is a block of 32 rows.
                let f = |b0: usize, b1: usize, _: usize, _: usize| unsafe { super::avx512_lut::blocks(m, t, b0, b1, out.at(0)) };
                par_rows(m.blocks, BLOCK * cols, 1, 1, f);
                return;
            }
            let (rows, segs) = (m.rows, m.pcols / SEG);
            let partial = scratch.partials(parts - 1, rows);
            assert!(scratch.tables.segs(cols) == segs, "tables for {cols} columns");
            let t = scratch.tables.raw();
            split_columns(parts, segs, m.group / SEG, rows, out, partial, |c0, c1, y| unsafe {
                super::avx512_lut::build_segs(x, t, c0, c1);
                super::avx512_lut::blocks_segs(m, t, 0, m.blocks, c0, c1, y);
            });
        }
        Lut::Int(m) => {
            if scratch.tables_int.pcols() < cols {
                scratch.tables_int = IntTables::new(cols);
            }
            if parts <= 1 {
                let t = &mut scratch.tables_int;
                unsafe { super::avx512_lut_int::build(x, m.shape, m.group, t) };
                let t = &*t;
                // Each "row" of the split is a block of 32 rows.
                let f =
                    |b0: usize, b1: usize, _: usize, _: usize| unsafe { super::avx512_lut_int::blocks(m, t, b0, b1, out.at(0)) };
                par_rows(m.blocks, BLOCK * cols, 1, 1, f);
                return;
            }
            let (rows, spans) = (m.rows, m.pcols / SPAN);
            let partial = scratch.partials(parts - 1, rows);
            assert!(scratch.tables_int.spans(cols) == spans, "tables for {cols} columns");
            let t = scratch.tables_int.raw();
            split_columns(parts, spans, m.group / SPAN, rows, out, partial, |c0, c1, y| unsafe {
                super::avx512_lut_int::build_spans(x, m.shape, m.group, t, c0, c1);
                super::avx512_lut_int::blocks_spans(m, t, 0, m.blocks, c0, c1, y);
            });
        }
    }
}

/// Run `part(c0, c1, y)` for each of `parts` column parts of `units` units ([`column_part`]) on
/// the pool, where each part builds the tables of its own columns and runs every row over them,
/// into `out` (part 0) or its partial sum in `partial`; then add the partial sums into `out`.
#[cfg(target_arch = "x86_64")]
fn split_columns(
    parts: usize,
    units: usize,
    per_group: usize,
    rows: usize,
    out: OutPtr,
    partial: OutPtr,
    part: impl Fn(usize, usize, *mut f32) + Sync,
) {
    (0..parts).into_par_iter().for_each(|j| {
        let (c0, c1) = column_part(units, per_group, parts, j);
        part(c0, c1, if j == 0 { out.at(0) } else { partial.at((j - 1) * rows) });
    });
    add_partials(out, partial, parts - 1, rows);
}

/// How many column parts a table product of `lut` is split into on the current pool: one per
/// thread, each of at least `MIN_PART_GROUPS` groups, or 1 (no split) where the product is too
/// small to share or the pool has more than `MAX_PARTS` threads.
///
/// Why columns and not rows as the other kernels: each part builds the tables of its own columns
/// and reads them from its own core's L2, where a split by rows waits for one thread to build all
/// of them and then moves them to the other cores (Zen 4, 2 threads, 4096² in cache: 20-30% of the
/// product's time, `BENCHMARKS.md`).
#[cfg(target_arch = "x86_64")]
pub(super) fn column_parts(lut: &Lut) -> usize {
    let (work, groups) = match lut {
        Lut::Nf3(m) => (m.rows * m.cols, m.pcols / m.group),
        Lut::Int(m) => (m.rows * m.cols, m.pcols / m.group),
    };
    let threads = rayon::current_num_threads();
    if threads <= 1 || threads > MAX_PARTS || work < super::SERIAL_WORK {
        return 1;
    }
    threads.min(groups / MIN_PART_GROUPS).max(1)
}

/// Most column parts (threads) a table product is split into. Past it the pool splits rows as
/// the other kernels do: every part reads all rows, and the partial sums added at the end on one
/// thread grow with the parts (this machine, with 2 cores, measured only 2).
#[cfg(target_arch = "x86_64")]
pub(super) const MAX_PARTS: usize = 4;

/// Fewest groups a column part takes.
#[cfg(target_arch = "x86_64")]
const MIN_PART_GROUPS: usize = 2;

/// `y += p_0 + p_1 + ...`, the partial sums of parts 1.. (in order, so results do not depend on
/// which thread finished first).
#[cfg(target_arch = "x86_64")]
fn add_partials(y: OutPtr, partial: OutPtr, n: usize, rows: usize) {
    let y = unsafe { std::slice::from_raw_parts_mut(y.at(0), rows) };
    for j in 0..n {
        let p = unsafe { std::slice::from_raw_parts(partial.at(j * rows), rows) };
        for (a, b) in y.iter_mut().zip(p) {
            *a += b;
        }
    }
}

/// `y = m x` by the NF3 table scheme (`lut.rs`), tables already built in `t`: the AVX-512 kernel
/// where the CPU has AVX-512 VBMI2 and `simd`, else the scalar twin.
#[doc(hidden)]
pub fn lut_matvec(m: &LutNf3, t: &LutTables, y: &mut [f32], simd: bool) {
    assert_eq!(y.len(), m.rows, "lut_matvec: output length");
    #[cfg(target_arch = "x86_64")]
    if simd && Isa::Avx512.supported() && vbmi2_supported() {
        unsafe { super::avx512_lut::blocks(m, t, 0, m.blocks, y.as_mut_ptr()) };
        return;
    }
    let _ = simd;
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = super::lut::row_twin(m, t, r);
    }
}

/// Build the NF3 tables of `x` into `t`: the AVX-512 builder where the CPU has it and `simd`, else
/// the twin.
#[doc(hidden)]
pub fn lut_tables(x: &[f32], t: &mut LutTables, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd && Isa::Avx512.supported() {
        unsafe { super::avx512_lut::build(x, t) };
        return;
    }
    let _ = simd;
    t.build_twin(x);
}

/// `y = m x` by the INT table scheme (`lut_int.rs`), tables already built in `t`: the AVX-512
/// kernel where the CPU has AVX-512 VBMI2 and `simd`, else the scalar twin.
#[doc(hidden)]
pub fn lut_int_matvec(m: &LutInt, t: &IntTables, y: &mut [f32], simd: bool) {
    assert_eq!(y.len(), m.rows, "lut_int_matvec: output length");
    #[cfg(target_arch = "x86_64")]
    if simd && Isa::Avx512.supported() && vbmi2_supported() {
        unsafe { super::avx512_lut_int::blocks(m, t, 0, m.blocks, y.as_mut_ptr()) };
        return;
    }
    let _ = simd;
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = super::lut_int::row_twin(m, t, r);
    }
}

/// Build the tables of `x` for `m` (its width and group size) into `t`: the AVX-512 builder where
/// the CPU has it and `simd`, else the twin.
#[doc(hidden)]
pub fn lut_int_tables(x: &[f32], m: &LutInt, t: &mut IntTables, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd && Isa::Avx512.supported() {
        unsafe { super::avx512_lut_int::build(x, m.shape, m.group, t) };
        return;
    }
    let _ = simd;
    t.build_twin(x, m.shape, m.group);
}

/// What the value of the variable `name` (`BD_TABLES`, or its earlier name `BD_NF3_TABLES`)
/// selects (`1`: the table kernels), and the warning for a value that is neither 0 nor 1 (which
/// keeps them off).
pub fn tables_setting(name: &str, v: Option<&str>) -> (bool, Option<String>) {
    match v.map(str::trim) {
        None | Some("") | Some("0") => (false, None),
        Some("1") => (true, None),
        Some(other) => (false, Some(format!("{name}={other} is not 0 or 1; the table kernels stay off"))),
    }
}
