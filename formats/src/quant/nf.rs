//! NF-k asymmetric (AFPQ style): separate f16 scales for the positive and the negative weights.

use super::{to_f16_scale, GroupParams, QuantError, QuantFormat, SCALE_EPS};
use half::f16;

/// NF3 levels, in code order (ALGORITHM.md section 1).
#[allow(clippy::excessive_precision)]
pub const NF3_LEVELS: [f32; 8] =
    [-1.0, -0.5350227355957031, -0.2469314038753510, 0.0, 0.1833375245332718, 0.3819939494132996, 0.6229856610298157, 1.0];

/// NF4 levels (QLoRA), in code order; checked against bitsandbytes' dequantization table.
#[allow(clippy::excessive_precision)]
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Index of level 0.0.
pub(super) fn zero_index(format: QuantFormat) -> u8 {
    match format {
        QuantFormat::Nf3 => 3,
        QuantFormat::Nf4 => 7,
        _ => unreachable!("zero_index is only defined for NF formats"),
    }
}

pub(super) fn quantize(format: QuantFormat, w: &[f32], codes: &mut [u8]) -> Result<GroupParams, QuantError> {
    let levels = format.levels().expect("NF format");
    let z = zero_index(format) as usize;
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in w {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let pos = to_f16_scale(hi.abs().max(SCALE_EPS))?;
    let neg = to_f16_scale(lo.abs().max(SCALE_EPS))?;
    let (sp, sn) = (pos.to_f32(), neg.to_f32());
    for (c, &x) in codes.iter_mut().zip(w) {
        *c = if x > 0.0 { nearest_up(levels, z, x / sp) } else { nearest_down(levels, z, x / sn) } as u8;
    }
    Ok(GroupParams::Nf { pos, neg })
}

/// Nearest level at or above zero for `v >= 0`; a value on a midpoint goes up (away from zero).
fn nearest_up(levels: &[f32], z: usize, v: f32) -> usize {
    let mut i = z;
    while i + 1 < levels.len() && v >= (levels[i] + levels[i + 1]) * 0.5 {
        i += 1;
    }
    i
}

/// Nearest level at or below zero for `v <= 0`; a value on a midpoint goes down (away from zero).
fn nearest_down(levels: &[f32], z: usize, v: f32) -> usize {
    let mut i = z;
    while i > 0 && v <= (levels[i] + levels[i - 1]) * 0.5 {
        i -= 1;
    }
    i
}

pub(super) fn dequantize(format: QuantFormat, pos: f16, neg: f16, codes: &[u8], out: &mut [f32]) {
    let levels = format.levels().expect("NF format");
    let (sp, sn) = (pos.to_f32(), neg.to_f32());
    for (o, &c) in out.iter_mut().zip(codes) {
        let l = levels[c as usize];
        *o = if l > 0.0 {
            l * sp
        } else if l < 0.0 {
            l * sn
        } else {
            0.0
        };
    }
}
