//! The attention softmax with its causal mask, fused into one CPU op with a backward pass.
//!
//! Why: in training the `[batch, heads, seq, seq]` score tensor is the largest one by far, and the
//! same softmax from basic ops (mask add, max, subtract, exp, sum, divide, and their backward ops)
//! walks it about fifteen times, single-threaded. This op walks it once forward and once backward,
//! split over rayon threads, and skips the masked half. On other devices, and for inputs that are
//! not f32, [`causal_softmax`] uses the basic-op form, which computes the same function.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `softmax(scale * x + causal mask)` over the last dimension of `x` `[.., s, t]`, where query row
/// `i` (of the `s`) sees the keys `0..=past + i` and the later ones get probability 0.
pub fn causal_softmax(x: &Tensor, scale: f64, past: usize) -> Result<Tensor> {
    if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(CausalSoftmax { past, scale: scale as f32 })
    } else {
        let x = x.affine(scale, 0.0)?;
        let (s, t) = (x.dim(D::Minus2)?, x.dim(D::Minus1)?);
        let mask: Vec<f32> =
            (0..s).flat_map(|i| (0..t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
        let x = x.broadcast_add(&Tensor::from_vec(mask, (s, t), x.device())?.to_dtype(x.dtype())?)?;
        let m = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&m)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }
}

struct CausalSoftmax {
    past: usize,
    scale: f32,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("causal_softmax needs a contiguous input"),
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout)?;
        let dims = layout.dims();
        let (s, t) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t).zip(x.par_chunks(t)).enumerate().for_each(|(r, (o, xr))| {
            let seen = (self.past + r % s + 1).min(t);
            let sc = self.scale;
            let m = xr[..seen].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b * sc));
            let mut sum = 0f32;
            for (oj, &xj) in o[..seen].iter_mut().zip(&xr[..seen]) {
                *oj = (xj * sc - m).exp();
                sum += *oj;
            }
            o[..seen].iter_mut().for_each(|v| *v /= sum);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2(&grad_res.contiguous()?, SoftmaxGrad { scale: self.scale })?))
    }
}

/// `scale * p * (g - sum(g * p))` per row: the gradient of a scaled softmax with output `p` (masked
/// entries have `p = 0`, so their gradient is 0 too).
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (p, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let t = *l1.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(t).zip(p.par_chunks(t).zip(g.par_chunks(t))).for_each(|(o, (pr, gr))| {
            let dot: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((oj, &pj), &gj) in o.iter_mut().zip(pr).zip(gr) {
                *oj = self.scale * pj * (gj - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn basic(x: &Tensor, past: usize) -> Tensor {
        // The same function on a device-agnostic path: force it by going through f64.
        causal_softmax(&x.to_dtype(DType::F64).unwrap(), 0.7, past).unwrap().to_dtype(DType::F32).unwrap()
    }

    #[test]
    fn fused_equals_basic_ops_forward_and_backward() {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..2 * 3 * 4 * 6).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3).collect();
        for past in [0, 2] {
            let x = Var::from_vec(vals.clone(), (2, 3, 4, 6), &dev).unwrap();
            let w = Tensor::from_vec((0..144).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(), (2, 3, 4, 6), &dev).unwrap();
            let fused = causal_softmax(x.as_tensor(), 0.7, past).unwrap();
            let reference = basic(x.as_tensor(), past);
            let (a, b) = (
                fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                reference.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-6), "forward, past {past}");
            // Row i sees past + i + 1 keys.
            assert_eq!(a[1..6].iter().filter(|&&v| v == 0.0).count(), if past == 0 { 5 } else { 3 });
            let g1 = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
            let r64 = causal_softmax(x64.as_tensor(), 0.7, past).unwrap();
            let g2 = (r64 * w.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            let ga = g1.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gb = g2.get(x64.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(ga.iter().zip(&gb).all(|(p, q)| (*p as f64 - q).abs() < 1e-5), "backward, past {past}");
        }
    }
}
