use super::*;
use half::f16;

/// A small deterministic generator, so failures reproduce.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub(crate) fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * amp).collect()
    }
}

#[test]
fn int2_worked_example_from_format_md() {
    let w = [0.1f32, -0.2, 0.3, 0.7, 0.0];
    let mut codes = [0u8; 5];
    let p = quantize_group(QuantFormat::Int2, &w, &mut codes).unwrap();
    let s = f16::from_f32(0.3);
    assert_eq!(s.to_f32(), 0.300048828125);
    assert_eq!(p, GroupParams::Int { scale: s, zero: 1 });
    assert_eq!(codes, [1, 0, 2, 3, 1]);
    let mut out = [0f32; 5];
    dequantize_group(QuantFormat::Int2, p, &codes, &mut out);
    let sf = s.to_f32();
    assert_eq!(out, [0.0, -sf, sf, 2.0 * sf, 0.0]);
}

#[test]
fn int4_hand_computed() {
    // M = 1.5, m = -0.75: s = f16(2.25 / 15) = f16(0.15), z = round(0.75 / 0.15) = 5.
    let w = [1.5f32, -0.75, 0.0, 0.3];
    let mut codes = [0u8; 4];
    let p = quantize_group(QuantFormat::Int4, &w, &mut codes).unwrap();
    let s = f16::from_f32(2.25 / 15.0);
    assert_eq!(p, GroupParams::Int { scale: s, zero: 5 });
    let sf = s.to_f32();
    let expect: Vec<u8> = w.iter().map(|&x| ((x / sf).round() + 5.0).clamp(0.0, 15.0) as u8).collect();
    assert_eq!(codes.to_vec(), expect);
    assert_eq!(codes[2], 5, "zero maps to the zero point");
}

#[test]
fn nf3_hand_computed() {
    let w = [1.0f32, -2.0, 0.5, 0.0, -0.3];
    let mut codes = [0u8; 5];
    let p = quantize_group(QuantFormat::Nf3, &w, &mut codes).unwrap();
    assert_eq!(p, GroupParams::Nf { pos: f16::from_f32(1.0), neg: f16::from_f32(2.0) });
    // 0.5 lies below the midpoint of 0.382 and 0.623 (0.5025); -0.15 lies below the midpoint of
    // -0.2469 and 0 (-0.1235), above that of -0.535 and -0.2469.
    assert_eq!(codes, [7, 0, 5, 3, 2]);
    let mut out = [0f32; 5];
    dequantize_group(QuantFormat::Nf3, p, &codes, &mut out);
    assert_eq!(out, [1.0, -2.0, NF3_LEVELS[5], 0.0, NF3_LEVELS[2] * 2.0]);
}

#[test]
fn nf_midpoint_goes_away_from_zero() {
    for format in [QuantFormat::Nf3, QuantFormat::Nf4] {
        let l = format.levels().unwrap();
        let z = l.iter().position(|&x| x == 0.0).unwrap();
        let mid_up = (l[z + 1] + l[z + 2]) * 0.5;
        let mid_down = (l[z - 1] + l[z - 2]) * 0.5;
        // Scales of 1: the group holds +1 and -1.
        let w = [1.0, -1.0, mid_up, mid_down];
        let mut codes = [0u8; 4];
        quantize_group(format, &w, &mut codes).unwrap();
        assert_eq!(codes[2] as usize, z + 2, "{format}");
        assert_eq!(codes[3] as usize, z - 2, "{format}");
    }
}

#[test]
fn degenerate_groups_follow_the_formulas() {
    for format in QuantFormat::ALL {
        let n = 32;
        for (label, w) in [
            ("zeros", vec![0f32; n]),
            ("all-equal positive", vec![0.25f32; n]),
            ("all-equal negative", vec![-0.25f32; n]),
            ("all positive", (0..n).map(|i| 0.1 + i as f32 * 0.01).collect::<Vec<_>>()),
            ("all negative", (0..n).map(|i| -0.1 - i as f32 * 0.01).collect::<Vec<_>>()),
        ] {
            let mut out = vec![0f32; n];
            fake_quant_group(format, &w, &mut out).unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "{format} {label}");
            if label == "zeros" {
                assert!(out.iter().all(|&v| v == 0.0), "{format}: a zero group stays zero");
            }
            if format.is_nf() && label != "zeros" {
                // The extreme weight of the group's sign is a scale, so it is exact up to f16 rounding.
                let extreme = if w[0] > 0.0 {
                    w.iter().cloned().fold(f32::MIN, f32::max)
                } else {
                    w.iter().cloned().fold(f32::MAX, f32::min)
                };
                let i = w.iter().position(|&x| x == extreme).unwrap();
                assert_eq!(out[i], f16::from_f32(extreme.abs()).to_f32() * extreme.signum(), "{format} {label}");
            }
        }
        // INT: the zero point is clamped to [0, qmax], so an all-positive group cannot reach its
        // offset; this is the reference's formula, kept on purpose (real groups straddle zero).
        if !format.is_nf() {
            let mut codes = vec![0u8; n];
            let p = quantize_group(format, &vec![0.25f32; n], &mut codes).unwrap();
            let GroupParams::Int { scale, zero } = p else { unreachable!() };
            assert_eq!(zero, 0);
            assert_eq!(scale, f16::from_f32(SCALE_EPS / format.qmax() as f32));
            assert!(codes.iter().all(|&c| c == format.qmax()));
        }
    }
}

#[test]
fn random_groups_int_error_is_at_most_half_a_step() {
    let mut rng = Rng(7);
    for format in [QuantFormat::Int2, QuantFormat::Int3, QuantFormat::Int4] {
        for trial in 0..200 {
            let n = [16, 32, 64, 128, 256, 5, 77][trial % 7];
            let w = rng.vec(n, 0.05 + trial as f32 * 0.01);
            let mut codes = vec![0u8; n];
            let p = quantize_group(format, &w, &mut codes).unwrap();
            let GroupParams::Int { scale, zero } = p else { panic!() };
            assert!(zero <= format.qmax() && codes.iter().all(|&c| c <= format.qmax()));
            let s = scale.to_f32();
            let mut out = vec![0f32; n];
            dequantize_group(format, p, &codes, &mut out);
            let (qlo, qhi) = ((0.0 - zero as f32) * s, (format.qmax() as f32 - zero as f32) * s);
            for (&x, &y) in w.iter().zip(&out) {
                // Inside the representable range the error is half a step (plus f16 scale rounding);
                // outside it, the value is clamped to the nearest end.
                let err = (x.clamp(qlo, qhi) - y).abs();
                assert!(err <= 0.5 * s * 1.001 + 1e-7, "{format} trial {trial}: {x} -> {y} (s {s})");
            }
        }
    }
}

#[test]
fn random_groups_nf_pick_the_nearest_level_on_their_side() {
    let mut rng = Rng(11);
    for format in [QuantFormat::Nf3, QuantFormat::Nf4] {
        let levels = format.levels().unwrap();
        for trial in 0..200 {
            let n = [16, 32, 64, 128, 256, 3, 129][trial % 7];
            let w = rng.vec(n, 0.02 + trial as f32 * 0.003);
            let mut codes = vec![0u8; n];
            let p = quantize_group(format, &w, &mut codes).unwrap();
            let GroupParams::Nf { pos, neg } = p else { panic!() };
            for (&x, &c) in w.iter().zip(&codes) {
                let v = if x > 0.0 { x / pos.to_f32() } else { x / neg.to_f32() };
                let side = |l: f32| if x > 0.0 { l >= 0.0 } else { l <= 0.0 };
                let best = levels.iter().filter(|&&l| side(l)).map(|&l| (l - v).abs()).fold(f32::MAX, f32::min);
                assert!(side(levels[c as usize]), "{format}: code on the wrong side");
                assert!((levels[c as usize] - v).abs() <= best + 1e-6, "{format}: {v} got level {}", levels[c as usize]);
            }
        }
    }
}

#[test]
fn non_finite_and_oversized_weights_are_rejected() {
    let mut w = vec![0.1f32; 40];
    w[37] = f32::NAN;
    let err = quantize_matrix(QuantFormat::Int2, 32, 1, 40, &w).unwrap_err();
    assert!(matches!(err, QuantError::NonFinite { row: 0, col: 37, value } if value.is_nan()), "{err}");
    assert!(err.to_string().contains("column 37"));
    w[37] = f32::INFINITY;
    assert!(matches!(quantize_matrix(QuantFormat::Nf3, 32, 1, 40, &w), Err(QuantError::NonFinite { col: 37, .. })));
    let big = vec![-1e6f32, 1e6, 0.0, 0.0];
    let err = quantize_matrix(QuantFormat::Int2, 16, 1, 4, &big).unwrap_err();
    assert!(matches!(err, QuantError::ScaleOverflow { row: 0, group: 0, .. }), "{err}");
    assert!(matches!(quantize_matrix(QuantFormat::Int2, 24, 1, 4, &big[..]), Err(QuantError::BadGroupSize(24))));
    assert!(matches!(quantize_matrix(QuantFormat::Int2, 16, 2, 4, &big[..]), Err(QuantError::ShapeMismatch { .. })));
}

#[test]
fn partial_last_group_uses_only_its_real_elements() {
    // cols = 40 with G = 32: the last group holds 8 weights whose range is tiny compared with the
    // first group's; its scale must come from those 8 alone.
    let mut w: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.1).collect();
    w.extend((0..8).map(|i| (i as f32 - 4.0) * 0.001));
    let (_, params) = quantize_matrix(QuantFormat::Int4, 32, 1, 40, &w).unwrap();
    let GroupParams::Int { scale, .. } = params[1] else { panic!() };
    assert_eq!(scale, f16::from_f32(0.007 / 15.0));
}

#[test]
fn pack_unpack_is_bit_exact_for_every_format_and_group() {
    let mut rng = Rng(3);
    for format in QuantFormat::ALL {
        for group in GROUP_SIZES {
            for cols in [1usize, 5, 16, 127, 128, 129, 172, 300, 512] {
                let rows = 3;
                let w = rng.vec(rows * cols, 0.1);
                let blob = pack_matrix(format, group, rows, cols, &w).unwrap();
                let layout = PackedLayout::new(format, group, rows, cols).unwrap();
                assert_eq!(blob.len(), layout.len);
                let view = PackedMatrix::new(layout, &blob).unwrap();
                let (codes, params) = quantize_matrix(format, group, rows, cols, &w).unwrap();
                for r in 0..rows {
                    for c in 0..layout.padded_cols() {
                        let expect = if c < cols {
                            codes[r * cols + c]
                        } else {
                            params[r * layout.groups + layout.groups - 1].zero_code(format)
                        };
                        assert_eq!(view.code(r, c), expect, "{format} g{group} cols {cols} r{r} c{c}");
                    }
                    for g in 0..layout.groups {
                        assert_eq!(view.params(r, g), params[r * layout.groups + g]);
                    }
                }
                let fq = fake_quant_matrix(format, group, rows, cols, &w).unwrap();
                let dq = view.dequantize();
                assert!(fq.iter().zip(&dq).all(|(a, b)| a.to_bits() == b.to_bits()), "{format} g{group} cols {cols}");
            }
        }
    }
}

#[test]
fn packed_bits_sit_where_format_md_says() {
    // Codes chosen directly, so this checks the layout independently of the quantizer.
    let layout = PackedLayout::new(QuantFormat::Int3, 32, 1, 256).unwrap();
    assert_eq!(layout.row_code_bytes, 96);
    let codes: Vec<u8> = (0..256).map(|e| ((e * 5 + 3) % 8) as u8).collect();
    let mut row = vec![0u8; 96];
    for (e, &c) in codes.iter().enumerate() {
        pack::put_code_for_test(QuantFormat::Int3, &mut row, e, c);
    }
    for (e, &c) in codes.iter().enumerate() {
        let (chunk, w) = (e / 128, e % 128);
        let base = chunk * 48;
        let low = (row[base + w % 32] >> (2 * (w / 32))) & 3;
        let high = (row[base + 32 + w % 16] >> (w / 16)) & 1;
        assert_eq!(low | high << 2, c, "element {e}");
    }
    let mut row4 = vec![0u8; 64];
    for e in 0..128 {
        pack::put_code_for_test(QuantFormat::Int4, &mut row4, e, (e % 16) as u8);
    }
    for e in 0..128 {
        let (lane, wl) = (e / 64, e % 64);
        assert_eq!((row4[32 * lane + wl % 32] >> (4 * (wl / 32))) & 15, (e % 16) as u8);
    }
}

#[test]
fn bits_per_weight_of_headline_formats() {
    let int2 = PackedLayout::new(QuantFormat::Int2, 128, 4096, 4096).unwrap();
    assert!((int2.payload_bits() as f64 / (4096.0 * 4096.0) - (2.0 + 18.0 / 128.0)).abs() < 1e-12);
    let nf3 = PackedLayout::new(QuantFormat::Nf3, 128, 4096, 4096).unwrap();
    assert!((nf3.payload_bits() as f64 / (4096.0 * 4096.0) - 3.25).abs() < 1e-12);
}

#[test]
fn hostile_shapes_do_not_overflow() {
    assert!(PackedLayout::new(QuantFormat::Int4, 128, usize::MAX / 2, usize::MAX / 2).is_err());
    assert!(PackedLayout::new(QuantFormat::Int2, 16, usize::MAX, 1).is_err());
    assert!(PackedLayout::new(QuantFormat::Int2, 16, 0, 10).is_err());
}
