//! `skillgraft bench control`: the node's tick latency, deadline misses and memory at several
//! control rates, with observations arriving over DDS on loopback from a second node.

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::rig::{Feeder, Rig};
use skillgraft::stats::percentiles;

/// One rate's figures.
#[derive(Debug, Serialize)]
pub struct ControlRow {
    /// Requested rate.
    pub rate_hz: f64,
    /// Ticks measured.
    pub ticks: u64,
    /// Ticks per second achieved.
    pub achieved_hz: f64,
    /// Tick latency (deadline to action handed over) p50, p99, max in µs.
    pub latency_us: Option<(f64, f64, f64)>,
    /// Of which compute (wake-up to action handed over) p50, p99, max in µs.
    pub compute_us: Option<(f64, f64, f64)>,
    /// Deadlines missed.
    pub misses: u64,
    /// Actions published.
    pub published: u64,
    /// Control-thread calls into the system allocator during the measurement.
    pub mallocs: u64,
}

/// The control benchmark.
#[derive(Debug, Serialize)]
pub struct ControlReport {
    /// Skill used.
    pub skill: String,
    /// Rows, by rate.
    pub rows: Vec<ControlRow>,
    /// Peak resident memory of the process (node and feeder), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Transport used.
    pub transport: String,
    /// SCHED_FIFO priority of the control thread (0: normal scheduling).
    pub rt_priority: i64,
}

/// Runs the skill's node at each rate for `seconds`, fed over DDS (localhost only) at the same
/// rate by a second node.
pub fn control(skill_dir: &Path, rates: &[f64], seconds: f64, rt_priority: i64) -> Result<ControlReport, String> {
    let mut rows = Vec::new();
    let mut backend = String::new();
    let mut label = String::new();
    for (i, &rate) in rates.iter().enumerate() {
        let params = vec![format!("rate_hz:={rate:?}"), "blend_s:=0.0".into(), format!("rt_priority:={rt_priority}")];
        let rig = Rig::start(skill_dir, &params, 150 + i as u16)?;
        label = rig.skill.clone();
        backend = rig.backend.clone();
        let base = rate.min(1000.0);
        let mut streams = rig.inputs.iter().map(|(e, topic)| rig.stream(topic, e, 1)).collect::<Result<Vec<_>, _>>()?;
        for (camera, topic) in &rig.cameras {
            streams.push(rig.camera_stream(camera, topic, 1)?);
        }
        let feeder = Feeder::start(streams, base);
        let node = &rig.node;
        std::thread::sleep(Duration::from_secs(2));
        let s = &node.stats;
        let snapshot = || {
            (
                s.ticks.load(Ordering::Relaxed),
                s.deadline_misses.load(Ordering::Relaxed),
                s.published.load(Ordering::Relaxed),
                s.control_malloc_calls.load(Ordering::Relaxed),
                Instant::now(),
            )
        };
        let (_, from) = s.latency.since(0);
        let (_, compute_from) = s.compute.since(0);
        let (t0, m0, p0, a0, at0) = snapshot();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let (t1, m1, p1, a1, at1) = snapshot();
        let (lat, _) = s.latency.since(from);
        let (compute, _) = s.compute.since(compute_from);
        drop(feeder);
        rows.push(ControlRow {
            rate_hz: rate,
            ticks: t1 - t0,
            achieved_hz: (t1 - t0) as f64 / at1.duration_since(at0).as_secs_f64(),
            latency_us: percentiles(lat),
            compute_us: percentiles(compute),
            misses: m1 - m0,
            published: p1 - p0,
            mallocs: a1 - a0,
        });
        rig.node.stop();
    }
    Ok(ControlReport { skill: label, rows, peak_rss_mib: super::peak_rss_mib(None), transport: backend, rt_priority })
}

impl fmt::Display for ControlReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sched =
            if self.rt_priority > 0 { format!("SCHED_FIFO {}", self.rt_priority) } else { "normal scheduling".into() };
        writeln!(f, "skill {} over {}; control thread: {sched}", self.skill, self.transport)?;
        writeln!(
            f,
            "| rate (Hz) | ticks | achieved (Hz) | latency p50 / p99 / max (µs) | compute p50 / p99 / max (µs) | deadline misses | actions published | control-thread mallocs |"
        )?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        let triple = |t: Option<(f64, f64, f64)>| match t {
            Some((a, b, c)) => format!("{a:.1} / {b:.1} / {c:.1}"),
            None => "n/a".into(),
        };
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                r.rate_hz,
                r.ticks,
                r.achieved_hz,
                triple(r.latency_us),
                triple(r.compute_us),
                r.misses,
                r.published,
                r.mallocs
            )?;
        }
        match self.peak_rss_mib {
            Some(m) => writeln!(f, "peak RSS of the process (node and feeder): {m:.1} MiB"),
            None => writeln!(f, "peak RSS: not available (no /proc/self/status)"),
        }
    }
}
