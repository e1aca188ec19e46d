//! INT-k asymmetric: one f16 scale and one k-bit integer zero point per group.

use super::{to_f16_scale, GroupParams, QuantError, QuantFormat, SCALE_EPS};
use half::f16;

pub(super) fn quantize(format: QuantFormat, w: &[f32], codes: &mut [u8]) -> Result<GroupParams, QuantError> {
    let qmax = format.qmax() as f32;
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in w {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    let scale = to_f16_scale((hi - lo).max(SCALE_EPS) / qmax)?;
    let s = scale.to_f32();
    let zero = (-(lo / s).round()).clamp(0.0, qmax);
    for (c, &x) in codes.iter_mut().zip(w) {
        *c = ((x / s).round() + zero).clamp(0.0, qmax) as u8;
    }
    Ok(GroupParams::Int { scale, zero: zero as u8 })
}

pub(super) fn dequantize(scale: f16, zero: u8, codes: &[u8], out: &mut [f32]) {
    let (s, z) = (scale.to_f32(), zero as f32);
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = (c as f32 - z) * s;
    }
}
