//! Recording demonstrations over real DDS on loopback (inside `unshare -n -m`): a CycloneDDS peer
//! drives an episode on ~/demo/control and the file is checked with the Python MCAP readers; a
//! node killed mid-episode leaves chunks that `episodes recover` keeps; an unwritable folder or a
//! full disk fails the episode without touching the control loop, which stays muted meanwhile.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use skillgraft::msg::{RosMessage, StringMsg};
use skillgraft::node::RunningNode;
use skillgraft::record::episode;
use skillgraft::ros::dds::{DdsConfig, DdsTransport};
use skillgraft::ros::transport::{NodeIdentity, Qos, RawPublisher, Transport};
use skillgraft::skill::Skill;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A recorder node writing into `dir`, its chunks compressed as `record_compression` says (its
/// default when `None`).
fn recorder(dir: &Path, compression: Option<&str>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(["record", repo().join("skills/example-arm6").to_str().unwrap(), "--ros-args", "-p"])
        .arg(format!("episodes_dir:={}", dir.display()))
        .args(["-p", "record_chunk_s:=0.2", "-p", "observation_reliability:=reliable"])
        .args(compression.map(|c| ["-p".to_string(), format!("record_compression:={c}")]).into_iter().flatten())
        .env("ROS_DOMAIN_ID", common::dds_domain().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn peer(extra: &[&str]) -> Command {
    let mut c = Command::new(common::ros_python());
    c.arg(repo().join("tests/peers/dds_peer.py"))
        .args(["record", "--skill", repo().join("skills/example-arm6").to_str().unwrap(), "--domain"])
        .arg(common::dds_domain().to_string())
        .args(extra)
        .env("CYCLONEDDS_URI", format!("file://{}", repo().join("tests/peers/cyclone-loopback.xml").display()));
    c
}

fn report(out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("peer output is not JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(r.get("error").is_none(), "peer: {r}");
    r
}

#[test]
fn an_episode_driven_by_a_cyclonedds_peer_reads_back_in_the_python_mcap_readers() {
    if !common::isolated("an_episode_driven_by_a_cyclonedds_peer_reads_back_in_the_python_mcap_readers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut node = recorder(dir.path(), Some("lz4"));
    let r = report(peer(&["--seconds", "2"]).output().unwrap());
    let _ = Command::new("kill").args(["-INT", &node.id().to_string()]).status();
    assert!(node.wait().unwrap().success());
    let check = &r["check"];
    common::every_message_recorded(check);
    assert_eq!(check["bad_publish_time"], 0, "publish time must come from the header stamp");
    let meta = &check["metadata"];
    assert_eq!(meta["label"], "pick red cube");
    assert_eq!(meta["skill"], "example-arm6");
    assert_eq!(meta["status"], "complete");
    assert_eq!(meta["dropped"], "0");
    let file = PathBuf::from(r["file"].as_str().unwrap());
    assert!(file.starts_with(dir.path()) && file.extension().unwrap() == "mcap");
    let skill = Skill::load(&repo().join("skills/example-arm6")).unwrap();
    let chunks = episode::read(&file).unwrap().chunks;
    assert_eq!(chunks.compression.iter().collect::<Vec<_>>(), ["lz4"], "record_compression:=lz4");
    let ep = skillgraft::record::dataset::load_episode(&file, &skill.manifest).unwrap();
    assert!(ep.samples.len() as f64 > 0.9 * r["sent"]["action"].as_f64().unwrap(), "{} samples", ep.samples.len());
}

#[test]
fn a_node_killed_mid_episode_leaves_chunks_that_recover() {
    if !common::isolated("a_node_killed_mid_episode_leaves_chunks_that_recover") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut node = recorder(dir.path(), None);
    let p = peer(&["--seconds", "4", "--no-stop"]).stdout(Stdio::piped()).spawn().unwrap();
    let part = common::wait_for("an episode's .mcap.part", || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".mcap.part"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    node.kill().unwrap();
    node.wait().unwrap();
    let sent = report(p.wait_with_output().unwrap());
    assert!(part.exists(), "the .part file must survive the crash");
    let out = common::succeeds(&["episodes", "recover", dir.path().to_str().unwrap()]);
    assert!(out.contains("kept"), "{out}");
    let recovered =
        episode::read(&part.with_file_name(part.file_name().unwrap().to_string_lossy().replace(".mcap.part", ".mcap")))
            .unwrap();
    assert!(recovered.complete);
    assert_eq!(recovered.chunks.compression.iter().collect::<Vec<_>>(), ["zstd"], "zstd by default, kept on recovery");
    let n = recovered.messages.len() as u64;
    let total: u64 =
        ["joint_states", "target", "twist", "action"].iter().map(|t| sent["sent"][t].as_u64().unwrap()).sum();
    assert!(n > 100 && n < total, "recovered {n} of {total} messages sent");
}

struct Feed {
    control: Box<dyn RawPublisher>,
    _peer: DdsTransport,
}

impl Feed {
    fn say(&mut self, text: &str) {
        common::say(&mut self.control, text);
    }
}

fn node_with(dir: &Path) -> (RunningNode, Feed) {
    let episodes_dir = format!("episodes_dir:={}", dir.display());
    let (node, peer) = common::node_with_peer(common::example(), &["rate_hz:=100.0", &episodes_dir]);
    let control = peer.publisher("/skillgraft/demo/control", StringMsg::TYPE, Qos::RELIABLE).unwrap();
    (node, Feed { control, _peer: peer })
}

/// Sends `start LABEL` until the recorder leaves idle (the first ones may go out before the
/// control topic is matched).
fn start(node: &RunningNode, feed: &mut Feed, label: &str) -> skillgraft::record::Status {
    common::wait_for(&format!("episode {label} to start"), || {
        feed.say(&format!("start {label}"));
        std::thread::sleep(Duration::from_millis(200));
        Some(node.recorder_status().unwrap()).filter(|s| s.state != "idle")
    })
}

fn wait_status(
    node: &RunningNode,
    pred: impl Fn(&skillgraft::record::Status) -> bool,
    what: &str,
) -> skillgraft::record::Status {
    common::wait_for(what, || Some(node.recorder_status().unwrap()).filter(&pred))
}

#[test]
fn an_unwritable_folder_or_a_full_disk_fails_the_episode_not_the_control_loop() {
    if !common::isolated("an_unwritable_folder_or_a_full_disk_fails_the_episode_not_the_control_loop") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (node, mut feed) = node_with(&file.join("episodes"));
    wait_status(&node, |s| s.state == "idle", "the recorder never reported");
    let failed = start(&node, &mut feed, "doomed");
    assert_eq!(failed.state, "failed");
    assert!(failed.error.as_deref().unwrap_or("").contains("a-file"), "{failed:?}");
    let ticks = node.stats.ticks.load(Ordering::Relaxed);
    let muted = node.stats.muted_ticks.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(node.stats.ticks.load(Ordering::Relaxed) > ticks + 10, "the control loop must keep ticking");
    assert!(node.stats.muted_ticks.load(Ordering::Relaxed) > muted, "the policy stays muted during the demonstration");
    feed.say("stop");
    wait_status(&node, |s| s.state == "idle", "stop after a failure");
    node.stop();

    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&full).status().unwrap();
    assert!(mounted.success(), "mount a 64 KiB tmpfs (needs the private mount namespace)");
    let (node, mut feed) = node_with(&full);
    wait_status(&node, |s| s.state == "idle", "the recorder never reported");
    assert_eq!(start(&node, &mut feed, "filling").state, "recording");
    let obs_feed = DdsTransport::new(
        NodeIdentity { name: "sensors".into(), namespace: "/".into() },
        &DdsConfig::local(common::dds_domain()).unwrap(),
    )
    .unwrap();
    let skill = Skill::load(&repo().join("skills/example-arm6")).unwrap();
    let e = skillgraft::observe::Extractor::new(&skill.manifest.observations[0]);
    let mut js = obs_feed.publisher("/joint_states", &e.type_name, Qos::RELIABLE).unwrap();
    let msg = e.compose(&[0.5; 18]).encode().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.recorder_status().unwrap().state != "failed" {
        js.publish(&msg).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        assert!(Instant::now() < deadline, "64 KiB never filled up: {:?}", node.recorder_status());
    }
    let s = node.recorder_status().unwrap();
    assert!(s.error.as_deref().unwrap_or("").to_lowercase().contains("space"), "{s:?}");
    let ticks = node.stats.ticks.load(Ordering::Relaxed);
    common::wait_until("the control loop to keep ticking after the episode failed", || {
        node.stats.ticks.load(Ordering::Relaxed) > ticks + 10
    });
    assert!(
        std::fs::read_dir(&full).unwrap().any(|e| e.unwrap().path().to_string_lossy().ends_with(".mcap.part")),
        "the .part stays for recovery"
    );
    node.stop();
    let _ = Command::new("umount").arg(&full).status();
}

#[test]
fn discard_deletes_the_episode_and_stop_keeps_it() {
    if !common::isolated("discard_deletes_the_episode_and_stop_keeps_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (node, mut feed) = node_with(dir.path());
    wait_status(&node, |s| s.state == "idle", "the recorder never reported");
    assert_eq!(start(&node, &mut feed, "first try").state, "recording");
    common::wait_until("the policy muted while an episode records", || {
        node.stats.muted_ticks.load(Ordering::Relaxed) > 0
    });
    feed.say("discard");
    wait_status(&node, |s| s.state == "idle", "discard");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a discarded episode leaves nothing");
    feed.say("stop");
    let refused = wait_status(&node, |s| s.error.is_some(), "stop with no episode must be refused");
    assert!(refused.error.unwrap().contains("no episode is recording"));
    assert_eq!(start(&node, &mut feed, "second try").state, "recording");
    feed.say("stop");
    let done = wait_status(&node, |s| s.episodes_written == 1, "stop");
    let file = PathBuf::from(done.last_file.unwrap());
    assert_eq!(file.parent(), Some(dir.path()), "the episode is written to episodes_dir");
    let name = file.file_name().unwrap().to_string_lossy();
    let stamp =
        name.strip_suffix("-second_try.mcap").unwrap_or_else(|| panic!("named by start time and label: {name}"));
    let (date, time) = stamp.split_once('T').unwrap_or_else(|| panic!("an RFC 3339 start time: {stamp}"));
    humantime::parse_rfc3339(&format!("{date}T{}", time.replace('-', ":"))).unwrap_or_else(|e| panic!("{stamp}: {e}"));
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files, std::slice::from_ref(&file), "the discarded episode left nothing beside the kept one");
    assert_eq!(episode::read(&file).unwrap().metadata["label"], "second try");
    node.stop();
}
