//! `skillgraft bench record`: sustained recording of 1 kHz joint states and 500 Hz commands, with
//! the control loop running: messages lost, the recorder thread's CPU share, and the control
//! tick's latency while recording against the same period without.

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::rig::{Feeder, Rig, Stream};
use skillgraft::msg::cdr;
use skillgraft::msg::{RosMessage, StringMsg};
use skillgraft::record::episode;
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
