//! The worker's modules import one way: leaves (pure logic and I/O
//! helpers) below the stages (admit, generate, deliver), the stages below
//! the pipeline, the pipeline below the consumer loop, and that below the
//! worker. A stage never imports another stage, and nothing imports a
//! layer above its own: the structure the README's diagram describes stays
//! true as the code changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers, lowest first; a module may use modules of lower layers, and
/// modules of its own layer only among the leaves (checked for cycles).
const LAYERS: &[&[&str]] = &[
    &[
        "attempt",
        "batch",
        "breaker",
        "client_cancel",
        "coalesce",
        "config",
        "crash",
        "early_exit",
        "failure",
        "finished",
        "metrics",
        "outbox",
        "pool",
        "progress",
        "retry",
        "shadow",
        "token_cap",
        "tokens",
    ],
    &["admit", "generate", "verify", "deliver"],
    &["pipeline"],
    &["consume"],
    &["worker"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"))
}

/// The crate modules each top-level module refers to (`crate::x`), from
/// code lines only (doc links are not imports).
fn references() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                files.push((path.clone(), inner.unwrap().path()));
            }
        } else {
            files.push((path.clone(), path));
        }
    }
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module_path, file) in files {
        let module = module_path
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let used = refs.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    used.insert(name);
                }
            }
        }
    }
    refs
}

#[test]
fn modules_import_one_way() {
    let refs = references();
    for (module, used) in &refs {
        for dep in used {
            let (from, to) = (layer(module), layer(dep));
            assert!(
                to < from || (to == 0 && from == 0),
                "{module} (layer {from}) imports {dep} (layer {to}): imports go down only, \
                 and stages never import each other"
            );
        }
    }
    // Among the leaves: no cycle.
    fn visit(m: &str, refs: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>) {
        assert!(
            !path.iter().any(|p| p == m),
            "import cycle: {path:?} -> {m}"
        );
        path.push(m.to_string());
        for dep in refs.get(m).into_iter().flatten() {
            visit(dep, refs, path);
        }
        path.pop();
    }
    for module in refs.keys() {
        visit(module, &refs, &mut Vec::new());
    }
}

#[test]
fn every_module_is_placed_in_a_layer() {
    for module in references().keys() {
        layer(module);
    }
}
