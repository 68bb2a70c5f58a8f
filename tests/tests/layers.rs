//! The house rules of ARCHITECTURE.md, checked on the source: inside
//! `vmail-auth` and `vmail-node` every top-level module uses only modules of
//! lower layers (so there is no import cycle), and the pure modules do no
//! IO. (`.ci/run` checks the crate-level rules with `cargo tree`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// A file's code without its comments and its test modules.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a file holds only unit tests (`tests.rs`, or under `tests/`).
fn is_test_file(path: &Path) -> bool {
    path.components()
        .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs")
}

/// The top-level module a file of `src` belongs to, or None for the crate
/// root and the binary (`main.rs`, `cli/`) and for test-only files.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    let test_only = is_test_file(rel);
    (!matches!(name.as_str(), "lib" | "main" | "cli") && !test_only).then_some(name)
}

/// Which top-level modules each module of the crate at `src` names through
/// `crate::`.
fn uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(src) {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let code = code(&file);
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

/// Checks that every module of `src` is in `layers` and uses only modules
/// of lower layers.
fn check_layers(src: &Path, layers: &[&[&str]]) {
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let graph = uses(src);
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(mine) = layer_of(module) else {
            wrong.push(format!(
                "{module} is in no layer: add it to this test and to ARCHITECTURE.md"
            ));
            continue;
        };
        for dep in deps {
            match layer_of(dep) {
                Some(theirs) if theirs < mine => {}
                _ => wrong.push(format!("{module} uses {dep}")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{}: modules must use only lower layers {layers:?}:\n{}",
        src.display(),
        wrong.join("\n")
    );
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_auth_crate_is_a_straight_stack() {
    check_layers(
        &root().join("auth/src"),
        &[
            &["config", "keys", "metrics", "threshold"],
            &["store", "tls"],
            &["datadir"],
            &["cluster"],
            &["service", "enroll"],
            &["grpc"],
            &["server"],
        ],
    );
}

#[test]
fn the_node_crate_uses_only_lower_layers() {
    check_layers(
        &root().join("node/src"),
        &[
            &["core", "supernode", "auth_client", "metrics", "stop"],
            &["config", "keystore", "home"],
            &["overlay"],
            &["peer"],
            &["sip"],
            &["control"],
            &["web"],
        ],
    );
}

#[test]
fn pure_modules_do_no_io() {
    let node = root().join("node/src");
    let pure: Vec<PathBuf> = [
        sources(&node.join("core")),
        sources(&node.join("supernode")),
        sources(&root().join("auth/src/threshold")),
        vec![
            root().join("proto/src/share/mod.rs"),
            root().join("proto/src/batch.rs"),
            node.join("peer/upload_plan.rs"),
            node.join("peer/fetch_plan.rs"),
            node.join("overlay/objects/admit.rs"),
            node.join("sip/digest.rs"),
            node.join("sip/registrar.rs"),
            node.join("sip/summary.rs"),
            node.join("sip/sdp.rs"),
            node.join("sip/audio.rs"),
            node.join("web/guard.rs"),
            root().join("proto/src/grant/mod.rs"),
            root().join("proto/src/grant/reader.rs"),
        ],
    ]
    .concat()
    .into_iter()
    .filter(|f| !f.strip_prefix(&node).is_ok_and(is_test_file))
    .collect();
    let io = [
        "tokio::",
        "std::fs",
        // Sockets and name lookups; the address types (`std::net::IpAddr`)
        // are plain values.
        "std::net::Tcp",
        "std::net::Udp",
        "ToSocketAddrs",
        "std::process",
        "std::thread",
        "Network",
        "BlobClient",
        "SystemTime",
    ];
    let mut found = Vec::new();
    for file in &pure {
        let code = code(file);
        for needle in io {
            if code.contains(needle) {
                found.push(format!("{} uses {needle}", file.display()));
            }
        }
    }
    assert!(pure.len() >= 10, "only {} pure files found", pure.len());
    assert!(
        found.is_empty(),
        "pure modules must do no IO:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_itself_sees_a_cycle() {
    // A module graph with an upward use must be refused, or the tests above
    // prove nothing.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("low.rs"), "use crate::high::X;\n").unwrap();
    std::fs::write(tmp.path().join("high.rs"), "use crate::low::Y;\n").unwrap();
    let refused = std::panic::catch_unwind(|| check_layers(tmp.path(), &[&["low"], &["high"]]));
    assert!(refused.is_err());
    std::fs::write(tmp.path().join("low.rs"), "// crate::high in a comment\n").unwrap();
    check_layers(tmp.path(), &[&["low"], &["high"]]);
}
