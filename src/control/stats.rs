//! The control loop's counters: the control, publisher and subscription threads update them with
//! atomics (never a lock); the node reports them on `/diagnostics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::safety::Counters;
use crate::observe::InputStats;
use crate::stats::{Counted, LatencyRing};

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
    /// The running skill's predicted-error ratio, on the ticks it had one.
    pub doubt: Doubt,
    /// Other parts of the node that report on `/diagnostics` (the inbox).
    pub extra: std::sync::Mutex<Vec<Arc<dyn Counted>>>,
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
            doubt: Doubt::default(),
            extra: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// The predicted-error ratio of the ticks whose skill has a posterior, summed for the mean and
/// kept at its highest, with atomics the control thread updates without waiting.
#[derive(Debug, Default)]
pub struct Doubt {
    /// Ticks with a ratio.
    pub ticks: AtomicU64,
    /// Their ratios summed, in thousandths.
    pub sum_milli: AtomicU64,
    /// Ticks whose ratio was above `uncertainty.mark`.
    pub above_mark: AtomicU64,
    /// The highest ratio since the last report, as f64 bits (a ratio is never negative, and
    /// non-negative f64 bits order as the numbers do).
    max_bits: AtomicU64,
}

impl Doubt {
    /// Counts one tick's ratio (NaN: the skill has no posterior, nothing is counted).
    pub fn record(&self, ratio: f64, mark: f64) {
        if !(ratio >= 0.0 && ratio.is_finite()) {
            return;
        }
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.sum_milli.fetch_add((ratio * 1e3).round() as u64, Ordering::Relaxed);
        if ratio > mark {
            self.above_mark.fetch_add(1, Ordering::Relaxed);
        }
        self.max_bits.fetch_max(ratio.to_bits(), Ordering::Relaxed);
    }

    /// The highest ratio since the last call.
    pub fn take_max(&self) -> f64 {
        f64::from_bits(self.max_bits.swap(0, Ordering::Relaxed))
    }
}
