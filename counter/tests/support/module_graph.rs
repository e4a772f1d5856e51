//! The graph of `crate::module` references between a crate's top-level
//! modules, read from its sources, and the cycles in it.
//!
//! A module that imports another which imports it back makes a reader turn
//! back and forth to follow one request; a graph without cycles is a layout
//! one can read in order. This reads text rather than compiling: every
//! `crate::name` path outside a comment (also inside `crate::{a, b}`) is an
//! edge from the module of the file it is in to `name`. Written for any
//! crate's `src` directory, so another crate's test can include this file
//! with `#[path]` and check itself the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it refers to.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads every `.rs` file under `src` into the module graph. `lib.rs` and
/// `main.rs` are the crate root, which may use any module, and are left out.
pub fn module_graph(src: &Path) -> std::io::Result<Graph> {
    let mut graph = Graph::new();
    for file in rust_files(src)? {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative.components().next().expect("a path in src");
        let name = first.as_os_str().to_string_lossy();
        let module = name.strip_suffix(".rs").unwrap_or(&name).to_string();
        if relative.components().count() == 1 && (module == "lib" || module == "main") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        let uses = graph.entry(module.clone()).or_default();
        for target in references(&text) {
            if target != module {
                uses.insert(target);
            }
        }
    }
    Ok(graph)
}

/// A cycle of the graph, as the modules along it with the first repeated
/// at the end (`a -> b -> a`), or `None` if it has none.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::OnPath) => {
                let start = path.iter().position(|m| m == node).expect("on the path");
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::OnPath);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

/// Fails with the cycle, named module by module, if `src`'s modules have
/// one.
pub fn assert_no_module_cycles(src: &Path) {
    let graph = module_graph(src).expect("the sources are readable");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "modules of {} import each other: {}",
            src.display(),
            cycle.join(" -> ")
        );
    }
}

fn rust_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The top-level modules named by `crate::` paths in `text`, comments left
/// out.
fn references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            // `tally_crate::x` is not this crate.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                found.extend(inner.split(',').filter_map(|part| ident(part.trim())));
            } else if let Some(name) = ident(rest) {
                found.insert(name);
            }
        }
    }
    found
}

/// The identifier `text` starts with, if any.
fn ident(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}
