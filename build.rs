//! Root build script: keeps runtime/include/bitdistiller.h true.
//!
//! bindgen reads the header twice into OUT_DIR:
//!  - `bitdistiller_h_types.rs`: its types and constants, as C sees them;
//!  - `bitdistiller_h_fns.rs`: its functions, with every `bd_*` type left undefined, so that the
//!    test that includes it supplies `bd_runtime::ffi`'s types: each declaration then spells the
//!    Rust type the function must have.
//!
//! From the first it writes `c_abi_checks.rs`, which tests/c_abi.rs compiles: every header function
//! must exist in `bd_runtime::ffi` with exactly the declared type, every struct must have the same
//! fields (names, types, offsets), size and alignment, every enum value and constant the same value,
//! and every typedef the same type. A drift fails the test's compilation or its assertions. The C
//! test programs (tests/c/*.c) are compiled by the test itself, against the static and the shared
//! library, which only exist once bd-runtime is built.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const HEADER: &str = "runtime/include/bitdistiller.h";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={HEADER}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // For the tests, which compile C with the cc crate for this very target.
    for var in ["TARGET", "HOST"] {
        println!("cargo::rustc-env=BD_{var}={}", std::env::var(var).expect("cargo sets TARGET and HOST"));
    }

    let builder = || {
        bindgen::Builder::default()
            .header(HEADER)
            .layout_tests(false)
            .generate_comments(false)
            .prepend_enum_name(false)
            // A fixed formatter, so that the text below has one shape whatever is installed.
            .formatter(bindgen::Formatter::Prettyplease)
    };
    let fail = |e: bindgen::BindgenError| -> ! {
        panic!("bindgen cannot read {HEADER}: {e} (bindgen needs libclang: apt-get install libclang-dev)")
    };
    let types = builder().allowlist_type("bd_.*").allowlist_var("BD_.*").generate().unwrap_or_else(|e| fail(e)).to_string();
    let fns = builder().allowlist_function("bd_.*").blocklist_type("bd_.*").generate().unwrap_or_else(|e| fail(e)).to_string();
    write(&out.join("bitdistiller_h_types.rs"), &types);
    write(&out.join("bitdistiller_h_fns.rs"), &fns);
    write(&out.join("c_abi_checks.rs"), &checks(&parse(&types), &parse(&fns)));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// What the generated Rust declares, in the shape bindgen prints it.
#[derive(Default)]
struct Decls {
    /// `pub const NAME: TYPE = ...;`
    consts: Vec<(String, String)>,
    /// `pub type NAME = ...;`
    aliases: Vec<String>,
    /// `pub struct NAME { pub field: ..., }`; no fields for an opaque struct.
    structs: Vec<(String, Vec<String>)>,
    /// `pub fn NAME(...)` and its number of parameters.
    fns: Vec<(String, usize)>,
}

/// A small scanner over bindgen's output: items start with `pub const`, `pub type`, `pub struct`
/// or `pub fn` (inside `extern "C"` blocks); anything else (attributes, braces) is skipped.
fn parse(src: &str) -> Decls {
    let mut d = Decls::default();
    let mut rest = src;
    while let Some(at) = rest.find("pub ") {
        rest = &rest[at + 4..];
        let word = |s: &str| s.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("").to_string();
        if let Some(r) = rest.strip_prefix("const ") {
            let name = word(r);
            let ty = r[name.len()..].trim_start_matches(':').split('=').next().unwrap_or("").trim().to_string();
            d.consts.push((name, ty));
        } else if let Some(r) = rest.strip_prefix("type ") {
            d.aliases.push(word(r));
        } else if let Some(r) = rest.strip_prefix("struct ") {
            let name = word(r);
            let body = &r[r.find('{').expect("struct body")..r.find('}').expect("struct end")];
            let fields =
                body.split(',').filter_map(|f| f.trim().trim_start_matches('{').trim().strip_prefix("pub ")).map(word).collect();
            d.structs.push((name, fields));
        } else if let Some(r) = rest.strip_prefix("fn ") {
            let name = word(r);
            let params = &r[name.len()..];
            assert!(params.starts_with('('), "bindgen output: `pub fn {name}` without parameters");
            // Commas at the outermost parenthesis level separate parameters (bindgen ends a
            // multi-line list with one too).
            let (mut depth, mut commas, mut any) = (0usize, 0usize, false);
            let mut last_nonspace = '(';
            for c in params.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => commas += 1,
                    _ => {}
                }
                if depth >= 1 && !c.is_whitespace() && c != '(' {
                    any = true;
                }
                if !c.is_whitespace() {
                    last_nonspace = c;
                }
            }
            let arity = if !any {
                0
            } else if last_nonspace == ',' {
                commas
            } else {
                commas + 1
            };
            d.fns.push((name, arity));
        }
    }
    d
}

/// The checks tests/c_abi.rs includes. It provides the modules `hdr` (the header's types),
/// `hdr_fns` (its functions over ffi's types) and `ffi` (bd_runtime::ffi).
fn checks(types: &Decls, fns: &Decls) -> String {
    let mut s = String::new();
    let mut w = |line: String| {
        s.push_str(&line);
        s.push('\n');
    };
    w(format!("// Generated by build.rs from {HEADER}. Do not edit."));
    let names: Vec<String> = fns.fns.iter().map(|(n, _)| format!("{n:?}")).collect();
    w(format!("/// Every function the header declares.\npub const HEADER_FUNCTIONS: &[&str] = &[{}];", names.join(", ")));

    // Enum types: the aliases that constants are declared with.
    let enums: Vec<&String> = types.aliases.iter().filter(|a| types.consts.iter().any(|(_, t)| t == *a)).collect();
    let mut body = String::new();
    let mut b = |line: String| {
        body.push_str("    ");
        body.push_str(&line);
        body.push('\n');
    };
    for (name, arity) in &fns.fns {
        let sig = format!("unsafe extern \"C\" fn({}) -> _", vec!["_"; *arity].join(", "));
        b(format!("same(hdr_fns::{name} as {sig}, ffi::{name} as {sig});"));
    }
    for (name, ty) in &types.consts {
        if enums.contains(&ty) {
            b(format!("assert_eq!(hdr::{name} as i64, ffi::{ty}::{name} as i64, \"{ty}::{name}\");"));
        } else {
            b(format!("same_type(&hdr::{name}, &ffi::{name});"));
            b(format!("assert_eq!(hdr::{name}, ffi::{name}, \"{name}\");"));
        }
    }
    for e in &enums {
        let arms: Vec<String> =
            types.consts.iter().filter(|(_, t)| t == *e).map(|(n, _)| format!("ffi::{e}::{n} => {{}}")).collect();
        b(format!("// No Rust value of {e} that the header lacks (an exhaustive match):"));
        b(format!("let _ = |v: ffi::{e}| match v {{ {} }};", arms.join(", ")));
        b(format!("assert_eq!(size_of::<hdr::{e}>(), size_of::<ffi::{e}>(), \"size of {e}\");"));
    }
    for a in types.aliases.iter().filter(|a| !enums.contains(a)) {
        b(format!("let _: fn(ffi::{a}) -> hdr::{a} = |x| x;"));
    }
    for (name, fields) in &types.structs {
        if fields.is_empty() {
            b(format!("let _: Option<&ffi::{name}> = None; // opaque"));
            continue;
        }
        b(format!("assert_eq!(size_of::<hdr::{name}>(), size_of::<ffi::{name}>(), \"size of {name}\");"));
        b(format!("assert_eq!(align_of::<hdr::{name}>(), align_of::<ffi::{name}>(), \"alignment of {name}\");"));
        let pattern = |m: &str| {
            let f: Vec<String> = fields.iter().map(|f| format!("{f}: {m}_{f}")).collect();
            format!("{m}::{name} {{ {} }}", f.join(", "))
        };
        b("{".into());
        b("    // SAFETY: plain C data, for which all zeros is a value. Exhaustive patterns: the same fields.".into());
        b(format!("    let {} = unsafe {{ std::mem::zeroed::<hdr::{name}>() }};", pattern("hdr")));
        b(format!("    let {} = unsafe {{ std::mem::zeroed::<ffi::{name}>() }};", pattern("ffi")));
        for f in fields {
            b(format!("    same_type(&hdr_{f}, &ffi_{f});"));
            b(format!(
                "    assert_eq!(std::mem::offset_of!(hdr::{name}, {f}), std::mem::offset_of!(ffi::{name}, {f}), \"offset of {name}.{f}\");"
            ));
        }
        b("}".into());
    }
    let _ = writeln!(
        s,
        "/// Compile-time and run-time comparison of the header with bd_runtime::ffi.\n\
         #[allow(unused_variables, clippy::all)]\n\
         pub fn check_header_matches_ffi() {{\n\
         \x20   use std::mem::{{align_of, size_of}};\n\
         \x20   fn same<T>(_: T, _: T) {{}}\n\
         \x20   fn same_type<T>(_: &T, _: &T) {{}}\n\
         {body}}}"
    );
    s
}
