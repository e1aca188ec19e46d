//! The table kernels' entry points (`lut.rs` for NF3, `lut_int2.rs` for INT2): the decode step
//! `Kernels` runs for a single input, the products and builders the tests and benchmarks call, and
//! the `BD_TABLES` setting.

use super::lut::{LutNf3, LutTables};
use super::lut_int2::{Int2Tables, LutInt2};
#[cfg(target_arch = "x86_64")]
use super::{
    lut::{Lut, BLOCK},
    par_rows, vbmi2_supported, Isa, OutPtr, Scratch,
};

/// `y = W x` for a single input by the table kernel of `lut` (the caller checked the CPU and the
/// shapes): build the input's tables in the session's scratch, then split the blocks of 32 rows
/// across the pool.
#[cfg(target_arch = "x86_64")]
pub(super) fn matvec(lut: &Lut, x: &[f32], out: OutPtr, scratch: &mut Scratch) {
    let cols = x.len();
    // Each "row" of the split is a block of 32 rows.
    match lut {
        Lut::Nf3(m) => {
            if scratch.tables.pcols() < cols {
                // A wider input than the session was made for: grow once.
                scratch.tables = LutTables::new(cols);
            }
            let t = &mut scratch.tables;
            unsafe { super::avx512_lut::build(x, t) };
            let t = &*t;
            let f = |b0: usize, b1: usize, _: usize, _: usize| unsafe { super::avx512_lut::blocks(m, t, b0, b1, out.at(0)) };
            par_rows(m.blocks, BLOCK * cols, 1, 1, f);
        }
        Lut::Int2(m) => {
            if scratch.tables_int2.pcols() < cols {
                scratch.tables_int2 = Int2Tables::new(cols);
            }
            let t = &mut scratch.tables_int2;
            unsafe { super::avx512_lut_int2::build(x, m.group, t) };
            let t = &*t;
            let f = |b0: usize, b1: usize, _: usize, _: usize| unsafe { super::avx512_lut_int2::blocks(m, t, b0, b1, out.at(0)) };
            par_rows(m.blocks, BLOCK * cols, 1, 1, f);
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

/// `y = m x` by the INT2 table scheme (`lut_int2.rs`), tables already built in `t`: the AVX-512
/// kernel where the CPU has AVX-512 VBMI2 and `simd`, else the scalar twin.
#[doc(hidden)]
pub fn lut_int2_matvec(m: &LutInt2, t: &Int2Tables, y: &mut [f32], simd: bool) {
    assert_eq!(y.len(), m.rows, "lut_int2_matvec: output length");
    #[cfg(target_arch = "x86_64")]
    if simd && Isa::Avx512.supported() && vbmi2_supported() {
        unsafe { super::avx512_lut_int2::blocks(m, t, 0, m.blocks, y.as_mut_ptr()) };
        return;
    }
    let _ = simd;
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = super::lut_int2::row_twin(m, t, r);
    }
}

/// Build the INT2 tables of `x` for groups of `group` columns into `t`: the AVX-512 builder where
/// the CPU has it and `simd`, else the twin.
#[doc(hidden)]
pub fn lut_int2_tables(x: &[f32], group: usize, t: &mut Int2Tables, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd && Isa::Avx512.supported() {
        unsafe { super::avx512_lut_int2::build(x, group, t) };
        return;
    }
    let _ = simd;
    t.build_twin(x, group);
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
