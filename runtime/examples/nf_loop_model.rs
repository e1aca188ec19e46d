//! What the core's vector side sustains (measured on Zen 5 and Zen 4), and a register-level model
//! of the 16-bit NF3 loop.
//!
//! `cargo run --release -p bd-runtime --example nf_loop_model`
//!
//! x86-64 with AVX-512 VNNI and VBMI only. Two sets of timed `asm!` loops (no kernel code):
//! - *mixes*: 16 or more independent 512-bit operations per iteration (no dependencies between
//!   iterations, loads from L1), alone and in pairs, which shows how many of each the core issues
//!   per cycle and which of them share pipes; with GFNI, also the INT kernels' operations
//!   (`vpdpbusd`, the field extraction, the activation broadcasts) against `vpdpbusd`;
//! - *the NF3 loop*: the instruction stream of `avx512_nf::block_z` for 4 rows and one input
//!   (per row and 128-weight chunk: the index arithmetic on the code planes, 4 `vpermw` lookups,
//!   4 `vpdpwssd`, the conversion and FMA of the epilogue), with the codes streamed from a 7 MB
//!   buffer laid out as 4096-column rows, the tables and activations in L1; no table builds, no
//!   prefetches, no addressing. Variants drop the index arithmetic or the epilogue, or derive the
//!   indices from a repacked layout (`vpermb` with its load folded in, two `vpmultishiftqb` and
//!   two shifts, as in the prototype that docs/BENCHMARKS.md describes), so that what each part
//!   costs can be read off directly.
//!
//! Cycles are derived from a chain of dependent scalar adds (1 cycle each).

#[cfg(target_arch = "x86_64")]
mod model {
    use std::arch::asm;
    use std::time::Instant;

    #[repr(C, align(64))]
    struct Line([u8; 4096]);

    /// Seconds per iteration of `f(n)`, the best of 3.
    fn best(n: u64, f: impl Fn(u64)) -> f64 {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f(n);
                t.elapsed().as_secs_f64() / n as f64
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// The core's clock in GHz: a chain of dependent adds retires one per cycle.
    fn clock_ghz() -> f64 {
        1e-9 / best(50_000_000, |n| unsafe {
            asm!("2:", "add {a}, 1", "add {a}, 1", "add {a}, 1", "add {a}, 1", "dec {n}", "jnz 2b",
                 n = inout(reg) n => _, a = inout(reg) 0u64 => _, options(nostack));
        }) * 4.0
    }

    /// Time `$line`s as a loop body (their operands named `{x}`: a 4 KiB buffer in L1) and print
    /// cycles per iteration and operations per cycle.
    #[rustfmt::skip]
    macro_rules! mix {
        ($ghz:expr, $x:expr, $name:literal, $ops:literal, $($line:literal),*) => {{
            let s = best(5_000_000, |n| {
                asm!("vpxord zmm30, zmm30, zmm30", "vpxord zmm31, zmm31, zmm31", "/* {x} */", "2:", $($line,)* "dec {n}", "jnz 2b",
                    n = inout(reg) n => _, x = in(reg) $x, out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                    out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                    out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _, options(nostack));
            });
            println!("{:40} {:5.2} cycles, {:.2} operations per cycle", $name, s * $ghz * 1e9, $ops / (s * $ghz * 1e9));
        }};
    }

    /// Cycles per iteration of each mix (not rustfmt'd: it would give each instruction a line).
    #[rustfmt::skip]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    unsafe fn mixes(ghz: f64, gfni: bool) {
        let buf = Line([1; 4096]);
        let x = buf.0.as_ptr();
        mix!(ghz, x, "16 vpaddd", 16.0,
            "vpaddd zmm16, zmm30, zmm31", "vpaddd zmm17, zmm30, zmm31", "vpaddd zmm18, zmm30, zmm31", "vpaddd zmm19, zmm30, zmm31",
            "vpaddd zmm20, zmm30, zmm31", "vpaddd zmm21, zmm30, zmm31", "vpaddd zmm22, zmm30, zmm31", "vpaddd zmm23, zmm30, zmm31",
            "vpaddd zmm24, zmm30, zmm31", "vpaddd zmm25, zmm30, zmm31", "vpaddd zmm26, zmm30, zmm31", "vpaddd zmm27, zmm30, zmm31",
            "vpaddd zmm28, zmm30, zmm31", "vpaddd zmm29, zmm30, zmm31", "vpaddd zmm16, zmm30, zmm31", "vpaddd zmm17, zmm30, zmm31");
        mix!(ghz, x, "16 vpdpwssd", 16.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vpdpwssd zmm1, zmm30, zmm31", "vpdpwssd zmm2, zmm30, zmm31", "vpdpwssd zmm3, zmm30, zmm31",
            "vpdpwssd zmm4, zmm30, zmm31", "vpdpwssd zmm5, zmm30, zmm31", "vpdpwssd zmm6, zmm30, zmm31", "vpdpwssd zmm7, zmm30, zmm31",
            "vpdpwssd zmm8, zmm30, zmm31", "vpdpwssd zmm9, zmm30, zmm31", "vpdpwssd zmm10, zmm30, zmm31", "vpdpwssd zmm11, zmm30, zmm31",
            "vpdpwssd zmm12, zmm30, zmm31", "vpdpwssd zmm13, zmm30, zmm31", "vpdpwssd zmm14, zmm30, zmm31", "vpdpwssd zmm15, zmm30, zmm31");
        mix!(ghz, x, "16 vpermw", 16.0,
            "vpermw zmm16, zmm30, zmm31", "vpermw zmm17, zmm30, zmm31", "vpermw zmm18, zmm30, zmm31", "vpermw zmm19, zmm30, zmm31",
            "vpermw zmm20, zmm30, zmm31", "vpermw zmm21, zmm30, zmm31", "vpermw zmm22, zmm30, zmm31", "vpermw zmm23, zmm30, zmm31",
            "vpermw zmm24, zmm30, zmm31", "vpermw zmm25, zmm30, zmm31", "vpermw zmm26, zmm30, zmm31", "vpermw zmm27, zmm30, zmm31",
            "vpermw zmm28, zmm30, zmm31", "vpermw zmm29, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31", "vpermw zmm17, zmm30, zmm31");
        mix!(ghz, x, "16 vpsrld", 16.0,
            "vpsrld zmm16, zmm30, 4", "vpsrld zmm17, zmm30, 4", "vpsrld zmm18, zmm30, 4", "vpsrld zmm19, zmm30, 4",
            "vpsrld zmm20, zmm30, 4", "vpsrld zmm21, zmm30, 4", "vpsrld zmm22, zmm30, 4", "vpsrld zmm23, zmm30, 4",
            "vpsrld zmm24, zmm30, 4", "vpsrld zmm25, zmm30, 4", "vpsrld zmm26, zmm30, 4", "vpsrld zmm27, zmm30, 4",
            "vpsrld zmm28, zmm30, 4", "vpsrld zmm29, zmm30, 4", "vpsrld zmm16, zmm30, 4", "vpsrld zmm17, zmm30, 4");
        mix!(ghz, x, "16 vpmultishiftqb", 16.0,
            "vpmultishiftqb zmm16, zmm30, zmm31", "vpmultishiftqb zmm17, zmm30, zmm31", "vpmultishiftqb zmm18, zmm30, zmm31", "vpmultishiftqb zmm19, zmm30, zmm31",
            "vpmultishiftqb zmm20, zmm30, zmm31", "vpmultishiftqb zmm21, zmm30, zmm31", "vpmultishiftqb zmm22, zmm30, zmm31", "vpmultishiftqb zmm23, zmm30, zmm31",
            "vpmultishiftqb zmm24, zmm30, zmm31", "vpmultishiftqb zmm25, zmm30, zmm31", "vpmultishiftqb zmm26, zmm30, zmm31", "vpmultishiftqb zmm27, zmm30, zmm31",
            "vpmultishiftqb zmm28, zmm30, zmm31", "vpmultishiftqb zmm29, zmm30, zmm31", "vpmultishiftqb zmm16, zmm30, zmm31", "vpmultishiftqb zmm17, zmm30, zmm31");
        mix!(ghz, x, "8 vpdpwssd + 8 vpermw", 16.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31", "vpdpwssd zmm1, zmm30, zmm31", "vpermw zmm17, zmm30, zmm31",
            "vpdpwssd zmm2, zmm30, zmm31", "vpermw zmm18, zmm30, zmm31", "vpdpwssd zmm3, zmm30, zmm31", "vpermw zmm19, zmm30, zmm31",
            "vpdpwssd zmm4, zmm30, zmm31", "vpermw zmm20, zmm30, zmm31", "vpdpwssd zmm5, zmm30, zmm31", "vpermw zmm21, zmm30, zmm31",
            "vpdpwssd zmm6, zmm30, zmm31", "vpermw zmm22, zmm30, zmm31", "vpdpwssd zmm7, zmm30, zmm31", "vpermw zmm23, zmm30, zmm31");
        mix!(ghz, x, "8 vpdpwssd + 8 vpsrld", 16.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vpsrld zmm16, zmm30, 4", "vpdpwssd zmm1, zmm30, zmm31", "vpsrld zmm17, zmm30, 4",
            "vpdpwssd zmm2, zmm30, zmm31", "vpsrld zmm18, zmm30, 4", "vpdpwssd zmm3, zmm30, zmm31", "vpsrld zmm19, zmm30, 4",
            "vpdpwssd zmm4, zmm30, zmm31", "vpsrld zmm20, zmm30, 4", "vpdpwssd zmm5, zmm30, zmm31", "vpsrld zmm21, zmm30, 4",
            "vpdpwssd zmm6, zmm30, zmm31", "vpsrld zmm22, zmm30, 4", "vpdpwssd zmm7, zmm30, zmm31", "vpsrld zmm23, zmm30, 4");
        mix!(ghz, x, "8 vpermw + 8 vpsrld", 16.0,
            "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4", "vpermw zmm18, zmm30, zmm31", "vpsrld zmm19, zmm30, 4",
            "vpermw zmm20, zmm30, zmm31", "vpsrld zmm21, zmm30, 4", "vpermw zmm22, zmm30, zmm31", "vpsrld zmm23, zmm30, 4",
            "vpermw zmm24, zmm30, zmm31", "vpsrld zmm25, zmm30, 4", "vpermw zmm26, zmm30, zmm31", "vpsrld zmm27, zmm30, 4",
            "vpermw zmm28, zmm30, zmm31", "vpsrld zmm29, zmm30, 4", "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4");
        mix!(ghz, x, "8 vpdpwssd + 8 vfmadd231ps", 16.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vfmadd231ps zmm1, zmm30, zmm31", "vpdpwssd zmm2, zmm30, zmm31", "vfmadd231ps zmm3, zmm30, zmm31",
            "vpdpwssd zmm4, zmm30, zmm31", "vfmadd231ps zmm5, zmm30, zmm31", "vpdpwssd zmm6, zmm30, zmm31", "vfmadd231ps zmm7, zmm30, zmm31",
            "vpdpwssd zmm8, zmm30, zmm31", "vfmadd231ps zmm9, zmm30, zmm31", "vpdpwssd zmm10, zmm30, zmm31", "vfmadd231ps zmm11, zmm30, zmm31",
            "vpdpwssd zmm12, zmm30, zmm31", "vfmadd231ps zmm13, zmm30, zmm31", "vpdpwssd zmm14, zmm30, zmm31", "vfmadd231ps zmm15, zmm30, zmm31");
        mix!(ghz, x, "8 vpdpwssd + 8 vpmultishiftqb", 16.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vpmultishiftqb zmm16, zmm30, zmm31", "vpdpwssd zmm1, zmm30, zmm31", "vpmultishiftqb zmm17, zmm30, zmm31",
            "vpdpwssd zmm2, zmm30, zmm31", "vpmultishiftqb zmm18, zmm30, zmm31", "vpdpwssd zmm3, zmm30, zmm31", "vpmultishiftqb zmm19, zmm30, zmm31",
            "vpdpwssd zmm4, zmm30, zmm31", "vpmultishiftqb zmm20, zmm30, zmm31", "vpdpwssd zmm5, zmm30, zmm31", "vpmultishiftqb zmm21, zmm30, zmm31",
            "vpdpwssd zmm6, zmm30, zmm31", "vpmultishiftqb zmm22, zmm30, zmm31", "vpdpwssd zmm7, zmm30, zmm31", "vpmultishiftqb zmm23, zmm30, zmm31");
        mix!(ghz, x, "16 loads", 16.0,
            "vmovdqa64 zmm16, [{x} + 0]", "vmovdqa64 zmm17, [{x} + 64]", "vmovdqa64 zmm18, [{x} + 128]", "vmovdqa64 zmm19, [{x} + 192]",
            "vmovdqa64 zmm20, [{x} + 256]", "vmovdqa64 zmm21, [{x} + 320]", "vmovdqa64 zmm22, [{x} + 384]", "vmovdqa64 zmm23, [{x} + 448]",
            "vmovdqa64 zmm24, [{x} + 0]", "vmovdqa64 zmm25, [{x} + 64]", "vmovdqa64 zmm26, [{x} + 128]", "vmovdqa64 zmm27, [{x} + 192]",
            "vmovdqa64 zmm28, [{x} + 256]", "vmovdqa64 zmm29, [{x} + 320]", "vmovdqa64 zmm16, [{x} + 384]", "vmovdqa64 zmm17, [{x} + 448]");
        mix!(ghz, x, "8 loads + 8 vpaddd", 16.0,
            "vmovdqa64 zmm16, [{x} + 0]", "vpaddd zmm17, zmm30, zmm31", "vmovdqa64 zmm18, [{x} + 64]", "vpaddd zmm19, zmm30, zmm31",
            "vmovdqa64 zmm20, [{x} + 128]", "vpaddd zmm21, zmm30, zmm31", "vmovdqa64 zmm22, [{x} + 192]", "vpaddd zmm23, zmm30, zmm31",
            "vmovdqa64 zmm24, [{x} + 256]", "vpaddd zmm25, zmm30, zmm31", "vmovdqa64 zmm26, [{x} + 320]", "vpaddd zmm27, zmm30, zmm31",
            "vmovdqa64 zmm28, [{x} + 384]", "vpaddd zmm29, zmm30, zmm31", "vmovdqa64 zmm16, [{x} + 448]", "vpaddd zmm17, zmm30, zmm31");
        mix!(ghz, x, "NF3 loop's 32 operations", 32.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4", "vpsrlvd zmm18, zmm30, zmm31",
            "vprolvd zmm19, zmm30, zmm31", "vpternlogd zmm20, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm21, zmm30", "vfmadd231ps zmm1, zmm30, zmm31",
            "vpdpwssd zmm2, zmm30, zmm31", "vpermw zmm22, zmm30, zmm31", "vpsrld zmm23, zmm30, 4", "vpsrlvd zmm24, zmm30, zmm31",
            "vprolvd zmm25, zmm30, zmm31", "vpternlogd zmm26, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm27, zmm30", "vfmadd231ps zmm3, zmm30, zmm31",
            "vpdpwssd zmm4, zmm30, zmm31", "vpermw zmm28, zmm30, zmm31", "vpsrld zmm29, zmm30, 4", "vpdpwssd zmm5, zmm30, zmm31",
            "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4", "vpdpwssd zmm6, zmm30, zmm31", "vpermw zmm18, zmm30, zmm31",
            "vpsrld zmm19, zmm30, 4", "vpdpwssd zmm7, zmm30, zmm31", "vpermw zmm20, zmm30, zmm31", "vpsrld zmm21, zmm30, 4",
            "vpdpwssd zmm8, zmm30, zmm31", "vpermw zmm22, zmm30, zmm31", "vpdpwssd zmm9, zmm30, zmm31", "vpermw zmm23, zmm30, zmm31");
        mix!(ghz, x, "the same + 8 loads", 40.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4", "vpsrlvd zmm18, zmm30, zmm31",
            "vprolvd zmm19, zmm30, zmm31", "vpternlogd zmm20, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm21, zmm30", "vfmadd231ps zmm1, zmm30, zmm31",
            "vmovdqa64 zmm22, [{x} + 0]", "vpdpwssd zmm2, zmm30, zmm31", "vpermw zmm23, zmm30, zmm31", "vpsrld zmm24, zmm30, 4",
            "vpsrlvd zmm25, zmm30, zmm31", "vprolvd zmm26, zmm30, zmm31", "vpternlogd zmm27, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm28, zmm30",
            "vfmadd231ps zmm3, zmm30, zmm31", "vmovdqa64 zmm29, [{x} + 64]", "vpdpwssd zmm4, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31",
            "vpsrld zmm17, zmm30, 4", "vmovdqa64 zmm18, [{x} + 128]", "vpdpwssd zmm5, zmm30, zmm31", "vpermw zmm19, zmm30, zmm31",
            "vpsrld zmm20, zmm30, 4", "vmovdqa64 zmm21, [{x} + 192]", "vpdpwssd zmm6, zmm30, zmm31", "vpermw zmm22, zmm30, zmm31",
            "vpsrld zmm23, zmm30, 4", "vmovdqa64 zmm24, [{x} + 256]", "vpdpwssd zmm7, zmm30, zmm31", "vpermw zmm25, zmm30, zmm31",
            "vpsrld zmm26, zmm30, 4", "vmovdqa64 zmm27, [{x} + 320]", "vpdpwssd zmm8, zmm30, zmm31", "vpermw zmm28, zmm30, zmm31",
            "vmovdqa64 zmm29, [{x} + 384]", "vpdpwssd zmm9, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31", "vmovdqa64 zmm17, [{x} + 448]");
        mix!(ghz, x, "the same, loads folded into vpdpwssd", 32.0,
            "vpdpwssd zmm0, zmm30, [{x} + 0]", "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4", "vpsrlvd zmm18, zmm30, zmm31",
            "vprolvd zmm19, zmm30, zmm31", "vpternlogd zmm20, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm21, zmm30", "vfmadd231ps zmm1, zmm30, zmm31",
            "vpdpwssd zmm2, zmm30, [{x} + 64]", "vpermw zmm22, zmm30, zmm31", "vpsrld zmm23, zmm30, 4", "vpsrlvd zmm24, zmm30, zmm31",
            "vprolvd zmm25, zmm30, zmm31", "vpternlogd zmm26, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm27, zmm30", "vfmadd231ps zmm3, zmm30, zmm31",
            "vpdpwssd zmm4, zmm30, [{x} + 128]", "vpermw zmm28, zmm30, zmm31", "vpsrld zmm29, zmm30, 4", "vpdpwssd zmm5, zmm30, [{x} + 192]",
            "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4", "vpdpwssd zmm6, zmm30, [{x} + 0]", "vpermw zmm18, zmm30, zmm31",
            "vpsrld zmm19, zmm30, 4", "vpdpwssd zmm7, zmm30, [{x} + 64]", "vpermw zmm20, zmm30, zmm31", "vpsrld zmm21, zmm30, 4",
            "vpdpwssd zmm8, zmm30, [{x} + 128]", "vpermw zmm22, zmm30, zmm31", "vpdpwssd zmm9, zmm30, [{x} + 192]", "vpermw zmm23, zmm30, zmm31");
        // The INT kernels' operations (`avx512_int::pair_block`): `vpdpbusd`, the GFNI field
        // extraction against shift and mask, the activation broadcasts, the epilogue's
        // conversion and factor permute, each against `vpdpbusd`.
        if !gfni {
            return;
        }
        mix!(ghz, x, "16 vpdpbusd", 16.0,
            "vpdpbusd zmm0, zmm30, zmm31", "vpdpbusd zmm1, zmm30, zmm31", "vpdpbusd zmm2, zmm30, zmm31", "vpdpbusd zmm3, zmm30, zmm31",
            "vpdpbusd zmm4, zmm30, zmm31", "vpdpbusd zmm5, zmm30, zmm31", "vpdpbusd zmm6, zmm30, zmm31", "vpdpbusd zmm7, zmm30, zmm31",
            "vpdpbusd zmm8, zmm30, zmm31", "vpdpbusd zmm9, zmm30, zmm31", "vpdpbusd zmm10, zmm30, zmm31", "vpdpbusd zmm11, zmm30, zmm31",
            "vpdpbusd zmm12, zmm30, zmm31", "vpdpbusd zmm13, zmm30, zmm31", "vpdpbusd zmm14, zmm30, zmm31", "vpdpbusd zmm15, zmm30, zmm31");
        mix!(ghz, x, "16 vgf2p8affineqb", 16.0,
            "vgf2p8affineqb zmm16, zmm30, zmm29, 0", "vgf2p8affineqb zmm17, zmm30, zmm29, 0", "vgf2p8affineqb zmm18, zmm30, zmm29, 0", "vgf2p8affineqb zmm19, zmm30, zmm29, 0",
            "vgf2p8affineqb zmm20, zmm30, zmm29, 0", "vgf2p8affineqb zmm21, zmm30, zmm29, 0", "vgf2p8affineqb zmm22, zmm30, zmm29, 0", "vgf2p8affineqb zmm23, zmm30, zmm29, 0",
            "vgf2p8affineqb zmm24, zmm30, zmm29, 0", "vgf2p8affineqb zmm25, zmm30, zmm29, 0", "vgf2p8affineqb zmm26, zmm30, zmm29, 0", "vgf2p8affineqb zmm27, zmm30, zmm29, 0",
            "vgf2p8affineqb zmm16, zmm30, zmm29, 0", "vgf2p8affineqb zmm17, zmm30, zmm29, 0", "vgf2p8affineqb zmm18, zmm30, zmm29, 0", "vgf2p8affineqb zmm19, zmm30, zmm29, 0");
        mix!(ghz, x, "8 vpdpbusd + 8 vgf2p8affineqb", 16.0,
            "vpdpbusd zmm0, zmm30, zmm31", "vgf2p8affineqb zmm16, zmm30, zmm29, 0", "vpdpbusd zmm1, zmm30, zmm31", "vgf2p8affineqb zmm17, zmm30, zmm29, 0",
            "vpdpbusd zmm2, zmm30, zmm31", "vgf2p8affineqb zmm18, zmm30, zmm29, 0", "vpdpbusd zmm3, zmm30, zmm31", "vgf2p8affineqb zmm19, zmm30, zmm29, 0",
            "vpdpbusd zmm4, zmm30, zmm31", "vgf2p8affineqb zmm20, zmm30, zmm29, 0", "vpdpbusd zmm5, zmm30, zmm31", "vgf2p8affineqb zmm21, zmm30, zmm29, 0",
            "vpdpbusd zmm6, zmm30, zmm31", "vgf2p8affineqb zmm22, zmm30, zmm29, 0", "vpdpbusd zmm7, zmm30, zmm31", "vgf2p8affineqb zmm23, zmm30, zmm29, 0");
        mix!(ghz, x, "8 vpdpbusd + 4 vpsrlw + 4 vpandd", 16.0,
            "vpdpbusd zmm0, zmm30, zmm31", "vpsrlw zmm16, zmm30, 2", "vpdpbusd zmm1, zmm30, zmm31", "vpandd zmm17, zmm30, zmm29",
            "vpdpbusd zmm2, zmm30, zmm31", "vpsrlw zmm18, zmm30, 2", "vpdpbusd zmm3, zmm30, zmm31", "vpandd zmm19, zmm30, zmm29",
            "vpdpbusd zmm4, zmm30, zmm31", "vpsrlw zmm20, zmm30, 2", "vpdpbusd zmm5, zmm30, zmm31", "vpandd zmm21, zmm30, zmm29",
            "vpdpbusd zmm6, zmm30, zmm31", "vpsrlw zmm22, zmm30, 2", "vpdpbusd zmm7, zmm30, zmm31", "vpandd zmm23, zmm30, zmm29");
        mix!(ghz, x, "16 vbroadcasti64x4", 16.0,
            "vbroadcasti64x4 zmm16, [{x} + 0]", "vbroadcasti64x4 zmm17, [{x} + 32]", "vbroadcasti64x4 zmm18, [{x} + 64]", "vbroadcasti64x4 zmm19, [{x} + 96]",
            "vbroadcasti64x4 zmm20, [{x} + 128]", "vbroadcasti64x4 zmm21, [{x} + 160]", "vbroadcasti64x4 zmm22, [{x} + 192]", "vbroadcasti64x4 zmm23, [{x} + 224]",
            "vbroadcasti64x4 zmm16, [{x} + 256]", "vbroadcasti64x4 zmm17, [{x} + 288]", "vbroadcasti64x4 zmm18, [{x} + 320]", "vbroadcasti64x4 zmm19, [{x} + 352]",
            "vbroadcasti64x4 zmm20, [{x} + 384]", "vbroadcasti64x4 zmm21, [{x} + 416]", "vbroadcasti64x4 zmm22, [{x} + 448]", "vbroadcasti64x4 zmm23, [{x} + 480]");
        mix!(ghz, x, "8 vpdpbusd + 8 vbroadcasti64x4", 16.0,
            "vpdpbusd zmm0, zmm30, zmm31", "vbroadcasti64x4 zmm16, [{x} + 0]", "vpdpbusd zmm1, zmm30, zmm31", "vbroadcasti64x4 zmm17, [{x} + 32]",
            "vpdpbusd zmm2, zmm30, zmm31", "vbroadcasti64x4 zmm18, [{x} + 64]", "vpdpbusd zmm3, zmm30, zmm31", "vbroadcasti64x4 zmm19, [{x} + 96]",
            "vpdpbusd zmm4, zmm30, zmm31", "vbroadcasti64x4 zmm20, [{x} + 128]", "vpdpbusd zmm5, zmm30, zmm31", "vbroadcasti64x4 zmm21, [{x} + 160]",
            "vpdpbusd zmm6, zmm30, zmm31", "vbroadcasti64x4 zmm22, [{x} + 192]", "vpdpbusd zmm7, zmm30, zmm31", "vbroadcasti64x4 zmm23, [{x} + 224]");
        mix!(ghz, x, "8 vpdpbusd + 8 vpbroadcastq", 16.0,
            "vpdpbusd zmm0, zmm30, zmm31", "vpbroadcastq zmm16, [{x} + 0]", "vpdpbusd zmm1, zmm30, zmm31", "vpbroadcastq zmm17, [{x} + 8]",
            "vpdpbusd zmm2, zmm30, zmm31", "vpbroadcastq zmm18, [{x} + 16]", "vpdpbusd zmm3, zmm30, zmm31", "vpbroadcastq zmm19, [{x} + 24]",
            "vpdpbusd zmm4, zmm30, zmm31", "vpbroadcastq zmm20, [{x} + 32]", "vpdpbusd zmm5, zmm30, zmm31", "vpbroadcastq zmm21, [{x} + 40]",
            "vpdpbusd zmm6, zmm30, zmm31", "vpbroadcastq zmm22, [{x} + 48]", "vpdpbusd zmm7, zmm30, zmm31", "vpbroadcastq zmm23, [{x} + 56]");
        mix!(ghz, x, "8 vpdpbusd + 8 vcvtdq2ps", 16.0,
            "vpdpbusd zmm0, zmm30, zmm31", "vcvtdq2ps zmm16, zmm30", "vpdpbusd zmm1, zmm30, zmm31", "vcvtdq2ps zmm17, zmm30",
            "vpdpbusd zmm2, zmm30, zmm31", "vcvtdq2ps zmm18, zmm30", "vpdpbusd zmm3, zmm30, zmm31", "vcvtdq2ps zmm19, zmm30",
            "vpdpbusd zmm4, zmm30, zmm31", "vcvtdq2ps zmm20, zmm30", "vpdpbusd zmm5, zmm30, zmm31", "vcvtdq2ps zmm21, zmm30",
            "vpdpbusd zmm6, zmm30, zmm31", "vcvtdq2ps zmm22, zmm30", "vpdpbusd zmm7, zmm30, zmm31", "vcvtdq2ps zmm23, zmm30");
        mix!(ghz, x, "8 vpdpbusd + 8 vpermps", 16.0,
            "vpdpbusd zmm0, zmm30, zmm31", "vpermps zmm16, zmm29, zmm30", "vpdpbusd zmm1, zmm30, zmm31", "vpermps zmm17, zmm29, zmm30",
            "vpdpbusd zmm2, zmm30, zmm31", "vpermps zmm18, zmm29, zmm30", "vpdpbusd zmm3, zmm30, zmm31", "vpermps zmm19, zmm29, zmm30",
            "vpdpbusd zmm4, zmm30, zmm31", "vpermps zmm20, zmm29, zmm30", "vpdpbusd zmm5, zmm30, zmm31", "vpermps zmm21, zmm29, zmm30",
            "vpdpbusd zmm6, zmm30, zmm31", "vpermps zmm22, zmm29, zmm30", "vpdpbusd zmm7, zmm30, zmm31", "vpermps zmm23, zmm29, zmm30");
    }

    // The parts of the NF3 loop body, per chunk of 4 rows (zmm0-15 indices and lookups, 16-19
    // tables, 20-22 the lanes scheme's controls, 24-27 the sums, 28-31 the f32 accumulators).
    // The plane scheme, as `avx512_nf::block_z` issues it: two broadcast loads, a variable
    // shift, a rotation and a ternary logic merge the planes, three shifts make the 4 lookups.
    #[rustfmt::skip]
    macro_rules! planes_index { () => { concat!(
            "vbroadcasti64x4 zmm0, [{c} + 0]\n vpsrlvd zmm0, zmm0, [{k}]\n vbroadcasti32x4 zmm1, [{c} + 32]\n vprolvd zmm1, zmm1, [{k} + 64]\n",
            "vpternlogd zmm0, zmm1, [{k} + 128]{{1to16}}, 0xe4\n vpsrld zmm1, zmm0, 4\n vpsrld zmm2, zmm0, 8\n vpsrld zmm3, zmm0, 12\n",
            "vbroadcasti64x4 zmm4, [{c} + 1536]\n vpsrlvd zmm4, zmm4, [{k}]\n vbroadcasti32x4 zmm5, [{c} + 1568]\n vprolvd zmm5, zmm5, [{k} + 64]\n",
            "vpternlogd zmm4, zmm5, [{k} + 128]{{1to16}}, 0xe4\n vpsrld zmm5, zmm4, 4\n vpsrld zmm6, zmm4, 8\n vpsrld zmm7, zmm4, 12\n",
            "vbroadcasti64x4 zmm8, [{c} + 3072]\n vpsrlvd zmm8, zmm8, [{k}]\n vbroadcasti32x4 zmm9, [{c} + 3104]\n vprolvd zmm9, zmm9, [{k} + 64]\n",
            "vpternlogd zmm8, zmm9, [{k} + 128]{{1to16}}, 0xe4\n vpsrld zmm9, zmm8, 4\n vpsrld zmm10, zmm8, 8\n vpsrld zmm11, zmm8, 12\n",
            "vbroadcasti64x4 zmm12, [{c} + 4608]\n vpsrlvd zmm12, zmm12, [{k}]\n vbroadcasti32x4 zmm13, [{c} + 4640]\n vprolvd zmm13, zmm13, [{k} + 64]\n",
            "vpternlogd zmm12, zmm13, [{k} + 128]{{1to16}}, 0xe4\n vpsrld zmm13, zmm12, 4\n vpsrld zmm14, zmm12, 8\n vpsrld zmm15, zmm12, 12\n") }; }
    // No index arithmetic: the code bytes as loaded, copied by register moves.
    #[rustfmt::skip]
    macro_rules! no_index { () => { concat!(
            "vbroadcasti64x4 zmm0, [{c} + 0]\n vmovdqa64 zmm1, zmm0\n vmovdqa64 zmm2, zmm0\n vmovdqa64 zmm3, zmm0\n",
            "vbroadcasti64x4 zmm4, [{c} + 1536]\n vmovdqa64 zmm5, zmm4\n vmovdqa64 zmm6, zmm4\n vmovdqa64 zmm7, zmm4\n",
            "vbroadcasti64x4 zmm8, [{c} + 3072]\n vmovdqa64 zmm9, zmm8\n vmovdqa64 zmm10, zmm8\n vmovdqa64 zmm11, zmm8\n",
            "vbroadcasti64x4 zmm12, [{c} + 4608]\n vmovdqa64 zmm13, zmm12\n vmovdqa64 zmm14, zmm12\n vmovdqa64 zmm15, zmm12\n") }; }
    // A repacked layout (the prototype in docs/BENCHMARKS.md): `vpermb` with the load folded in, two
    // `vpmultishiftqb`, two shifts.
    #[rustfmt::skip]
    macro_rules! lanes_index { () => { concat!(
            "vpermb zmm1, zmm20, [{c} + 0]\n vpmultishiftqb zmm0, zmm21, zmm1\n vpmultishiftqb zmm2, zmm22, zmm1\n vpsrlw zmm1, zmm0, 8\n",
            "vpsrlw zmm3, zmm2, 8\n vpermb zmm5, zmm20, [{c} + 1536]\n vpmultishiftqb zmm4, zmm21, zmm5\n vpmultishiftqb zmm6, zmm22, zmm5\n",
            "vpsrlw zmm5, zmm4, 8\n vpsrlw zmm7, zmm6, 8\n vpermb zmm9, zmm20, [{c} + 3072]\n vpmultishiftqb zmm8, zmm21, zmm9\n",
            "vpmultishiftqb zmm10, zmm22, zmm9\n vpsrlw zmm9, zmm8, 8\n vpsrlw zmm11, zmm10, 8\n vpermb zmm13, zmm20, [{c} + 4608]\n",
            "vpmultishiftqb zmm12, zmm21, zmm13\n vpmultishiftqb zmm14, zmm22, zmm13\n vpsrlw zmm13, zmm12, 8\n vpsrlw zmm15, zmm14, 8\n") }; }
    // Tables, then 4 x (4 lookups, 4 `vpdpwssd` on activations in memory).
    #[rustfmt::skip]
    macro_rules! lookups { () => { concat!(
            "vbroadcasti32x4 zmm16, [{t} + 0]\n vbroadcasti32x4 zmm17, [{t} + 16]\n vbroadcasti32x4 zmm18, [{t} + 32]\n vbroadcasti32x4 zmm19, [{t} + 48]\n",
            "vpxord zmm24, zmm24, zmm24\n vpxord zmm25, zmm25, zmm25\n vpxord zmm26, zmm26, zmm26\n vpxord zmm27, zmm27, zmm27\n",
            "vpermw zmm0, zmm0, zmm16\n vpermw zmm4, zmm4, zmm17\n vpermw zmm8, zmm8, zmm18\n vpermw zmm12, zmm12, zmm19\n",
            "vpdpwssd zmm24, zmm0, [{x} + 0]\n vpdpwssd zmm25, zmm4, [{x} + 0]\n vpdpwssd zmm26, zmm8, [{x} + 0]\n vpdpwssd zmm27, zmm12, [{x} + 0]\n",
            "vpermw zmm1, zmm1, zmm16\n vpermw zmm5, zmm5, zmm17\n vpermw zmm9, zmm9, zmm18\n vpermw zmm13, zmm13, zmm19\n",
            "vpdpwssd zmm24, zmm1, [{x} + 64]\n vpdpwssd zmm25, zmm5, [{x} + 64]\n vpdpwssd zmm26, zmm9, [{x} + 64]\n vpdpwssd zmm27, zmm13, [{x} + 64]\n",
            "vpermw zmm2, zmm2, zmm16\n vpermw zmm6, zmm6, zmm17\n vpermw zmm10, zmm10, zmm18\n vpermw zmm14, zmm14, zmm19\n",
            "vpdpwssd zmm24, zmm2, [{x} + 128]\n vpdpwssd zmm25, zmm6, [{x} + 128]\n vpdpwssd zmm26, zmm10, [{x} + 128]\n vpdpwssd zmm27, zmm14, [{x} + 128]\n",
            "vpermw zmm3, zmm3, zmm16\n vpermw zmm7, zmm7, zmm17\n vpermw zmm11, zmm11, zmm18\n vpermw zmm15, zmm15, zmm19\n",
            "vpdpwssd zmm24, zmm3, [{x} + 192]\n vpdpwssd zmm25, zmm7, [{x} + 192]\n vpdpwssd zmm26, zmm11, [{x} + 192]\n vpdpwssd zmm27, zmm15, [{x} + 192]\n") }; }
    // The conversion and FMA per row.
    #[rustfmt::skip]
    macro_rules! epilogue { () => { concat!(
            "vcvtdq2ps zmm0, zmm24\n vfmadd231ps zmm28, zmm0, [{f} + 0]{{1to16}}\n vcvtdq2ps zmm4, zmm25\n vfmadd231ps zmm29, zmm4, [{f} + 4]{{1to16}}\n",
            "vcvtdq2ps zmm8, zmm26\n vfmadd231ps zmm30, zmm8, [{f} + 8]{{1to16}}\n vcvtdq2ps zmm12, zmm27\n vfmadd231ps zmm31, zmm12, [{f} + 12]{{1to16}}\n") }; }

    /// Time the NF3 loop body made of `$part`s, over the chunks of 4 rows of codes (`{c}`: 48
    /// bytes a chunk, rows of 1536 bytes; the next row block after 32 chunks, the buffer's start
    /// again at its end), and print cycles per row and chunk.
    #[rustfmt::skip]
    macro_rules! nf_loop {
        ($ghz:expr, $codes:expr, $k:expr, $t:expr, $x:expr, $f:expr, $name:literal, $($part:expr),*) => {{
            let s = best(2_000_000, |n| {
                asm!(
                    "vmovdqu64 zmm20, [{k} + 256]", "vmovdqu64 zmm21, [{k} + 320]", "vmovdqu64 zmm22, [{k} + 384]",
                    "/* {f} {t} {x} {k} */", "mov {c}, {c0}", "mov {m}, 32", "2:",
                    $($part,)*
                    "add {c}, 48", "dec {m}", "jnz 3f", "add {c}, 4608", "mov {m}, 32", "cmp {c}, {e}", "jb 3f", "mov {c}, {c0}", "3:",
                    "dec {n}", "jnz 2b",
                    n = inout(reg) n => _, c = out(reg) _, m = out(reg) _, c0 = in(reg) $codes.as_ptr(),
                    e = in(reg) $codes.as_ptr().add($codes.len() - 8 * 1536), k = in(reg) $k, t = in(reg) $t, x = in(reg) $x, f = in(reg) $f,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                    out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                    out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _, options(nostack));
            }) / 4.0;
            println!("{:40} {:5.2} cycles per row and chunk ({:.4} ns per weight)", $name, s * $ghz * 1e9, s * 1e9 / 128.0);
        }};
    }

    /// Cycles per row and chunk of each variant of the NF3 loop.
    #[rustfmt::skip]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    unsafe fn nf3_loop(ghz: f64) {
        // Codes: 7 MB (L3).
        let codes: Vec<u8> = (0..7_000_000usize).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        // The plane scheme's shift counts, then its ternary logic's mask; the lanes scheme's
        // controls (timing does not depend on their values).
        let mut k = Line([0; 4096]);
        for i in 0..16 {
            k.0[4 * i] = [0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2][i];
            k.0[64 + 4 * i] = [2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 31, 31, 31, 31][i];
        }
        k.0[128..132].copy_from_slice(&[0x44; 4]);
        for (i, b) in k.0[256..448].iter_mut().enumerate() {
            *b = (i * 7 % 40) as u8;
        }
        let data = Line([3; 4096]);
        let (kp, dp) = (k.0.as_ptr(), data.0.as_ptr());
        // Tables, activations, segment factors.
        let (t, x, f) = (dp, dp.add(1024), dp.add(2048));
        nf_loop!(ghz, codes, kp, t, x, f, "as built (planes)", planes_index!(), lookups!(), epilogue!());
        nf_loop!(ghz, codes, kp, t, x, f, "no index arithmetic", no_index!(), lookups!(), epilogue!());
        nf_loop!(ghz, codes, kp, t, x, f, "no epilogue", planes_index!(), lookups!());
        nf_loop!(ghz, codes, kp, t, x, f, "lanes layout indices", lanes_index!(), lookups!(), epilogue!());
    }

    pub fn run() {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("avx512vbmi")) {
            eprintln!("nf_loop_model: needs AVX-512 BW, VNNI and VBMI; this CPU lacks one of them");
            std::process::exit(2);
        }
        let ghz = clock_ghz();
        println!("clock: {ghz:.2} GHz (dependent adds)");
        println!("-- independent operations, per iteration");
        unsafe { mixes(ghz, has!("gfni")) };
        println!("-- the 16-bit NF3 loop, 4 rows x 1 input");
        unsafe { nf3_loop(ghz) };
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    model::run();
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("nf_loop_model: x86-64 only");
}
