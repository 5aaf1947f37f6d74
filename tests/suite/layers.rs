//! The library's rooms and the doors between them: each module may use only the modules listed
//! for it here, all of them lower down the data flow. A `crate::` path that runs back up, or to a
//! sibling it should not know, fails this test with the file and the line.

use std::collections::BTreeMap;
use std::path::Path;

/// Every top-level module of the library, lowest first, with the modules it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("file", &[]),
    ("alloc", &[]),
    ("rng", &[]),
    ("stats", &[]),
    ("msg", &[]),
    ("ros", &["file", "msg"]),
    ("model", &["file", "alloc"]),
    ("skill", &["file", "model", "msg"]),
    ("observe", &["file", "msg", "skill"]),
    ("record", &["file", "msg", "ros", "skill", "observe"]),
    ("adapt", &["file", "rng", "model", "skill", "observe", "record"]),
    ("control", &["file", "alloc", "rng", "stats", "msg", "ros", "model", "skill", "observe", "record", "adapt"]),
    ("fleet", &["file", "rng", "stats", "model", "skill"]),
    ("bridge", &["file", "msg", "ros"]),
    (
        "node",
        &["file", "alloc", "stats", "msg", "ros", "model", "skill", "observe", "record", "control", "adapt", "fleet"],
    ),
    ("sim", &["file", "rng", "msg", "ros", "model", "skill", "observe", "record", "control", "adapt", "node"]),
];

/// The modules `crate::` paths in `text` name, with their line numbers.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.push((i + 1, name));
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push((i + 1, name));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: Vec<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';')).collect();
    for m in &declared {
        assert!(
            allowed.contains_key(m),
            "module `{m}` is in lib.rs but not in the layers of tests/suite/layers.rs: give it a room"
        );
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        // The binary (main.rs and the modules only it declares) sits above the library.
        let Some(may) = allowed.get(first.as_str()) else { continue };
        for (line, used) in uses(&std::fs::read_to_string(f).unwrap()) {
            if used != first && !may.contains(&used.as_str()) {
                wrong.push(format!("src/{}:{line}: `{first}` uses `crate::{used}`", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that run against the data flow:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_paths_in_use_groups() {
    let found = uses("use crate::{control::safety, record};\nlet x = crate::node::launch();");
    assert_eq!(found, vec![(1, "control".into()), (1, "record".into()), (2, "node".into())]);
}
