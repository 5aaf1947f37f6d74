//! The control loop and the safety filter: a control thread runs the skill at a fixed rate behind
//! the filter and hands each action to a publisher thread. The control thread allocates nothing,
//! blocks on nothing and only ever try-locks (a skill swap, new limits); everything it shares goes
//! through latest-value cells and atomics. The node wires it to the rest.

pub mod actuator;
pub mod safety;
pub mod skills;
pub mod stats;
pub mod uncertainty;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime};

use triple_buffer::{Input, Output};

use crate::msg::cdr;
use crate::msg::{Float64MultiArray, MultiArrayDimension, MultiArrayLayout};
use crate::observe::Assembler;
use crate::record::Tap;
use crate::ros::transport::{RawPublisher, Transport};
use crate::skill::manifest::MAX_IMAGES;
use actuator::ActionEncoder;
use safety::{Intervention, SafetyConfig, SafetyFilter};
use skills::{ActiveSkill, SwapSlot};
use stats::NodeStats;
use uncertainty::Marker;

/// New limits on their way to the control thread, and the ones they replaced on their way
/// back: the tick swaps them and frees nothing (a free is a call into the system allocator).
#[derive(Default)]
pub struct SafetySlot {
    /// Taken by the control thread at its next tick.
    pub pending: Option<SafetyConfig>,
    /// Left by the control thread; dropped by the next set.
    pub retired: Option<SafetyConfig>,
}

/// What a change at run time reaches in the running node.
pub struct Tunables {
    /// The safety filter's limits on their way in.
    pub safety: Mutex<SafetySlot>,
    /// The e-stop topic's timeout, ns (0: off).
    pub estop_timeout_ns: AtomicU64,
    /// The /diagnostics period, ns.
    pub diagnostics_period_ns: AtomicU64,
    /// `uncertainty.mark`, as f64 bits.
    pub uncertainty_mark_bits: AtomicU64,
}

impl Tunables {
    /// The settings at start.
    pub fn new(estop_timeout: Option<Duration>, diagnostics_period: Duration, uncertainty_mark: f64) -> Tunables {
        Tunables {
            safety: Mutex::new(SafetySlot::default()),
            estop_timeout_ns: AtomicU64::new(estop_timeout.map_or(0, |t| t.as_nanos() as u64)),
            diagnostics_period_ns: AtomicU64::new(diagnostics_period.as_nanos() as u64),
            uncertainty_mark_bits: AtomicU64::new(uncertainty_mark.to_bits()),
        }
    }

    /// The predicted-error ratio above which a stretch is marked.
    pub fn uncertainty_mark(&self) -> f64 {
        f64::from_bits(self.uncertainty_mark_bits.load(Ordering::Relaxed))
    }

    /// The e-stop timeout now.
    pub fn estop_timeout(&self) -> Option<Duration> {
        match self.estop_timeout_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The /diagnostics period now.
    pub fn diagnostics_period(&self) -> Duration {
        Duration::from_nanos(self.diagnostics_period_ns.load(Ordering::Relaxed).max(1))
    }
}

/// One control tick's output, handed to the publisher thread.
#[derive(Clone)]
pub struct ActionFrame {
    /// The action, in the robot's units.
    pub values: Vec<f64>,
    /// Its tick's number: the publisher counts the ones it never saw.
    pub seq: u64,
    /// The policy's predicted error over its held-out error (NaN: no posterior, or not the
    /// policy's action).
    pub ratio: f64,
    /// The predicted standard deviation of each action element, robot units (when `ratio` is).
    pub std: Vec<f64>,
    /// The raw observation the action came from (when `ratio` is).
    pub observation: Vec<f32>,
}

impl ActionFrame {
    /// An empty frame with room for the action and the observation, so no tick allocates.
    pub fn new(actions: usize, observation: usize) -> ActionFrame {
        ActionFrame {
            values: vec![0.0; actions],
            seq: 0,
            ratio: f64::NAN,
            std: vec![0.0; actions],
            observation: vec![0.0; observation],
        }
    }
}

/// The e-stop as the subscription last heard it, read by the control thread.
pub struct EStop {
    /// The last value heard.
    pub engaged: AtomicBool,
    /// Whether any message has been heard.
    pub heard: AtomicBool,
    /// When the last message arrived, ns after the node's epoch.
    pub last_ns: AtomicU64,
    /// How long after start the node waits for the topic before it drives unheard.
    pub wait: Duration,
    /// The e-stop timeout, which may change while the node runs.
    pub tunables: Arc<Tunables>,
}

impl EStop {
    /// Whether the safe action must go out at `now`.
    pub fn engaged(&self, epoch: Instant, now: Instant) -> bool {
        if self.engaged.load(Ordering::Relaxed) {
            return true;
        }
        let heard = self.heard.load(Ordering::Acquire);
        let since_start = now.saturating_duration_since(epoch);
        if !heard && since_start < self.wait {
            return true;
        }
        match self.tunables.estop_timeout() {
            None => false,
            Some(t) => {
                !heard || since_start.as_nanos() as u64 > self.last_ns.load(Ordering::Relaxed) + t.as_nanos() as u64
            }
        }
    }
}

/// Tunes the calling (control) thread: a 1 ns timer slack so sleeps end at the deadline rather
/// than up to 50 µs later, and SCHED_FIFO at `priority` when asked (needs CAP_SYS_NICE or an
/// rtprio limit; a refusal is logged and the thread keeps normal scheduling).
pub fn realtime(priority: i32) {
    // SAFETY: plain syscalls on the calling thread with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        if priority > 0 {
            let param = libc::sched_param { sched_priority: priority };
            if libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) != 0 {
                tracing::warn!(
                    "cannot run the control thread with SCHED_FIFO priority {priority} (needs CAP_SYS_NICE or `ulimit -r`); it keeps normal scheduling"
                );
            }
        }
    }
}

/// The control loop: what the control thread owns.
pub(crate) struct ControlLoop {
    /// The skill that runs.
    pub(crate) active: Box<ActiveSkill>,
    /// The observation inputs, read without waiting.
    pub(crate) assembler: Assembler,
    /// The safety filter.
    pub(crate) filter: SafetyFilter,
    /// The e-stop.
    pub(crate) estop: Arc<EStop>,
    /// The recorder's tap: a demonstration silences the policy.
    pub(crate) tap: Arc<Tap>,
    /// Where each tick's action goes.
    pub(crate) action: Input<ActionFrame>,
    /// The publisher thread, woken for each action.
    pub(crate) publisher: Thread,
    /// The node's counters.
    pub(crate) stats: Arc<NodeStats>,
    /// A skill to swap in, taken between ticks.
    pub(crate) swap: Arc<Mutex<SwapSlot>>,
    /// Settings that may change while the node runs.
    pub(crate) tunables: Arc<Tunables>,
    /// The node's start.
    pub(crate) epoch: Instant,
    /// The last tick's number.
    pub(crate) seq: u64,
}

impl ControlLoop {
    /// Ticks at absolute deadlines `start + k·period`, so the rate never drifts; a tick that
    /// overruns skips the deadlines it missed (counted) instead of bursting to catch up.
    pub(crate) fn run(&mut self, period: Duration, stop: &AtomicBool) {
        let width = self.assembler.width();
        let mut input = vec![0.0f32; width];
        let mut raw = vec![0.0f32; self.active.norm.action_width()];
        let mut proposal = vec![0.0f64; raw.len()];
        let start = Instant::now();
        let mut k: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            let deadline = start + period * k;
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            let woke = Instant::now();
            crate::alloc::in_tick(|| self.tick(&mut input, &mut raw, &mut proposal));
            let done = Instant::now();
            self.stats.latency.record(done.saturating_duration_since(deadline));
            self.stats.compute.record(done.saturating_duration_since(woke));
            self.stats.ticks.fetch_add(1, Ordering::Relaxed);
            self.stats.control_malloc_calls.store(crate::alloc::thread_system_calls(), Ordering::Relaxed);
            let behind = (done.saturating_duration_since(start).as_nanos() / period.as_nanos().max(1)) as u32;
            if behind > k {
                self.stats.deadline_misses.fetch_add((behind - k) as u64, Ordering::Relaxed);
                k = behind;
            }
        }
    }

    fn tick(&mut self, input: &mut [f32], raw: &mut [f32], proposal: &mut [f64]) {
        if let Ok(mut slot) = self.swap.try_lock()
            && let Some(next) = slot.pending.take()
        {
            let keep = slot.keep_replaced;
            slot.retired = Some((std::mem::replace(&mut self.active, next), keep));
            self.filter.restart_blend();
            self.stats.swaps.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut slot) = self.tunables.safety.try_lock()
            && let Some(limits) = slot.pending.take()
        {
            slot.retired = Some(self.filter.reconfigure(limits));
        }
        let now = Instant::now();
        let frame = self.action.input_buffer_mut();
        frame.ratio = f64::NAN;
        let publish = if self.tap.muted() {
            // A demonstration: the person drives the robot, the policy stays silent.
            let _ = self.assembler.tick(now);
            self.filter.mute();
            self.stats.muted_ticks.fetch_add(1, Ordering::Relaxed);
            false
        } else if self.estop.engaged(self.epoch, now) {
            self.filter.safe(Intervention::EStop, &mut frame.values)
        } else {
            match self.assembler.tick(now) {
                Err(_) => self.filter.safe(Intervention::Stale, &mut frame.values),
                Ok(obs) => {
                    self.active.norm.input(obs, input);
                    if self.active.posterior.is_some() {
                        frame.observation.copy_from_slice(obs);
                    }
                    // The feeds in the manifest's order, on the stack: the tick allocates nothing.
                    let mut feeds: [&[f32]; 1 + MAX_IMAGES] = [&[]; 1 + MAX_IMAGES];
                    feeds[0] = input;
                    let n = 1 + self.assembler.image_count();
                    for (i, feed) in feeds[1..n].iter_mut().enumerate() {
                        *feed = self.assembler.image(i);
                    }
                    match self.active.plan.step(&feeds[..n], raw) {
                        Err(_) => self.filter.safe(Intervention::Failure, &mut frame.values),
                        Ok(()) => {
                            self.active.norm.action_to_robot(raw, proposal);
                            if let Some(p) = &mut self.active.posterior {
                                frame.ratio = p.ratio(self.active.plan.probe());
                                p.std(frame.ratio, &mut frame.std);
                                self.stats.doubt.record(frame.ratio, self.tunables.uncertainty_mark());
                                self.filter.temper(frame.ratio, proposal);
                            }
                            self.filter.filter(proposal, &mut frame.values)
                        }
                    }
                }
            }
        };
        if publish {
            self.seq += 1;
            frame.seq = self.seq;
            self.action.publish();
            self.publisher.unpark();
        }
    }
}

/// Where the policy's uncertainty goes from the publisher thread: each action's on
/// `~/uncertainty`, and the stretches above `uncertainty.mark` to the recorder.
pub struct DoubtOut {
    /// The `~/uncertainty` publisher (std_msgs/Float64MultiArray).
    pub publisher: Box<dyn RawPublisher>,
    /// The recorder, which files the stretches.
    pub tap: Arc<Tap>,
    /// Holds the mark.
    pub tunables: Arc<Tunables>,
    /// Finds the stretches.
    pub marker: Marker,
    msg: Float64MultiArray,
    buf: Vec<u8>,
    logged: bool,
}

impl DoubtOut {
    /// Uncertainty of an action of `actions` elements, published with `publisher`.
    pub fn new(publisher: Box<dyn RawPublisher>, tap: Arc<Tap>, tunables: Arc<Tunables>, actions: usize) -> DoubtOut {
        let size = actions as u32 + 1;
        let layout = MultiArrayLayout {
            dim: vec![MultiArrayDimension { label: "ratio_then_std".into(), size, stride: size }],
            data_offset: 0,
        };
        DoubtOut {
            publisher,
            tap,
            tunables,
            marker: Marker::default(),
            msg: Float64MultiArray { layout, data: Vec::with_capacity(actions + 1) },
            buf: Vec::new(),
            logged: false,
        }
    }

    fn send(&mut self, frame: &ActionFrame) {
        if frame.ratio.is_finite() {
            self.msg.data.clear();
            self.msg.data.push(frame.ratio);
            self.msg.data.extend_from_slice(&frame.std);
            self.buf.clear();
            let sent = cdr::encode_into(&self.msg, &mut self.buf)
                .map_err(|e| e.to_string())
                .and_then(|()| self.publisher.publish(&self.buf).map_err(|e| e.to_string()));
            if let Err(e) = sent
                && !std::mem::replace(&mut self.logged, true)
            {
                tracing::warn!("cannot publish the uncertainty: {e}");
            }
        }
        let mark = self.tunables.uncertainty_mark();
        if let Some(stretch) = self.marker.tick(frame.ratio, mark, SystemTime::now(), &frame.observation) {
            self.tap.mark(stretch);
        }
    }
}

/// The publisher thread: encodes each new action and publishes it, with its uncertainty when
/// the skill has one; counts actions it never saw or could not send.
pub fn publish_loop(
    mut actions: Output<ActionFrame>,
    mut encoder: ActionEncoder,
    mut publisher: Box<dyn RawPublisher>,
    mut doubt: DoubtOut,
    transport: &dyn Transport,
    stats: &NodeStats,
    stop: &AtomicBool,
) {
    let mut buf = Vec::new();
    let mut last_seq = 0;
    let mut logged = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(Duration::from_millis(100));
        if !actions.update() {
            continue;
        }
        let frame = actions.read();
        if frame.seq == last_seq {
            continue;
        }
        stats.dropped.fetch_add(frame.seq.saturating_sub(last_seq + 1), Ordering::Relaxed);
        last_seq = frame.seq;
        let sent = encoder
            .encode(&frame.values, transport.now(), &mut buf)
            .map_err(|e| e.to_string())
            .and_then(|()| publisher.publish(&buf).map_err(|e| e.to_string()));
        match sent {
            Ok(()) => stats.published.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                if !logged {
                    logged = true;
                    tracing::warn!("cannot publish the action: {e}; further failures are counted as actions_dropped");
                }
                stats.dropped.fetch_add(1, Ordering::Relaxed)
            }
        };
        doubt.send(frame);
    }
    if let Some(stretch) = doubt.marker.finish() {
        doubt.tap.mark(stretch);
    }
}
