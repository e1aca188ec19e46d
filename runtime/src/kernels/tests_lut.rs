//! The NF3 table scheme (`lut.rs`): the repacked layout holds the file's codes, the SIMD table
//! builder and kernel equal their scalar twins exactly, the twin is within the bound of its table
//! rounding of the exact product, and `Kernels` takes the table kernel only where it should.

use super::lut::{row_twin, Lut, LutNf3, LutTables, BLOCK, EMAX, SEG};
use super::tests::{exact, magnitude, Quant, Rng};
use super::*;
use bd_formats::quant::{GroupParams, QuantFormat};

/// Shapes with partial blocks, partial segments and partial groups, and whole ones.
const SHAPES: [(usize, usize); 8] = [(1, 32), (3, 5), (31, 100), (33, 129), (70, 300), (129, 1000), (256, 4096), (40, 4500)];

fn twin_all(m: &LutNf3, t: &LutTables) -> Vec<f32> {
    (0..m.rows).map(|r| row_twin(m, t, r)).collect()
}

fn tables(x: &[f32], simd: bool) -> LutTables {
    let mut t = LutTables::new(x.len());
    lut_tables(x, &mut t, simd);
    t
}

/// `|twin - exact| <= sum_seg 16 * 0.5 * d_s * (pos + neg)`: each of a segment's 16 entries of
/// each table is rounded by at most half a unit of `d_s`.
fn bound(q: &Quant, m: &LutNf3, t: &LutTables, r: usize) -> f32 {
    let w = q.weight();
    let WeightData::Quant(p) = w.data else { unreachable!() };
    (0..m.pcols / SEG)
        .map(|s| {
            let Some(GroupParams::Nf { pos, neg }) = Some(p.params(r, (s * SEG / m.group).min(m.groups - 1))) else {
                unreachable!()
            };
            8.0 * t.d[s] * (pos.to_f32() + neg.to_f32())
        })
        .sum()
}

#[test]
fn repacked_layout_holds_the_files_codes() {
    let mut rng = Rng(11);
    for (rows, cols) in SHAPES {
        for group in [32, 64, 128, 256] {
            let q = Quant::new(QuantFormat::Nf3, group, rows, cols, &rng.weights(rows * cols));
            let WeightData::Quant(p) = q.weight().data else { unreachable!() };
            let m = LutNf3::new(&p).expect("NF3 with groups of 32 and more");
            assert_eq!((m.rows, m.cols, m.blocks), (rows, cols, rows.div_ceil(BLOCK)));
            for r in 0..m.blocks * BLOCK {
                for c in 0..m.pcols {
                    let want = if r < rows && c < cols { p.code(r, c) } else { 3 };
                    assert_eq!(m.code(r, c), want, "{rows}x{cols} g{group}: code ({r}, {c})");
                }
            }
        }
    }
    // Not repacked: other formats, groups of 16.
    for (format, group) in [(QuantFormat::Nf3, 16), (QuantFormat::Nf4, 128), (QuantFormat::Int3, 128)] {
        let q = Quant::new(format, group, 4, 64, &rng.weights(256));
        let WeightData::Quant(p) = q.weight().data else { unreachable!() };
        assert!(LutNf3::new(&p).is_none(), "{format} g{group}");
    }
}

#[test]
fn simd_tables_and_kernel_equal_their_twins_and_the_twin_is_within_its_bound() {
    let mut rng = Rng(12);
    for (rows, cols) in SHAPES {
        for group in [32, 128, 256] {
            let wv = rng.weights(rows * cols);
            let q = Quant::new(QuantFormat::Nf3, group, rows, cols, &wv);
            let WeightData::Quant(p) = q.weight().data else { unreachable!() };
            let m = LutNf3::new(&p).unwrap();
            let inputs: Vec<Vec<f32>> = vec![
                rng.acts(cols),
                vec![0.0; cols],
                rng.acts(cols).iter().map(|v| v * 1e4).collect(),
                rng.acts(cols).iter().map(|v| v * 1e-20).collect(),
                (0..cols).map(|i| if i == cols / 2 { 1e6 } else { 1.0 }).collect(),
                (0..cols).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect(),
            ];
            for x in &inputs {
                let tw = tables(x, false);
                let ts = tables(x, true);
                assert_eq!(tw.tabs, ts.tabs, "{rows}x{cols} g{group}: tables");
                assert_eq!(tw.d, ts.d, "{rows}x{cols} g{group}: segment scales");
                assert!(tw.tabs.iter().all(|&e| (e as f32).abs() <= EMAX), "entries within EMAX");
                let want = twin_all(&m, &tw);
                let mut got = vec![f32::NAN; rows];
                lut_matvec(&m, &ts, &mut got, true);
                for r in 0..rows {
                    assert_eq!(got[r].to_bits(), want[r].to_bits(), "{rows}x{cols} g{group}: row {r}: {} vs {}", got[r], want[r]);
                }
                let (ex, mag) = (exact(&q.weight(), x), magnitude(&q.weight(), x));
                for r in 0..rows {
                    let b = 1.001 * bound(&q, &m, &tw, r) + 1e-5 * mag[r];
                    assert!(
                        (want[r] - ex[r]).abs() <= b,
                        "{rows}x{cols} g{group}: row {r}: twin {} exact {} bound {b}",
                        want[r],
                        ex[r]
                    );
                }
            }
        }
    }
}

#[test]
fn bd_tables_setting() {
    assert_eq!(tables_setting("BD_TABLES", None), (false, None));
    assert_eq!(tables_setting("BD_TABLES", Some("0")), (false, None));
    assert_eq!(tables_setting("BD_TABLES", Some(" 1 ")), (true, None));
    let (on, warning) = tables_setting("BD_NF3_TABLES", Some("yes"));
    assert!(!on && warning.unwrap().contains("BD_NF3_TABLES=yes"));
}

#[test]
fn non_finite_inputs_reach_the_output_as_nan_not_a_panic() {
    let mut rng = Rng(14);
    let (rows, cols) = (40, 96);
    let q = Quant::new(QuantFormat::Nf3, 32, rows, cols, &rng.weights(rows * cols));
    let WeightData::Quant(p) = q.weight().data else { unreachable!() };
    let m = LutNf3::new(&p).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = vec![1.0f32; cols];
        x[40] = bad;
        let (tw, ts) = (tables(&x, false), tables(&x, true));
        assert_eq!(tw.tabs, ts.tabs);
        assert!(tw.d[0] > 0.0 && tw.d[1].is_nan() && tw.d[2] > 0.0, "{bad}: {:?}", tw.d);
        assert!(tw.tabs[16 * 128..32 * 128].iter().all(|&e| e == 0), "{bad}: the segment's tables are zero");
        let mut y = vec![0f32; rows];
        lut_matvec(&m, &ts, &mut y, true);
        assert!(y.iter().all(|v| v.is_nan()), "{bad}: {y:?}");
    }
}

/// The scalar twin's product of a repacked matrix and `x`, its columns split into `parts` as the
/// table product splits them across threads.
pub(super) fn twin_product(lut: &Lut, x: &[f32], parts: usize) -> Vec<f32> {
    match lut {
        Lut::Nf3(m) => {
            let t = tables(x, false);
            (0..m.rows).map(|r| super::lut::row_twin_parts(m, &t, r, parts)).collect()
        }
        Lut::Int(m) => {
            let mut t = lut_int::IntTables::new(x.len());
            t.build_twin(x, m.shape, m.group);
            (0..m.rows).map(|r| lut_int::row_twin_parts(m, &t, r, parts)).collect()
        }
    }
}

/// Column parts the table product of `lut` takes on the current pool (1 off x86-64).
fn parts_of(lut: &Lut) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        tables::column_parts(lut)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = lut;
        1
    }
}

#[test]
fn kernels_take_the_table_kernel_for_single_inputs_only() {
    let mut rng = Rng(13);
    let (rows, cols) = (600, 520);
    for format in [QuantFormat::Nf3, QuantFormat::Int2, QuantFormat::Int3] {
        let q = Quant::new(format, 128, rows, cols, &rng.weights(rows * cols));
        let WeightData::Quant(p) = q.weight().data else { unreachable!() };
        let lut = Lut::new(&p).unwrap();
        let w = Weight { lut: Some(&lut), ..q.weight() };
        let x = rng.acts(3 * cols);
        for k in Kernels::available().into_iter().map(|i| Kernels::with_isa(i).with_tables(true)) {
            let uses = k.uses_tables(&w);
            assert!(!Kernels::with_isa(k.isa()).uses_tables(&w), "off unless asked for");
            assert_eq!(uses, k.isa() == Isa::Avx512 && vbmi2_supported(), "{}", k.describe());
            assert!(!k.without_extensions().uses_tables(&w) && !k.with_tables(false).uses_tables(&w));
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut scratch = Scratch::new(16, 3);
                let (mut y1, mut y3) = (vec![f32::NAN; rows], vec![f32::NAN; 3 * rows]);
                let want = pool.install(|| {
                    // A scratch made for narrower inputs grows once.
                    k.matvec(&w, &x[..cols], &mut y1, &mut scratch);
                    k.matmul(&w, &x, 3, &mut y3, &mut scratch);
                    twin_product(&lut, &x[..cols], parts_of(&lut))
                });
                let plain = {
                    let mut y = vec![0f32; rows];
                    k.with_tables(false).matvec(&w, &x[..cols], &mut y, &mut Scratch::new(cols, 1));
                    y
                };
                if uses {
                    assert_eq!(y1, want, "{format} {} {threads} threads: the table kernel", k.describe());
                } else {
                    assert_eq!(y1, plain, "{format} {}: without tables, the weight's own layout", k.describe());
                }
                // Batches keep the file's layout and its kernel.
                assert_eq!(&y3[..rows], &plain[..], "{format} {}: batch of 3, input 0", k.describe());
            }
        }
    }
}

/// Split across a pool's threads by columns (`tables::column_parts`), a table product equals the
/// scalar twin of the same split bit for bit: parts of whole groups, several column passes in a
/// part, partial groups, blocks and last parts; and a NaN in any part reaches every output.
#[cfg(target_arch = "x86_64")]
#[test]
fn table_products_split_by_columns_equal_the_twin_of_the_split() {
    if !(Isa::Avx512.supported() && vbmi2_supported()) {
        return;
    }
    let mut rng = Rng(15);
    let k = Kernels::with_isa(Isa::Avx512).with_tables(true);
    for format in [QuantFormat::Nf3, QuantFormat::Int2, QuantFormat::Int3] {
        for (rows, cols, group) in [(200, 4500, 128), (70, 9000, 256), (333, 1000, 32), (64, 1280, 64)] {
            let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
            let WeightData::Quant(p) = q.weight().data else { unreachable!() };
            let lut = Lut::new(&p).unwrap();
            let w = Weight { lut: Some(&lut), ..q.weight() };
            let x = rng.acts(cols);
            let mut split = 0;
            for threads in 1..=5 {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut scratch = Scratch::new(cols, 1);
                let mut y = vec![f32::NAN; rows];
                let mut bad = x.clone();
                bad[cols - 1] = f32::NAN;
                let (parts, want) = pool.install(|| {
                    // After a product whose partial sums were NaN, so that one left behind shows.
                    k.matvec(&w, &bad, &mut y, &mut scratch);
                    k.matvec(&w, &x, &mut y, &mut scratch);
                    let parts = parts_of(&lut);
                    (parts, twin_product(&lut, &x, parts))
                });
                let expect = if threads <= tables::MAX_PARTS { threads } else { 1 };
                assert_eq!(parts, expect, "{format} {rows}x{cols}: parts on {threads} threads");
                split = split.max(parts);
                for r in 0..rows {
                    assert_eq!(y[r].to_bits(), want[r].to_bits(), "{format} {rows}x{cols} g{group}, {threads} threads: row {r}");
                }
                pool.install(|| k.matvec(&w, &bad, &mut y, &mut scratch));
                assert!(y.iter().all(|v| v.is_nan()), "{format} {rows}x{cols}, {threads} threads: a NaN in the last part");
            }
            assert!(split > 1, "some pool split the product");
        }
    }
}

/// A session reserves the partial sums of split table products (`Scratch::reserve_partials`), so
/// that its first decode step does not allocate them.
#[cfg(target_arch = "x86_64")]
#[test]
fn reserved_partial_sums_are_not_grown() {
    if !(Isa::Avx512.supported() && vbmi2_supported()) {
        return;
    }
    let mut rng = Rng(16);
    let (rows, cols) = (300, 1024);
    let q = Quant::new(QuantFormat::Int2, 128, rows, cols, &rng.weights(rows * cols));
    let WeightData::Quant(p) = q.weight().data else { unreachable!() };
    let lut = Lut::new(&p).unwrap();
    let w = Weight { lut: Some(&lut), ..q.weight() };
    let k = Kernels::with_isa(Isa::Avx512).with_tables(true);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut scratch = Scratch::new(cols, 1);
    scratch.reserve_partials(2, rows);
    let (at, len) = (scratch.partials.as_ptr(), scratch.partials.len());
    assert_eq!(len, rows);
    let mut y = vec![0f32; rows];
    pool.install(|| k.matvec(&w, &rng.acts(cols), &mut y, &mut scratch));
    assert_eq!((at, len), (scratch.partials.as_ptr(), scratch.partials.len()));
}

/// Column parts cover the units once, in order, each starting on a group and none empty while
/// there are at least as many groups as parts.
#[test]
fn column_parts_are_whole_groups() {
    for (units, per_group) in [(128usize, 4usize), (344, 4), (17, 4), (100, 1), (40, 8), (5, 8)] {
        let groups = units.div_ceil(per_group);
        for parts in 1..=groups.min(6) {
            let mut next = 0;
            for j in 0..parts {
                let (c0, c1) = super::lut::column_part(units, per_group, parts, j);
                assert_eq!(c0, next, "{units}/{per_group} in {parts}: part {j} starts where the last ended");
                assert!(c0 % per_group == 0 && c1 > c0, "{units}/{per_group} in {parts}: part {j} = {c0}..{c1}");
                next = c1;
            }
            assert_eq!(next, units, "{units}/{per_group} in {parts}: all units");
        }
    }
}
