//! What the node reports about itself: counters the control, publisher and subscription threads
//! update with atomics (never a lock), a ring of tick latencies, and the `/diagnostics` status
//! built from them once per period.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::observer::{EXTRACT_KINDS, InputStats};
use super::safety::{Counters, INTERVENTIONS};
use crate::record::Tap;
use crate::ros::msg::{DiagnosticStatus, KeyValue};

/// Tick latencies (ns from the deadline to the action handed to the publisher), newest last.
pub struct LatencyRing {
    samples: Box<[AtomicU32]>,
    written: AtomicUsize,
}

impl LatencyRing {
    /// A ring of `n` samples.
    pub fn new(n: usize) -> LatencyRing {
        LatencyRing { samples: (0..n).map(|_| AtomicU32::new(0)).collect(), written: AtomicUsize::new(0) }
    }

    /// Records one latency. Allocates nothing.
    pub fn record(&self, d: Duration) {
        let i = self.written.load(Ordering::Relaxed);
        self.samples[i % self.samples.len()].store(d.as_nanos().min(u32::MAX as u128) as u32, Ordering::Relaxed);
        self.written.store(i + 1, Ordering::Release);
    }

    /// Samples written since `from` (at most the ring's size), and the new position.
    pub fn since(&self, from: usize) -> (Vec<u32>, usize) {
        let end = self.written.load(Ordering::Acquire);
        let start = from.max(end.saturating_sub(self.samples.len()));
        ((start..end).map(|i| self.samples[i % self.samples.len()].load(Ordering::Relaxed)).collect(), end)
    }
}

/// Median, 99th percentile and maximum, in µs.
pub fn percentiles(mut ns: Vec<u32>) -> Option<(f64, f64, f64)> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Some((at(0.5), at(0.99), *ns.last().expect("not empty") as f64 / 1000.0))
}

/// Counters of a running node.
pub struct NodeStats {
    /// Node start.
    pub epoch: Instant,
    /// Control ticks run.
    pub ticks: AtomicU64,
    /// Deadlines missed (ticks skipped because a tick overran).
    pub deadline_misses: AtomicU64,
    /// Tick latencies: from the deadline to the action handed to the publisher.
    pub latency: LatencyRing,
    /// Tick compute times: from waking up to the action handed to the publisher.
    pub compute: LatencyRing,
    /// Safety interventions by kind.
    pub interventions: Arc<Counters>,
    /// Per observation input: topic and counters.
    pub inputs: Vec<(String, Arc<InputStats>)>,
    /// Actions published.
    pub published: AtomicU64,
    /// Actions that could not be published, or were replaced by a newer one first.
    pub dropped: AtomicU64,
    /// E-stop messages that did not decode.
    pub estop_rejected: AtomicU64,
    /// Skill swaps applied.
    pub swaps: AtomicU64,
    /// System-allocator calls the control thread has made (see `alloc::thread_system_calls`).
    pub control_malloc_calls: AtomicU64,
    /// Ticks the policy was silent because a demonstration was being recorded.
    pub muted_ticks: AtomicU64,
    /// Other parts of the node that report on `/diagnostics` (the inbox).
    pub extra: std::sync::Mutex<Vec<Arc<dyn Counted>>>,
}

/// A part of the node with counters of its own for `/diagnostics`.
pub trait Counted: Send + Sync {
    /// Its key-value pairs, now.
    fn values(&self) -> Vec<(String, String)>;
}

impl NodeStats {
    /// Fresh counters for these inputs.
    pub fn new(inputs: Vec<(String, Arc<InputStats>)>, interventions: Arc<Counters>) -> NodeStats {
        NodeStats {
            epoch: Instant::now(),
            ticks: AtomicU64::new(0),
            deadline_misses: AtomicU64::new(0),
            latency: LatencyRing::new(1 << 14),
            compute: LatencyRing::new(1 << 14),
            interventions,
            inputs,
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            estop_rejected: AtomicU64::new(0),
            swaps: AtomicU64::new(0),
            control_malloc_calls: AtomicU64::new(0),
            muted_ticks: AtomicU64::new(0),
            extra: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// One period's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Ticks per second over the period.
    pub rate_hz: f64,
    /// Latency p50, p99, max in µs (None without ticks).
    pub latency_us: Option<(f64, f64, f64)>,
    /// Deadline misses in the period.
    pub misses: u64,
    /// Interventions by kind in the period.
    pub interventions: [u64; 6],
}

/// Turns counters into periodic reports (keeps the previous values to report differences).
pub struct Reporter {
    stats: Arc<NodeStats>,
    recorder: Option<Arc<Tap>>,
    last_at: Instant,
    last_ticks: u64,
    last_misses: u64,
    last_interventions: [u64; 6],
    latency_from: usize,
    logged: [bool; 6],
}

impl Reporter {
    /// A reporter starting now; `recorder` adds the recorder's state.
    pub fn new(stats: Arc<NodeStats>, recorder: Option<Arc<Tap>>) -> Reporter {
        Reporter {
            recorder,
            last_at: Instant::now(),
            last_ticks: 0,
            last_misses: 0,
            last_interventions: [0; 6],
            latency_from: 0,
            logged: [false; 6],
            stats,
        }
    }

    /// The report for the period since the last call.
    pub fn report(&mut self) -> Report {
        let now = Instant::now();
        let s = &self.stats;
        let ticks = s.ticks.load(Ordering::Relaxed);
        let misses = s.deadline_misses.load(Ordering::Relaxed);
        let dt = now.duration_since(self.last_at).as_secs_f64().max(1e-9);
        let (lat, next) = s.latency.since(self.latency_from);
        let mut interventions = [0; 6];
        for (k, slot) in interventions.iter_mut().enumerate() {
            let total = s.interventions.0[k].load(Ordering::Relaxed);
            *slot = total - self.last_interventions[k];
            self.last_interventions[k] = total;
            if *slot > 0 && !self.logged[k] {
                self.logged[k] = true;
                tracing::warn!(
                    "safety filter: {} (first occurrence; counted on /diagnostics from now on)",
                    INTERVENTIONS[k]
                );
            }
        }
        let report = Report {
            rate_hz: (ticks - self.last_ticks) as f64 / dt,
            latency_us: percentiles(lat),
            misses: misses - self.last_misses,
            interventions,
        };
        self.last_at = now;
        self.last_ticks = ticks;
        self.last_misses = misses;
        self.latency_from = next;
        report
    }

    /// The `/diagnostics` status of this period.
    pub fn status(&mut self, name: &str, hardware_id: &str, skill: &str) -> (DiagnosticStatus, Report) {
        let r = self.report();
        let s = &self.stats;
        let now_ns = s.epoch.elapsed().as_nanos() as u64;
        let mut values = vec![
            kv("skill", skill),
            kv("rate_hz", format!("{:.1}", r.rate_hz)),
            kv("deadline_misses", r.misses),
            kv("deadline_misses_total", s.deadline_misses.load(Ordering::Relaxed)),
        ];
        if let Some((p50, p99, max)) = r.latency_us {
            values.push(kv("tick_latency_p50_us", format!("{p50:.1}")));
            values.push(kv("tick_latency_p99_us", format!("{p99:.1}")));
            values.push(kv("tick_latency_max_us", format!("{max:.1}")));
        }
        for (k, name) in INTERVENTIONS.iter().enumerate() {
            values.push(kv(&format!("interventions.{name}"), s.interventions.0[k].load(Ordering::Relaxed)));
        }
        for (topic, input) in &s.inputs {
            let last = input.last_ns.load(Ordering::Relaxed);
            let age = if last == 0 {
                "never".to_string()
            } else {
                format!("{:.1}", (now_ns.saturating_sub(last)) as f64 / 1e6)
            };
            values.push(kv(&format!("input.{topic}.age_ms"), age));
            values.push(kv(&format!("input.{topic}.accepted"), input.accepted.load(Ordering::Relaxed)));
            for (k, kind) in EXTRACT_KINDS.iter().enumerate() {
                let n = input.rejected[k].load(Ordering::Relaxed);
                if n > 0 {
                    values.push(kv(&format!("input.{topic}.rejected.{kind}"), n));
                }
            }
        }
        values.push(kv("actions_published", s.published.load(Ordering::Relaxed)));
        values.push(kv("actions_dropped", s.dropped.load(Ordering::Relaxed)));
        values.push(kv("estop_rejected", s.estop_rejected.load(Ordering::Relaxed)));
        values.push(kv("skill_swaps", s.swaps.load(Ordering::Relaxed)));
        values.push(kv("muted_ticks", s.muted_ticks.load(Ordering::Relaxed)));
        let mut recorder_failed = None;
        if let Some(tap) = &self.recorder
            && let Ok(st) = tap.status.lock()
        {
            values.push(kv("recorder.state", &st.state));
            values.push(kv("recorder.episode", st.episode.clone().unwrap_or_default()));
            values.push(kv("recorder.dropped_total", tap.dropped.load(Ordering::Relaxed)));
            values.push(kv("recorder.episodes_written", st.episodes_written));
            if st.state == "failed" {
                recorder_failed = st.error.clone();
            }
        }
        for source in s.extra.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            values.extend(source.values().into_iter().map(|(k, v)| KeyValue { key: k, value: v }));
        }
        let mallocs = s.control_malloc_calls.load(Ordering::Relaxed);
        values.push(kv(
            "control_thread_malloc_calls",
            if crate::alloc::installed() { mallocs.to_string() } else { "n/a".into() },
        ));
        let [stale, estop, non_finite, failure, ..] = r.interventions;
        let (level, message) = if let Some(e) = recorder_failed {
            (DiagnosticStatus::ERROR, format!("episode recording failed: {e}"))
        } else if failure > 0 {
            (DiagnosticStatus::ERROR, format!("inference failed {failure} times; publishing the safe action"))
        } else if estop > 0 {
            (DiagnosticStatus::WARN, "e-stop engaged; publishing the safe action".to_string())
        } else if stale > 0 {
            (DiagnosticStatus::WARN, "stale inputs; publishing the safe action".to_string())
        } else if non_finite > 0 {
            (DiagnosticStatus::WARN, format!("{non_finite} non-finite actions replaced by the safe action"))
        } else if r.misses > 0 {
            (DiagnosticStatus::WARN, format!("{} control deadlines missed", r.misses))
        } else {
            (DiagnosticStatus::OK, format!("running {skill}"))
        };
        (
            DiagnosticStatus {
                level,
                name: format!("skillgraft: {name}"),
                message,
                hardware_id: hardware_id.into(),
                values,
            },
            r,
        )
    }
}

fn kv(key: &str, value: impl ToString) -> KeyValue {
    KeyValue { key: key.into(), value: value.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_samples() {
        let r = LatencyRing::new(4);
        for i in 1..=6u64 {
            r.record(Duration::from_micros(i));
        }
        let (v, next) = r.since(0);
        assert_eq!(v, vec![3000, 4000, 5000, 6000]);
        assert_eq!(next, 6);
        assert_eq!(r.since(5).0, vec![6000]);
        assert_eq!(percentiles(vec![1000, 2000, 3000, 100_000]), Some((3.0, 100.0, 100.0)));
    }
}
