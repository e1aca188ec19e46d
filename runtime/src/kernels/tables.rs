//! The table kernels' entry points (`lut.rs` for NF3, `lut_int.rs` for INT2 and INT3): the decode step
//! `Kernels` runs for a single input, the products and builders the tests and benchmarks call, and
//! the `BD_TABLES` setting.

use super::lut::{LutNf3, LutTables};
use super::lut_int::{IntTables, LutInt};
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
        Lut::Int(m) => {
            if scratch.tables_int.pcols() < cols {
                scratch.tables_int = IntTables::new(cols);
            }
            let t = &mut scratch.tables_int;
            unsafe { super::avx512_lut_int::build(x, m.shape, m.group, t) };
            let t = &*t;
            let f = |b0: usize, b1: usize, _: usize, _: usize| unsafe { super::avx512_lut_int::blocks(m, t, b0, b1, out.at(0)) };
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
