//! The counter's modules import each other in one direction only.

mod support {
    pub mod module_graph;
}

use std::path::Path;
use support::module_graph::{assert_no_module_cycles, find_cycle, module_graph};

#[test]
fn the_counter_modules_have_no_import_cycle() {
    assert_no_module_cycles(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

/// The check itself finds a cycle, through a directory module and a
/// grouped import, and ignores comments and the crate root.
#[test]
fn a_cycle_between_modules_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("store")).unwrap();
    let files = [
        (
            "lib.rs",
            "mod http; mod state; mod store; use crate::http::x;",
        ),
        ("http.rs", "use crate::{state::AppState, store};"),
        (
            "state.rs",
            "// crate::http is only mentioned here\nuse crate::store::Store;",
        ),
        ("store/mod.rs", "mod keys;"),
        ("store/keys.rs", "use crate::state::AppState;"),
    ];
    for (path, text) in files {
        std::fs::write(src.join(path), text).unwrap();
    }
    let graph = module_graph(src).unwrap();
    assert!(!graph.contains_key("lib"));
    assert_eq!(
        graph["http"].iter().cloned().collect::<Vec<_>>(),
        vec!["state", "store"]
    );
    let cycle = find_cycle(&graph).expect("state and store use each other");
    assert_eq!(cycle.join(" -> "), "state -> store -> state");

    std::fs::write(src.join("store/keys.rs"), "use super::mod_item;").unwrap();
    assert_eq!(find_cycle(&module_graph(src).unwrap()), None);
}
