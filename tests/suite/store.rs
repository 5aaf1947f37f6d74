//! The robot's skill store through the CLI: install signed bundles, the version rule, activate,
//! roll back, and bad bundles that change nothing.

use crate::common;

use std::path::{Path, PathBuf};

use crate::common::bundles::pack;

fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    common::bundles::keys(dir, "fleet")
}

#[test]
fn bundles_install_by_version_activate_and_roll_back_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keys(dir.path());
    let b1 = pack(dir.path(), &key, "0.1.0", &[]);
    let b2 = pack(dir.path(), &key, "0.2.0", &[]);
    let b1_down = pack(dir.path(), &key, "0.1.0", &["--downgrade", "--for", "arm-7", "--expires-in", "1h"]);
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let out = common::succeeds(&["store", "identify", "--store", s, "--robot", "arm-7", "--fleet", "lab"]);
    assert!(out.contains("this robot is arm-7 of fleet lab"), "{out}");
    let install = |b: &Path| {
        common::skillgraft(&[
            "store",
            "install",
            b.to_str().unwrap(),
            "--store",
            s,
            "--trust",
            public.to_str().unwrap(),
        ])
    };

    let out = String::from_utf8(install(&b1).stdout).unwrap();
    assert!(out.contains("example-arm6: active 0.1.0, previous none"), "{out}");
    let out = String::from_utf8(install(&b2).stdout).unwrap();
    assert!(out.contains("active 0.2.0, previous 0.1.0"), "{out}");

    // An older or equal version is refused unless signed for it; nothing changes.
    let before = common::snapshot(&store);
    let refused = install(&b1);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(err.contains("not above 0.2.0, the highest version installed here (active 0.2.0)"), "{err}");
    assert!(err.contains("not signed as a downgrade") && err.contains("--for arm-7"), "{err}");
    let again = install(&b2);
    assert!(String::from_utf8_lossy(&again.stderr).contains("not above 0.2.0"));
    // A downgrade for another robot, or one that names no robot and never expires: refused.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let other = pack(&elsewhere, &key, "0.1.0", &["--downgrade", "--for", "arm-8", "--expires-in", "1h"]);
    let err = String::from_utf8_lossy(&install(&other).stderr).into_owned();
    assert!(err.contains("the downgrade is for `arm-8`, not for this robot \"arm-7\" of fleet \"lab\""), "{err}");
    let bare = common::skillgraft(&["bundle", "pack", s, "--key", key.to_str().unwrap(), "--downgrade"]);
    let err = String::from_utf8_lossy(&bare.stderr);
    assert!(!bare.status.success() && err.contains("--for") && err.contains("--expires-in"), "{err}");
    // A tampered bundle: refused, nothing changes.
    let mut bytes = std::fs::read(&b2).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    let bad = dir.path().join("bad.skill");
    std::fs::write(&bad, bytes).unwrap();
    assert_eq!(install(&bad).status.code(), Some(1));
    assert_eq!(common::snapshot(&store), before, "refused bundles leave the store as it was");

    // Signed for a downgrade, but that version is installed: activate it instead.
    let err = String::from_utf8_lossy(&install(&b1_down).stderr).into_owned();
    assert!(err.contains("already installed; activate it instead"), "{err}");
    let out = common::succeeds(&["store", "rollback", "example-arm6", "--store", s]);
    assert!(out.contains("active 0.1.0, previous 0.2.0"), "{out}");
    let out = common::succeeds(&["store", "activate", "example-arm6", "0.2.0", "--store", s]);
    assert!(out.contains("active 0.2.0, previous 0.1.0"), "{out}");
    let err = common::fails(&["store", "activate", "example-arm6", "9.9.9", "--store", s]);
    assert!(err.contains("not installed"), "{err}");
    let list: serde_json::Value =
        serde_json::from_str(&common::succeeds(&["store", "list", "--store", s, "--json"])).unwrap();
    assert_eq!(list[0]["versions"], serde_json::json!(["0.1.0", "0.2.0"]));
    assert_eq!(list[0]["state"]["highest"], "0.2.0");

    // After a rollback to 0.1.0, a version between it and the highest ever installed (0.2.0)
    // is still a downgrade: refused unless signed as one for this robot (or its fleet).
    common::succeeds(&["store", "rollback", "example-arm6", "--store", s]);
    let between = pack(dir.path(), &key, "0.1.5", &[]);
    let err = String::from_utf8_lossy(&install(&between).stderr).into_owned();
    assert!(err.contains("0.1.5 is not above 0.2.0, the highest version installed here (active 0.1.0)"), "{err}");
    std::fs::remove_file(&between).unwrap();
    let for_fleet = pack(dir.path(), &key, "0.1.5", &["--downgrade", "--for", "lab", "--expires-in", "10m"]);
    let out = String::from_utf8(install(&for_fleet).stdout).unwrap();
    assert!(out.contains("active 0.1.5, previous 0.1.0"), "a downgrade for the robot's fleet: {out}");
    common::succeeds(&["store", "activate", "example-arm6", "0.2.0", "--store", s]);

    // What an install killed half way leaves in the scratch folder is cleared on open, and the
    // active version stays.
    std::fs::create_dir_all(store.join(".incoming/999999999-install-0/skill")).unwrap();
    common::succeeds(&["store", "list", "--store", s]);
    assert_eq!(std::fs::read_dir(store.join(".incoming")).unwrap().count(), 0);
    let state = std::fs::read_to_string(store.join("example-arm6/state.json")).unwrap();
    assert!(state.contains("\"active\": \"0.2.0\""), "{state}");
}

/// `store install BUNDLE` SIGKILLed at `step` (checked: it died there), then the store's listing.
fn install_killed_at(bundle: &Path, store: &str, trust: &str, step: &str) -> serde_json::Value {
    let killed = std::process::Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(["store", "install", bundle.to_str().unwrap(), "--store", store, "--trust", trust])
        .env("SKILLGRAFT_STORE_KILL_AT", step)
        .output()
        .unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.status), Some(9), "{step}: killed there");
    serde_json::from_str(&common::succeeds(&["store", "list", "--store", store, "--json"])).unwrap()
}

/// A first install SIGKILLed at each of its steps leaves either nothing or the new version
/// active, and the same bundle installs afterwards (nothing wedged: not "already installed").
#[test]
fn a_first_install_killed_at_any_step_can_be_done_again() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keys(dir.path());
    let b = pack(dir.path(), &key, "1.0.0", &[]);
    let trust = public.to_str().unwrap();
    for step in ["unpacked", "smoked", "renamed", "state-written", "state-renamed"] {
        let store = dir.path().join(format!("first-{step}"));
        let s = store.to_str().unwrap();
        let list = install_killed_at(&b, s, trust, step);
        let again = common::skillgraft(&["store", "install", b.to_str().unwrap(), "--store", s, "--trust", trust]);
        let (out, err) = (String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
        if step == "state-renamed" {
            assert_eq!(list[0]["state"]["active"], "1.0.0", "{step}: {list}");
            assert!(err.contains("not above 1.0.0"), "{step}: installed before the kill: {err}");
        } else {
            assert_eq!(list, serde_json::json!([]), "{step}: nothing was ever active");
            assert!(again.status.success(), "{step}: {err}");
            assert!(out.contains("active 1.0.0, previous none"), "{step}: {out}");
        }
        let activate = common::succeeds(&["store", "activate", "example-arm6", "1.0.0", "--store", s]);
        assert!(activate.contains("active 1.0.0"), "{step}: {activate}");
        assert_eq!(std::fs::read_dir(store.join(".incoming")).unwrap().count(), 0, "{step}: scratch cleared");
    }
}

/// An install SIGKILLed at each of its steps leaves the old or the new version active, whole,
/// and the store usable.
#[test]
fn an_install_killed_at_any_step_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keys(dir.path());
    let bundles = [pack(dir.path(), &key, "0.1.0", &[]), pack(dir.path(), &key, "0.2.0", &[])];
    for (step, active) in [
        ("unpacked", "0.1.0"),
        ("smoked", "0.1.0"),
        ("renamed", "0.1.0"),
        ("state-written", "0.1.0"),
        ("state-renamed", "0.2.0"),
    ] {
        let store = dir.path().join(format!("store-{step}"));
        let s = store.to_str().unwrap();
        let trust = public.to_str().unwrap();
        common::succeeds(&["store", "install", bundles[0].to_str().unwrap(), "--store", s, "--trust", trust]);
        let list = install_killed_at(&bundles[1], s, trust, step);
        assert_eq!(list[0]["state"]["active"], active, "{step}: {list}");
        let folder = store.join("example-arm6/versions").join(active);
        assert!(skillgraft::skill::Skill::load(&folder).is_ok(), "{step}: the active version is whole");
        assert_eq!(std::fs::read_dir(store.join(".incoming")).unwrap().count(), 0, "{step}: scratch cleared");
    }
}

/// Several processes installing one bundle into one store at once: the store's lock file makes
/// them take turns, so exactly one installs it and the others are told it is installed.
#[test]
fn concurrent_installs_from_several_processes_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keys(dir.path());
    let b = pack(dir.path(), &key, "0.4.0", &[]);
    let store = dir.path().join("store");
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_skillgraft"))
                .args(["store", "install", b.to_str().unwrap(), "--store", store.to_str().unwrap()])
                .args(["--trust", public.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 1, "{outs:?}");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not above 0.4.0") || err.contains("already installed"), "{err}");
    }
    let versions: Vec<_> = std::fs::read_dir(store.join("example-arm6/versions")).unwrap().collect();
    assert_eq!(versions.len(), 1);
    assert_eq!(std::fs::read_dir(store.join(".incoming")).unwrap().count(), 0, "no scratch left behind");
}
