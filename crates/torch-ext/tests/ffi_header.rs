//! The Rust declarations of the C++ shim (`src/ffi.rs`) agree with its C header
//! (`csrc/torch_ext.h`), which the C++ compiles against: the same functions, each with the same
//! parameter and return types once the header's C types are spelled in Rust.
//!
//! The checker is small on purpose: it reads the subset of C the header is written in (one
//! declaration per statement, the types of [`rust_base`]) and the `extern "C"` blocks of
//! `ffi.rs`, ignoring `#[cfg]`s (the header declares every function, whatever the features).
//! Its own tests below feed it small pairs that disagree.

use std::collections::BTreeMap;
use std::path::Path;

/// A function's parameter types and return type (`None` for `void` / no `->`), in Rust spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    params: Vec<String>,
    ret: Option<String>,
}

/// The Rust spelling of a C base type of the header (before any `*`).
fn rust_base(c: &str) -> Result<&'static str, String> {
    Ok(match c {
        // `typedef char* te_error`; ffi.rs calls it `CError`.
        "te_error" => "*mut c_char",
        // tch's handle: `at::Tensor*`.
        "te_tensor" => "*mut C_tensor",
        "te_generator" => "CGenerator",
        "te_named_tensors" => "CNamedTensors",
        "te_store" => "CStore",
        "te_group" => "CGroup",
        "te_reducer" => "CReducer",
        "te_cuda_graph" => "CCudaGraph",
        "te_cuda_stream" => "CCudaStream",
        "te_cuda_stream_guard" => "CCudaStreamGuard",
        // Function pointer typedefs; ffi.rs names them so.
        "te_checkpoint_run" => "CheckpointRun",
        "te_checkpoint_drop" => "CheckpointDrop",
        "void" => "c_void",
        "char" => "c_char",
        "int" => "c_int",
        "double" => "f64",
        "float" => "f32",
        "size_t" => "usize",
        "int64_t" => "i64",
        "uint64_t" => "u64",
        "int32_t" => "i32",
        "uint16_t" => "u16",
        "uint8_t" => "u8",
        other => {
            return Err(format!(
                "the header uses the C type `{other}`, which the checker does not know: add its \
                 Rust spelling to rust_base"
            ))
        }
    })
}

/// The Rust spelling of a C type such as `const te_tensor*` (`*const *mut C_tensor`) or
/// `const char**` (`*mut *const c_char`): each `*` is `*const` when what it points at is
/// `const`, else `*mut`.
fn rust_type(c: &str) -> Result<String, String> {
    let spaced = c.replace('*', " * ");
    let mut tokens = spaced.split_whitespace().peekable();
    let mut pointee_const = false;
    let mut base = None;
    while let Some(&token) = tokens.peek() {
        if token == "*" {
            break;
        }
        match token {
            "const" => pointee_const = true,
            "struct" => {}
            name if base.is_none() => base = Some(name),
            name => return Err(format!("`{c}`: unexpected `{name}`")),
        }
        tokens.next();
    }
    let base = base.ok_or_else(|| format!("`{c}` has no type name"))?;
    let mut rust = rust_base(base)?.to_string();
    while let Some(token) = tokens.next() {
        match token {
            "*" => {
                rust = format!("{} {rust}", if pointee_const { "*const" } else { "*mut" });
                // A `const` right after this `*` makes the pointer itself const, which is what
                // the next `*` points at.
                pointee_const = tokens.next_if_eq(&"const").is_some();
            }
            other => return Err(format!("`{c}`: unexpected `{other}` after a `*`")),
        }
    }
    Ok(rust)
}

/// `text` without `//` and `/* */` comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Splits `ret name(params)` into its three parts.
fn split_declaration(decl: &str) -> Result<(&str, &str, &str), String> {
    let open = decl
        .find('(')
        .ok_or_else(|| format!("no `(` in `{decl}`"))?;
    let close = decl
        .rfind(')')
        .ok_or_else(|| format!("no `)` in `{decl}`"))?;
    let head = decl[..open].trim_end();
    let name_start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    Ok((
        head[..name_start].trim(),
        &head[name_start..],
        &decl[open + 1..close],
    ))
}

/// The functions the C header declares. Preprocessor lines, typedefs and `extern "C"` braces
/// are skipped.
fn parse_header(text: &str) -> Result<BTreeMap<String, Signature>, String> {
    let code: String = strip_comments(text)
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("extern \"C\" {", "")
        .replace('}', "");
    let mut functions = BTreeMap::new();
    for statement in code.split(';').map(str::trim) {
        if statement.is_empty() || statement.starts_with("typedef") {
            continue;
        }
        let (ret, name, params) = split_declaration(statement)?;
        let ret = match ret {
            "void" => None,
            c => Some(rust_type(c)?),
        };
        let params = match params.trim() {
            "" | "void" => Vec::new(),
            list => list
                .split(',')
                .map(|param| {
                    // The type is everything before the parameter's name.
                    let param = param.trim();
                    let cut = param
                        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .ok_or_else(|| format!("{name}: parameter `{param}` has no name"))?;
                    rust_type(&param[..=cut]).map_err(|e| format!("{name}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        };
        if functions
            .insert(name.to_string(), Signature { params, ret })
            .is_some()
        {
            return Err(format!("{name} is declared twice"));
        }
    }
    Ok(functions)
}

/// A Rust type as the comparison sees it: one space between tokens, no module paths, and the
/// aliases of ffi.rs spelled out.
fn normalize_rust(ty: &str) -> String {
    let ty = ty.split_whitespace().collect::<Vec<_>>().join(" ");
    let ty = ty.replace("std::ffi::", "").replace("torch_sys::", "");
    match ty.as_str() {
        "CError" => "*mut c_char".to_string(),
        _ => ty,
    }
}

/// The functions of the `extern "C"` blocks of a Rust file (attributes such as `#[cfg]` are
/// ignored).
fn parse_rust(text: &str) -> Result<BTreeMap<String, Signature>, String> {
    let code = strip_comments(text);
    let mut functions = BTreeMap::new();
    for (start, _) in code.match_indices("extern \"C\" {") {
        let body = &code[start + "extern \"C\" {".len()..];
        let body = &body[..body.find('}').ok_or("an extern block does not close")?];
        for item in body.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let item = item
                .lines()
                .filter(|line| !line.trim_start().starts_with("#["))
                .collect::<Vec<_>>()
                .join(" ");
            let item = item.trim();
            let item = item
                .strip_prefix("pub(crate) ")
                .or_else(|| item.strip_prefix("pub "))
                .unwrap_or(item);
            let item = item
                .strip_prefix("fn ")
                .ok_or_else(|| format!("not a function: `{item}`"))?;
            let (_, name, params) = split_declaration(item)?;
            let after = &item[item.rfind(')').expect("split found it") + 1..];
            let ret = after
                .trim()
                .strip_prefix("->")
                .map(|ty| normalize_rust(ty.trim()));
            let params = params
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.split_once(": ")
                        .map(|(_, ty)| normalize_rust(ty))
                        .ok_or_else(|| format!("{name}: parameter `{p}` has no type"))
                })
                .collect::<Result<_, _>>()?;
            if functions
                .insert(name.to_string(), Signature { params, ret })
                .is_some()
            {
                return Err(format!("{name} is declared twice in Rust"));
            }
        }
    }
    Ok(functions)
}

/// Every disagreement between the header's functions and Rust's, one line each, naming the
/// function.
fn differences(
    header: &BTreeMap<String, Signature>,
    rust: &BTreeMap<String, Signature>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, c) in header {
        let Some(r) = rust.get(name) else {
            out.push(format!("{name}: declared in the header, not in Rust"));
            continue;
        };
        if c.params.len() != r.params.len() {
            out.push(format!(
                "{name}: {} parameters in the header, {} in Rust",
                c.params.len(),
                r.params.len()
            ));
        } else {
            for (i, (ct, rt)) in c.params.iter().zip(&r.params).enumerate() {
                if ct != rt {
                    out.push(format!(
                        "{name}: parameter {i} is `{ct}` in the header, `{rt}` in Rust"
                    ));
                }
            }
        }
        if c.ret != r.ret {
            out.push(format!(
                "{name}: returns {:?} in the header, {:?} in Rust",
                c.ret, r.ret
            ));
        }
    }
    for name in rust.keys().filter(|name| !header.contains_key(*name)) {
        out.push(format!("{name}: declared in Rust, not in the header"));
    }
    out
}

#[test]
fn the_rust_declarations_match_the_c_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let header = parse_header(&read("csrc/torch_ext.h")).unwrap();
    let rust = parse_rust(&read("src/ffi.rs")).unwrap();
    // Sanity: both sides were read whole (a parser that finds nothing would agree with itself).
    assert!(
        header.len() >= 60,
        "{} functions in the header",
        header.len()
    );
    assert!(header.contains_key("te_fused_adam_") && header.contains_key("te_reducer_new"));
    let diffs = differences(&header, &rust);
    assert!(
        diffs.is_empty(),
        "src/ffi.rs and csrc/torch_ext.h disagree:\n  {}",
        diffs.join("\n  ")
    );
}

#[test]
fn the_shim_defines_no_function_the_header_does_not_declare() {
    // The compiler enforces this (-Werror=missing-declarations, see build.rs); this names the
    // dead entries that a declaration alone would keep alive: every declared function is
    // defined by some translation unit.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header =
        parse_header(&std::fs::read_to_string(root.join("csrc/torch_ext.h")).unwrap()).unwrap();
    let sources: String = [
        "csrc/core.cpp",
        "csrc/checkpoint.cpp",
        "csrc/dist.cpp",
        "csrc/cuda.cpp",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
    .collect();
    for name in header.keys() {
        assert!(
            sources.contains(&format!(" {name}(")),
            "{name} is declared in csrc/torch_ext.h but defined in no csrc/*.cpp"
        );
    }
}

// The checker's own tests: small header/Rust pairs that agree and that disagree.

const HEADER: &str = r#"
#include <stdint.h>
typedef char* te_error;
#ifdef __cplusplus
extern "C" {
#endif
// A comment (with a (parenthesis);
void te_free_error(char* error);
te_error te_store_add(te_store* store, const char* key, int64_t delta,
                      int64_t* out);
te_error te_foreach_zero_(const te_tensor* self, size_t n);
size_t te_named_tensors_len(const te_named_tensors* named);
te_error te_named_tensors_get(const te_named_tensors* named, const char** name);
#ifdef __cplusplus
}
#endif
"#;

const RUST: &str = r#"
extern "C" {
    pub(crate) fn te_free_error(error: *mut c_char);
    // c10d.
    #[cfg(feature = "dist")]
    pub(crate) fn te_store_add(
        store: *mut CStore,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
    ) -> CError;
    pub(crate) fn te_foreach_zero_(xs: *const *mut C_tensor, n: usize) -> CError;
    pub(crate) fn te_named_tensors_len(named: *const CNamedTensors) -> usize;
    pub(crate) fn te_named_tensors_get(
        named: *const CNamedTensors,
        name: *mut *const c_char,
    ) -> CError;
}
"#;

fn check(header: &str, rust: &str) -> Vec<String> {
    differences(&parse_header(header).unwrap(), &parse_rust(rust).unwrap())
}

#[test]
fn the_checker_accepts_a_matching_pair() {
    assert_eq!(parse_header(HEADER).unwrap().len(), 5);
    assert_eq!(check(HEADER, RUST), Vec::<String>::new());
}

#[test]
fn the_checker_names_a_parameter_type_that_differs() {
    let rust = RUST.replace("delta: i64", "delta: i32");
    assert_eq!(
        check(HEADER, &rust),
        ["te_store_add: parameter 2 is `i64` in the header, `i32` in Rust"]
    );
    // Constness of what a pointer points at counts: `const te_tensor*` is `*const *mut C_tensor`.
    let rust = RUST.replace("xs: *const *mut C_tensor", "xs: *mut *mut C_tensor");
    assert_eq!(
        check(HEADER, &rust),
        ["te_foreach_zero_: parameter 0 is `*const *mut C_tensor` in the header, `*mut *mut C_tensor` in Rust"]
    );
    let rust = RUST.replace("name: *mut *const c_char", "name: *const *const c_char");
    assert_eq!(check(HEADER, &rust).len(), 1);
}

#[test]
fn the_checker_names_a_return_type_or_arity_that_differs() {
    let rust = RUST.replace(
        "te_named_tensors_len(named: *const CNamedTensors) -> usize",
        "te_named_tensors_len(named: *const CNamedTensors) -> i64",
    );
    assert_eq!(
        check(HEADER, &rust),
        ["te_named_tensors_len: returns Some(\"usize\") in the header, Some(\"i64\") in Rust"]
    );
    let header = HEADER.replace(
        "void te_free_error(char* error)",
        "te_error te_free_error(char* error)",
    );
    assert_eq!(check(&header, RUST).len(), 1);
    let header = HEADER.replace("size_t n)", "size_t n, int flag)");
    assert_eq!(
        check(&header, RUST),
        ["te_foreach_zero_: 3 parameters in the header, 2 in Rust"]
    );
}

#[test]
fn the_checker_names_a_function_missing_on_either_side() {
    let header = HEADER.replace("void te_free_error(char* error);", "");
    assert_eq!(
        check(&header, RUST),
        ["te_free_error: declared in Rust, not in the header"]
    );
    let rust = RUST.replace(
        "pub(crate) fn te_foreach_zero_(xs: *const *mut C_tensor, n: usize) -> CError;",
        "",
    );
    assert_eq!(
        check(HEADER, &rust),
        ["te_foreach_zero_: declared in the header, not in Rust"]
    );
}

#[test]
fn the_checker_refuses_a_c_type_it_does_not_know() {
    let header = HEADER.replace("int64_t delta", "long delta");
    let err = parse_header(&header).unwrap_err();
    assert!(err.contains("`long`"), "{err}");
}
