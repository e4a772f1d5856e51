//! The coordinator's modules import each other in one direction only, as
//! the counter's do: the check is the counter's, on this crate's sources.

#[path = "../../counter/tests/support/module_graph.rs"]
mod module_graph;

use std::path::Path;

#[test]
fn the_coordinator_modules_have_no_import_cycle() {
    module_graph::assert_no_module_cycles(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}
