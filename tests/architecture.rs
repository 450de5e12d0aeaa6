//! The architecture's rules, checked on the source:
//!
//! - no module imports another that imports it back, directly or through others: every
//!   `crate::...` and `super::...` path of a file (in code and in doc links, tests left
//!   out) is an edge to the module it names, and the graph of each crate has no cycle;
//! - the runtime depends on no parser of Rust (`syn`, `quote`, `proc-macro2`, or
//!   `alexnet-codegen`, which wraps them);
//! - the proc-macro side has no `unreachable!` (a malformed network is a spanned error;
//!   `alexnet-codegen/tests/never_panics.rs` feeds the macro random input for the rest);
//! - every layer kind in the registry (`for_each_layer_kind!`) has its file in
//!   `alexnet-core/src/layers/` and its CPU implementation in
//!   `alexnet-runtime/src/cpu/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a source file: `src/lib.rs` is `crate`, `src/a/mod.rs` and
/// `src/a.rs` are `crate::a`, `src/a/b.rs` is `crate::a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    std::iter::once("crate".to_string())
        .chain(parts)
        .collect::<Vec<_>>()
        .join("::")
}

/// The module a path names: its longest prefix that is a module of the crate.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|p| modules.contains(p))
}

/// The paths a use tree names, expanded: `a::{b, c::{d}}` gives `a::b` and `a::c::d`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => out.push(
            format!("{prefix}{tree}")
                .trim_end_matches("::*")
                .trim_end_matches("::self")
                .to_string(),
        ),
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&format!("{prefix}{head}"), &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand(&format!("{prefix}{head}"), &inner[start..], out);
            }
        }
    }
}

/// The `crate::` and `super::` paths of a file's text (use trees expanded), as absolute
/// paths from `crate`.
fn paths(text: &str, module: &str) -> Vec<String> {
    let mut raw = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(i) = text[at..].find(start) {
            let i = at + i;
            at = i + start.len();
            // A whole word: not `foo_crate::` or `$crate::`.
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric() || matches!(bytes[i - 1], b'_' | b'$'))
            {
                continue;
            }
            // The path runs over identifiers, `::` and a balanced use tree.
            let mut end = i;
            let mut depth = 0;
            for (j, ch) in text[i..].char_indices() {
                let ok = ch.is_alphanumeric()
                    || ch == '_'
                    || ch == ':'
                    || ch == '*'
                    || (depth > 0 && (ch == ',' || ch.is_whitespace() || ch == '}'))
                    || ch == '{';
                if ch == '{' {
                    depth += 1;
                }
                if ch == '}' {
                    depth -= 1;
                }
                if !ok || depth < 0 {
                    break;
                }
                end = i + j + ch.len_utf8();
                if depth == 0 && ch == '}' {
                    break;
                }
            }
            expand("", &text[i..end], &mut raw);
        }
    }
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or("crate".to_string(), |(p, _)| p.to_string())
    };
    raw.into_iter()
        .map(|p| {
            let mut base = module.to_string();
            let mut rest = p.as_str();
            if !rest.starts_with("super::") {
                return p;
            }
            while let Some(r) = rest.strip_prefix("super::") {
                base = parent(&base);
                rest = r;
            }
            format!("{base}::{rest}")
        })
        .collect()
}

/// The dependency graph between the modules of the crate whose sources are in `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let m = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests (at the end of a file, by this project's convention) may use anything.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let deps: BTreeSet<String> = paths(text, &m)
            .iter()
            .filter_map(|p| resolve(p, &modules))
            .filter(|d| *d != m && d != "crate" && m != "crate")
            .collect();
        g.insert(m, deps);
    }
    g
}

/// A cycle of the graph, if it has one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The crates of the workspace with their sources.
fn crates() -> Vec<PathBuf> {
    let r = root();
    let mut v = vec![r.join("src")];
    for e in std::fs::read_dir(&r).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("alexnet-"))
            && p.join("src").is_dir()
        {
            v.push(p.join("src"));
        }
    }
    v.sort();
    v
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let mut checked = 0;
    let mut cycles = Vec::new();
    for src in crates() {
        let g = graph(&src);
        checked += g.len();
        if let Some(c) = cycle(&g) {
            cycles.push(format!("{}: {}", src.display(), c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
    assert!(checked > 40, "{checked} modules");
}

#[test]
fn the_checker_finds_cycles_and_reads_use_trees() {
    let mods: BTreeSet<String> = ["crate::a", "crate::b", "crate::b::c", "crate::b::d"]
        .map(String::from)
        .into();
    let p = paths(
        "use super::{Z, c::{Y, V}};\n/// [`W`](crate::a::W)\nfn f() { foo_crate::x(); }",
        "crate::b::d",
    );
    let resolved: BTreeSet<String> = p.iter().filter_map(|p| resolve(p, &mods)).collect();
    assert_eq!(
        resolved,
        ["crate::a", "crate::b", "crate::b::c"]
            .map(String::from)
            .into()
    );
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn the_runtime_depends_on_no_rust_parser() {
    let toml = std::fs::read_to_string(root().join("alexnet-runtime/Cargo.toml")).unwrap();
    let deps = toml.split("[dependencies]").nth(1).unwrap_or_default();
    for banned in [
        "syn",
        "quote",
        "proc-macro2",
        "alexnet-codegen",
        "alexnet-macros",
    ] {
        assert!(
            !deps
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{banned} "))
                    || l.trim_start().starts_with(&format!("{banned}."))
                    || l.trim_start().starts_with(&format!("{banned}="))),
            "alexnet-runtime depends on {banned}"
        );
    }
}

#[test]
fn the_macro_side_never_reaches_unreachable() {
    for krate in ["alexnet-macros", "alexnet-codegen", "alexnet-core"] {
        for f in rust_files(&root().join(krate).join("src")) {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(
                !text.contains("unreachable!"),
                "{} uses unreachable!",
                f.display()
            );
        }
    }
}

#[test]
fn every_layer_kind_has_its_files() {
    let registry = std::fs::read_to_string(root().join("alexnet-core/src/layers/mod.rs")).unwrap();
    let list = registry
        .split("$callback!(")
        .last()
        .and_then(|s| s.split(')').next())
        .expect("the registry's list of kinds");
    let kinds: Vec<String> = list.split(',').map(|k| k.trim().to_lowercase()).collect();
    assert!(kinds.len() >= 8, "{kinds:?}");
    for k in &kinds {
        for dir in ["alexnet-core/src/layers", "alexnet-runtime/src/cpu"] {
            let f = root().join(dir).join(format!("{k}.rs"));
            assert!(f.is_file(), "layer kind {k} has no {}", f.display());
        }
    }
}
