//! Signed skill bundles through the CLI: keys, pack, verify, and every way a bundle can be bad
//! (each refused with its reason, nothing left behind).

mod common;

use std::path::{Path, PathBuf};

use skillgraft::skill::bundle::{self, Limits};

use common::bundles::example;

struct Fleet {
    dir: tempfile::TempDir,
    key: PathBuf,
    public: PathBuf,
}

/// Packs the example skill into `out`, signed with the secret key `key`; returns what pack says.
fn pack(key: &Path, out: &Path) -> String {
    let (skill, key, out) = (example(), key.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
    common::succeeds(&["bundle", "pack", skill.to_str().unwrap(), "--key", &key, "--out", &out])
}

fn fleet() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("fleet");
    let out = common::succeeds(&["keys", "new", stem.to_str().unwrap()]);
    assert!(out.contains("fleet.key") && out.contains("fleet.pub"), "{out}");
    Fleet { key: stem.with_extension("key"), public: stem.with_extension("pub"), dir }
}

#[test]
fn a_packed_bundle_verifies_with_the_fleet_key_and_unpacks_the_same_skill() {
    let f = fleet();
    let out = f.dir.path().join("arm6.skill");
    let text = pack(&f.key, &out);
    assert!(text.contains("example-arm6 0.1.0"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&common::succeeds(&[
        "bundle",
        "verify",
        out.to_str().unwrap(),
        "--trust",
        f.public.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let source = skillgraft::skill::Skill::load(&example()).unwrap();
    assert_eq!(v["contents"]["digest"], source.digest.as_str());
    assert_eq!(v["contents"]["files"].as_array().unwrap().len(), 2);
    let trusted = bundle::read_trusted(std::slice::from_ref(&f.public)).unwrap();
    let dest = f.dir.path().join("unpacked");
    let got = bundle::unpack(&out, &trusted, &dest, Limits::default()).unwrap();
    assert_eq!(skillgraft::skill::Skill::load(&got.dir).unwrap().digest, source.digest);
    assert_eq!(
        std::fs::read(got.dir.join("policy.onnx")).unwrap(),
        std::fs::read(example().join("policy.onnx")).unwrap()
    );
    let err = common::fails(&["keys", "new", f.dir.path().join("fleet").to_str().unwrap()]);
    assert!(err.contains("already exists"), "a key is never overwritten: {err}");
    let err = common::fails(&["bundle", "pack", example().to_str().unwrap(), "--key", f.public.to_str().unwrap()]);
    assert!(err.contains("not a secret key"), "{err}");
}

#[test]
fn bad_bundles_are_refused_with_the_reason_and_leave_nothing() {
    let f = fleet();
    let good = f.dir.path().join("good.skill");
    pack(&f.key, &good);
    for (name, path, want) in common::bundles::bad(f.dir.path(), &good, &f.key) {
        let err = common::fails(&["bundle", "verify", path.to_str().unwrap(), "--trust", f.public.to_str().unwrap()]);
        assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
        let trusted = bundle::read_trusted(std::slice::from_ref(&f.public)).unwrap();
        let dest = f.dir.path().join(format!("unpack-{}", name.replace(' ', "-")));
        assert!(bundle::unpack(&path, &trusted, &dest, Limits::default()).is_err(), "{name}");
        assert!(!dest.exists(), "{name}: a refused bundle leaves nothing");
    }
    assert!(!Path::new("/tmp/skillgraft-absolute").exists());
    assert!(!f.dir.path().join("escape").exists() && !Path::new("escape").exists());
    let err = common::fails(&[
        "bundle",
        "verify",
        good.to_str().unwrap(),
        "--trust",
        f.public.to_str().unwrap(),
        "--max-mib",
        "0",
    ]);
    assert!(err.contains("over the limit"), "{err}");
}
