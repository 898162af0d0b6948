//! The shape of the workspace, checked: no import cycle between the top-level modules of any
//! crate, dependencies between the crates one way only and as ARCHITECTURE.md names them, no
//! HTTP crate in a library, and every route of the mTLS listener declared together with its
//! OpenAPI entry.
//!
//! Cycles are found from the source text: every `crate::<module>` path
//! (and `super::<module>` in a top-level file) outside comments and test modules is an edge
//! from the file's top-level module to `<module>`; Tarjan's algorithm finds the strongly
//! connected components.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The workspace members: crate name → directory.
fn members() -> BTreeMap<String, PathBuf> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let start = text.find("members = [").unwrap() + "members = [".len();
    let end = start + text[start..].find(']').unwrap();
    text[start..end]
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| {
            let dir = root().join(m);
            (package_name(&dir), dir)
        })
        .collect()
}

fn package_name(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let line = text.lines().find(|l| l.starts_with("name = ")).unwrap();
    line["name = ".len()..].trim().trim_matches('"').to_string()
}

/// The names in a manifest's `[dependencies]` table (not dev- or build-dependencies).
fn dependencies(dir: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().unwrap();
            out.insert(name.to_string());
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let cut = ["#[cfg(test)]\nmod ", "#[cfg(test)]\npub(crate) mod "]
        .iter()
        .filter_map(|m| text.find(m))
        .min();
    let text = match cut {
        Some(cut) => &text[..cut],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers following `prefix` in `code`, including each of a `prefix{a, b::c}` group.
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Top-level module → the top-level modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let code = code(&std::fs::read_to_string(&file).unwrap());
        let mut refs = paths_after(&code, "crate::");
        if rel.components().count() == 1 {
            refs.extend(paths_after(&code, "super::"));
        }
        refs.remove(&top);
        graph.entry(top).or_default().extend(refs);
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for refs in graph.values_mut() {
        refs.retain(|r| known.contains(r));
    }
    graph
}

/// The strongly connected components of more than one node (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    let code = code("use crate::{a, b::X};\n// crate::z\nfn f() { crate::c::g(); }\n");
    assert_eq!(
        paths_after(&code, "crate::"),
        ["a", "b", "c"].map(String::from).into()
    );
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    for (name, dir) in members() {
        let graph = module_graph(&dir.join("src"));
        assert!(
            graph.len() > 1 || name == "certgate-tests",
            "{name}: no modules found"
        );
        let found = cycles(&graph);
        assert!(found.is_empty(), "{name} has import cycles: {found:?}");
    }
}

/// What each library may know of the others; anything else is a wrong-way dependency.
const ALLOWED: &[(&str, &[&str])] = &[
    ("storage", &[]),
    ("search", &[]),
    ("cert-store", &["storage"]),
    ("tlog", &["storage"]),
    ("exchange", &["storage", "cert-store"]),
    ("policies", &["storage", "cert-store", "search"]),
];

/// Crates that speak HTTP or serve sockets: only the gateway binary's crate and the tests use them.
const HTTP_CRATES: &[&str] = &[
    "axum",
    "hyper",
    "hyper-util",
    "http",
    "http-body",
    "http-body-util",
    "tower",
    "tower-http",
    "reqwest",
    "rustls",
    "tokio-rustls",
    "utoipa",
    "utoipa-axum",
];

#[test]
fn crates_depend_one_way_and_libraries_speak_no_http() {
    let members = members();
    let names: BTreeSet<String> = members.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (name, dir) in &members {
        let deps = dependencies(dir);
        let internal: BTreeSet<String> = deps.intersection(&names).cloned().collect();
        if let Some((_, allowed)) = ALLOWED.iter().find(|(n, _)| n == name) {
            for dep in &internal {
                assert!(
                    allowed.contains(&dep.as_str()),
                    "{name} must not depend on {dep} (see ARCHITECTURE.md)"
                );
            }
            for http in HTTP_CRATES {
                assert!(
                    !deps.contains(*http),
                    "the library {name} depends on {http}"
                );
            }
        } else {
            assert!(
                name == "gateway" || name == "certgate-tests",
                "{name} is a new crate: give it a line in ALLOWED and ARCHITECTURE.md"
            );
        }
        graph.insert(name.clone(), internal);
    }
    assert!(
        cycles(&graph).is_empty(),
        "crate cycle: {:?}",
        cycles(&graph)
    );
    for (name, deps) in &graph {
        if name != "certgate-tests" {
            assert!(!deps.contains("gateway"), "{name} depends on the gateway");
        }
    }
}

#[test]
fn every_route_of_the_mtls_listener_is_declared_with_its_openapi_entry() {
    // The listener's router is assembled from `routes!` declarations, which give the served
    // route and its OpenAPI entry together (api.rs); a plain `.route(` would serve a path the
    // document does not name. Only the operations listener (server.rs) has plain routes.
    let mut files = Vec::new();
    rust_files(&root().join("gateway/src"), &mut files);
    for file in files {
        let code = code(&std::fs::read_to_string(&file).unwrap());
        if file.ends_with("server.rs") {
            continue;
        }
        assert!(
            !code.contains(".route(") && !code.contains(".nest("),
            "{} adds a route without its OpenAPI entry",
            file.display()
        );
    }
    let doc = gateway::api::document();
    assert!(
        doc.paths.paths.len() > 40,
        "the document names too few routes"
    );
}
