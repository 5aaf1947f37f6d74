//! Episode files without a network: written by the episode writer (chunks compressed with zstd,
//! lz4 or not at all), read back by skillgraft and by the Python MCAP readers, paired into
//! samples, cut short and recovered, and shown by the CLI, camera images included.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{fails, succeeds};
use sha2::Digest;
use skillgraft::msg::{CompressedImage, Header, Image, RosMessage, Time, cdr};
use skillgraft::observe::Extractor;
use skillgraft::record::dataset;
use skillgraft::record::episode::{self, ChannelSpec, Compression, EpisodeWriter};

use crate::common::example;

const T0: u64 = 1_764_000_000_000_000_000;
const MS: u64 = 1_000_000;

/// An episode of the example skill: observations at 100 Hz from t = 0, actions at 50 Hz from
/// t = 5 ms, the joint states going silent between 300 and 500 ms (longer than their 60 ms age).
/// Returns the file and, per action, the observation vector that was current when it arrived.
/// Per paired action: the observation vector then and the action.
type Expected = Vec<(Vec<f64>, Vec<f64>)>;

/// The camera topic of [`write_camera_episode`].
const CAMERA: &str = "/camera/image_raw";

/// Frame `k` of the test camera: a 96x96 rgb8 image whose pixels differ per frame, per row,
/// per column and per channel, so a decoder that mixes any of them up is caught.
fn frame(k: u64) -> Image {
    let (w, h) = (96u32, 96u32);
    let data = (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| (0..3u32).map(move |c| ((x * 7 + y * 13 + c * 50) as u64 + k * 3) as u8))
        })
        .collect();
    Image {
        header: Header {
            stamp: Time { sec: 1_764_000_000, nanosec: (k * 20_000_000) as u32 },
            frame_id: "camera".into(),
        },
        height: h,
        width: w,
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: w * 3,
        data,
    }
}

fn write_episode(dir: &Path, chunk: Duration) -> (PathBuf, Expected) {
    write_with(dir, chunk, Compression::default(), false)
}

/// An episode like [`write_episode`]'s, compressed with `compression`, with a camera on
/// [`CAMERA`] (role `image.0`) publishing [`frame`]s at 50 Hz.
fn write_camera_episode(dir: &Path, chunk: Duration, compression: Compression) -> PathBuf {
    write_with(dir, chunk, compression, true).0
}

fn write_with(dir: &Path, chunk: Duration, compression: Compression, camera: bool) -> (PathBuf, Expected) {
    let s = example();
    let m = &s.manifest;
    let topics: Vec<String> = m.observations.iter().map(|o| o.topic.clone()).collect();
    let mut channels = ChannelSpec::for_skill(m, &topics, &[], "/teleop/cmd");
    if camera {
        channels.push(ChannelSpec { topic: CAMERA.into(), type_name: Image::TYPE.into(), role: "image.0".into() });
    }
    let mut meta = BTreeMap::new();
    meta.insert("label".to_string(), "pick".to_string());
    meta.insert("skill_dir".to_string(), s.dir.display().to_string());
    let mut w = EpisodeWriter::create(dir, "ep1", &channels, &meta, chunk, compression).unwrap();
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
        if camera && step % 4 == 2 {
            w.write(channels.len() - 1, T0 + t, &cdr::encode(&frame(step / 4)).unwrap()).unwrap();
        }
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

/// The Python `mcap` and `mcap-ros2-support` readers open episodes of every chunk compression
/// and decode every message through the file's own schemas, camera images to the pixel.
#[test]
fn the_python_mcap_readers_decode_every_message() {
    let py = common::ros_python();
    for compression in Compression::ALL {
        let dir = tempfile::tempdir().unwrap();
        let path = write_camera_episode(dir.path(), Duration::from_millis(100), compression);
        let out = Command::new(&py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/read_episode.py"))
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{compression}: {}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["channels"]["/joint_states"]["schema"], "sensor_msgs/msg/JointState");
        assert_eq!(r["channels"]["/joint_states"]["encoding"], "ros2msg");
        assert_eq!(r["channels"]["/joint_states"]["message_encoding"], "cdr");
        assert_eq!(r["channels"][CAMERA]["schema"], "sensor_msgs/msg/Image");
        assert_eq!(r["channels"][CAMERA]["role"], "image.0");
        assert_eq!(
            r["compression"],
            serde_json::json!([if compression == Compression::None { "" } else { compression.name() }])
        );
        let msgs = r["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 310 + 50, "{compression}");
        let f = episode::read(&path).unwrap();
        for (py, rs) in msgs.iter().zip(&f.messages) {
            assert_eq!(py["log_time"].as_u64().unwrap(), rs.log_time);
        }
        let first = msgs.iter().find(|m| m["topic"] == "/joint_states").unwrap();
        assert_eq!(first["name"][0], "base");
        assert_eq!(first["position"].as_array().unwrap().len(), 6);
        let images: Vec<&serde_json::Value> = msgs.iter().filter(|m| m["topic"] == CAMERA).collect();
        assert_eq!(images.len(), 50);
        for (k, m) in images.iter().enumerate() {
            let want = frame(k as u64);
            assert_eq!((m["width"].as_u64(), m["height"].as_u64()), (Some(96), Some(96)));
            assert_eq!((m["encoding"].as_str(), m["step"].as_u64()), (Some("rgb8"), Some(96 * 3)));
            assert_eq!(m["stamp"], serde_json::json!([want.header.stamp.sec, want.header.stamp.nanosec]));
            assert_eq!(
                m["publish_time"].as_u64().unwrap(),
                want.header.stamp.sec as u64 * 1_000_000_000 + want.header.stamp.nanosec as u64
            );
            assert_eq!(
                m["sha256"].as_str().unwrap(),
                hex::encode(sha2::Sha256::digest(&want.data)),
                "{compression} frame {k}"
            );
            let pixel =
                |x: usize, y: usize| -> Vec<u64> { (0..3).map(|c| want.data[y * 96 * 3 + x * 3 + c] as u64).collect() };
            assert_eq!(m["pixel_5_9"], serde_json::json!(pixel(5, 9)), "row 9, column 5 of frame {k}");
        }
        assert_eq!(r["metadata"]["skillgraft.episode"]["label"], "pick");
    }
}

/// Episodes of every compression, and the uncompressed ones written before compression existed,
/// read back to the same messages; the file says how its chunks were stored.
#[test]
fn every_chunk_compression_reads_back_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut read = Vec::new();
    for compression in Compression::ALL {
        let sub = dir.path().join(compression.name());
        let f = episode::read(&write_camera_episode(&sub, Duration::from_millis(100), compression)).unwrap();
        assert!(f.complete);
        assert_eq!(f.chunks.compression.iter().collect::<Vec<_>>(), vec![compression.name()]);
        assert!(f.chunks.count >= 1);
        if compression == Compression::None {
            assert_eq!(f.chunks.stored_bytes, f.chunks.uncompressed_bytes);
        } else {
            assert!(f.chunks.stored_bytes < f.chunks.uncompressed_bytes, "{compression}: {:?}", f.chunks);
        }
        read.push(f);
    }
    let messages = |f: &episode::EpisodeFile| f.messages.clone();
    assert_eq!(messages(&read[0]), messages(&read[1]));
    assert_eq!(messages(&read[0]), messages(&read[2]));
    let m = example().manifest;
    let paired: Vec<usize> = read.iter().map(|f| dataset::load_episode(&f.path, &m).unwrap().samples.len()).collect();
    assert_eq!(paired[0], paired[2], "the camera channel, not the skill's, is left out of the samples");
    assert_eq!(paired[0], paired[1]);
}

#[test]
fn a_cut_short_episode_is_recovered_up_to_its_last_complete_chunk() {
    for compression in Compression::ALL {
        recovers_a_cut_short_episode(compression);
    }
}

fn recovers_a_cut_short_episode(compression: Compression) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_camera_episode(dir.path(), Duration::ZERO, compression);
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
    assert_eq!(recovered.messages, read.messages, "{compression}");
    assert_eq!(recovered.chunks.compression, read.chunks.compression, "compressed as it was recorded");
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

/// `episodes show` on a camera episode: per image topic the resolutions and encodings seen (a
/// camera that changed resolution shows both, an undecodable message is counted), the bytes of
/// each topic and what chunk compression saved; never the pixels.
#[test]
fn episodes_show_reports_camera_topics_without_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let channels = vec![
        ChannelSpec { topic: CAMERA.into(), type_name: Image::TYPE.into(), role: "image.0".into() },
        ChannelSpec {
            topic: "/wrist/image/compressed".into(),
            type_name: CompressedImage::TYPE.into(),
            role: "image.1".into(),
        },
    ];
    let mut w = EpisodeWriter::create(
        dir.path(),
        "cam",
        &channels,
        &BTreeMap::new(),
        Duration::from_millis(200),
        Compression::Zstd,
    )
    .unwrap();
    let mut png = Vec::new();
    image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 8, y as u8 * 10, 99]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageOutputFormat::Png)
        .unwrap();
    for k in 0..50u64 {
        let mut f = frame(k);
        if k >= 40 {
            (f.width, f.height, f.step, f.encoding) = (64, 48, 64, "mono8".into());
            f.data.truncate(64 * 48);
        }
        w.write(0, T0 + k * 20 * MS, &cdr::encode(&f).unwrap()).unwrap();
        if k % 5 == 0 {
            let data = if k == 45 { b"\x89PNG truncated".to_vec() } else { png.clone() };
            let c = CompressedImage { header: f.header.clone(), format: "rgb8; png compressed rgb8".into(), data };
            w.write(1, T0 + k * 20 * MS, &cdr::encode(&c).unwrap()).unwrap();
        }
    }
    let path = w.finish(&BTreeMap::new()).unwrap();
    let show = succeeds(&["episodes", "show", path.to_str().unwrap()]);
    for want in [
        "images: 64x48 (10), 96x96 (40); encodings: mono8 (10), rgb8 (40)",
        "images: 32x24 (9); encodings: rgb8; png compressed rgb8 (9); undecodable: 1",
        "chunk(s), zstd:",
    ] {
        assert!(show.contains(want), "missing {want:?}:\n{show}");
    }
    assert!(show.len() < 2000, "no pixels are printed:\n{show}");
    let json: serde_json::Value =
        serde_json::from_str(&succeeds(&["episodes", "show", path.to_str().unwrap(), "--json"])).unwrap();
    let camera = &json["topics"][0];
    assert_eq!(camera["topic"], CAMERA);
    assert_eq!(camera["count"], 50);
    assert_eq!(camera["images"]["resolutions"], serde_json::json!({"96x96": 40, "64x48": 10}));
    assert_eq!(camera["images"]["encodings"], serde_json::json!({"rgb8": 40, "mono8": 10}));
    assert!((camera["rate_hz"].as_f64().unwrap() - 50.0 / 0.98).abs() < 0.1, "{camera}");
    let image_bytes = camera["bytes"].as_u64().unwrap();
    assert!(image_bytes > 40 * 96 * 96 * 3 + 10 * 64 * 48, "{image_bytes}");
    assert_eq!(json["topics"][1]["images"]["undecodable"], 1);
    let chunks = &json["chunks"];
    assert_eq!(chunks["compression"], serde_json::json!(["zstd"]));
    let (stored, whole) = (chunks["stored_bytes"].as_u64().unwrap(), chunks["uncompressed_bytes"].as_u64().unwrap());
    assert!(whole > image_bytes && stored < whole / 2, "the test frames are smooth gradients: {chunks}");
    assert_eq!(json["file_bytes"].as_u64().unwrap(), std::fs::metadata(&path).unwrap().len());
    assert!(!json.to_string().contains("\"data\""), "no pixels in the JSON either");
}

/// `bench record --compression-only` writes the camera stream with each compression and prints
/// the table; every file it wrote read back whole (the bench checks), compression saved bytes.
#[test]
fn the_compression_bench_compares_the_three_on_a_camera_stream() {
    let out =
        succeeds(&["bench", "record", "--compression-only", "--compression-seconds", "1", "--repeats", "1", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["live"].is_null());
    let rows = r["compression"]["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["compression"].as_str().unwrap()).collect();
    assert_eq!(names, ["none", "lz4", "zstd"].repeat(3));
    for row in rows {
        let ratio = row["ratio"].as_f64().unwrap();
        let least = match (row["compression"].as_str(), row["image_noise"].as_u64()) {
            (Some("none"), _) => 0.9,
            (_, Some(0)) => 2.0,
            _ => 1.0,
        };
        assert!(ratio > least && (row["compression"] != "none" || ratio <= 1.0), "{row}");
    }
    let table = succeeds(&["bench", "record", "--compression-only", "--compression-seconds", "1", "--repeats", "1"]);
    assert!(table.contains("| ±3 | zstd |") && table.contains("ratio"), "{table}");
}
