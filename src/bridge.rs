//! `skillgraft bridge`: the node's action topic to a motor controller over the firmware bridge
//! (the `firmware-bridge` crate's framed serial protocol), the controller's feedback back as
//! `sensor_msgs/JointState`, and the link's statistics on `/diagnostics`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use firmware_bridge::link::{DEVICE_STATES, Link, LinkEvent, LinkOptions, LinkStats};
use firmware_bridge::protocol::{
    Command, Config, FaultCode, Frame, FrameError, JointTarget, MAX_ENCODED, MAX_JOINTS, Message, Mode, encode,
};

use crate::msg::cdr;
use crate::msg::{DiagnosticArray, DiagnosticStatus, Float64MultiArray, Header, JointState, KeyValue, RosMessage};
use crate::ros::transport::{Qos, Transport, TransportError};

/// What the bridge connects, and how.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The controller's serial port.
    pub port: PathBuf,
    /// Its baud rate.
    pub baud: u32,
    /// Commands per second.
    pub rate_hz: f64,
    /// Joint names, in the controller's order; the action's values are in the same order.
    pub joints: Vec<String>,
    /// What the action's values are.
    pub mode: Mode,
    /// The action topic (std_msgs/Float64MultiArray, one value per joint).
    pub action_topic: String,
    /// Where the feedback is published.
    pub joint_state_topic: String,
    /// The controller's watchdog, ms.
    pub watchdog_ms: u16,
    /// The controller's feedback period, ms.
    pub feedback_period_ms: u16,
    /// No valid frame for this long: the link is lost and the port reopened, ms.
    pub link_timeout_ms: u64,
    /// An action older than this is not sent, ms (the controller's watchdog then takes over).
    pub max_action_age_ms: u64,
    /// `/diagnostics` period.
    pub diagnostics_period: Duration,
}

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// An option is out of range.
    #[error("{0}")]
    Options(String),
    /// The ROS side failed.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The link's thread could not start.
    #[error("cannot start the link thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Counters of the ROS side of the bridge.
#[derive(Default)]
pub struct BridgeStats {
    /// Actions received and handed to the link.
    pub actions: AtomicU64,
    /// Actions refused: undecodable, wrong length or not finite.
    pub actions_rejected: AtomicU64,
    /// JointState messages published.
    pub joint_states: AtomicU64,
    /// JointState messages that could not be published.
    pub publish_failures: AtomicU64,
}

/// A running bridge; dropping it stops the link and the diagnostics.
pub struct Bridge {
    link: Arc<Link>,
    stats: Arc<BridgeStats>,
    stop: Arc<AtomicBool>,
    diagnostics: Option<JoinHandle<()>>,
}

/// The command an action becomes: each value in the field `mode` names.
pub fn command(mode: Mode, values: &[f64]) -> Command {
    let joints = values
        .iter()
        .take(MAX_JOINTS)
        .map(|&v| {
            let v = v as f32;
            match mode {
                Mode::Position => JointTarget { position: v, ..Default::default() },
                Mode::Velocity => JointTarget { velocity: v, ..Default::default() },
                Mode::Effort => JointTarget { effort: v, ..Default::default() },
            }
        })
        .collect();
    Command { mode, joints }
}

/// A warning when commands at `rate_hz` for `joints` joints, plus heartbeats, need more than
/// `baud` can carry (10 bits a byte on a UART).
pub fn link_budget(joints: usize, rate_hz: f64, baud: u32) -> Option<String> {
    let mut buf = [0u8; MAX_ENCODED];
    let frame = Frame {
        seq: u16::MAX,
        stamp_us: u32::MAX,
        message: Message::Command(command(Mode::Velocity, &vec![1.0e3; joints])),
    };
    let bytes = encode(&frame, &mut buf).ok()?;
    let needed = rate_hz * bytes as f64 * 10.0;
    (needed > 0.8 * baud as f64).then(|| {
        format!(
            "{joints}-joint commands at {rate_hz} Hz need about {:.0} baud ({bytes}-byte frames), more than 80 % of --baud {baud}; raise --baud or lower --rate (a pseudo-terminal ignores the baud rate)",
            needed
        )
    })
}

impl BridgeOptions {
    /// Refuses options no controller could work with, naming the fix.
    pub fn check(&self) -> Result<(), BridgeError> {
        let n = self.joints.len();
        if n == 0 || n > MAX_JOINTS {
            return Err(BridgeError::Options(format!(
                "--joints names {n} joints; a controller takes 1 to {MAX_JOINTS}, in its own order"
            )));
        }
        if self.joints.iter().any(|j| j.trim().is_empty()) {
            return Err(BridgeError::Options(
                "--joints has an empty name; name every joint, e.g. --joints a,b,c".into(),
            ));
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= 10_000.0) {
            return Err(BridgeError::Options(format!(
                "--rate {}: give a rate in Hz above 0, at most 10000",
                self.rate_hz
            )));
        }
        if !firmware_bridge::device::WATCHDOG_MS.contains(&self.watchdog_ms) {
            let r = firmware_bridge::device::WATCHDOG_MS;
            return Err(BridgeError::Options(format!(
                "--watchdog-ms {}: controllers accept {} to {} ms",
                self.watchdog_ms,
                r.start(),
                r.end()
            )));
        }
        if !firmware_bridge::serial::BAUDS.iter().any(|(b, _)| *b == self.baud) {
            let list: Vec<String> = firmware_bridge::serial::BAUDS.iter().map(|(b, _)| b.to_string()).collect();
            return Err(BridgeError::Options(format!(
                "--baud {} is not a supported rate; use one of {}",
                self.baud,
                list.join(", ")
            )));
        }
        Ok(())
    }
}

impl Bridge {
    /// Subscribes to the action topic, starts the link, and publishes feedback and diagnostics on
    /// `transport`.
    pub fn start(transport: Arc<dyn Transport>, opts: BridgeOptions) -> Result<Bridge, BridgeError> {
        opts.check()?;
        let n = opts.joints.len();
        if let Some(w) = link_budget(n, opts.rate_hz, opts.baud) {
            tracing::warn!("{w}");
        }
        let stats = Arc::new(BridgeStats::default());
        let mut joint_states = transport.publisher(&opts.joint_state_topic, JointState::TYPE, Qos::SENSOR_DATA)?;
        let names = opts.joints.clone();
        let (clock, st, port) = (transport.clone(), stats.clone(), opts.port.display().to_string());
        let mut last_down = String::new();
        let events = Box::new(move |e: LinkEvent<'_>| match e {
            LinkEvent::Feedback(fb, _) => {
                let js = JointState {
                    header: Header { stamp: clock.now(), frame_id: String::new() },
                    name: names.iter().take(fb.joints.len()).cloned().collect(),
                    position: fb.joints.iter().map(|j| f64::from(j.position)).collect(),
                    velocity: fb.joints.iter().map(|j| f64::from(j.velocity)).collect(),
                    effort: fb.joints.iter().map(|j| f64::from(j.effort)).collect(),
                };
                let sent =
                    cdr::encode(&js).map_err(|e| e.to_string()).and_then(|b| joint_states.publish(&b).map_err(|e| e.0));
                match sent {
                    Ok(()) => st.joint_states.fetch_add(1, Ordering::Relaxed),
                    Err(_) => st.publish_failures.fetch_add(1, Ordering::Relaxed),
                };
            }
            LinkEvent::Connected => tracing::info!("opened {port}"),
            LinkEvent::Configured(c) => {
                tracing::info!("controller on {port} configured: {} joints, watchdog {} ms", c.joints, c.watchdog_ms)
            }
            LinkEvent::Down(why) => {
                // Logged when the reason changes, not on every retry; /diagnostics counts them all.
                let head = why.split(" (retrying").next().unwrap_or(why);
                if head != last_down {
                    tracing::warn!("link to the controller down: {why}");
                    last_down = head.to_string();
                }
            }
            LinkEvent::Fault(f) => {
                let what = match f.code {
                    FaultCode::ConfigRejected => {
                        format!("refused the config: it drives {} joints; give that many --joints", f.detail)
                    }
                    FaultCode::CommandRejected => format!("refused a command (reason {})", f.detail),
                    FaultCode::Watchdog => format!("no valid command within {} ms: safe state", f.detail),
                    other => format!("{other:?} (joint {}, detail {})", f.joint, f.detail),
                };
                tracing::warn!("controller on {port}: {what}");
            }
        });
        let link = Arc::new(Link::start(
            LinkOptions {
                port: opts.port.clone(),
                baud: opts.baud,
                rate_hz: opts.rate_hz,
                heartbeat: Duration::from_millis(100),
                link_timeout: Duration::from_millis(opts.link_timeout_ms),
                backoff_min: Duration::from_millis(50),
                backoff_max: Duration::from_secs(5),
                max_command_age: Duration::from_millis(opts.max_action_age_ms),
                config: Config {
                    joints: n as u8,
                    watchdog_ms: opts.watchdog_ms,
                    feedback_period_ms: opts.feedback_period_ms.max(1),
                },
            },
            events,
        )?);
        let (l, st, mode) = (link.clone(), stats.clone(), opts.mode);
        transport.subscribe(
            &opts.action_topic,
            Float64MultiArray::TYPE,
            Qos::SENSOR_DATA,
            Box::new(move |sample| match cdr::decode::<Float64MultiArray>(&sample.cdr, Float64MultiArray::TYPE) {
                Ok(m) if m.data.len() == n && m.data.iter().all(|v| v.is_finite()) => {
                    st.actions.fetch_add(1, Ordering::Relaxed);
                    l.command(command(mode, &m.data));
                }
                Ok(m) => {
                    if st.actions_rejected.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            "action of {} values refused: the bridge takes {n} finite ones (one per --joints); counted on /diagnostics",
                            m.data.len()
                        );
                    }
                }
                Err(e) => {
                    if st.actions_rejected.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!("undecodable action refused: {e}; counted on /diagnostics");
                    }
                }
            }),
        )?;
        let mut diagnostics = transport.publisher("/diagnostics", DiagnosticArray::TYPE, Qos::RELIABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, l, st, clock) = (stop.clone(), link.clone(), stats.clone(), transport.clone());
        let name = opts.port.display().to_string();
        let period = opts.diagnostics_period;
        let thread = std::thread::Builder::new().name("bridge-diagnostics".into()).spawn(move || {
            let mut last_errors = 0;
            while sleep_unless(period, &flag) {
                let (status, errors) = status(&name, l.stats(), &st, last_errors);
                last_errors = errors;
                let msg = DiagnosticArray {
                    header: Header { stamp: clock.now(), frame_id: String::new() },
                    status: vec![status],
                };
                if let Err(e) =
                    cdr::encode(&msg).map_err(|e| e.to_string()).and_then(|b| diagnostics.publish(&b).map_err(|e| e.0))
                {
                    tracing::warn!("cannot publish /diagnostics: {e}");
                }
            }
        })?;
        Ok(Bridge { link, stats, stop, diagnostics: Some(thread) })
    }

    /// The link's counters.
    pub fn link_stats(&self) -> &LinkStats {
        self.link.stats()
    }

    /// The ROS side's counters.
    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.diagnostics.take() {
            let _ = t.join();
        }
    }
}

fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
    let end = std::time::Instant::now() + d;
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::Relaxed)
}

fn kv(key: &str, value: impl ToString) -> KeyValue {
    KeyValue { key: key.into(), value: value.to_string() }
}

/// Median, 99th percentile and maximum.
fn percentiles(mut v: Vec<u32>) -> Option<(u32, u32, u32)> {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (!v.is_empty()).then(|| (at(0.5), at(0.99), v[v.len() - 1]))
}

/// The `/diagnostics` status; also returns the receive errors so far, so the next period can say
/// whether new ones arrived.
fn status(port: &str, l: &LinkStats, b: &BridgeStats, errors_before: u64) -> (DiagnosticStatus, u64) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let connected = l.connected.load(Ordering::Relaxed);
    let device = DEVICE_STATES[usize::from(l.device_state.load(Ordering::Relaxed)).min(DEVICE_STATES.len() - 1)];
    let mut values = vec![
        kv("link.connected", connected),
        kv("link.connects", get(&l.connects)),
        kv("link.losses", get(&l.link_losses)),
        kv("link.open_failures", get(&l.open_failures)),
        kv("link.last_down", l.last_down()),
        kv("frames_sent", get(&l.frames_sent)),
        kv("frames_received", get(&l.frames_received)),
        kv("bytes_sent", get(&l.bytes_sent)),
        kv("bytes_received", get(&l.bytes_received)),
        kv("tx_dropped", get(&l.tx_dropped)),
    ];
    let mut errors = 0;
    for e in FrameError::ALL {
        let n = get(&l.rx_errors[e.index()]);
        errors += n;
        values.push(kv(&format!("rx_errors.{}", e.name()), n));
    }
    let rtt = l.take_rtt_us();
    values.push(kv("rtt_samples", rtt.len()));
    if let Some((p50, p99, max)) = percentiles(rtt) {
        values.push(kv("rtt_p50_us", p50));
        values.push(kv("rtt_p99_us", p99));
        values.push(kv("rtt_max_us", max));
    }
    values.extend([
        kv("commands_sent", get(&l.commands_sent)),
        kv("commands_stale", get(&l.commands_stale)),
        kv("periods_missed", get(&l.periods_missed)),
        kv("feedback_received", get(&l.feedback)),
        kv("device.state", device),
        kv("device.configured", l.configured.load(Ordering::Relaxed)),
        kv("device.rx_frames", get(&l.device_rx_frames)),
        kv("device.rx_errors", get(&l.device_rx_errors)),
        kv("device.faults", get(&l.faults)),
        kv(
            "device.last_fault",
            l.last_fault().map(|f| format!("{:?} joint {} detail {}", f.code, f.joint, f.detail)).unwrap_or_default(),
        ),
        kv("actions_received", get(&b.actions)),
        kv("actions_rejected", get(&b.actions_rejected)),
        kv("joint_states_published", get(&b.joint_states)),
        kv("joint_states_failed", get(&b.publish_failures)),
    ]);
    let (level, message) = if !connected {
        (DiagnosticStatus::ERROR, format!("no link to the controller: {}", l.last_down()))
    } else if device == "safe" {
        (DiagnosticStatus::WARN, "controller in its safe state (no fresh action within its watchdog)".to_string())
    } else if errors > errors_before {
        (DiagnosticStatus::WARN, format!("{} frames dropped as invalid in the last period", errors - errors_before))
    } else {
        (DiagnosticStatus::OK, format!("controller {device}"))
    };
    (
        DiagnosticStatus {
            level,
            name: format!("skillgraft bridge: {port}"),
            message,
            hardware_id: port.to_string(),
            values,
        },
        errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_become_commands_in_the_mode_asked_and_the_budget_warns_on_slow_uarts() {
        let c = command(Mode::Position, &[0.5, -1.0]);
        assert_eq!(c.joints.len(), 2);
        assert_eq!((c.joints[1].position, c.joints[1].velocity), (-1.0, 0.0));
        assert_eq!(command(Mode::Effort, &[2.0]).joints[0].effort, 2.0);
        let w = link_budget(6, 1000.0, 115_200).expect("6 joints at 1 kHz do not fit 115200 baud");
        assert!(w.contains("raise --baud or lower --rate"), "{w}");
        assert_eq!(link_budget(6, 100.0, 1_000_000), None);
        assert_eq!(percentiles(vec![5, 1, 3]), Some((3, 5, 5)));
    }
}
