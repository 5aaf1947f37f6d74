//! Signed skill bundles through the CLI: keys, pack, verify, and every way a bundle can be bad
//! (each refused with its reason, nothing left behind).

use crate::common;

use std::path::{Path, PathBuf};

use skillgraft::skill::bundle::{self, Limits};

use crate::common::bundles::example;

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

/// Mutated bundles (bytes flipped, cut, repeated, in the tar and in the compressed file), many of
/// them past the signature check: each is refused or accepted, never a panic, and a refused one
/// leaves nothing. A fixed-seed companion of the `bundle` fuzz target (tools/fuzz.sh) that runs
/// in every test run.
#[test]
fn mutated_bundles_are_refused_cleanly() {
    let f = fleet();
    let good = f.dir.path().join("good.skill");
    pack(&f.key, &good);
    let trusted = bundle::read_trusted(std::slice::from_ref(&f.public)).unwrap();
    let packed = std::fs::read(&good).unwrap();
    let tar = zstd::decode_all(packed.as_slice()).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let limits = Limits { max_bytes: 4 << 20, max_entries: 64, max_seconds: 20 };
    let (mut refused, mut accepted) = (0, 0);
    for i in 0..300 {
        let mut bytes = if i % 3 == 0 { packed.clone() } else { tar.clone() };
        for _ in 0..1 + next(4) {
            let at = next(bytes.len());
            match next(4) {
                0 => bytes[at] ^= 1 << next(8),
                1 => bytes.truncate(at.max(1)),
                2 => {
                    let piece: Vec<u8> = bytes[at..(at + 1 + next(1024)).min(bytes.len())].to_vec();
                    let to = next(bytes.len());
                    bytes.splice(to..to, piece);
                }
                _ => bytes[at] = [0u8, 0xff, b'0', b'/'][next(4)],
            }
        }
        let file = f.dir.path().join(format!("m{i}.skill"));
        let bytes = if i % 3 == 0 { bytes } else { zstd::encode_all(bytes.as_slice(), 1).unwrap() };
        std::fs::write(&file, bytes).unwrap();
        let dest = f.dir.path().join(format!("m{i}"));
        match bundle::unpack(&file, &trusted, &dest, limits) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused += 1;
                assert!(!dest.exists(), "{i}: a refused bundle left {}: {e}", dest.display());
                assert!(e.to_string().len() < 4096, "{i}: a message that long: {e}");
            }
        }
        let _ = bundle::peek(&file);
    }
    assert!(refused > 250, "most mutations are refused ({refused} of 300, {accepted} accepted)");
}
