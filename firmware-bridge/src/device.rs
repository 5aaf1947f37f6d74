//! The device half: what motor-controller firmware links. `no_std`, no allocation, no clock of its
//! own: the firmware passes the time (µs, any epoch, wrapping) into every call.
//!
//! The firmware's main loop (or a timer interrupt):
//! 1. hands received bytes to [`Device::receive`] (collect them in the UART interrupt, e.g. in a
//!    `heapless::spsc::Queue`, and drain it here);
//! 2. calls [`Device::tick`], which runs the watchdog, and drives the motors by what it returns:
//!    the latest valid command, or the safe state;
//! 3. calls [`Device::transmit`] with the measured joints until it returns `None`, writing each
//!    frame to the UART: queued answers (heartbeats, config acknowledgements, faults) first, then
//!    feedback after each new command and at least every feedback period.
//!
//! ```
//! use firmware_bridge::device::{Device, DeviceConfig, Target};
//! use firmware_bridge::protocol::*;
//!
//! let mut device = Device::new(DeviceConfig { joints: 2, watchdog_ms: 100, feedback_period_ms: 10 });
//! // What the host sends: a velocity command for both joints.
//! let cmd = Command { mode: Mode::Velocity, joints: [JointTarget { velocity: 0.5, ..Default::default() }; 2].into_iter().collect() };
//! let mut wire = [0u8; MAX_ENCODED];
//! let n = encode(&Frame { seq: 1, stamp_us: 0, message: Message::Command(cmd) }, &mut wire).unwrap();
//!
//! // The firmware's loop: bytes in, watchdog, motors, feedback out.
//! device.receive(&wire[..n], 1_000);
//! assert!(matches!(device.tick(2_000), Target::Follow(c) if c.joints[1].velocity == 0.5));
//! let mut tx = [0u8; MAX_ENCODED];
//! let measured = [JointFeedback::default(); 2];
//! let len = device.transmit(2_000, &measured, &mut tx).unwrap().unwrap(); // write tx[..len] to the UART
//! assert!(len > 0);
//! // No command for longer than the watchdog: the safe state.
//! assert_eq!(device.tick(200_000), Target::Safe);
//! ```

use heapless::Deque;

use crate::protocol::{
    Command, Config, DecodeStats, Decoder, DeviceState, EncodeError, Fault, FaultCode, Feedback, Frame, Heartbeat,
    JointFeedback, MAX_JOINTS, Message, NO_JOINT, Reject, encode, status,
};

/// Settings the firmware starts with; the host's [`Config`] may change the timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Joints this controller drives (at most [`MAX_JOINTS`]).
    pub joints: u8,
    /// Safe state after this long without a valid command, ms.
    pub watchdog_ms: u16,
    /// Feedback at least this often, ms.
    pub feedback_period_ms: u16,
}

/// Watchdog timeouts a host may ask for, ms: shorter ones trip on scheduling jitter, longer ones
/// leave a robot moving too long after its host died.
pub const WATCHDOG_MS: core::ops::RangeInclusive<u16> = 5..=5000;

/// What the motors should do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target<'a> {
    /// Follow this command.
    Follow(&'a Command),
    /// No valid command yet, or none within the watchdog time: the safe state (brake, hold, or
    /// torque off, as the hardware requires).
    Safe,
}

/// Counters of the device half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    /// What the decoder saw.
    pub decode: DecodeStats,
    /// Valid commands applied.
    pub commands: u32,
    /// Commands refused (wrong joint count, not finite, replayed).
    pub rejected: u32,
    /// Of those, commands whose sequence number was not newer than the last one's.
    pub replayed: u32,
    /// Times the watchdog tripped.
    pub watchdog_trips: u32,
    /// Answers dropped because the answer queue was full (the firmware did not call `transmit`).
    pub answers_dropped: u32,
}

/// The device's protocol state machine.
pub struct Device {
    decoder: Decoder,
    config: DeviceConfig,
    command: Option<Command>,
    command_at_us: u32,
    echo: (u16, u32),
    state: DeviceState,
    fresh: bool,
    last_feedback_us: Option<u32>,
    answers: Deque<Message, 4>,
    seq: u16,
    /// Sequence number of the last accepted command (or of the host's config, which starts a
    /// session): a command must be newer than it.
    last_seq: Option<u16>,
    stats: DeviceStats,
}

/// Whether `seq` comes after `last` in the host's wrapping sequence: within half the number
/// space ahead of it (serial number arithmetic, RFC 1982).
fn newer(seq: u16, last: u16) -> bool {
    (1..0x8000).contains(&seq.wrapping_sub(last))
}

impl Device {
    /// A device in the Waiting state (safe until the first valid command).
    pub fn new(config: DeviceConfig) -> Device {
        Device {
            decoder: Decoder::new(),
            config,
            command: None,
            command_at_us: 0,
            echo: (0, 0),
            state: DeviceState::Waiting,
            fresh: false,
            last_feedback_us: None,
            answers: Deque::new(),
            seq: 0,
            last_seq: None,
            stats: DeviceStats::default(),
        }
    }

    /// Decodes `bytes` received at `now_us` and applies what they hold.
    pub fn receive(&mut self, bytes: &[u8], now_us: u32) {
        for &b in bytes {
            // Dropped frames are counted by the decoder and reach the host in heartbeats.
            if let Some(Ok(frame)) = self.decoder.push(b) {
                self.apply(frame, now_us);
            }
        }
    }

    fn apply(&mut self, frame: Frame, now_us: u32) {
        match frame.message {
            Message::Command(c) => match self.check(&c, frame.seq) {
                Ok(()) => {
                    self.last_seq = Some(frame.seq);
                    self.command = Some(c);
                    self.command_at_us = now_us;
                    self.echo = (frame.seq, frame.stamp_us);
                    self.state = DeviceState::Active;
                    self.fresh = true;
                    self.stats.commands = self.stats.commands.wrapping_add(1);
                }
                Err(why) => {
                    self.stats.rejected = self.stats.rejected.wrapping_add(1);
                    if why == Reject::Replayed {
                        self.stats.replayed = self.stats.replayed.wrapping_add(1);
                    }
                    self.answer(Message::Fault(Fault {
                        code: FaultCode::CommandRejected,
                        joint: NO_JOINT,
                        detail: why as u32,
                    }));
                }
            },
            Message::Heartbeat(_) => {
                let d = self.decoder.stats();
                self.answer(Message::Heartbeat(Heartbeat {
                    echo_seq: frame.seq,
                    echo_stamp_us: frame.stamp_us,
                    rx_frames: d.frames,
                    rx_errors: d.total_errors(),
                }));
            }
            Message::Config(c) => {
                if c.joints == self.config.joints && WATCHDOG_MS.contains(&c.watchdog_ms) && c.feedback_period_ms > 0 {
                    self.config.watchdog_ms = c.watchdog_ms;
                    self.config.feedback_period_ms = c.feedback_period_ms;
                    // A host sends its config first on every connection: its commands count
                    // from here, so a restarted host (whose numbers start again) is followed.
                    self.last_seq = Some(frame.seq);
                    self.answer(Message::Config(Config {
                        joints: self.config.joints,
                        watchdog_ms: self.config.watchdog_ms,
                        feedback_period_ms: self.config.feedback_period_ms,
                    }));
                } else {
                    self.answer(Message::Fault(Fault {
                        code: FaultCode::ConfigRejected,
                        joint: NO_JOINT,
                        detail: u32::from(self.config.joints),
                    }));
                }
            }
            // Device-to-host messages sent to a device: a wiring loop-back, ignored.
            Message::Feedback(_) | Message::Fault(_) => {}
        }
    }

    fn check(&self, c: &Command, seq: u16) -> Result<(), Reject> {
        if self.last_seq.is_some_and(|last| !newer(seq, last)) {
            return Err(Reject::Replayed);
        }
        if c.joints.len() != usize::from(self.config.joints) {
            return Err(Reject::JointCount);
        }
        if c.joints.iter().any(|j| !(j.position.is_finite() && j.velocity.is_finite() && j.effort.is_finite())) {
            return Err(Reject::NotFinite);
        }
        Ok(())
    }

    fn answer(&mut self, m: Message) {
        if self.answers.push_back(m).is_err() {
            self.stats.answers_dropped = self.stats.answers_dropped.wrapping_add(1);
        }
    }

    /// Queues a fault of the firmware's own (overcurrent, encoder, ...) for the host.
    pub fn report(&mut self, fault: Fault) {
        self.answer(Message::Fault(fault));
    }

    /// Runs the watchdog at `now_us`; says what the motors should do.
    pub fn tick(&mut self, now_us: u32) -> Target<'_> {
        let timeout_us = u32::from(self.config.watchdog_ms) * 1000;
        if self.state == DeviceState::Active && now_us.wrapping_sub(self.command_at_us) > timeout_us {
            self.state = DeviceState::Safe;
            self.stats.watchdog_trips = self.stats.watchdog_trips.wrapping_add(1);
            self.answer(Message::Fault(Fault {
                code: FaultCode::Watchdog,
                joint: NO_JOINT,
                detail: u32::from(self.config.watchdog_ms),
            }));
        }
        match (&self.command, self.state) {
            (Some(c), DeviceState::Active) => Target::Follow(c),
            _ => Target::Safe,
        }
    }

    /// The state the last [`tick`](Device::tick) left.
    pub fn state(&self) -> DeviceState {
        self.state
    }

    /// The settings in force.
    pub fn config(&self) -> DeviceConfig {
        self.config
    }

    /// Counters.
    pub fn stats(&self) -> DeviceStats {
        DeviceStats { decode: *self.decoder.stats(), ..self.stats }
    }

    /// The next frame to send, encoded into `out` (size it by
    /// [`MAX_ENCODED`](crate::protocol::MAX_ENCODED)): a queued answer, or feedback of `joints`
    /// when a new command arrived or the feedback period has passed. `None`: nothing to send.
    pub fn transmit(
        &mut self,
        now_us: u32,
        joints: &[JointFeedback],
        out: &mut [u8],
    ) -> Option<Result<usize, EncodeError>> {
        let message = if let Some(m) = self.answers.pop_front() {
            m
        } else {
            let period_us = u32::from(self.config.feedback_period_ms) * 1000;
            let due = self.last_feedback_us.is_none_or(|t| now_us.wrapping_sub(t) >= period_us);
            if !(self.fresh || due) {
                return None;
            }
            self.fresh = false;
            self.last_feedback_us = Some(now_us);
            let safe = if self.state == DeviceState::Active { 0 } else { status::SAFE };
            let mut fb = Feedback {
                echo_seq: self.echo.0,
                echo_stamp_us: self.echo.1,
                state: self.state,
                joints: heapless::Vec::new(),
            };
            for j in joints.iter().take(MAX_JOINTS) {
                // Cannot fail: at most MAX_JOINTS are taken.
                let _ = fb.joints.push(JointFeedback { status: j.status | safe, ..*j });
            }
            Message::Feedback(fb)
        };
        self.seq = self.seq.wrapping_add(1);
        Some(encode(&Frame { seq: self.seq, stamp_us: now_us, message }, out))
    }
}
