//! The INT2 and INT3 table scheme (`lut_int.rs`): the repacked layout holds the file's codes and
//! parameters, the SIMD table builder and kernel equal their scalar twins exactly, and the twin is
//! within the bound of its table rounding of the exact product. (`Kernels`' choice of the table
//! kernels is tested for both formats in `tests_lut.rs`.)

use super::lut::{Lut, BLOCK};
use super::lut_int::{row_twin, IntTables, LutInt, SPAN};
use super::tests::{exact, magnitude, Quant, Rng};
use super::*;
use bd_formats::quant::{GroupParams, QuantFormat};

/// Shapes with partial blocks, units, spans, groups and column passes, and whole ones.
const SHAPES: [(usize, usize); 8] = [(1, 32), (3, 5), (31, 100), (33, 129), (70, 300), (129, 1000), (256, 4096), (40, 4500)];

const FORMATS: [QuantFormat; 2] = [QuantFormat::Int2, QuantFormat::Int3];

fn tables(x: &[f32], m: &LutInt, simd: bool) -> IntTables {
    let mut t = IntTables::new(x.len());
    lut_int_tables(x, m, &mut t, simd);
    t
}

fn params(q: &Quant, r: usize, g: usize) -> (f32, f32) {
    let WeightData::Quant(p) = q.weight().data else { unreachable!() };
    let GroupParams::Int { scale, zero } = p.params(r, g) else { unreachable!() };
    (scale.to_f32(), zero as f32)
}

/// `|twin - exact|` is at most half a unit of `d_s` per lookup, times the group's scale, plus the
/// f32 rounding of sums of magnitude `sum |w x|` and `s (3/2 + z) |X_g|`.
fn bound(q: &Quant, m: &LutInt, t: &IntTables, x: &[f32], mag: f32, r: usize) -> f32 {
    let lookups = (m.shape.lookups * SPAN / m.shape.unit) as f32;
    let tables: f32 = (0..m.pcols / SPAN).map(|s| 0.5 * lookups * t.d[s] * params(q, r, s * SPAN / m.group).0).sum();
    let offsets: f32 = x
        .chunks(m.group)
        .enumerate()
        .map(|(g, xg)| {
            let (s, z) = params(q, r, g);
            s * (m.shape.mid + z) * xg.iter().map(|v| v.abs()).sum::<f32>()
        })
        .sum();
    1.001 * tables + 1e-5 * (mag + offsets)
}

#[test]
fn repacked_layout_holds_the_files_codes_and_parameters() {
    let mut rng = Rng(21);
    for (format, (rows, cols)) in FORMATS.into_iter().flat_map(|f| SHAPES.map(|s| (f, s))) {
        for group in [32, 64, 128, 256] {
            let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
            let WeightData::Quant(p) = q.weight().data else { unreachable!() };
            let m = LutInt::new(&p).expect("INT2/INT3 with groups of 32 and more");
            assert_eq!((m.rows, m.cols, m.blocks, m.groups), (rows, cols, rows.div_ceil(BLOCK), p.layout.groups));
            for r in 0..m.blocks * BLOCK {
                for c in 0..m.pcols {
                    let want = if r < rows && c < cols { p.code(r, c) } else { 0 };
                    assert_eq!(m.code(r, c), want, "{format} {rows}x{cols} g{group}: code ({r}, {c})");
                }
                for g in 0..m.groups {
                    let at = ((r / BLOCK) * m.groups + g) * 2 * BLOCK + r % BLOCK;
                    let (s, c) =
                        (half::f16::from_bits(m.scales[at]).to_f32(), half::f16::from_bits(m.scales[at + BLOCK]).to_f32());
                    let want = if r < rows { (params(&q, r, g).0, m.shape.mid - params(&q, r, g).1) } else { (0.0, 0.0) };
                    assert_eq!((s, c), want, "{format} {rows}x{cols} g{group}: row {r} group {g}");
                }
            }
            assert!(matches!(Lut::new(&p), Some(Lut::Int(_))));
        }
    }
    // Not repacked: other formats, groups of 16.
    for (format, group) in [(QuantFormat::Int2, 16), (QuantFormat::Int3, 16), (QuantFormat::Int4, 128), (QuantFormat::Nf3, 128)] {
        let q = Quant::new(format, group, 4, 64, &rng.weights(256));
        let WeightData::Quant(p) = q.weight().data else { unreachable!() };
        assert!(LutInt::new(&p).is_none(), "{format} g{group}");
    }
}

#[test]
fn simd_tables_and_kernel_equal_their_twins_and_the_twin_is_within_its_bound() {
    let mut rng = Rng(22);
    for (format, (rows, cols)) in FORMATS.into_iter().flat_map(|f| SHAPES.map(|s| (f, s))) {
        for group in [32, 64, 128, 256] {
            let q = Quant::new(format, group, rows, cols, &rng.weights(rows * cols));
            let WeightData::Quant(p) = q.weight().data else { unreachable!() };
            let m = LutInt::new(&p).unwrap();
            let inputs: Vec<Vec<f32>> = vec![
                rng.acts(cols),
                vec![0.0; cols],
                rng.acts(cols).iter().map(|v| v * 1e4).collect(),
                rng.acts(cols).iter().map(|v| v * 1e-20).collect(),
                (0..cols).map(|i| if i == cols / 2 { 1e6 } else { 1.0 }).collect(),
                (0..cols).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect(),
            ];
            for x in &inputs {
                let (tw, ts) = (tables(x, &m, false), tables(x, &m, true));
                assert_eq!(tw.tabs, ts.tabs, "{format} {rows}x{cols} g{group}: tables");
                assert_eq!((&tw.d, &tw.xsum), (&ts.d, &ts.xsum), "{format} {rows}x{cols} g{group}: span scales and group sums");
                assert!(tw.tabs.iter().all(|&e| (e as f32).abs() <= m.shape.emax), "entries within EMAX");
                let want: Vec<f32> = (0..rows).map(|r| row_twin(&m, &tw, r)).collect();
                let mut got = vec![f32::NAN; rows];
                lut_int_matvec(&m, &ts, &mut got, true);
                for r in 0..rows {
                    assert_eq!(
                        got[r].to_bits(),
                        want[r].to_bits(),
                        "{format} {rows}x{cols} g{group}: row {r}: {} vs {}",
                        got[r],
                        want[r]
                    );
                }
                let (ex, mag) = (exact(&q.weight(), x), magnitude(&q.weight(), x));
                for r in 0..rows {
                    let b = bound(&q, &m, &tw, x, mag[r], r);
                    assert!(
                        (want[r] - ex[r]).abs() <= b,
                        "{format} {rows}x{cols} g{group}: row {r}: twin {} exact {} bound {b}",
                        want[r],
                        ex[r]
                    );
                }
            }
        }
    }
}

#[test]
fn non_finite_inputs_reach_the_output_as_nan_not_a_panic() {
    let mut rng = Rng(24);
    let (rows, cols) = (40, 96);
    for format in FORMATS {
        let q = Quant::new(format, 32, rows, cols, &rng.weights(rows * cols));
        let WeightData::Quant(p) = q.weight().data else { unreachable!() };
        let m = LutInt::new(&p).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![1.0f32; cols];
            x[40] = bad;
            let (tw, ts) = (tables(&x, &m, false), tables(&x, &m, true));
            assert_eq!(tw.tabs, ts.tabs);
            assert!(tw.d[0] > 0.0 && tw.d[1].is_nan() && tw.d[2] > 0.0, "{format} {bad}: {:?}", tw.d);
            let span = SPAN / m.shape.unit * m.shape.lookups * 64;
            assert!(tw.tabs[span..2 * span].iter().all(|&e| e == 0), "{format} {bad}: the span's tables are zero");
            let mut y = vec![0f32; rows];
            lut_int_matvec(&m, &ts, &mut y, true);
            assert!(y.iter().all(|v| v.is_nan()), "{format} {bad}: {y:?}");
        }
    }
}
