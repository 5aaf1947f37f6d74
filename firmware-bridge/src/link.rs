//! The host's end of the link, on a thread of its own: it opens the port (again and again, with
//! exponential backoff, while it cannot), configures the controller, sends the latest command at
//! the control rate and a heartbeat, hands every feedback to the caller, takes the link for lost
//! when no valid frame arrives in time, and counts everything.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::protocol::{
    Command, Config, Decoder, DeviceState, Fault, Feedback, Frame, FrameError, Heartbeat, MAX_ENCODED, Message, encode,
};
use crate::serial::{Port, ReadOutcome};

/// How the link runs.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The serial port.
    pub port: PathBuf,
    /// Its baud rate.
    pub baud: u32,
    /// Commands per second.
    pub rate_hz: f64,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// No valid frame from the controller for this long: the link is lost, and the port reopened.
    pub link_timeout: Duration,
    /// First wait before reopening a port that failed; doubled on every failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait before reopening.
    pub backoff_max: Duration,
    /// A command older than this is not sent (the controller's watchdog then takes it safe).
    pub max_command_age: Duration,
    /// Sent to the controller on every connect until it answers.
    pub config: Config,
}

/// What the link reports to its owner, on the link's thread.
#[derive(Debug)]
pub enum LinkEvent<'a> {
    /// The port is open.
    Connected,
    /// The link was lost (or the port could not be opened), and why.
    Down(&'a str),
    /// The controller applied this config.
    Configured(Config),
    /// Feedback arrived at this instant.
    Feedback(&'a Feedback, Instant),
    /// The controller reported a fault.
    Fault(Fault),
}

/// Device states as stored in [`LinkStats::device_state`].
pub const DEVICE_STATES: [&str; 4] = ["unknown", "waiting", "active", "safe"];

/// Round trips kept for percentiles.
const RTT_RING: usize = 1 << 14;

/// Counters of a link. Only atomics and short locks: the owner reads them at any time.
#[derive(Default)]
pub struct LinkStats {
    /// Whether the port is open and the controller answers.
    pub connected: AtomicBool,
    /// Times the port was opened.
    pub connects: AtomicU64,
    /// Times the port could not be opened.
    pub open_failures: AtomicU64,
    /// Times an open link was lost (hang-up, I/O error, or silence).
    pub link_losses: AtomicU64,
    /// Frames written.
    pub frames_sent: AtomicU64,
    /// Bytes written.
    pub bytes_sent: AtomicU64,
    /// Frames that did not fit the port's output buffer (not sent, counted).
    pub tx_dropped: AtomicU64,
    /// Valid frames received.
    pub frames_received: AtomicU64,
    /// Bytes received.
    pub bytes_received: AtomicU64,
    /// Frames dropped on receipt, by [`FrameError::index`].
    pub rx_errors: [AtomicU64; 7],
    /// Commands sent.
    pub commands_sent: AtomicU64,
    /// Control periods with no command sent because the latest one was too old (or none yet).
    pub commands_stale: AtomicU64,
    /// Control periods skipped because the link's thread woke too late for them.
    pub periods_missed: AtomicU64,
    /// Feedback frames received.
    pub feedback: AtomicU64,
    /// Faults the controller reported.
    pub faults: AtomicU64,
    /// The controller's state from its latest feedback, an index into [`DEVICE_STATES`].
    pub device_state: AtomicU8,
    /// Valid frames the controller has received (from its latest heartbeat).
    pub device_rx_frames: AtomicU64,
    /// Frames the controller has dropped as invalid (from its latest heartbeat).
    pub device_rx_errors: AtomicU64,
    /// Whether the controller acknowledged the config on this connection.
    pub configured: AtomicBool,
    rtt_us: Mutex<VecDeque<u32>>,
    last_down: Mutex<String>,
    last_fault: Mutex<Option<Fault>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LinkStats {
    /// Round trips (command sent to its echo in feedback received) since the last call, µs.
    pub fn take_rtt_us(&self) -> Vec<u32> {
        lock(&self.rtt_us).drain(..).collect()
    }

    /// Why the link last went down ("" if it never did).
    pub fn last_down(&self) -> String {
        lock(&self.last_down).clone()
    }

    /// The latest fault the controller reported.
    pub fn last_fault(&self) -> Option<Fault> {
        *lock(&self.last_fault)
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

struct Shared {
    command: Mutex<Option<(Command, Instant)>>,
    stop: AtomicBool,
    stats: LinkStats,
}

/// A running link; dropping it stops the thread.
pub struct Link {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Called on the link's thread for each event.
pub type EventSink = Box<dyn FnMut(LinkEvent<'_>) + Send>;

impl Link {
    /// Starts the link's thread; it keeps trying to open the port until stopped.
    pub fn start(opts: LinkOptions, events: EventSink) -> std::io::Result<Link> {
        let shared =
            Arc::new(Shared { command: Mutex::new(None), stop: AtomicBool::new(false), stats: LinkStats::default() });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("firmware-link".into()).spawn(move || run(&opts, &s, events))?;
        Ok(Link { shared, thread: Some(thread) })
    }

    /// The command to send from now on (until a newer one, or until it is too old).
    pub fn command(&self, c: Command) {
        *lock(&self.shared.command) = Some((c, Instant::now()));
    }

    /// The link's counters.
    pub fn stats(&self) -> &LinkStats {
        &self.shared.stats
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `d` in short steps; false if asked to stop meanwhile.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    !stop.load(Ordering::Relaxed)
}

fn down(s: &Shared, events: &mut EventSink, why: &str) {
    s.stats.connected.store(false, Ordering::Relaxed);
    s.stats.device_state.store(0, Ordering::Relaxed);
    *lock(&s.stats.last_down) = why.to_string();
    events(LinkEvent::Down(why));
}

fn run(opts: &LinkOptions, s: &Shared, mut events: EventSink) {
    let epoch = Instant::now();
    let mut backoff = opts.backoff_min;
    let mut seq = 0u16;
    while !s.stop.load(Ordering::Relaxed) {
        let port = match Port::open(&opts.port, opts.baud) {
            Ok(p) => p,
            Err(e) => {
                LinkStats::add(&s.stats.open_failures, 1);
                down(s, &mut events, &format!("{e} (retrying in {} ms)", backoff.as_millis()));
                if !nap(backoff, &s.stop) {
                    return;
                }
                backoff = (backoff * 2).min(opts.backoff_max);
                continue;
            }
        };
        LinkStats::add(&s.stats.connects, 1);
        events(LinkEvent::Connected);
        let why = serve(opts, s, port, epoch, &mut seq, &mut events);
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        LinkStats::add(&s.stats.link_losses, 1);
        down(s, &mut events, &why);
        backoff = opts.backoff_min;
        if !nap(backoff, &s.stop) {
            return;
        }
    }
}

/// Runs one connection until it is lost (returns why) or the link is stopped.
fn serve(
    opts: &LinkOptions,
    s: &Shared,
    mut port: Port,
    epoch: Instant,
    seq: &mut u16,
    events: &mut EventSink,
) -> String {
    let st = &s.stats;
    st.configured.store(false, Ordering::Relaxed);
    let period = Duration::from_secs_f64(1.0 / opts.rate_hz.max(1e-3));
    let now_us = |t: Instant| t.duration_since(epoch).as_micros() as u32;
    let mut decoder = Decoder::new();
    let mut rx = [0u8; 4096];
    let mut tx = [0u8; MAX_ENCODED];
    let mut last_rx = Instant::now();
    let mut next_tick = Instant::now();
    let mut next_heartbeat = Instant::now();
    let mut last_echo: Option<u16> = None;
    let mut send = |port: &mut Port, message: Message, seq: &mut u16| -> Result<(), String> {
        *seq = seq.wrapping_add(1);
        let n = encode(&Frame { seq: *seq, stamp_us: now_us(Instant::now()), message }, &mut tx)
            .map_err(|e| e.to_string())?;
        match port.write_frame(&tx[..n]) {
            Ok(true) => {
                LinkStats::add(&st.frames_sent, 1);
                LinkStats::add(&st.bytes_sent, n as u64);
                Ok(())
            }
            Ok(false) => {
                LinkStats::add(&st.tx_dropped, 1);
                Ok(())
            }
            Err(e) => Err(format!("writing to {}: {e}", opts.port.display())),
        }
    };
    while !s.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_heartbeat {
            next_heartbeat = now + opts.heartbeat;
            if let Err(e) = send(&mut port, Message::Heartbeat(Heartbeat::default()), seq) {
                return e;
            }
            if !st.configured.load(Ordering::Relaxed)
                && let Err(e) = send(&mut port, Message::Config(opts.config), seq)
            {
                return e;
            }
        }
        if now >= next_tick {
            // Late by whole periods: those are skipped (and counted), not sent in a burst.
            let late = (now - next_tick).as_nanos() / period.as_nanos().max(1);
            LinkStats::add(&st.periods_missed, late as u64);
            next_tick += period * (late as u32 + 1);
            let fresh = lock(&s.command)
                .as_ref()
                .filter(|(_, at)| at.elapsed() <= opts.max_command_age)
                .map(|(c, _)| c.clone());
            match fresh {
                Some(c) => {
                    if let Err(e) = send(&mut port, Message::Command(c), seq) {
                        return e;
                    }
                    LinkStats::add(&st.commands_sent, 1);
                }
                None => LinkStats::add(&st.commands_stale, 1),
            }
        }
        if last_rx.elapsed() > opts.link_timeout {
            return format!(
                "no valid frame from the controller on {} within {} ms",
                opts.port.display(),
                opts.link_timeout.as_millis()
            );
        }
        let wait = next_tick.min(next_heartbeat).saturating_duration_since(Instant::now());
        let n = match port.read(&mut rx, wait) {
            Ok(ReadOutcome::Bytes(n)) => n,
            Ok(ReadOutcome::Idle) => continue,
            Err(e) => return format!("{}: {e}", opts.port.display()),
        };
        let arrived = Instant::now();
        LinkStats::add(&st.bytes_received, n as u64);
        for r in decoder.feed(&rx[..n]) {
            let frame = match r {
                Ok(f) => f,
                Err(e) => {
                    LinkStats::add(&st.rx_errors[FrameError::index(e)], 1);
                    continue;
                }
            };
            LinkStats::add(&st.frames_received, 1);
            st.connected.store(true, Ordering::Relaxed);
            last_rx = arrived;
            match frame.message {
                Message::Feedback(fb) => {
                    LinkStats::add(&st.feedback, 1);
                    let state = match fb.state {
                        DeviceState::Waiting => 1,
                        DeviceState::Active => 2,
                        DeviceState::Safe => 3,
                    };
                    st.device_state.store(state, Ordering::Relaxed);
                    if fb.echo_seq != 0 && last_echo != Some(fb.echo_seq) {
                        last_echo = Some(fb.echo_seq);
                        let rtt = now_us(arrived).wrapping_sub(fb.echo_stamp_us);
                        let mut ring = lock(&st.rtt_us);
                        if ring.len() == RTT_RING {
                            ring.pop_front();
                        }
                        ring.push_back(rtt);
                    }
                    events(LinkEvent::Feedback(&fb, arrived));
                }
                Message::Heartbeat(h) => {
                    st.device_rx_frames.store(u64::from(h.rx_frames), Ordering::Relaxed);
                    st.device_rx_errors.store(u64::from(h.rx_errors), Ordering::Relaxed);
                }
                Message::Config(c) => {
                    if c == opts.config {
                        st.configured.store(true, Ordering::Relaxed);
                    }
                    events(LinkEvent::Configured(c));
                }
                Message::Fault(f) => {
                    LinkStats::add(&st.faults, 1);
                    *lock(&st.last_fault) = Some(f);
                    events(LinkEvent::Fault(f));
                }
                // Host-to-device messages coming back: a wiring loop-back, not a controller.
                Message::Command(_) => {}
            }
        }
    }
    String::new()
}
