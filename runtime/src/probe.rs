//! The streaming read probe: how fast this machine's threads read memory. It is the yardstick of
//! `bd-run bench`'s bound and of the benchmarks' "% of read bandwidth", so it must read as fast as
//! a plain loop can, or every percentage measured against it is inflated.
//!
//! Two ways of reading, with the widest loads the CPU has, and the faster one counts:
//! - one sequential stream per thread, four cache lines per step;
//! - eight interleaved sequential streams per thread, one line of each per step.
//!
//! Which wins depends on the core: a Zen 4 core read ~25 GB/s with 8 streams against ~19.5 with
//! one (AVX2 loads); a Zen 5 core reads ~38 GB/s with one stream of 512-bit loads against ~34.5
//! with 8 of 256-bit loads, and a sum compiled for the x86-64 baseline (128-bit loads) read ~15%
//! less than the 512-bit one (docs/BENCHMARKS.md, the run of 2026-12-02 21:30 UTC).

use rayon::prelude::*;
use std::time::Instant;

/// A buffer to read, far larger than any last-level cache when made with enough bytes.
pub struct StreamProbe {
    buf: Vec<u64>,
}

impl StreamProbe {
    pub fn new(bytes: usize) -> Self {
        // Non-zero contents: untouched zeroed pages all map the same physical page, which is read
        // from cache.
        Self { buf: vec![1u64; bytes / 8] }
    }

    pub fn bytes(&self) -> usize {
        self.buf.len() * 8
    }

    /// Seconds of the faster of two passes (one of each way of reading) with the current rayon
    /// pool's threads. Call it inside the pool to be measured.
    pub fn pass(&self) -> f64 {
        read_pass(&self.buf)
    }
}

/// Seconds to read `buf` with the current rayon pool's threads (each its own contiguous part):
/// the faster of one pass as one stream per thread and one as eight.
pub fn read_pass(buf: &[u64]) -> f64 {
    let per = buf.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
    let time = |streams: usize| {
        let t = Instant::now();
        let s: u64 = buf.par_chunks(per).map(|c| read_sum(c, streams)).reduce(|| 0, u64::wrapping_add);
        let e = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        e
    };
    time(1).min(time(8))
}

/// The wrapping sum of `x`, read as 1 or 8 (`streams`) interleaved sequential streams.
pub fn read_sum(x: &[u64], streams: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F.
            return unsafe { read_sum_avx512(x, streams) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { read_sum_avx2(x, streams) };
        }
    }
    read_sum_generic(x, streams)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn read_sum_avx512(x: &[u64], streams: usize) -> u64 {
    read_sum_generic(x, streams)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_sum_avx2(x: &[u64], streams: usize) -> u64 {
    read_sum_generic(x, streams)
}

/// Written so that it vectorizes: whole cache lines (8 values) per stream and step, one
/// accumulator line per stream and line, compiled for each target feature by the callers above.
#[inline(always)]
fn read_sum_generic(x: &[u64], streams: usize) -> u64 {
    if streams >= 8 {
        sum_streams::<8, 1>(x)
    } else {
        sum_streams::<1, 4>(x)
    }
}

/// `S` streams over consecutive parts of `x`, `L` cache lines of each per step; the tail alone.
#[inline(always)]
fn sum_streams<const S: usize, const L: usize>(x: &[u64]) -> u64 {
    let step = 8 * L;
    let part = x.len() / S / step * step;
    let mut acc = [[[0u64; 8]; L]; S];
    let mut i = 0;
    while i < part {
        for (s, a) in acc.iter_mut().enumerate() {
            let c = &x[s * part + i..][..step];
            for (l, al) in a.iter_mut().enumerate() {
                for (v, w) in al.iter_mut().zip(&c[8 * l..8 * l + 8]) {
                    *v = v.wrapping_add(*w);
                }
            }
        }
        i += step;
    }
    let tail = x[S * part..].iter().fold(0u64, |a, &v| a.wrapping_add(v));
    acc.iter().flatten().flatten().fold(tail, |a, &v| a.wrapping_add(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_way_of_reading_sums_every_value() {
        for n in [0usize, 1, 7, 8, 63, 64, 65, 1000, 4099] {
            let x: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
            let want = x.iter().fold(0u64, |a, &v| a.wrapping_add(v));
            for streams in [1, 8] {
                assert_eq!(read_sum(&x, streams), want, "{n} values, {streams} streams");
                assert_eq!(read_sum_generic(&x, streams), want, "{n} values, {streams} streams, generic");
            }
        }
        let p = StreamProbe::new(1 << 20);
        assert_eq!(p.bytes(), 1 << 20);
        assert!(p.pass() > 0.0);
    }
}
