//! The device half: commands are applied and echoed, bad ones refused and reported, the watchdog
//! trips when commands stop and recovers when they resume, configs are applied or refused,
//! heartbeats are answered with the device's counters, replayed commands are refused.

use firmware_bridge::device::{Device, DeviceConfig, Target};
use firmware_bridge::protocol::*;

const MS: u32 = 1000;

fn device() -> Device {
    Device::new(DeviceConfig { joints: 2, watchdog_ms: 50, feedback_period_ms: 10 })
}

fn frame(seq: u16, stamp_us: u32, message: Message) -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED];
    let n = encode(&Frame { seq, stamp_us, message }, &mut out).unwrap();
    out[..n].to_vec()
}

fn command(v: [f32; 2]) -> Message {
    Message::Command(Command {
        mode: Mode::Velocity,
        joints: v.iter().map(|&v| JointTarget { velocity: v, ..Default::default() }).collect(),
    })
}

/// Everything the device sends at `now`, decoded.
fn sent(d: &mut Device, now: u32) -> Vec<Frame> {
    let js = [JointFeedback { position: 0.5, ..Default::default() }; 2];
    let mut out = [0u8; MAX_ENCODED];
    let mut dec = Decoder::new();
    let mut frames = Vec::new();
    while let Some(n) = d.transmit(now, &js, &mut out) {
        let n = n.unwrap();
        frames.extend(dec.feed(&out[..n]).map(|r| r.unwrap()));
    }
    frames
}

fn followed(d: &mut Device, now: u32) -> Option<Command> {
    match d.tick(now) {
        Target::Follow(c) => Some(c.clone()),
        Target::Safe => None,
    }
}

#[test]
fn the_watchdog_trips_when_commands_stop_and_recovers_when_they_resume() {
    let mut d = device();
    assert_eq!(followed(&mut d, 0), None, "safe until the first command");
    assert_eq!(d.state(), DeviceState::Waiting);

    d.receive(&frame(1, 111, command([0.5, -0.5])), MS);
    let c = followed(&mut d, 2 * MS).expect("follows the command");
    assert_eq!(c.joints[1].velocity, -0.5);
    let fb = sent(&mut d, 2 * MS);
    match &fb[..] {
        [Frame { message: Message::Feedback(f), .. }] => {
            assert_eq!((f.echo_seq, f.echo_stamp_us, f.state), (1, 111, DeviceState::Active));
            assert_eq!(f.joints.len(), 2);
            assert_eq!(f.joints[0].status & status::SAFE, 0);
        }
        other => panic!("one feedback after the command, got {other:?}"),
    }

    // Commands every 20 ms keep it active.
    for k in 1..5u32 {
        d.receive(&frame(1 + k as u16, 0, command([0.1, 0.1])), (1 + 20 * k) * MS);
        assert!(followed(&mut d, (2 + 20 * k) * MS).is_some());
    }
    // Then they stop: active up to the timeout, safe after it, and a fault says so once.
    let last = 81 * MS;
    assert!(followed(&mut d, last + 50 * MS).is_some());
    assert_eq!(followed(&mut d, last + 51 * MS), None);
    assert_eq!(d.state(), DeviceState::Safe);
    assert_eq!(followed(&mut d, last + 200 * MS), None);
    assert_eq!(d.stats().watchdog_trips, 1);
    let out = sent(&mut d, last + 200 * MS);
    let faults: Vec<_> = out
        .iter()
        .filter_map(|f| match f.message {
            Message::Fault(x) => Some(x),
            _ => None,
        })
        .collect();
    assert_eq!(faults, vec![Fault { code: FaultCode::Watchdog, joint: NO_JOINT, detail: 50 }]);
    let safe_fb = out.iter().find_map(|f| match &f.message {
        Message::Feedback(fb) => Some(fb.clone()),
        _ => None,
    });
    let safe_fb = safe_fb.expect("feedback continues in the safe state");
    assert_eq!(safe_fb.state, DeviceState::Safe);
    assert!(safe_fb.joints.iter().all(|j| j.status & status::SAFE != 0));

    // Commands resume: it follows again.
    d.receive(&frame(9, 999, command([0.2, 0.3])), last + 300 * MS);
    assert_eq!(followed(&mut d, last + 301 * MS).unwrap().joints[1].velocity, 0.3);
    assert_eq!(d.state(), DeviceState::Active);
    assert_eq!(d.stats().commands, 6);
}

#[test]
fn the_watchdog_survives_the_clock_wrapping() {
    let mut d = device();
    let t0 = u32::MAX - 10 * MS;
    d.receive(&frame(1, 0, command([0.0, 0.0])), t0);
    assert!(followed(&mut d, t0.wrapping_add(40 * MS)).is_some());
    assert_eq!(followed(&mut d, t0.wrapping_add(60 * MS)), None);
}

#[test]
fn bad_commands_are_refused_reported_and_do_not_feed_the_watchdog() {
    let mut d = device();
    d.receive(&frame(1, 0, command([0.5, 0.5])), 0);
    let three =
        Message::Command(Command { mode: Mode::Velocity, joints: (0..3).map(|_| JointTarget::default()).collect() });
    d.receive(&frame(2, 0, three), 30 * MS);
    d.receive(&frame(3, 0, command([f32::NAN, 0.0])), 40 * MS);
    assert_eq!(followed(&mut d, 45 * MS).unwrap().joints[0].velocity, 0.5, "the last valid command holds");
    assert_eq!(followed(&mut d, 51 * MS), None, "refused commands did not feed the watchdog");
    let st = d.stats();
    assert_eq!((st.commands, st.rejected), (1, 2));
    let details: Vec<u32> = sent(&mut d, 52 * MS)
        .iter()
        .filter_map(|f| match f.message {
            Message::Fault(Fault { code: FaultCode::CommandRejected, detail, .. }) => Some(detail),
            _ => None,
        })
        .collect();
    assert_eq!(details, vec![Reject::JointCount as u32, Reject::NotFinite as u32]);
}

#[test]
fn configs_are_applied_and_acknowledged_or_refused() {
    let mut d = device();
    d.receive(&frame(1, 0, Message::Config(Config { joints: 2, watchdog_ms: 200, feedback_period_ms: 5 })), 0);
    d.receive(&frame(2, 0, Message::Config(Config { joints: 3, watchdog_ms: 200, feedback_period_ms: 5 })), 0);
    d.receive(&frame(3, 0, Message::Config(Config { joints: 2, watchdog_ms: 1, feedback_period_ms: 5 })), 0);
    let msgs: Vec<Message> = sent(&mut d, 0).into_iter().map(|f| f.message).collect();
    assert_eq!(msgs[0], Message::Config(Config { joints: 2, watchdog_ms: 200, feedback_period_ms: 5 }));
    let refused = Message::Fault(Fault { code: FaultCode::ConfigRejected, joint: NO_JOINT, detail: 2 });
    assert_eq!(&msgs[1..3], &[refused.clone(), refused]);
    assert_eq!(d.config().watchdog_ms, 200);
    d.receive(&frame(4, 0, command([0.0, 0.0])), 0);
    assert!(followed(&mut d, 150 * MS).is_some(), "the configured watchdog is in force");
}

#[test]
fn heartbeats_are_echoed_with_the_device_counters_and_feedback_keeps_its_period() {
    let mut d = device();
    let mut bytes = vec![1, 2, 3];
    bytes.extend(frame(7, 4242, Message::Heartbeat(Heartbeat::default())));
    d.receive(&bytes, 0);
    let out = sent(&mut d, 0);
    assert_eq!(
        out[0].message,
        Message::Heartbeat(Heartbeat { echo_seq: 7, echo_stamp_us: 4242, rx_frames: 1, rx_errors: 1 })
    );
    assert!(matches!(out[1].message, Message::Feedback(_)), "the first feedback goes out at once");
    assert!(sent(&mut d, 9 * MS).is_empty(), "nothing new before the feedback period");
    assert_eq!(sent(&mut d, 10 * MS).len(), 1);
    assert!(out[1].seq > out[0].seq, "the device numbers its frames");
}

#[test]
fn replayed_commands_are_refused_and_a_new_host_session_is_followed() {
    let mut d = device();
    d.receive(&frame(10, 0, command([0.1, 0.1])), 0);
    d.receive(&frame(11, 0, command([0.2, 0.2])), MS);
    // The frame of seq 10 again (a duplicated or replayed frame), and an older one: refused,
    // the newer command holds.
    d.receive(&frame(10, 0, command([0.9, 0.9])), 2 * MS);
    d.receive(&frame(3, 0, command([0.9, 0.9])), 3 * MS);
    assert_eq!(followed(&mut d, 4 * MS).unwrap().joints[0].velocity, 0.2);
    let st = d.stats();
    assert_eq!((st.commands, st.rejected, st.replayed), (2, 2, 2));
    let details: Vec<u32> = sent(&mut d, 5 * MS)
        .iter()
        .filter_map(|f| match f.message {
            Message::Fault(Fault { code: FaultCode::CommandRejected, detail, .. }) => Some(detail),
            _ => None,
        })
        .collect();
    assert_eq!(details, vec![Reject::Replayed as u32; 2]);
    // Numbers wrap: 65535 -> 0 -> 1 is newer all the way.
    let mut w = device();
    for (k, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
        w.receive(&frame(seq, 0, command([k as f32, 0.0])), 0);
    }
    assert_eq!((w.stats().commands, w.stats().replayed), (4, 0));
    // A restarted host numbers from 1 again: its config starts a session, its commands follow.
    d.receive(&frame(1, 0, Message::Config(Config { joints: 2, watchdog_ms: 50, feedback_period_ms: 10 })), 6 * MS);
    d.receive(&frame(2, 0, command([0.3, 0.3])), 7 * MS);
    assert_eq!(followed(&mut d, 8 * MS).unwrap().joints[0].velocity, 0.3);
    assert_eq!(d.stats().replayed, 2);
}
