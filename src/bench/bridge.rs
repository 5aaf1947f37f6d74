//! `skillgraft bench bridge`: frames encoded and decoded per second, and the round trip of a
//! command to its echo in the controller's feedback over a pseudo-terminal, with the host link
//! and the simulated controller as `skillgraft bridge` runs them.

use std::fmt;
use std::time::{Duration, Instant};

use firmware_bridge::link::{Link, LinkOptions};
use firmware_bridge::protocol::{
    Config, Decoder, DeviceState, Feedback, Frame, JointFeedback, MAX_ENCODED, Message, Mode, encode,
};
use firmware_bridge::sim::{SimMcu, SimOptions};
use serde::Serialize;

/// One codec row.
#[derive(Debug, Serialize)]
pub struct CodecRow {
    /// The frame timed.
    pub frame: String,
    /// Its bytes on the wire.
    pub bytes: usize,
    /// Median encode time per frame, ns.
    pub encode_ns: f64,
    /// Median decode time per frame, ns.
    pub decode_ns: f64,
}

/// One round-trip row.
#[derive(Debug, Serialize)]
pub struct RoundTripRow {
    /// Commands per second asked for.
    pub rate_hz: f64,
    /// Commands sent in the measurement.
    pub sent: u64,
    /// Control periods the link's thread woke too late for (skipped, not sent).
    pub missed: u64,
    /// Round trips measured (commands whose echo came back).
    pub echoed: usize,
    /// Round trip p50, p99, max, µs.
    pub rtt_us: Option<(u32, u32, u32)>,
    /// Frames dropped as invalid on either side, and frames that did not fit a buffer.
    pub errors: u64,
}

/// The bridge benchmark.
#[derive(Debug, Serialize)]
pub struct BridgeReport {
    /// Joints per frame.
    pub joints: usize,
    /// Codec rows.
    pub codec: Vec<CodecRow>,
    /// Round-trip rows.
    pub round_trip: Vec<RoundTripRow>,
    /// Whether this binary was built with optimisations.
    pub optimised: bool,
}

fn median_ns(runs: usize, per_run: usize, mut f: impl FnMut()) -> f64 {
    super::median_seconds(runs / 10 + 1, runs, || {
        for _ in 0..per_run {
            f();
        }
    }) * 1e9
        / per_run as f64
}

/// Times the codec for `joints`-joint frames, then runs commands at each rate for `seconds`
/// over a pty to the simulated controller.
pub fn bridge(joints: u8, rates: &[f64], seconds: f64) -> Result<BridgeReport, String> {
    let n = usize::from(joints);
    let command = Frame {
        seq: 40_000,
        stamp_us: 3_000_000_000,
        message: Message::Command(skillgraft::bridge::command(Mode::Velocity, &vec![0.123; n])),
    };
    let feedback = Frame {
        seq: 40_001,
        stamp_us: 3_000_000_001,
        message: Message::Feedback(Feedback {
            echo_seq: 40_000,
            echo_stamp_us: 3_000_000_000,
            state: DeviceState::Active,
            joints: (0..n)
                .map(|i| JointFeedback { position: i as f32 * 0.37, velocity: -0.5, effort: 1.25, status: 0 })
                .collect(),
        }),
    };
    let mut codec = Vec::new();
    for (name, frame) in [("Command", &command), ("Feedback", &feedback)] {
        let mut buf = [0u8; MAX_ENCODED];
        let bytes = encode(frame, &mut buf).map_err(|e| e.to_string())?;
        let encode_ns = median_ns(200, 1000, || {
            std::hint::black_box(encode(std::hint::black_box(frame), &mut buf).ok());
        });
        let wire = buf[..bytes].to_vec();
        let mut decoder = Decoder::new();
        let decode_ns = median_ns(200, 1000, || {
            for r in decoder.feed(std::hint::black_box(&wire)) {
                std::hint::black_box(r.ok());
            }
        });
        if decoder.stats().total_errors() > 0 {
            return Err("the benchmark's own frames did not decode".into());
        }
        codec.push(CodecRow { frame: format!("{name}, {n} joints"), bytes, encode_ns, decode_ns });
    }
    let mut round_trip = Vec::new();
    for &rate in rates {
        round_trip.push(round_trip_at(joints, rate, seconds)?);
    }
    Ok(BridgeReport { joints: n, codec, round_trip, optimised: !cfg!(debug_assertions) })
}

fn round_trip_at(joints: u8, rate: f64, seconds: f64) -> Result<RoundTripRow, String> {
    let mcu =
        SimMcu::start(SimOptions { joints, watchdog_ms: 100, feedback_period_ms: 10, tick_hz: 1000.0, link: None })
            .map_err(|e| e.to_string())?;
    let link = Link::start(
        LinkOptions {
            port: mcu.path().to_path_buf(),
            baud: 4_000_000,
            rate_hz: rate,
            heartbeat: Duration::from_millis(100),
            link_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            max_command_age: Duration::from_secs(3600),
            config: Config { joints, watchdog_ms: 100, feedback_period_ms: 10 },
        },
        Box::new(|_| {}),
    )
    .map_err(|e| e.to_string())?;
    link.command(skillgraft::bridge::command(Mode::Velocity, &vec![0.1; usize::from(joints)]));
    let st = link.stats();
    use std::sync::atomic::Ordering::Relaxed;
    if !super::until(Duration::from_secs(5), || st.feedback.load(Relaxed) > 10) {
        return Err(format!("the simulated controller on {} never answered", mcu.path().display()));
    }
    // Warm-up done: measure from here.
    st.take_rtt_us();
    let (sent0, missed0, start) = (st.commands_sent.load(Relaxed), st.periods_missed.load(Relaxed), Instant::now());
    while start.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rtt = st.take_rtt_us();
    let sent = st.commands_sent.load(Relaxed) - sent0;
    let missed = st.periods_missed.load(Relaxed) - missed0;
    let d = mcu.stats();
    let errors = st.rx_errors.iter().map(|c| c.load(Relaxed)).sum::<u64>()
        + u64::from(d.decode.total_errors())
        + st.tx_dropped.load(Relaxed)
        + mcu.tx_dropped();
    let echoed = rtt.len();
    let mut v = rtt;
    v.sort_unstable();
    let rtt_us = (!v.is_empty()).then(|| {
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99), v[v.len() - 1])
    });
    Ok(RoundTripRow { rate_hz: rate, sent, missed, echoed, rtt_us, errors })
}

impl fmt::Display for BridgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.optimised {
            writeln!(f, "warning: this is a debug build; time a release build (cargo run --release -- bench bridge)")?;
        }
        writeln!(
            f,
            "| frame | bytes on the wire | encode (ns, median) | decode (ns, median) | encoded frames/s | decoded frames/s |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|")?;
        for r in &self.codec {
            writeln!(
                f,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                r.frame,
                r.bytes,
                r.encode_ns,
                r.decode_ns,
                1e9 / r.encode_ns,
                1e9 / r.decode_ns
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "| command rate (Hz) | commands sent | periods missed | round trips measured | round trip p50 / p99 / max (µs) | frames dropped or unsent |"
        )?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|")?;
        for r in &self.round_trip {
            let rtt = match r.rtt_us {
                Some((a, b, c)) => format!("{a} / {b} / {c}"),
                None => "n/a".into(),
            };
            writeln!(f, "| {} | {} | {} | {} | {rtt} | {} |", r.rate_hz, r.sent, r.missed, r.echoed, r.errors)?;
        }
        Ok(())
    }
}
