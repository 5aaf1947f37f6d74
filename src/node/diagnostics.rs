//! What the node reports about itself on `/diagnostics`: the control loop's counters, the
//! inputs', the safety filter's and the recorder's, and those of other parts (the inbox), turned
//! into one status per period.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::control::safety::INTERVENTIONS;
use crate::control::stats::NodeStats;
use crate::msg::{DiagnosticStatus, KeyValue};
use crate::record::Tap;
use crate::stats::percentiles;

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
    pub interventions: [u64; 7],
    /// The running skill's predicted error over its held-out error in the period: mean, max
    /// and ticks above `uncertainty.mark` (None: no tick had one).
    pub uncertainty: Option<(f64, f64, u64)>,
}

/// Turns counters into periodic reports (keeps the previous values to report differences).
pub struct Reporter {
    stats: Arc<NodeStats>,
    recorder: Option<Arc<Tap>>,
    last_at: Instant,
    last_ticks: u64,
    last_misses: u64,
    last_interventions: [u64; 7],
    /// The doubt counters at the last report: ticks, summed thousandths, ticks above the mark.
    last_doubt: (u64, u64, u64),
    latency_from: usize,
    logged: [bool; 7],
}

impl Reporter {
    /// A reporter starting now; `recorder` adds the recorder's state.
    pub fn new(stats: Arc<NodeStats>, recorder: Option<Arc<Tap>>) -> Reporter {
        Reporter {
            recorder,
            last_at: Instant::now(),
            last_ticks: 0,
            last_misses: 0,
            last_interventions: [0; 7],
            last_doubt: (0, 0, 0),
            latency_from: 0,
            logged: [false; 7],
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
        let mut interventions = [0; 7];
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
        let d = &s.doubt;
        let doubt = (
            d.ticks.load(Ordering::Relaxed),
            d.sum_milli.load(Ordering::Relaxed),
            d.above_mark.load(Ordering::Relaxed),
        );
        let (n, sum, above) = (doubt.0 - self.last_doubt.0, doubt.1 - self.last_doubt.1, doubt.2 - self.last_doubt.2);
        let max = d.take_max();
        self.last_doubt = doubt;
        let report = Report {
            rate_hz: (ticks - self.last_ticks) as f64 / dt,
            latency_us: percentiles(lat),
            misses: misses - self.last_misses,
            interventions,
            uncertainty: (n > 0).then(|| (sum as f64 / 1e3 / n as f64, max, above)),
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
            for (k, kind) in input.kinds.iter().enumerate() {
                let n = input.rejected[k].load(Ordering::Relaxed);
                if n > 0 {
                    values.push(kv(&format!("input.{topic}.rejected.{kind}"), n));
                }
            }
        }
        if let Some((mean, max, above)) = r.uncertainty {
            values.push(kv("uncertainty.ratio_mean", format!("{mean:.2}")));
            values.push(kv("uncertainty.ratio_max", format!("{max:.2}")));
            values.push(kv("uncertainty.ticks_above_mark", above));
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
        let [stale, estop, non_finite, failure, _, _, unsure] = r.interventions;
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
        } else if unsure > 0 {
            (
                DiagnosticStatus::WARN,
                format!(
                    "the policy is unsure: {unsure} actions slowed (uncertainty.limit); demonstrate where it hesitates"
                ),
            )
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
