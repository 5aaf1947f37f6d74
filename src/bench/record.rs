//! `skillgraft bench record`: sustained recording of 1 kHz joint states and 500 Hz commands, with
//! the control loop running: messages lost, the recorder thread's CPU share, and the control
//! tick's latency while recording against the same period without. Before that, the chunk
//! compressions (none, lz4, zstd) compared on a camera stream: bytes on disk, ratio, CPU time
//! and the episode writer's latency.

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::rig::{Feeder, Rig, Stream};
use skillgraft::msg::cdr;
use skillgraft::msg::{Float64MultiArray, Header, Image, JointState, Point, RosMessage, StringMsg, Time};
use skillgraft::record::episode::{self, ChannelSpec, Compression, EpisodeWriter};
use skillgraft::rng::SplitMix;
use skillgraft::ros::transport::{Qos, Transport};
use skillgraft::stats::percentiles;

/// One phase's figures.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// `not recording` or `recording`.
    pub name: String,
    /// Control ticks.
    pub ticks: u64,
    /// Tick latency p50/p99/max, µs.
    pub latency_us: Option<(f64, f64, f64)>,
    /// Deadline misses.
    pub misses: u64,
    /// Messages sent per topic.
    pub sent: Vec<(String, u64)>,
    /// Messages recorded per topic (recording phase only).
    pub recorded: Vec<(String, u64)>,
    /// Recorder thread CPU time over wall time, percent.
    pub recorder_cpu_percent: f64,
}

/// The recording benchmark.
#[derive(Debug, Serialize)]
pub struct RecordReport {
    /// Skill.
    pub skill: String,
    /// Seconds per phase.
    pub seconds: f64,
    /// The node's `observation_reliability`.
    pub reliability: String,
    /// The two phases.
    pub phases: Vec<Phase>,
    /// Messages missing from the file between the first and last recorded of each topic.
    pub lost: u64,
    /// The same, per topic.
    pub lost_by_topic: Vec<(String, u64)>,
    /// Messages the recorder queue dropped.
    pub queue_dropped: u64,
    /// Peak RSS, MiB.
    pub peak_rss_mib: Option<f64>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs the node on `skill_dir` with a feeder publishing the skill's joint-state input at
/// 1 kHz, its other inputs at 100 Hz and commands on the action topic at 500 Hz: `seconds`
/// without recording, then `seconds` recording into `dir`.
pub fn record(skill_dir: &Path, dir: &Path, seconds: f64, reliability: &str) -> Result<RecordReport, String> {
    let params = vec![
        format!("episodes_dir:={}", dir.display()),
        "blend_s:=0.0".into(),
        format!("observation_reliability:={reliability}"),
    ];
    let rig = Rig::start(skill_dir, &params, 160)?;
    let mut streams: Vec<(String, Stream)> = Vec::new();
    for (e, topic) in &rig.inputs {
        let every = if e.type_name == "sensor_msgs/msg/JointState" { 1 } else { 10 };
        streams.push((topic.clone(), rig.stream(topic, e, every)?));
    }
    streams.push((rig.cfg.demo_action_topic.clone(), rig.stream(&rig.cfg.demo_action_topic, &rig.action, 2)?));
    let counters: Vec<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)> =
        streams.iter().map(|(t, s)| (t.clone(), s.sent.clone())).collect();
    let feeder = Feeder::start(streams.into_iter().map(|(_, s)| s).collect(), 1000.0);
    let mut control = rig.feeder.publisher(&rig.cfg.demo_control_topic, StringMsg::TYPE, Qos::RELIABLE).map_err(err)?;
    let say = |p: &mut Box<dyn skillgraft::ros::transport::RawPublisher>, text: &str| {
        p.publish(&cdr::encode(&StringMsg { data: text.into() }).expect("a string encodes")).map_err(err)
    };
    std::thread::sleep(Duration::from_secs(3));
    let node = &rig.node;
    let mut phases = Vec::new();
    let mut queue_dropped = 0;
    let mut lost = Vec::new();
    for recording in [false, true] {
        if recording {
            let deadline = Instant::now() + Duration::from_secs(20);
            while node.recorder_status().is_some_and(|s| s.state == "idle") {
                say(&mut control, "start bench")?;
                std::thread::sleep(Duration::from_millis(200));
                if Instant::now() > deadline {
                    return Err("the recorder never started an episode".into());
                }
            }
        }
        let s = &node.stats;
        let (_, from) = s.latency.since(0);
        let (t0, m0) = (s.ticks.load(Ordering::Relaxed), s.deadline_misses.load(Ordering::Relaxed));
        let sent0: Vec<u64> = counters.iter().map(|(_, c)| c.load(Ordering::Relaxed)).collect();
        let cpu0 = node.recorder_cpu_ns();
        let at0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let wall = at0.elapsed().as_secs_f64();
        let sent: Vec<(String, u64)> =
            counters.iter().zip(&sent0).map(|((t, c), s0)| (t.clone(), c.load(Ordering::Relaxed) - s0)).collect();
        let (lat, _) = s.latency.since(from);
        let mut phase = Phase {
            name: if recording { "recording" } else { "not recording" }.into(),
            ticks: s.ticks.load(Ordering::Relaxed) - t0,
            latency_us: percentiles(lat),
            misses: s.deadline_misses.load(Ordering::Relaxed) - m0,
            recorder_cpu_percent: 0.0,
            sent,
            recorded: Vec::new(),
        };
        if recording {
            // Everything published until now must reach the file: stop after the feeder stops.
            drop(feeder);
            std::thread::sleep(Duration::from_millis(500));
            let written = node.recorder_status().map(|s| s.episodes_written).unwrap_or(0);
            let deadline = Instant::now() + Duration::from_secs(30);
            while node.recorder_status().is_some_and(|s| s.episodes_written == written) {
                say(&mut control, "stop")?;
                std::thread::sleep(Duration::from_millis(300));
                if Instant::now() > deadline {
                    return Err("the recorder never finished the episode".into());
                }
            }
            phase.recorder_cpu_percent = (node.recorder_cpu_ns() - cpu0) as f64 / 1e9 / wall * 100.0;
            let file = node.recorder_status().and_then(|s| s.last_file).ok_or("no episode file")?;
            let f = episode::read(Path::new(&file)).map_err(err)?;
            phase.recorded = f.channels.iter().map(|c| (c.topic.clone(), c.count)).collect();
            lost = lost_in(&f, &rig)?;
            queue_dropped = f.metadata.get("dropped").and_then(|d| d.parse().ok()).unwrap_or(0);
            phases.push(phase);
            break;
        }
        phase.recorder_cpu_percent = (node.recorder_cpu_ns() - cpu0) as f64 / 1e9 / wall * 100.0;
        phases.push(phase);
    }
    let report = RecordReport {
        skill: rig.skill.clone(),
        seconds,
        reliability: reliability.to_string(),
        phases,
        lost: lost.iter().map(|(_, n)| n).sum(),
        lost_by_topic: lost,
        queue_dropped,
        peak_rss_mib: super::peak_rss_mib(None),
    };
    rig.node.stop();
    Ok(report)
}

/// Messages missing from the file: per topic, the gaps between the first and the last sequence
/// number recorded (the feeder numbers its messages in their first value).
fn lost_in(f: &episode::EpisodeFile, rig: &Rig) -> Result<Vec<(String, u64)>, String> {
    let mut lost = Vec::new();
    for (ch, c) in f.channels.iter().enumerate() {
        let fields = match rig.inputs.iter().find(|(_, t)| *t == c.topic) {
            Some((e, _)) => e,
            None if c.role == "action" => &rig.action,
            None => continue,
        };
        let mut out = vec![0.0f32; fields.width];
        let mut seqs: Vec<u64> = Vec::new();
        for m in f.messages.iter().filter(|m| m.channel == ch) {
            fields.extract_cdr(&m.data, &mut out).map_err(err)?;
            seqs.push(out[0] as u64);
        }
        seqs.sort_unstable();
        seqs.dedup();
        if let (Some(lo), Some(hi)) = (seqs.first(), seqs.last()) {
            lost.push((c.topic.clone(), (hi - lo + 1) - seqs.len() as u64));
        }
    }
    Ok(lost)
}

impl fmt::Display for RecordReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "skill {}, {} s per phase; 1 kHz joint states, 100 Hz other inputs, 500 Hz commands; subscriptions {}",
            self.skill, self.seconds, self.reliability
        )?;
        writeln!(
            f,
            "| phase | ticks | tick latency p50 / p99 / max (µs) | deadline misses | messages sent | recorded | recorder CPU |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|")?;
        for p in &self.phases {
            let lat = p.latency_us.map(|(a, b, c)| format!("{a:.1} / {b:.1} / {c:.1}")).unwrap_or_else(|| "n/a".into());
            let sent: u64 = p.sent.iter().map(|(_, n)| n).sum();
            let recorded = if p.recorded.is_empty() {
                "-".into()
            } else {
                p.recorded.iter().map(|(_, n)| n).sum::<u64>().to_string()
            };
            writeln!(
                f,
                "| {} | {} | {lat} | {} | {sent} | {recorded} | {:.1} % |",
                p.name, p.ticks, p.misses, p.recorder_cpu_percent
            )?;
        }
        let by: Vec<String> = self.lost_by_topic.iter().map(|(t, n)| format!("{t} {n}")).collect();
        writeln!(
            f,
            "messages lost while recording: {} ({}); dropped by the recorder queue: {}",
            self.lost,
            by.join(", "),
            self.queue_dropped
        )?;
        if let Some(m) = self.peak_rss_mib {
            writeln!(f, "peak RSS of the process (node and feeder): {m:.1} MiB")?;
        }
        Ok(())
    }
}

/// One chunk compression on one stream, medians over the repeats.
#[derive(Debug, Serialize)]
pub struct CompressionRow {
    /// The camera's sensor noise, ± grey levels (0: a clean render).
    pub image_noise: u8,
    /// `none`, `lz4` or `zstd`.
    pub compression: String,
    /// File bytes per second of stream.
    pub disk_bytes_per_s: f64,
    /// Message bytes over file bytes.
    pub ratio: f64,
    /// CPU time of the writing thread per MiB of messages, ms.
    pub cpu_ms_per_mib: f64,
    /// That CPU time as a share of one core at the stream's real rate, percent.
    pub cpu_percent: f64,
    /// One message written, p50 / p99 / max, µs.
    pub write_us: (f64, f64, f64),
    /// A chunk ended and synced each stream second, p50 / max, ms.
    pub chunk_ms: (f64, f64),
    /// Reading the whole file back, ms per MiB of messages.
    pub read_ms_per_mib: f64,
}

/// The chunk compressions compared on one recorded stream.
#[derive(Debug, Serialize)]
pub struct CompressionReport {
    /// Seconds of stream per run.
    pub seconds: f64,
    /// Runs per row.
    pub repeats: usize,
    /// Message bytes per second of stream.
    pub stream_bytes_per_s: f64,
    /// The rows.
    pub rows: Vec<CompressionRow>,
}

/// Rates of the stream: joint states, target, action, camera (Hz).
const STREAM_HZ: [u64; 4] = [1000, 100, 500, 50];

/// The stream of one run: `(channel, log time ns, CDR)` in time order. A 6-joint arm moving
/// smoothly with sensor noise on its joint states, a target that moves now and then, actions,
/// and a 96x96 rgb8 camera that sees the arm and the target, with `noise` grey levels of sensor
/// noise (0: a clean render, like the simulated camera's).
fn stream(seconds: f64, noise: u8) -> Vec<(usize, u64, Vec<u8>)> {
    let t0 = 1_764_000_000_000_000_000u64;
    let end_ns = (seconds * 1e9) as u64;
    let mut rng = SplitMix(0x5EED ^ noise as u64);
    let mut out = Vec::new();
    let angle = |j: usize, t: f64| 0.6 * (t * (0.3 + 0.11 * j as f64) + j as f64).sin();
    let target = |t: f64| [0.55 + 0.1 * (t / 3.0).floor().cos(), 0.3 * (t / 3.0).floor().sin()];
    let header = |ns: u64| Header {
        stamp: Time { sec: (ns / 1_000_000_000) as i32, nanosec: (ns % 1_000_000_000) as u32 },
        frame_id: String::new(),
    };
    for (ch, hz) in STREAM_HZ.iter().enumerate() {
        let period = 1_000_000_000 / hz;
        let mut at = period / 2 * ch as u64 / 4;
        while at < end_ns {
            let ns = t0 + at;
            let t = at as f64 * 1e-9;
            let bytes = match ch {
                0 => cdr::encode(&JointState {
                    header: header(ns),
                    name: (1..=6).map(|j| format!("joint{j}")).collect(),
                    position: (0..6).map(|j| angle(j, t) + 1e-4 * (rng.unit() - 0.5)).collect(),
                    velocity: (0..6)
                        .map(|j| (angle(j, t + 1e-3) - angle(j, t)) * 1e3 + 1e-2 * (rng.unit() - 0.5))
                        .collect(),
                    effort: (0..6).map(|j| 2.0 + j as f64 * 0.5 + 0.05 * (rng.unit() - 0.5)).collect(),
                }),
                1 => {
                    let [x, y] = target(t);
                    cdr::encode(&Point { x, y, z: 0.0 })
                }
                2 => cdr::encode(&Float64MultiArray {
                    data: (0..6).map(|j| (angle(j, t + 0.02) - angle(j, t)) * 50.0).collect(),
                    ..Default::default()
                }),
                _ => cdr::encode(&camera(header(ns), [angle(0, t), angle(1, t)], target(t), noise, &mut rng)),
            };
            out.push((ch, ns, bytes.expect("the bench's messages encode")));
            at += period;
        }
    }
    out.sort_by_key(|(ch, ns, _)| (*ns, *ch));
    out
}

/// What arm-a's simulated camera sees with its first two joints at `links` (rad) and the target
/// at `target`, with `noise` grey levels of sensor noise added to every value.
fn camera(header: Header, links: [f64; 2], target: [f64; 2], noise: u8, rng: &mut SplitMix) -> Image {
    let robot = skillgraft::sim::robot("arm-a").expect("arm-a is a simulated robot");
    let mut frame = skillgraft::sim::episodes::camera_image(&robot.camera, 0);
    frame.header = header;
    let q = [links[0], links[1], 0.5 * links[1]];
    robot.camera.render(&robot, &q, target, &mut frame.data).expect("the frame is the camera's size");
    if noise > 0 {
        for v in &mut frame.data {
            let n = (rng.next_u64() % (2 * noise as u64 + 1)) as i32 - noise as i32;
            *v = (*v as i32 + n).clamp(0, 255) as u8;
        }
    }
    frame
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The median, 0 for none (a stream under a second ends no chunk before its last).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Writes `seconds` of the camera stream into `dir` with each compression, `repeats` times, the
/// way the recorder does (one thread, a chunk ended and synced every second of stream), and
/// reads each file back to check that every message is in it.
pub fn compression(dir: &Path, seconds: f64, repeats: usize) -> Result<CompressionReport, String> {
    let channels: Vec<ChannelSpec> = [
        ("/joint_states", JointState::TYPE, "observation.0"),
        ("/target", Point::TYPE, "observation.1"),
        ("/arm/cmd", Float64MultiArray::TYPE, "action"),
        ("/camera/image_raw", Image::TYPE, "image.0"),
    ]
    .iter()
    .map(|(topic, t, role)| ChannelSpec { topic: topic.to_string(), type_name: t.to_string(), role: role.to_string() })
    .collect();
    let mut rows = Vec::new();
    let mut stream_bytes_per_s = 0.0;
    for noise in [0u8, 1, 3] {
        let messages = stream(seconds, noise);
        let mib = messages.iter().map(|(_, _, b)| b.len()).sum::<usize>() as f64 / (1024.0 * 1024.0);
        stream_bytes_per_s = mib * 1024.0 * 1024.0 / seconds;
        for c in Compression::ALL {
            let (mut disk, mut ratio, mut cpu, mut read) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut p50, mut p99, mut max, mut chunk50, mut chunk_max) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for run in 0..repeats.max(1) {
                let id = format!("{c}-{noise}-{run}");
                let cpu0 = thread_cpu_ns();
                let mut w =
                    EpisodeWriter::create(dir, &id, &channels, &Default::default(), Duration::MAX, c).map_err(err)?;
                let mut writes = Vec::with_capacity(messages.len());
                let mut chunks = Vec::new();
                let mut next_chunk = messages.first().map(|m| m.1).unwrap_or(0) + 1_000_000_000;
                for (ch, ns, bytes) in &messages {
                    if *ns >= next_chunk {
                        let at = Instant::now();
                        w.flush().map_err(err)?;
                        chunks.push(at.elapsed().as_secs_f64() * 1e3);
                        next_chunk += 1_000_000_000;
                    }
                    let at = Instant::now();
                    w.write(*ch, *ns, bytes).map_err(err)?;
                    writes.push(at.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
                let path = w.finish(&Default::default()).map_err(err)?;
                let cpu_s = (thread_cpu_ns() - cpu0) as f64 * 1e-9;
                let size = std::fs::metadata(&path).map_err(err)?.len() as f64;
                let at = Instant::now();
                let back = episode::read(&path).map_err(err)?;
                read.push(at.elapsed().as_secs_f64() * 1e3 / mib);
                if back.messages.len() != messages.len() {
                    return Err(format!("{c}: {} of {} messages read back", back.messages.len(), messages.len()));
                }
                std::fs::remove_file(&path).map_err(err)?;
                disk.push(size / seconds);
                ratio.push(mib * 1024.0 * 1024.0 / size);
                cpu.push(cpu_s * 1e3 / mib);
                let (a, b, m) = percentiles(writes).unwrap_or_default();
                p50.push(a);
                p99.push(b);
                max.push(m);
                chunk50.push(median(chunks.clone()));
                chunk_max.push(chunks.iter().copied().fold(0.0, f64::max));
            }
            let cpu_ms_per_mib = median(cpu);
            rows.push(CompressionRow {
                image_noise: noise,
                compression: c.name().into(),
                disk_bytes_per_s: median(disk),
                ratio: median(ratio),
                cpu_ms_per_mib,
                cpu_percent: cpu_ms_per_mib * 1e-3 * stream_bytes_per_s / (1024.0 * 1024.0) * 100.0,
                write_us: (median(p50), median(p99), median(max)),
                chunk_ms: (median(chunk50), median(chunk_max)),
                read_ms_per_mib: median(read),
            });
        }
    }
    Ok(CompressionReport { seconds, repeats, stream_bytes_per_s, rows })
}

impl fmt::Display for CompressionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chunk compression: {} s of stream per run, median of {} runs; 1 kHz joint states, 100 Hz target, 500 Hz actions, 50 Hz 96x96 rgb8 camera = {:.2} MiB/s of messages; a chunk synced per second of stream",
            self.seconds,
            self.repeats,
            self.stream_bytes_per_s / (1024.0 * 1024.0)
        )?;
        writeln!(
            f,
            "| camera noise | compression | on disk (KiB/s) | ratio | CPU (ms/MiB) | CPU at 1x (% of a core) | write p50 / p99 / max (µs) | chunk end + fsync p50 / max (ms) | read back (ms/MiB) |"
        )?;
        writeln!(f, "|---:|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.rows {
            writeln!(
                f,
                "| ±{} | {} | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} / {:.1} / {:.0} | {:.2} / {:.2} | {:.1} |",
                r.image_noise,
                r.compression,
                r.disk_bytes_per_s / 1024.0,
                r.ratio,
                r.cpu_ms_per_mib,
                r.cpu_percent,
                r.write_us.0,
                r.write_us.1,
                r.write_us.2,
                r.chunk_ms.0,
                r.chunk_ms.1,
                r.read_ms_per_mib
            )?;
        }
        Ok(())
    }
}
