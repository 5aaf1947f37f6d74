//! Signed channels through the CLI, the way a fleet operator and a robot use them: the root key
//! signs the fleet keys, a fleet key signs a channel's index of bundles, and the robot's check
//! accepts it once and refuses every attack The Update Framework names (tampering, replay of an
//! older index, a frozen index past its expiry, a rotated-out key, an older key list), each with
//! its reason and without touching what it accepted.

use crate::common;

use std::path::{Path, PathBuf};

use crate::common::bundles::example;

fn key(dir: &Path, name: &str) -> (String, String) {
    let stem = dir.join(name);
    common::succeeds(&["keys", "new", stem.to_str().unwrap()]);
    let s = |ext: &str| stem.with_extension(ext).to_str().unwrap().to_string();
    (s("key"), s("pub"))
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn a_robot_accepts_a_signed_channel_once_and_refuses_tampered_old_frozen_and_rotated_out_documents() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (root, root_pub) = key(dir, "root");
    let (fleet, fleet_pub) = key(dir, "fleet");
    let bundle = dir.join("arm6.skill");
    common::succeeds(&["bundle", "pack", &p(&example()), "--key", &fleet, "--out", &p(&bundle)]);
    let keys = dir.join("keys.json");
    let out = common::succeeds(&[
        "fleet",
        "channel",
        "keys",
        "--root",
        &root,
        "--fleet-key",
        &fleet_pub,
        "--version",
        "1",
        "--out",
        &p(&keys),
    ]);
    assert!(out.contains("1 fleet key(s), version 1"), "{out}");
    let sign = |serial: &str, valid: &str, name: &str, with: &str| {
        let out = dir.join(name);
        common::succeeds(&[
            "fleet",
            "channel",
            "sign",
            "--key",
            with,
            "--channel",
            "stable",
            "--serial",
            serial,
            "--valid",
            valid,
            "--out",
            &p(&out),
            &p(&bundle),
        ]);
        out
    };
    let state = dir.join("robot/channels.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let verify = |keys: &PathBuf, index: &PathBuf, channel: &str| {
        common::skillgraft(&[
            "fleet",
            "channel",
            "verify",
            "--root",
            &root_pub,
            "--keys",
            &p(keys),
            "--channel",
            channel,
            "--state",
            &p(&state),
            &p(index),
        ])
    };
    let refused = |keys: &PathBuf, index: &PathBuf, channel: &str, words: &str| {
        let before = std::fs::read(&state).unwrap_or_default();
        let out = verify(keys, index, channel);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(words), "should say {words:?}: {err}");
        assert_eq!(std::fs::read(&state).unwrap_or_default(), before, "a refusal leaves the robot's state as it was");
    };

    let v5 = sign("5", "7d", "stable-5.json", &fleet);
    let ok = verify(&keys, &v5, "stable");
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let digest = skillgraft::fleet::channel::digest(&std::fs::read(&bundle).unwrap());
    assert!(
        text.contains("channel stable serial 5") && text.contains("example-arm6") && text.contains(&digest),
        "{text}"
    );
    assert!(verify(&keys, &v5, "stable").status.success(), "the same index polled again");

    // Tampered: a byte of the payload changed after signing.
    let tampered = dir.join("tampered.json");
    let original = std::fs::read_to_string(&v5).unwrap();
    std::fs::write(&tampered, original.replacen("\\\"serial\\\":5", "\\\"serial\\\":9", 1)).unwrap();
    assert_ne!(std::fs::read_to_string(&tampered).unwrap(), original, "the tamper must change the file");
    refused(&keys, &tampered, "stable", "not signed by a fleet key");
    // Replayed: an older serial, validly signed.
    let v4 = sign("4", "7d", "stable-4.json", &fleet);
    refused(&keys, &v4, "stable", "already accepted serial 5");
    // Frozen: an index past its expiry.
    let brief = sign("6", "1s", "stable-6.json", &fleet);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    refused(&keys, &brief, "stable", "expired at");
    // Another channel's index.
    refused(&keys, &v5, "canary", "not `canary`");
    // A stranger's key.
    let (stranger, _) = key(dir, "stranger");
    let forged = sign("7", "7d", "stable-7.json", &stranger);
    refused(&keys, &forged, "stable", "not signed by a fleet key");
    // Not a signed document at all.
    std::fs::write(dir.join("junk.json"), b"{\"skills\": []}").unwrap();
    refused(&keys, &dir.join("junk.json"), "stable", "not a signed document");

    // Rotation: the root lists a new fleet key only; the old key's indexes are refused from then
    // on, and the older key list cannot bring it back.
    let (fleet2, fleet2_pub) = key(dir, "fleet2");
    let keys2 = dir.join("keys2.json");
    common::succeeds(&[
        "fleet",
        "channel",
        "keys",
        "--root",
        &root,
        "--fleet-key",
        &fleet2_pub,
        "--version",
        "2",
        "--out",
        &p(&keys2),
    ]);
    let v8 = sign("8", "7d", "stable-8.json", &fleet2);
    assert!(verify(&keys2, &v8, "stable").status.success());
    let by_old = sign("9", "7d", "stable-9.json", &fleet);
    refused(&keys2, &by_old, "stable", "not signed by a fleet key");
    refused(&keys, &by_old, "stable", "already accepted version 2");
    // A key list signed by anyone but the pinned root.
    let fake = dir.join("fake-keys.json");
    common::succeeds(&[
        "fleet",
        "channel",
        "keys",
        "--root",
        &fleet,
        "--fleet-key",
        &fleet_pub,
        "--version",
        "3",
        "--out",
        &p(&fake),
    ]);
    refused(&fake, &by_old, "stable", "not signed by the root key");
}
