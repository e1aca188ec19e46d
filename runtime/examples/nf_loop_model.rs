//! What Zen 5's vector side sustains, and a register-level model of the 16-bit NF3 loop.
//!
//! `cargo run --release -p bd-runtime --example nf_loop_model`
//!
//! x86-64 with AVX-512 VNNI and VBMI only. Two sets of timed `asm!` loops (no kernel code):
//! - *mixes*: 16 or more independent 512-bit operations per iteration (no dependencies between
//!   iterations, loads from L1), alone and in pairs, which shows how many of each the core issues
//!   per cycle and which of them share pipes;
//! - *the NF3 loop*: the instruction stream of `avx512_nf::block_z` for 4 rows and one input
//!   (per row and 128-weight chunk: the index arithmetic on the code planes, 4 `vpermw` lookups,
//!   4 `vpdpwssd`, the conversion and FMA of the epilogue), with the codes streamed from a 7 MB
//!   buffer laid out as 4096-column rows, the tables and activations in L1; no table builds, no
//!   prefetches, no addressing. Variants drop the index arithmetic or the epilogue, or derive the
//!   indices as a repacked layout would allow (`vpermb` with its load folded in, then three
//!   `vpmultishiftqb`), so that what each part costs can be read off directly.
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
    unsafe fn mixes(ghz: f64) {
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
        mix!(ghz, x, "16 loads from 4 lines", 16.0,
            "vmovdqa64 zmm16, [{x} + 0]", "vmovdqa64 zmm17, [{x} + 64]", "vmovdqa64 zmm18, [{x} + 128]", "vmovdqa64 zmm19, [{x} + 192]",
            "vmovdqa64 zmm20, [{x} + 0]", "vmovdqa64 zmm21, [{x} + 64]", "vmovdqa64 zmm22, [{x} + 128]", "vmovdqa64 zmm23, [{x} + 192]",
            "vmovdqa64 zmm24, [{x} + 0]", "vmovdqa64 zmm25, [{x} + 64]", "vmovdqa64 zmm26, [{x} + 128]", "vmovdqa64 zmm27, [{x} + 192]",
            "vmovdqa64 zmm28, [{x} + 0]", "vmovdqa64 zmm29, [{x} + 64]", "vmovdqa64 zmm16, [{x} + 128]", "vmovdqa64 zmm17, [{x} + 192]");
        mix!(ghz, x, "16 loads from 8 lines", 16.0,
            "vmovdqa64 zmm16, [{x} + 0]", "vmovdqa64 zmm17, [{x} + 64]", "vmovdqa64 zmm18, [{x} + 128]", "vmovdqa64 zmm19, [{x} + 192]",
            "vmovdqa64 zmm20, [{x} + 256]", "vmovdqa64 zmm21, [{x} + 320]", "vmovdqa64 zmm22, [{x} + 384]", "vmovdqa64 zmm23, [{x} + 448]",
            "vmovdqa64 zmm24, [{x} + 0]", "vmovdqa64 zmm25, [{x} + 64]", "vmovdqa64 zmm26, [{x} + 128]", "vmovdqa64 zmm27, [{x} + 192]",
            "vmovdqa64 zmm28, [{x} + 256]", "vmovdqa64 zmm29, [{x} + 320]", "vmovdqa64 zmm16, [{x} + 384]", "vmovdqa64 zmm17, [{x} + 448]");
        mix!(ghz, x, "8 loads + 8 vpaddd, 4 lines", 16.0,
            "vmovdqa64 zmm16, [{x} + 0]", "vpaddd zmm17, zmm30, zmm31", "vmovdqa64 zmm18, [{x} + 64]", "vpaddd zmm19, zmm30, zmm31",
            "vmovdqa64 zmm20, [{x} + 128]", "vpaddd zmm21, zmm30, zmm31", "vmovdqa64 zmm22, [{x} + 192]", "vpaddd zmm23, zmm30, zmm31",
            "vmovdqa64 zmm24, [{x} + 0]", "vpaddd zmm25, zmm30, zmm31", "vmovdqa64 zmm26, [{x} + 64]", "vpaddd zmm27, zmm30, zmm31",
            "vmovdqa64 zmm28, [{x} + 128]", "vpaddd zmm29, zmm30, zmm31", "vmovdqa64 zmm16, [{x} + 192]", "vpaddd zmm17, zmm30, zmm31");
        mix!(ghz, x, "8 loads + 8 vpaddd, 8 lines", 16.0,
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
        mix!(ghz, x, "the same + 8 loads from 4 lines", 40.0,
            "vpdpwssd zmm0, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31", "vpsrld zmm17, zmm30, 4", "vpsrlvd zmm18, zmm30, zmm31",
            "vprolvd zmm19, zmm30, zmm31", "vpternlogd zmm20, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm21, zmm30", "vfmadd231ps zmm1, zmm30, zmm31",
            "vmovdqa64 zmm22, [{x} + 0]", "vpdpwssd zmm2, zmm30, zmm31", "vpermw zmm23, zmm30, zmm31", "vpsrld zmm24, zmm30, 4",
            "vpsrlvd zmm25, zmm30, zmm31", "vprolvd zmm26, zmm30, zmm31", "vpternlogd zmm27, zmm30, zmm31, 0xe4", "vcvtdq2ps zmm28, zmm30",
            "vfmadd231ps zmm3, zmm30, zmm31", "vmovdqa64 zmm29, [{x} + 64]", "vpdpwssd zmm4, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31",
            "vpsrld zmm17, zmm30, 4", "vmovdqa64 zmm18, [{x} + 128]", "vpdpwssd zmm5, zmm30, zmm31", "vpermw zmm19, zmm30, zmm31",
            "vpsrld zmm20, zmm30, 4", "vmovdqa64 zmm21, [{x} + 192]", "vpdpwssd zmm6, zmm30, zmm31", "vpermw zmm22, zmm30, zmm31",
            "vpsrld zmm23, zmm30, 4", "vmovdqa64 zmm24, [{x} + 0]", "vpdpwssd zmm7, zmm30, zmm31", "vpermw zmm25, zmm30, zmm31",
            "vpsrld zmm26, zmm30, 4", "vmovdqa64 zmm27, [{x} + 64]", "vpdpwssd zmm8, zmm30, zmm31", "vpermw zmm28, zmm30, zmm31",
            "vmovdqa64 zmm29, [{x} + 128]", "vpdpwssd zmm9, zmm30, zmm31", "vpermw zmm16, zmm30, zmm31", "vmovdqa64 zmm17, [{x} + 192]");
        mix!(ghz, x, "the same + 8 loads from 8 lines", 40.0,
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
    }

    /// Time `$line`s as the body of a loop over the chunks of 4 rows of codes (`{c}`: 48 bytes a
    /// chunk, rows of 1536 bytes; the next row block after 32 chunks, the buffer's start again
    /// at its end) and print cycles per row and chunk. The multishift scheme's controls sit in
    /// zmm20-23 (arbitrary in-range values: timing does not depend on them).
    #[rustfmt::skip]
    macro_rules! nf_loop {
        ($ghz:expr, $codes:expr, $k:expr, $t:expr, $x:expr, $f:expr, $name:literal, $($line:literal),*) => {{
            let s = best(2_000_000, |n| {
                asm!(
                    "vmovdqu64 zmm20, [{k} + 256]", "vmovdqu64 zmm21, [{k} + 320]", "vmovdqu64 zmm22, [{k} + 384]", "vmovdqu64 zmm23, [{k} + 448]",
                    "/* {f} {t} {x} {k} */", "mov {c}, {c0}", "mov {m}, 32", "2:",
                    $($line,)*
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
        // The plane scheme's shift counts, then its ternary logic's mask; the multishift controls.
        let mut k = Line([0; 4096]);
        for i in 0..16 {
            k.0[4 * i] = [0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2][i];
            k.0[64 + 4 * i] = [2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 31, 31, 31, 31][i];
        }
        k.0[128..132].copy_from_slice(&[0x44; 4]);
        for (i, b) in k.0[256..512].iter_mut().enumerate() {
            *b = (i * 7 % 40) as u8;
        }
        let data = Line([3; 4096]);
        let (kp, dp) = (k.0.as_ptr(), data.0.as_ptr());
        // Tables, activations, segment factors.
        let (t, x, f) = (dp, dp.add(1024), dp.add(2048));
        nf_loop!(ghz, codes, kp, t, x, f, "as built (planes)",
            "vbroadcasti64x4 zmm0, [{c} + 0]", "vpsrlvd zmm0, zmm0, [{k}]", "vbroadcasti32x4 zmm1, [{c} + 32]", "vprolvd zmm1, zmm1, [{k} + 64]",
            "vpternlogd zmm0, zmm1, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm1, zmm0, 4", "vpsrld zmm2, zmm0, 8", "vpsrld zmm3, zmm0, 12",
            "vbroadcasti64x4 zmm4, [{c} + 1536]", "vpsrlvd zmm4, zmm4, [{k}]", "vbroadcasti32x4 zmm5, [{c} + 1568]", "vprolvd zmm5, zmm5, [{k} + 64]",
            "vpternlogd zmm4, zmm5, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm5, zmm4, 4", "vpsrld zmm6, zmm4, 8", "vpsrld zmm7, zmm4, 12",
            "vbroadcasti64x4 zmm8, [{c} + 3072]", "vpsrlvd zmm8, zmm8, [{k}]", "vbroadcasti32x4 zmm9, [{c} + 3104]", "vprolvd zmm9, zmm9, [{k} + 64]",
            "vpternlogd zmm8, zmm9, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm9, zmm8, 4", "vpsrld zmm10, zmm8, 8", "vpsrld zmm11, zmm8, 12",
            "vbroadcasti64x4 zmm12, [{c} + 4608]", "vpsrlvd zmm12, zmm12, [{k}]", "vbroadcasti32x4 zmm13, [{c} + 4640]", "vprolvd zmm13, zmm13, [{k} + 64]",
            "vpternlogd zmm12, zmm13, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm13, zmm12, 4", "vpsrld zmm14, zmm12, 8", "vpsrld zmm15, zmm12, 12",
            "vbroadcasti32x4 zmm16, [{t} + 0]", "vbroadcasti32x4 zmm17, [{t} + 16]", "vbroadcasti32x4 zmm18, [{t} + 32]", "vbroadcasti32x4 zmm19, [{t} + 48]",
            "vpxord zmm24, zmm24, zmm24", "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
            "vpermw zmm0, zmm0, zmm16", "vpermw zmm4, zmm4, zmm17", "vpermw zmm8, zmm8, zmm18", "vpermw zmm12, zmm12, zmm19",
            "vpdpwssd zmm24, zmm0, [{x} + 0]", "vpdpwssd zmm25, zmm4, [{x} + 0]", "vpdpwssd zmm26, zmm8, [{x} + 0]", "vpdpwssd zmm27, zmm12, [{x} + 0]",
            "vpermw zmm1, zmm1, zmm16", "vpermw zmm5, zmm5, zmm17", "vpermw zmm9, zmm9, zmm18", "vpermw zmm13, zmm13, zmm19",
            "vpdpwssd zmm24, zmm1, [{x} + 64]", "vpdpwssd zmm25, zmm5, [{x} + 64]", "vpdpwssd zmm26, zmm9, [{x} + 64]", "vpdpwssd zmm27, zmm13, [{x} + 64]",
            "vpermw zmm2, zmm2, zmm16", "vpermw zmm6, zmm6, zmm17", "vpermw zmm10, zmm10, zmm18", "vpermw zmm14, zmm14, zmm19",
            "vpdpwssd zmm24, zmm2, [{x} + 128]", "vpdpwssd zmm25, zmm6, [{x} + 128]", "vpdpwssd zmm26, zmm10, [{x} + 128]", "vpdpwssd zmm27, zmm14, [{x} + 128]",
            "vpermw zmm3, zmm3, zmm16", "vpermw zmm7, zmm7, zmm17", "vpermw zmm11, zmm11, zmm18", "vpermw zmm15, zmm15, zmm19",
            "vpdpwssd zmm24, zmm3, [{x} + 192]", "vpdpwssd zmm25, zmm7, [{x} + 192]", "vpdpwssd zmm26, zmm11, [{x} + 192]", "vpdpwssd zmm27, zmm15, [{x} + 192]",
            "vcvtdq2ps zmm0, zmm24", "vfmadd231ps zmm28, zmm0, [{f} + 0]{{1to16}}", "vcvtdq2ps zmm4, zmm25", "vfmadd231ps zmm29, zmm4, [{f} + 4]{{1to16}}",
            "vcvtdq2ps zmm8, zmm26", "vfmadd231ps zmm30, zmm8, [{f} + 8]{{1to16}}", "vcvtdq2ps zmm12, zmm27", "vfmadd231ps zmm31, zmm12, [{f} + 12]{{1to16}}");
        nf_loop!(ghz, codes, kp, t, x, f, "no index arithmetic",
            "vbroadcasti64x4 zmm0, [{c} + 0]", "vmovdqa64 zmm1, zmm0", "vmovdqa64 zmm2, zmm0", "vmovdqa64 zmm3, zmm0",
            "vbroadcasti64x4 zmm4, [{c} + 1536]", "vmovdqa64 zmm5, zmm4", "vmovdqa64 zmm6, zmm4", "vmovdqa64 zmm7, zmm4",
            "vbroadcasti64x4 zmm8, [{c} + 3072]", "vmovdqa64 zmm9, zmm8", "vmovdqa64 zmm10, zmm8", "vmovdqa64 zmm11, zmm8",
            "vbroadcasti64x4 zmm12, [{c} + 4608]", "vmovdqa64 zmm13, zmm12", "vmovdqa64 zmm14, zmm12", "vmovdqa64 zmm15, zmm12",
            "vbroadcasti32x4 zmm16, [{t} + 0]", "vbroadcasti32x4 zmm17, [{t} + 16]", "vbroadcasti32x4 zmm18, [{t} + 32]", "vbroadcasti32x4 zmm19, [{t} + 48]",
            "vpxord zmm24, zmm24, zmm24", "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
            "vpermw zmm0, zmm0, zmm16", "vpermw zmm4, zmm4, zmm17", "vpermw zmm8, zmm8, zmm18", "vpermw zmm12, zmm12, zmm19",
            "vpdpwssd zmm24, zmm0, [{x} + 0]", "vpdpwssd zmm25, zmm4, [{x} + 0]", "vpdpwssd zmm26, zmm8, [{x} + 0]", "vpdpwssd zmm27, zmm12, [{x} + 0]",
            "vpermw zmm1, zmm1, zmm16", "vpermw zmm5, zmm5, zmm17", "vpermw zmm9, zmm9, zmm18", "vpermw zmm13, zmm13, zmm19",
            "vpdpwssd zmm24, zmm1, [{x} + 64]", "vpdpwssd zmm25, zmm5, [{x} + 64]", "vpdpwssd zmm26, zmm9, [{x} + 64]", "vpdpwssd zmm27, zmm13, [{x} + 64]",
            "vpermw zmm2, zmm2, zmm16", "vpermw zmm6, zmm6, zmm17", "vpermw zmm10, zmm10, zmm18", "vpermw zmm14, zmm14, zmm19",
            "vpdpwssd zmm24, zmm2, [{x} + 128]", "vpdpwssd zmm25, zmm6, [{x} + 128]", "vpdpwssd zmm26, zmm10, [{x} + 128]", "vpdpwssd zmm27, zmm14, [{x} + 128]",
            "vpermw zmm3, zmm3, zmm16", "vpermw zmm7, zmm7, zmm17", "vpermw zmm11, zmm11, zmm18", "vpermw zmm15, zmm15, zmm19",
            "vpdpwssd zmm24, zmm3, [{x} + 192]", "vpdpwssd zmm25, zmm7, [{x} + 192]", "vpdpwssd zmm26, zmm11, [{x} + 192]", "vpdpwssd zmm27, zmm15, [{x} + 192]",
            "vcvtdq2ps zmm0, zmm24", "vfmadd231ps zmm28, zmm0, [{f} + 0]{{1to16}}", "vcvtdq2ps zmm4, zmm25", "vfmadd231ps zmm29, zmm4, [{f} + 4]{{1to16}}",
            "vcvtdq2ps zmm8, zmm26", "vfmadd231ps zmm30, zmm8, [{f} + 8]{{1to16}}", "vcvtdq2ps zmm12, zmm27", "vfmadd231ps zmm31, zmm12, [{f} + 12]{{1to16}}");
        nf_loop!(ghz, codes, kp, t, x, f, "no epilogue",
            "vbroadcasti64x4 zmm0, [{c} + 0]", "vpsrlvd zmm0, zmm0, [{k}]", "vbroadcasti32x4 zmm1, [{c} + 32]", "vprolvd zmm1, zmm1, [{k} + 64]",
            "vpternlogd zmm0, zmm1, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm1, zmm0, 4", "vpsrld zmm2, zmm0, 8", "vpsrld zmm3, zmm0, 12",
            "vbroadcasti64x4 zmm4, [{c} + 1536]", "vpsrlvd zmm4, zmm4, [{k}]", "vbroadcasti32x4 zmm5, [{c} + 1568]", "vprolvd zmm5, zmm5, [{k} + 64]",
            "vpternlogd zmm4, zmm5, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm5, zmm4, 4", "vpsrld zmm6, zmm4, 8", "vpsrld zmm7, zmm4, 12",
            "vbroadcasti64x4 zmm8, [{c} + 3072]", "vpsrlvd zmm8, zmm8, [{k}]", "vbroadcasti32x4 zmm9, [{c} + 3104]", "vprolvd zmm9, zmm9, [{k} + 64]",
            "vpternlogd zmm8, zmm9, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm9, zmm8, 4", "vpsrld zmm10, zmm8, 8", "vpsrld zmm11, zmm8, 12",
            "vbroadcasti64x4 zmm12, [{c} + 4608]", "vpsrlvd zmm12, zmm12, [{k}]", "vbroadcasti32x4 zmm13, [{c} + 4640]", "vprolvd zmm13, zmm13, [{k} + 64]",
            "vpternlogd zmm12, zmm13, [{k} + 128]{{1to16}}, 0xe4", "vpsrld zmm13, zmm12, 4", "vpsrld zmm14, zmm12, 8", "vpsrld zmm15, zmm12, 12",
            "vbroadcasti32x4 zmm16, [{t} + 0]", "vbroadcasti32x4 zmm17, [{t} + 16]", "vbroadcasti32x4 zmm18, [{t} + 32]", "vbroadcasti32x4 zmm19, [{t} + 48]",
            "vpxord zmm24, zmm24, zmm24", "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
            "vpermw zmm0, zmm0, zmm16", "vpermw zmm4, zmm4, zmm17", "vpermw zmm8, zmm8, zmm18", "vpermw zmm12, zmm12, zmm19",
            "vpdpwssd zmm24, zmm0, [{x} + 0]", "vpdpwssd zmm25, zmm4, [{x} + 0]", "vpdpwssd zmm26, zmm8, [{x} + 0]", "vpdpwssd zmm27, zmm12, [{x} + 0]",
            "vpermw zmm1, zmm1, zmm16", "vpermw zmm5, zmm5, zmm17", "vpermw zmm9, zmm9, zmm18", "vpermw zmm13, zmm13, zmm19",
            "vpdpwssd zmm24, zmm1, [{x} + 64]", "vpdpwssd zmm25, zmm5, [{x} + 64]", "vpdpwssd zmm26, zmm9, [{x} + 64]", "vpdpwssd zmm27, zmm13, [{x} + 64]",
            "vpermw zmm2, zmm2, zmm16", "vpermw zmm6, zmm6, zmm17", "vpermw zmm10, zmm10, zmm18", "vpermw zmm14, zmm14, zmm19",
            "vpdpwssd zmm24, zmm2, [{x} + 128]", "vpdpwssd zmm25, zmm6, [{x} + 128]", "vpdpwssd zmm26, zmm10, [{x} + 128]", "vpdpwssd zmm27, zmm14, [{x} + 128]",
            "vpermw zmm3, zmm3, zmm16", "vpermw zmm7, zmm7, zmm17", "vpermw zmm11, zmm11, zmm18", "vpermw zmm15, zmm15, zmm19",
            "vpdpwssd zmm24, zmm3, [{x} + 192]", "vpdpwssd zmm25, zmm7, [{x} + 192]", "vpdpwssd zmm26, zmm11, [{x} + 192]", "vpdpwssd zmm27, zmm15, [{x} + 192]");
        nf_loop!(ghz, codes, kp, t, x, f, "multishift indices",
            "vpermb zmm0, zmm20, [{c} + 0]", "vpmultishiftqb zmm1, zmm21, zmm0", "vpmultishiftqb zmm2, zmm22, zmm0", "vpmultishiftqb zmm3, zmm23, zmm0",
            "vpermb zmm4, zmm20, [{c} + 1536]", "vpmultishiftqb zmm5, zmm21, zmm4", "vpmultishiftqb zmm6, zmm22, zmm4", "vpmultishiftqb zmm7, zmm23, zmm4",
            "vpermb zmm8, zmm20, [{c} + 3072]", "vpmultishiftqb zmm9, zmm21, zmm8", "vpmultishiftqb zmm10, zmm22, zmm8", "vpmultishiftqb zmm11, zmm23, zmm8",
            "vpermb zmm12, zmm20, [{c} + 4608]", "vpmultishiftqb zmm13, zmm21, zmm12", "vpmultishiftqb zmm14, zmm22, zmm12", "vpmultishiftqb zmm15, zmm23, zmm12",
            "vbroadcasti32x4 zmm16, [{t} + 0]", "vbroadcasti32x4 zmm17, [{t} + 16]", "vbroadcasti32x4 zmm18, [{t} + 32]", "vbroadcasti32x4 zmm19, [{t} + 48]",
            "vpxord zmm24, zmm24, zmm24", "vpxord zmm25, zmm25, zmm25", "vpxord zmm26, zmm26, zmm26", "vpxord zmm27, zmm27, zmm27",
            "vpermw zmm0, zmm0, zmm16", "vpermw zmm4, zmm4, zmm17", "vpermw zmm8, zmm8, zmm18", "vpermw zmm12, zmm12, zmm19",
            "vpdpwssd zmm24, zmm0, [{x} + 0]", "vpdpwssd zmm25, zmm4, [{x} + 0]", "vpdpwssd zmm26, zmm8, [{x} + 0]", "vpdpwssd zmm27, zmm12, [{x} + 0]",
            "vpermw zmm1, zmm1, zmm16", "vpermw zmm5, zmm5, zmm17", "vpermw zmm9, zmm9, zmm18", "vpermw zmm13, zmm13, zmm19",
            "vpdpwssd zmm24, zmm1, [{x} + 64]", "vpdpwssd zmm25, zmm5, [{x} + 64]", "vpdpwssd zmm26, zmm9, [{x} + 64]", "vpdpwssd zmm27, zmm13, [{x} + 64]",
            "vpermw zmm2, zmm2, zmm16", "vpermw zmm6, zmm6, zmm17", "vpermw zmm10, zmm10, zmm18", "vpermw zmm14, zmm14, zmm19",
            "vpdpwssd zmm24, zmm2, [{x} + 128]", "vpdpwssd zmm25, zmm6, [{x} + 128]", "vpdpwssd zmm26, zmm10, [{x} + 128]", "vpdpwssd zmm27, zmm14, [{x} + 128]",
            "vpermw zmm3, zmm3, zmm16", "vpermw zmm7, zmm7, zmm17", "vpermw zmm11, zmm11, zmm18", "vpermw zmm15, zmm15, zmm19",
            "vpdpwssd zmm24, zmm3, [{x} + 192]", "vpdpwssd zmm25, zmm7, [{x} + 192]", "vpdpwssd zmm26, zmm11, [{x} + 192]", "vpdpwssd zmm27, zmm15, [{x} + 192]",
            "vcvtdq2ps zmm0, zmm24", "vfmadd231ps zmm28, zmm0, [{f} + 0]{{1to16}}", "vcvtdq2ps zmm4, zmm25", "vfmadd231ps zmm29, zmm4, [{f} + 4]{{1to16}}",
            "vcvtdq2ps zmm8, zmm26", "vfmadd231ps zmm30, zmm8, [{f} + 8]{{1to16}}", "vcvtdq2ps zmm12, zmm27", "vfmadd231ps zmm31, zmm12, [{f} + 12]{{1to16}}");
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
        unsafe { mixes(ghz) };
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
