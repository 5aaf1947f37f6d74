//! The control loop's tick latency while the node adapts: the node runs a skill at a fixed rate
//! fed over DDS on this host, records a few demonstrations through `~/demo/control`, and is then
//! measured for the same time without and with its adaptation worker busy (requests on
//! `~/adapt`, one after the other, for the whole phase).

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::rig::{Feeder, Rig, until};
use skillgraft::msg::cdr;
use skillgraft::msg::{RosMessage, StringMsg};
use skillgraft::ros::transport::{Qos, RawPublisher, Transport};
use skillgraft::stats::percentiles;

/// One phase's figures.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// `idle` or `adapting`.
    pub name: String,
    /// Ticks.
    pub ticks: u64,
    /// Tick latency (deadline to action handed over) p50/p99/max, µs.
    pub latency_us: Option<(f64, f64, f64)>,
    /// Of which compute (wake-up to action handed over) p50/p99/max, µs.
    pub compute_us: Option<(f64, f64, f64)>,
    /// Deadline misses.
    pub misses: u64,
    /// Adaptations finished within the phase.
    pub adaptations: u64,
    /// Share of the phase the adaptation worker was busy, percent.
    pub busy_percent: f64,
}

/// The latency part of the adaptation benchmark.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    /// `name version` of the skill.
    pub skill: String,
    /// Control rate.
    pub rate_hz: f64,
    /// What `~/adapt` was sent.
    pub request: String,
    /// Demonstration episodes adapted on.
    pub episodes: usize,
    /// The two phases.
    pub phases: Vec<Phase>,
}

fn err(e: impl fmt::Display) -> String {
    e.to_string()
}

fn say(p: &mut Box<dyn RawPublisher>, text: &str) -> Result<(), String> {
    p.publish(&cdr::encode(&StringMsg { data: text.into() }).expect("a string encodes")).map_err(err)
}

/// Runs the node on `skill_dir` at `rate_hz`, records `episodes` demonstrations of
/// `record_s` seconds into `dir`, then measures `seconds` idle and `seconds` adapting with
/// `request`.
pub fn latency(
    skill_dir: &Path,
    dir: &Path,
    rate_hz: f64,
    seconds: f64,
    request: &str,
    episodes: usize,
    record_s: f64,
) -> Result<LatencyReport, String> {
    let params = vec![
        format!("rate_hz:={rate_hz:?}"),
        "blend_s:=0.0".into(),
        format!("episodes_dir:={}", dir.join("episodes").display()),
        format!("adapted_dir:={}", dir.join("adapted").display()),
    ];
    let rig = Rig::start(skill_dir, &params, 171)?;
    let mut streams = Vec::new();
    for (e, topic) in &rig.inputs {
        streams.push(rig.stream(topic, e, 1)?);
    }
    streams.push(rig.stream(&rig.cfg.demo_action_topic, &rig.action, 2)?);
    let feeder = Feeder::start(streams, rate_hz.min(1000.0));
    let mut control = rig.feeder.publisher(&rig.cfg.demo_control_topic, StringMsg::TYPE, Qos::RELIABLE).map_err(err)?;
    let mut adapt = rig.feeder.publisher(&rig.cfg.adapt_topic, StringMsg::TYPE, Qos::RELIABLE).map_err(err)?;
    let node = &rig.node;
    std::thread::sleep(Duration::from_secs(2));
    for k in 0..episodes {
        let written = node.recorder_status().map_or(0, |s| s.episodes_written);
        wait_for(&mut control, &format!("start bench-{k}"), || {
            node.recorder_status().is_some_and(|s| s.state != "idle")
        })?;
        std::thread::sleep(Duration::from_secs_f64(record_s));
        wait_for(&mut control, "stop", || node.recorder_status().is_some_and(|s| s.episodes_written > written))?;
    }
    // Lets the recorder finish its last file before anything is measured.
    std::thread::sleep(Duration::from_secs(2));
    let mut phases = Vec::new();
    for adapting in [false, true] {
        let s = &node.stats;
        let (_, from) = s.latency.since(0);
        let (_, compute_from) = s.compute.since(0);
        let (t0, m0) = (s.ticks.load(Ordering::Relaxed), s.deadline_misses.load(Ordering::Relaxed));
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let (mut adaptations, mut busy) = (0u64, 0.0f64);
        if adapting {
            while Instant::now() < end {
                let before = serde_json::to_string(&node.adapt_status()).map_err(err)?;
                say(&mut adapt, request)?;
                let sent = Instant::now();
                let picked = until(Duration::from_secs(5), || {
                    serde_json::to_string(&node.adapt_status()).is_ok_and(|now| now != before)
                });
                if !picked {
                    return Err("the node did not take up the adaptation request within 5 s".into());
                }
                until(Duration::from_secs(600), || node.adapt_status().is_none_or(|st| st.state != "adapting"));
                let status = node.adapt_status().ok_or("the node has no adaptation status")?;
                if status.state == "failed" {
                    return Err(format!("adaptation failed: {}", status.error.unwrap_or_default()));
                }
                adaptations += 1;
                busy += sent.elapsed().as_secs_f64();
            }
        } else {
            std::thread::sleep(end - start);
        }
        let wall = start.elapsed().as_secs_f64();
        let (lat, _) = s.latency.since(from);
        let (compute, _) = s.compute.since(compute_from);
        phases.push(Phase {
            name: if adapting { "adapting" } else { "idle" }.into(),
            ticks: s.ticks.load(Ordering::Relaxed) - t0,
            latency_us: percentiles(lat),
            compute_us: percentiles(compute),
            misses: s.deadline_misses.load(Ordering::Relaxed) - m0,
            adaptations,
            busy_percent: busy / wall * 100.0,
        });
    }
    drop(feeder);
    let report = LatencyReport { skill: rig.skill.clone(), rate_hz, request: request.into(), episodes, phases };
    rig.node.stop();
    Ok(report)
}

/// Says `text` on `p` every 300 ms until `done` (reliable topics can lose the first message to
/// discovery), for at most 20 s.
fn wait_for(p: &mut Box<dyn RawPublisher>, text: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        say(p, text)?;
        if !until(Duration::from_millis(300), &mut done) && Instant::now() > deadline {
            return Err(format!("the recorder did not answer {text:?} within 20 s"));
        }
    }
    Ok(())
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tick latency of {} at {} Hz while `{}` runs on {} recorded episodes, one request after another:",
            self.skill, self.rate_hz, self.request, self.episodes
        )?;
        writeln!(
            f,
            "| phase | ticks | tick latency p50 / p99 / max (µs) | of which compute p50 / p99 / max (µs) | deadline misses | adaptations | worker busy |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|")?;
        let triple = |t: Option<(f64, f64, f64)>| {
            t.map(|(a, b, c)| format!("{a:.1} / {b:.1} / {c:.1}")).unwrap_or_else(|| "n/a".into())
        };
        for p in &self.phases {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {} | {:.0} % |",
                p.name,
                p.ticks,
                triple(p.latency_us),
                triple(p.compute_us),
                p.misses,
                p.adaptations,
                p.busy_percent
            )?;
        }
        Ok(())
    }
}
