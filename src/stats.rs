//! Counting for diagnostics, below every part that counts: a lock-free ring of latencies, their
//! percentiles, and the trait a part with counters of its own implements so the node reports
//! them on `/diagnostics`.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

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

/// A part of the node with counters of its own for `/diagnostics`.
pub trait Counted: Send + Sync {
    /// Its key-value pairs, now.
    fn values(&self) -> Vec<(String, String)>;
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
