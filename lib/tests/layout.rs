//! The library's layers, as ARCHITECTURE.md draws them, hold: the top-level modules of
//! `lib/src` import each other without a cycle (file readers below model families,
//! loaders above both), and nothing outside `session/` imports from it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and the top-level modules its code names as `crate::x`
/// (comments aside).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            let names = graph.entry(top.clone()).or_default();
            for line in std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let name: String = line[at + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !name.is_empty() && name != top {
                        names.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `from`, if there is one: the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((module, path)) = stack.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == from {
                return Some([path.clone(), vec![from.to_string()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    for module in ["formats", "checkpoint", "tokenize", "chat", "embedding", "models", "train"] {
        assert!(graph.contains_key(module), "lib/src has a module `{module}`");
    }
    let cycles: Vec<Vec<String>> = graph.keys().filter_map(|m| cycle(&graph, m)).collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
    // The readers know no model; the families know no loader.
    assert!(!graph["formats"].contains("models") && !graph["models"].contains("checkpoint"), "{graph:?}");
}

#[test]
fn nothing_below_the_session_imports_from_it() {
    let importers: Vec<String> = imports().into_iter().filter(|(m, names)| m != "session" && names.contains("session")).map(|(m, _)| m).collect();
    assert!(importers.is_empty(), "modules outside session/ that import from it: {importers:?}");
}
