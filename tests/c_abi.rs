//! The C library as C sees it.
//!
//! - The header and the Rust exports agree: build.rs ran bindgen over runtime/include/bitdistiller.h
//!   and generated checks that compile here only if every declaration matches `bd_runtime::ffi`, and
//!   the libraries export exactly the header's functions.
//! - Real C programs (tests/c/*.c, examples/c/generate.c) compiled with the system C compiler against
//!   bd-runtime's static and shared libraries from this build load a tiny model, generate the same
//!   32 greedy tokens as the Rust library and the same text as `bd-run --temp 0`, and get clean
//!   errors for a missing and a corrupt file.

#[path = "../runtime/tests/common/mod.rs"]
mod common;

/// The header's types and constants, as bindgen reads them.
#[allow(non_camel_case_types, non_upper_case_globals, dead_code)]
mod hdr {
    include!(concat!(env!("OUT_DIR"), "/bitdistiller_h_types.rs"));
}

/// The header's functions, spelled with `bd_runtime::ffi`'s types.
#[allow(non_camel_case_types, dead_code, clippy::all)]
mod hdr_fns {
    #[allow(unused_imports)]
    use bd_runtime::ffi::*;
    include!(concat!(env!("OUT_DIR"), "/bitdistiller_h_fns.rs"));
}

use bd_runtime::ffi;
include!(concat!(env!("OUT_DIR"), "/c_abi_checks.rs"));

use bd_formats::hf::fixture::TinySpec;
use bd_formats::quant::QuantFormat;
use bd_formats::DType;
use bd_runtime::{generate, GenerateOptions, Model, ReadOptions, Sampler, SamplerConfig, Session, Tokenizer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PROMPT: &str = "the";
const N: usize = 32;

/// Sampling options, as bd-run's flags and the C test program's arguments take them.
struct Options {
    name: &'static str,
    temp: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    seed: u64,
}

impl Options {
    fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
            seed: self.seed,
        }
    }

    fn args(&self) -> Vec<String> {
        [self.temp.to_string(), self.top_k.to_string(), self.top_p.to_string(), self.min_p.to_string()]
            .into_iter()
            .chain([self.repeat_penalty.to_string(), self.seed.to_string()])
            .collect()
    }

    fn bd_run_flags(&self) -> Vec<String> {
        let a = self.args();
        ["--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--seed"]
            .iter()
            .zip(a)
            .flat_map(|(f, v)| [f.to_string(), v])
            .collect()
    }
}

/// bd-run's defaults with `--temp 0` (the check), and two settings whose tokens vary: on the
/// tiny random model plain greedy decoding repeats one token.
const GREEDY: Options = Options { name: "greedy", temp: 0.0, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, seed: 0 };
const VARIED: [Options; 2] = [
    Options { name: "greedy, repeat penalty 10", temp: 0.0, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 10.0, seed: 0 },
    Options {
        name: "sampled at temperature 5, seed 7",
        temp: 5.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        seed: 7,
    },
];

/// target/<profile>/, where cargo puts the libraries and binaries of this build.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn built(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(path.exists(), "{} is not built: run the tests with `cargo test --workspace`", path.display());
    path
}

/// bd-runtime's static or shared library from this build. Cargo writes it to target/<profile>/deps/
/// whenever it compiles the crate, and copies it to target/<profile>/ only when bd-runtime itself was
/// asked for (`cargo build -p bd-runtime`), so that copy may be stale: take the newer.
fn library(name: &str) -> PathBuf {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let candidates = [target_dir().join("deps").join(name), target_dir().join(name)];
    let newest = candidates.iter().filter_map(|p| Some((modified(p)?, p))).max().map(|(_, p)| p.clone());
    newest.unwrap_or_else(|| panic!("{name} is not built: run the tests with `cargo test --workspace`"))
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The C compiler cargo's cc crate would use for this target, with the header's directory.
fn cc() -> Command {
    let compiler = cc::Build::new()
        .target(env!("BD_TARGET"))
        .host(env!("BD_HOST"))
        .opt_level(2)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .emit_rerun_if_env_changed(false)
        .warnings(true)
        .get_compiler();
    let mut cmd = compiler.to_command();
    cmd.arg("-I").arg(root().join("runtime/include"));
    cmd
}

enum Link {
    Static,
    Shared,
}

/// Compile `source` into `out`, linked with the static or the shared library.
fn compile(source: &Path, out: &Path, link: Link) {
    let mut cmd = cc();
    cmd.arg(source).arg("-o").arg(out);
    match link {
        // The README's link line.
        Link::Static => cmd.arg(library("libbd_runtime.a")).args(["-lpthread", "-ldl", "-lm"]),
        Link::Shared => {
            let dir = library("libbd_runtime.so").parent().unwrap().to_path_buf();
            cmd.arg(format!("-L{}", dir.display())).arg("-lbd_runtime").arg(format!("-Wl,-rpath,{}", dir.display()))
        }
    };
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run the C compiler {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

fn run(program: &Path, args: &[&str]) -> Output {
    let o = Command::new(program).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{} panicked: {stderr}", program.display());
    o
}

/// A tiny int2 model, a missing path and a corrupt copy of the model.
struct Files {
    _dir: tempfile::TempDir,
    model: PathBuf,
    missing: PathBuf,
    corrupt: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let model = common::write_model(dir.path(), "m.bd2", &TinySpec::default(), DType::Quant(QuantFormat::Int2), DType::F32, 32);
    let mut bytes = std::fs::read(&model).unwrap();
    // A flipped bit in the middle of the tensor data: only the checksum can tell.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    let corrupt = dir.path().join("corrupt.bd2");
    std::fs::write(&corrupt, bytes).unwrap();
    let missing = dir.path().join("no-such-model.bd2");
    Files { model, missing, corrupt, _dir: dir }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The Rust library's continuation of `PROMPT` (token ids).
fn rust_generate(model: &Path, o: &Options) -> Vec<u32> {
    let model = Model::open(model, ReadOptions::default()).unwrap();
    let tok = Tokenizer::from_model(&model).unwrap();
    let mut session = Session::new(&model, model.config().max_context, 2).unwrap();
    let mut sampler = Sampler::new(o.config(), model.config().vocab_size).unwrap();
    let prompt = tok.encode(PROMPT, true).unwrap();
    let g =
        generate(&mut session, &tok, &mut sampler, &prompt, &GenerateOptions { max_tokens: N, stop: vec![] }, |_| {}).unwrap();
    g.generated
}

/// `bd-run MODEL --prompt PROMPT -n N` with the options: its stdout.
fn bd_run(model: &Path, o: &Options) -> String {
    let mut args = vec![s(model).to_string(), "--prompt".into(), PROMPT.into(), "-n".into(), N.to_string()];
    args.extend(o.bd_run_flags());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&built("bd-run"), &args);
    assert!(r.status.success(), "bd-run: {}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8(r.stdout).unwrap()
}

/// The text the C API streams for `tokens` after `PROMPT`: their pieces (bd_token_piece),
/// concatenated, invalid UTF-8 replaced as `String::from_utf8_lossy` does.
fn streamed_text(model: &Path, tokens: &[u32]) -> String {
    let path = std::ffi::CString::new(s(model)).unwrap();
    let mut bytes = Vec::new();
    // SAFETY: valid pointers; the pieces are read before the model is freed.
    unsafe {
        let mut m = std::ptr::null_mut();
        assert_eq!(ffi::bd_model_load(path.as_ptr(), &mut m), ffi::bd_status::BD_OK);
        for &t in tokens {
            let (mut p, mut len) = (std::ptr::null(), 0);
            assert_eq!(ffi::bd_token_piece(m, t as i32, &mut p, &mut len), ffi::bd_status::BD_OK);
            bytes.extend_from_slice(std::slice::from_raw_parts(p.cast::<u8>(), len));
        }
        assert_eq!(ffi::bd_model_free(m), ffi::bd_status::BD_OK);
    }
    format!("{PROMPT}{}\n", String::from_utf8_lossy(&bytes))
}

fn tokens_line(stderr: &str) -> Vec<u32> {
    let line = stderr.lines().find_map(|l| l.strip_prefix("tokens:")).expect("a tokens: line");
    line.split_whitespace().map(|t| t.parse().unwrap()).collect()
}

#[test]
fn header_matches_the_rust_exports() {
    check_header_matches_ffi();
}

/// Names of the `bd_*` functions a library defines, as `nm` lists them.
fn exported(lib: &Path, dynamic: bool) -> BTreeSet<String> {
    let mut cmd = Command::new("nm");
    cmd.args(if dynamic { &["-D", "--defined-only"][..] } else { &["-g", "--defined-only"][..] }).arg(lib);
    let o = cmd.output().expect("nm (binutils) is needed");
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().rev();
            let (name, kind) = (f.next()?, f.next()?);
            (kind == "T" && name.starts_with("bd_")).then(|| name.to_string())
        })
        .collect()
}

#[test]
fn the_libraries_export_exactly_the_header_functions() {
    let header: BTreeSet<String> = HEADER_FUNCTIONS.iter().map(|s| s.to_string()).collect();
    assert!(header.len() >= 20, "{header:?}");
    assert_eq!(exported(&library("libbd_runtime.so"), true), header, "libbd_runtime.so");
    assert_eq!(exported(&library("libbd_runtime.a"), false), header, "libbd_runtime.a");
}

/// Run the C test program built with `link` on the fixture for options `o`; check its tokens
/// against the Rust library's and its text against bd-run's.
fn check_c_program(exe: &Path, f: &Files, o: &Options) {
    let n = N.to_string();
    let mut args: Vec<String> = [s(&f.model), PROMPT, &n, s(&f.missing), s(&f.corrupt)].map(String::from).to_vec();
    args.extend(o.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(exe, &args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    let what = format!("{} ({})", exe.display(), o.name);
    assert!(r.status.success(), "{what}: the C checks failed:\n{stderr}");
    let tokens = tokens_line(&stderr);
    assert_eq!(tokens, rust_generate(&f.model, o), "{what}: the C program's tokens and the Rust library's");
    assert_eq!(tokens.len(), N, "{what}: the fixture should not stop early");
    let text = String::from_utf8(r.stdout).unwrap();
    assert_eq!(text, streamed_text(&f.model, &tokens), "{what}: the callback's text");
    let expected = bd_run(&f.model, o);
    // bd-run's stream decoder and the C stream (complete characters as soon as they are complete,
    // invalid bytes as U+FFFD) agree on valid text; on invalid byte sequences (here random models
    // produce them, real ones rarely) each replaces bytes by U+FFFD in its own way.
    if !expected.contains('\u{FFFD}') {
        assert_eq!(text, expected, "{what}: the C program's text and bd-run's");
    } else {
        let same = if text == expected { "the same" } else { "a different" };
        eprintln!("note: {what}: bd-run's text holds invalid UTF-8 ({same} text here), compared by tokens only");
    }
    // The error messages name the problem.
    let line = |p: &str| stderr.lines().find_map(|l| l.strip_prefix(p)).unwrap_or_default().to_string();
    assert!(line("missing: ").contains("No such file"), "{stderr}");
    assert!(line("corrupt: ").contains("checksum"), "{stderr}");
}

#[test]
fn a_c_program_generates_what_bd_run_generates_and_reports_errors() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    let source = root().join("tests/c/c_api_test.c");
    let exe = dir.path().join("c_api_test_static");
    compile(&source, &exe, Link::Static);
    // The check: 32 greedy tokens, the same text as `bd-run --temp 0`.
    assert_eq!(bd_run(&f.model, &GREEDY), format!("{PROMPT}{}\n", " the".repeat(N)));
    check_c_program(&exe, &f, &GREEDY);
    for o in &VARIED {
        let distinct: BTreeSet<u32> = rust_generate(&f.model, o).into_iter().collect();
        assert!(distinct.len() >= N / 2, "{}: too few distinct tokens to tell anything: {distinct:?}", o.name);
        check_c_program(&exe, &f, o);
    }
    // Linked with the shared library instead.
    let exe = dir.path().join("c_api_test_shared");
    compile(&source, &exe, Link::Shared);
    check_c_program(&exe, &f, &GREEDY);
}

#[test]
fn the_example_builds_with_the_readme_line_and_streams_bd_runs_text() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("bd-generate");
    compile(&root().join("examples/c/generate.c"), &exe, Link::Static);
    let n = N.to_string();
    let o = run(&exe, &[s(&f.model), PROMPT, &n, "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), bd_run(&f.model, &GREEDY));
    let o = run(&exe, &[s(&f.missing), PROMPT]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such file"));
}

#[test]
fn the_pkg_config_template_links() {
    if Command::new("pkg-config").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must have pkg-config (.ci/run installs it)");
        eprintln!("note: pkg-config is not installed: skipping");
        return;
    }
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path();
    for d in ["include", "lib/pkgconfig"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    std::fs::copy(root().join("runtime/include/bitdistiller.h"), p.join("include/bitdistiller.h")).unwrap();
    // Only the static library: the program must not depend on the build tree.
    std::fs::copy(library("libbd_runtime.a"), p.join("lib/libbd_runtime.a")).unwrap();
    let pc = std::fs::read_to_string(root().join("runtime/bitdistiller.pc.in"))
        .unwrap()
        .replace("@PREFIX@", s(p))
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(p.join("lib/pkgconfig/bitdistiller.pc"), pc).unwrap();
    let o = Command::new("pkg-config")
        .args(["--cflags", "--libs", "--static", "bitdistiller"])
        .env("PKG_CONFIG_PATH", p.join("lib/pkgconfig"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let flags = String::from_utf8(o.stdout).unwrap();
    let exe = p.join("bd-generate");
    let mut cmd = cc();
    cmd.arg(root().join("examples/c/generate.c")).arg("-o").arg(&exe).args(flags.split_whitespace());
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    let f = files();
    let o = run(&exe, &[s(&f.model), PROMPT, "4", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
