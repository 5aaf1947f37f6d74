//! Signed skill bundles through the CLI: keys, pack, verify, and every way a bundle can be bad
//! (each refused with its reason, nothing left behind).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use skillgraft::skill::bundle::{self, Limits};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6")
}

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

/// Writes a bundle by hand: `entries` are (path, kind, bytes), signed by `key` over `contents`.
fn forge(out: &Path, contents: &[u8], sig: Option<&[u8]>, entries: &[(&str, tar::EntryType, &[u8])]) {
    let file = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(zstd::Encoder::new(file, 3).unwrap());
    let mut add = |name: &str, kind: tar::EntryType, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(if kind == tar::EntryType::Regular { bytes.len() as u64 } else { 0 });
        h.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
        }
        // Written raw so that paths the tar crate would refuse (`..`, absolute) get through.
        let name_field = &mut h.as_old_mut().name;
        name_field.fill(0);
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular { bytes } else { &[] };
        b.append(&h, data).unwrap();
    };
    add("bundle.json", tar::EntryType::Regular, contents);
    if let Some(sig) = sig {
        add("bundle.sig", tar::EntryType::Regular, sig);
    }
    for (name, kind, bytes) in entries {
        add(name, *kind, bytes);
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// Writes one bad bundle at the path given.
type Maker<'a> = Box<dyn Fn(&Path) + 'a>;

/// The real bundle's entries, to tamper with.
fn entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(zstd::Decoder::new(std::fs::File::open(path).unwrap()).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
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
    let real = entries(&good);
    let get = |name: &str| real.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let (json, sig, manifest, onnx) =
        (get("bundle.json"), get("bundle.sig"), get("skill/skill.toml"), get("skill/policy.onnx"));
    let mut altered = onnx.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let other = tempfile::tempdir().unwrap();
    let stranger_stem = other.path().join("stranger");
    common::succeeds(&["keys", "new", stranger_stem.to_str().unwrap()]);
    let stranger = other.path().join("stranger.skill");
    pack(&stranger_stem.with_extension("key"), &stranger);
    let r = tar::EntryType::Regular;
    let cases: Vec<(&str, Maker, &str)> = vec![
        (
            "tampered",
            Box::new(|p| {
                forge(p, &json, Some(&sig), &[("skill/skill.toml", r, &manifest), ("skill/policy.onnx", r, &altered)])
            }),
            "does not match its digest",
        ),
        (
            "unsigned",
            Box::new(|p| forge(p, &json, None, &[("skill/skill.toml", r, &manifest), ("skill/policy.onnx", r, &onnx)])),
            "not signed",
        ),
        (
            "traversal",
            Box::new(|p| {
                forge(p, &json, Some(&sig), &[("skill/../../escape", r, b"x"), ("skill/policy.onnx", r, &onnx)])
            }),
            "climbs out",
        ),
        (
            "absolute",
            Box::new(|p| forge(p, &json, Some(&sig), &[("/tmp/skillgraft-absolute", r, b"x")])),
            "absolute path",
        ),
        (
            "symlink",
            Box::new(|p| forge(p, &json, Some(&sig), &[("skill/link", tar::EntryType::Symlink, b"")])),
            "not a regular file",
        ),
        (
            "device",
            Box::new(|p| forge(p, &json, Some(&sig), &[("skill/dev", tar::EntryType::Char, b"")])),
            "not a regular file",
        ),
        (
            "extra file",
            Box::new(|p| {
                forge(
                    p,
                    &json,
                    Some(&sig),
                    &[
                        ("skill/skill.toml", r, &manifest),
                        ("skill/policy.onnx", r, &onnx),
                        ("skill/x.sh", r, b"rm -rf /"),
                    ],
                )
            }),
            "not in the signed list",
        ),
        (
            "truncated",
            Box::new(|p| {
                let bytes = std::fs::read(&good).unwrap();
                std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
            }),
            "damaged or truncated",
        ),
        ("garbage", Box::new(|p| std::fs::write(p, b"not an archive at all").unwrap()), "not a skillgraft bundle"),
        ("untrusted key", Box::new(|p| std::fs::copy(&stranger, p).map(drop).unwrap()), "not a trusted key"),
    ];
    for (name, make, want) in cases {
        let path = f.dir.path().join(format!("{}.skill", name.replace(' ', "-")));
        make(&path);
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
