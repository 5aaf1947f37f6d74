//! Episode files without a network: written by the episode writer, read back by skillgraft and by
//! the Python MCAP readers, paired into samples, cut short and recovered, and shown by the CLI.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{fails, succeeds};
use skillgraft::observe::Extractor;
use skillgraft::record::dataset;
use skillgraft::record::episode::{self, ChannelSpec, EpisodeWriter};

use crate::common::example;

const T0: u64 = 1_764_000_000_000_000_000;
const MS: u64 = 1_000_000;

/// An episode of the example skill: observations at 100 Hz from t = 0, actions at 50 Hz from
/// t = 5 ms, the joint states going silent between 300 and 500 ms (longer than their 60 ms age).
/// Returns the file and, per action, the observation vector that was current when it arrived.
/// Per paired action: the observation vector then and the action.
type Expected = Vec<(Vec<f64>, Vec<f64>)>;

fn write_episode(dir: &Path, chunk: Duration) -> (PathBuf, Expected) {
    let s = example();
    let m = &s.manifest;
    let topics: Vec<String> = m.observations.iter().map(|o| o.topic.clone()).collect();
    let channels = ChannelSpec::for_skill(m, &topics, &[], "/teleop/cmd");
    let mut meta = BTreeMap::new();
    meta.insert("label".to_string(), "pick".to_string());
    meta.insert("skill_dir".to_string(), s.dir.display().to_string());
    let mut w = EpisodeWriter::create(dir, "ep1", &channels, &meta, chunk).unwrap();
    let fields: Vec<Extractor> = m.observations.iter().map(Extractor::new).collect();
    let act = Extractor::for_action(&m.action);
    let obs_at = |k: u64| -> Vec<Vec<f64>> {
        fields
            .iter()
            .enumerate()
            .map(|(i, e)| (0..e.width).map(|j| (k as f64) * 0.01 + i as f64 + j as f64 * 0.001).collect())
            .collect()
    };
    let mut expected = Vec::new();
    let mut latest: Vec<Option<(u64, Vec<f64>)>> = vec![None; fields.len()];
    let max_age: Vec<u64> = m.observations.iter().map(|o| (o.max_age_ms * 1e6) as u64).collect();
    for step in 0..200u64 {
        let t = step * 5 * MS;
        if step % 2 == 0 {
            let k = step / 2;
            for (i, e) in fields.iter().enumerate() {
                if i == 0 && (60..100).contains(&k) {
                    continue;
                }
                let v = &obs_at(k)[i];
                w.write(i, T0 + t, &e.compose(v).encode().unwrap()).unwrap();
                latest[i] = Some((t, v.clone()));
            }
        } else if step % 4 == 1 {
            let a: Vec<f64> = (0..act.width).map(|j| (step as f64) * 0.001 - j as f64 * 0.01).collect();
            w.write(fields.len(), T0 + t, &act.compose(&a).encode().unwrap()).unwrap();
            let fresh = latest.iter().zip(&max_age).all(|(l, age)| l.as_ref().is_some_and(|(at, _)| t - at <= *age));
            if fresh {
                expected.push((latest.iter().flat_map(|l| l.as_ref().unwrap().1.clone()).collect(), a));
            }
        }
    }
    let mut done = meta.clone();
    done.insert("status".into(), "complete".into());
    (w.finish(&done).unwrap(), expected)
}

#[test]
fn an_episode_reads_back_and_pairs_each_action_with_the_observation_then() {
    let dir = tempfile::tempdir().unwrap();
    let (path, expected) = write_episode(dir.path(), Duration::from_millis(100));
    let f = episode::read(&path).unwrap();
    assert!(f.complete);
    assert_eq!(f.channels.len(), 4);
    assert_eq!(f.channels[3].role, "action");
    assert_eq!(f.channels.iter().map(|c| c.count).collect::<Vec<_>>(), vec![60, 100, 100, 50]);
    assert_eq!(f.metadata["status"], "complete");
    let m = example().manifest;
    let ep = dataset::load_episode(&path, &m).unwrap();
    assert_eq!(ep.actions, 50);
    assert_eq!(ep.label, "pick");
    assert_eq!(ep.stale, 17, "actions from 665 to 985 ms find joint states older than 60 ms");
    assert_eq!(ep.samples.len(), expected.len());
    for (s, (obs, act)) in ep.samples.iter().zip(&expected) {
        let got: Vec<f64> = s.raw_observation.iter().map(|&v| v as f64).collect();
        assert!(got.iter().zip(obs).all(|(a, b)| (a - b).abs() < 1e-5), "at {}: {got:?} vs {obs:?}", s.t);
        assert!(s.raw_action.iter().zip(act).all(|(a, b)| (*a as f64 - b).abs() < 1e-6));
    }
    let n = m.normaliser();
    let mut x = vec![0.0; n.input_width()];
    n.input(&ep.samples[0].raw_observation, &mut x);
    assert_eq!(x, ep.samples[0].observation, "samples are normalised the way the control loop normalises");
}

#[test]
fn the_python_mcap_readers_decode_every_message() {
    let py = common::ros_python();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_episode(dir.path(), Duration::from_millis(100));
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/read_episode.py"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["channels"]["/joint_states"]["schema"], "sensor_msgs/msg/JointState");
    assert_eq!(r["channels"]["/joint_states"]["encoding"], "ros2msg");
    assert_eq!(r["channels"]["/joint_states"]["message_encoding"], "cdr");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 310);
    let f = episode::read(&path).unwrap();
    for (py, rs) in msgs.iter().zip(&f.messages) {
        assert_eq!(py["log_time"].as_u64().unwrap(), rs.log_time);
    }
    let first = msgs.iter().find(|m| m["topic"] == "/joint_states").unwrap();
    assert_eq!(first["name"][0], "base");
    assert_eq!(first["position"].as_array().unwrap().len(), 6);
    assert_eq!(r["metadata"]["skillgraft.episode"]["label"], "pick");
}

#[test]
fn a_cut_short_episode_is_recovered_up_to_its_last_complete_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_episode(dir.path(), Duration::ZERO);
    let bytes = std::fs::read(&path).unwrap();
    let whole = episode::read(&path).unwrap().messages.len();
    std::fs::remove_file(&path).unwrap();
    let part = dir.path().join("ep1.mcap.part");
    let cut = bytes.len() * 2 / 3;
    std::fs::write(&part, &bytes[..cut]).unwrap();
    let read = episode::read(&part).unwrap();
    assert!(!read.complete);
    assert!(read.trailing_bytes > 0);
    let listing = succeeds(&["episodes", "list", dir.path().to_str().unwrap()]);
    assert!(listing.contains("ep1") && listing.contains("unfinished"), "{listing}");
    let out = succeeds(&["episodes", "recover", dir.path().to_str().unwrap()]);
    assert!(out.contains("kept") && out.contains("dropped"), "{out}");
    assert!(!part.exists());
    let recovered = episode::read(&dir.path().join("ep1.mcap")).unwrap();
    assert!(recovered.complete);
    assert_eq!(recovered.messages.len(), read.messages.len());
    assert!(
        recovered.messages.len() > whole / 3 && recovered.messages.len() < whole,
        "{} of {whole}",
        recovered.messages.len()
    );
    assert_eq!(recovered.metadata["status"], "recovered");
    assert_eq!(recovered.metadata["label"], "pick");
    let again = succeeds(&["episodes", "recover", dir.path().to_str().unwrap()]);
    assert!(again.contains("no unfinished episodes"), "{again}");
}

#[test]
fn the_cli_lists_shows_and_exports_episodes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, expected) = write_episode(dir.path(), Duration::from_millis(100));
    let list = succeeds(&["episodes", "list", dir.path().to_str().unwrap()]);
    assert!(list.contains("ep1") && list.contains("complete") && list.contains("pick"), "{list}");
    let show = succeeds(&["episodes", "show", path.to_str().unwrap()]);
    for want in
        ["episode   ep1 (complete)", "/joint_states", "sensor_msgs/msg/JointState", "observation.0", "samples   "]
    {
        assert!(show.contains(want), "missing {want:?}:\n{show}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&succeeds(&["episodes", "show", path.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["samples"].as_u64().unwrap() as usize, expected.len());
    let csv = succeeds(&["episodes", "export", path.to_str().unwrap(), "--csv"]);
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("t,/joint_states:position[base]") && header.contains("action:data[5]"), "{header}");
    assert_eq!(header.split(',').count(), 1 + 24 + 6);
    assert_eq!(lines.count(), expected.len());
    let err = fails(&["episodes", "show", dir.path().join("missing.mcap").to_str().unwrap()]);
    assert!(err.contains("missing.mcap"), "{err}");
    std::fs::write(dir.path().join("junk.mcap"), b"not an mcap file").unwrap();
    let err = fails(&["episodes", "show", dir.path().join("junk.mcap").to_str().unwrap()]);
    assert!(err.contains("not an MCAP file"), "{err}");
}
