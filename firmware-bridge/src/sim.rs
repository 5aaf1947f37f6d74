//! A simulated motor controller: the device half and a motor model behind a pseudo-terminal, run
//! the way firmware runs them (a 1 kHz loop), so a host can open its pty as a serial port.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::device::{Device, DeviceConfig, DeviceStats, Target};
use crate::protocol::{JointFeedback, MAX_ENCODED, MAX_JOINTS, Mode};
use crate::serial::{Pty, ReadOutcome, read_some, wait_readable, write_frame};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Joints (at most [`MAX_JOINTS`]).
    pub joints: u8,
    /// Watchdog until the host configures another, ms.
    pub watchdog_ms: u16,
    /// Feedback period until the host configures another, ms.
    pub feedback_period_ms: u16,
    /// Loop rate of the simulated firmware.
    pub tick_hz: f64,
    /// A symlink to the pty, replaced atomically, so a host can keep one path across restarts.
    pub link: Option<PathBuf>,
}

/// Joints driven by first-order velocity loops: a velocity target is reached with time constant
/// `TAU_S`; a position target through a P loop on top; an effort accelerates a unit inertia
/// against viscous damping. The safe state brakes to zero velocity.
#[derive(Debug, Clone)]
pub struct Motors {
    q: Vec<f32>,
    v: Vec<f32>,
    effort: Vec<f32>,
}

const TAU_S: f32 = 0.02;
const POSITION_GAIN: f32 = 20.0;
const MAX_VELOCITY: f32 = 5.0;
const DAMPING: f32 = 1.0;

impl Motors {
    /// `n` joints at rest at zero.
    pub fn new(n: usize) -> Motors {
        Motors { q: vec![0.0; n], v: vec![0.0; n], effort: vec![0.0; n] }
    }

    /// Advances `dt` seconds toward `target`.
    pub fn step(&mut self, target: Target<'_>, dt: f32) {
        for i in 0..self.q.len() {
            let accel = match target {
                Target::Follow(c) => {
                    let t = c.joints[i];
                    match c.mode {
                        Mode::Velocity => (t.velocity - self.v[i]) / TAU_S,
                        Mode::Position => {
                            let want = (POSITION_GAIN * (t.position - self.q[i]) + t.velocity)
                                .clamp(-MAX_VELOCITY, MAX_VELOCITY);
                            (want - self.v[i]) / TAU_S
                        }
                        Mode::Effort => t.effort - DAMPING * self.v[i],
                    }
                }
                Target::Safe => -self.v[i] / TAU_S,
            };
            // Semi-implicit in the lag, so a coarse dt cannot overshoot the target velocity.
            let dv = accel * dt / (1.0 + dt / TAU_S);
            self.v[i] += dv;
            self.q[i] += self.v[i] * dt;
            self.effort[i] = accel;
        }
    }

    /// The joints as the encoders and drives report them.
    pub fn feedback(&self) -> heapless::Vec<JointFeedback, MAX_JOINTS> {
        (0..self.q.len().min(MAX_JOINTS))
            .map(|i| JointFeedback { position: self.q[i], velocity: self.v[i], effort: self.effort[i], status: 0 })
            .collect()
    }
}

/// A running simulated controller; dropping it stops it and removes its link.
pub struct SimMcu {
    path: PathBuf,
    link: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<DeviceStats>>,
    tx_dropped: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl SimMcu {
    /// Opens the pty, makes the link, and starts the firmware loop.
    pub fn start(opts: SimOptions) -> std::io::Result<SimMcu> {
        if opts.joints == 0 || usize::from(opts.joints) > MAX_JOINTS {
            return Err(std::io::Error::other(format!("--joints {}: give 1 to {MAX_JOINTS}", opts.joints)));
        }
        let pty = Pty::open()?;
        if let Some(link) = &opts.link {
            let tmp = link.with_file_name(format!(
                ".{}.{}",
                link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&pty.path, &tmp).and_then(|()| std::fs::rename(&tmp, link)).map_err(|e| {
                std::io::Error::other(format!("cannot link {} to {}: {e}", link.display(), pty.path.display()))
            })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(DeviceStats::default()));
        let tx_dropped = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let (path, link) = (pty.path.clone(), opts.link.clone());
        let (flag, st, dropped, failed) = (stop.clone(), stats.clone(), tx_dropped.clone(), failure.clone());
        let thread = std::thread::Builder::new().name("sim-mcu".into()).spawn(move || {
            if let Err(e) = firmware(pty, &opts, &flag, &st, &dropped) {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        })?;
        Ok(SimMcu { path, link, stop, stats, tx_dropped, failure, thread: Some(thread) })
    }

    /// The pty a host opens as its serial port.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device half's counters.
    pub fn stats(&self) -> DeviceStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the simulated firmware stopped on its own (its pty failed), if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Frames the simulated firmware could not write because nobody read them.
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped.load(Ordering::Relaxed)
    }
}

impl Drop for SimMcu {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only our own link: a newer controller may have replaced it.
        if let Some(link) = &self.link
            && std::fs::read_link(link).is_ok_and(|p| p == self.path)
        {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// The simulated firmware's main loop, until stopped or its pty fails.
fn firmware(
    mut pty: Pty,
    opts: &SimOptions,
    stop: &AtomicBool,
    stats: &Mutex<DeviceStats>,
    tx_dropped: &AtomicU64,
) -> std::io::Result<()> {
    let mut device = Device::new(DeviceConfig {
        joints: opts.joints,
        watchdog_ms: opts.watchdog_ms,
        feedback_period_ms: opts.feedback_period_ms,
    });
    let mut motors = Motors::new(usize::from(opts.joints));
    let period = Duration::from_secs_f64(1.0 / opts.tick_hz.max(1.0));
    let epoch = Instant::now();
    let now_us = || epoch.elapsed().as_micros() as u32;
    let mut next = Instant::now();
    let mut rx = [0u8; 4096];
    let mut tx = [0u8; MAX_ENCODED];
    while !stop.load(Ordering::Relaxed) {
        // The pty's other end is held open by `pty`, so these fail only if the pty itself breaks.
        wait_readable(&pty.master, next.saturating_duration_since(Instant::now()))?;
        if let ReadOutcome::Bytes(n) = read_some(&mut pty.master, &mut rx)? {
            device.receive(&rx[..n], now_us());
        }
        if Instant::now() >= next {
            next += period;
            let target = device.tick(now_us());
            motors.step(target, period.as_secs_f32());
        }
        let fb = motors.feedback();
        while let Some(frame) = device.transmit(now_us(), &fb, &mut tx) {
            match frame.map(|n| write_frame(&mut pty.master, &tx[..n])) {
                Ok(Ok(true)) => {}
                _ => {
                    tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        *stats.lock().unwrap_or_else(|p| p.into_inner()) = device.stats();
    }
    Ok(())
}
