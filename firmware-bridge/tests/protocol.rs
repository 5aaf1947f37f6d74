//! Frames: every message kind round-trips; corrupted bytes, garbage between frames, truncated
//! frames, a wrong CRC and a wrong version are dropped and counted by kind, the decoder carries
//! on with the next frame, and no input makes it panic.

use firmware_bridge::protocol::*;
use proptest::prelude::*;

fn finite() -> impl Strategy<Value = f32> {
    -1.0e6f32..1.0e6
}

fn joints<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = heapless::Vec<T, MAX_JOINTS>> {
    prop::collection::vec(s, 0..=MAX_JOINTS).prop_map(|v| v.into_iter().collect())
}

fn message() -> impl Strategy<Value = Message> {
    let mode = prop_oneof![Just(Mode::Position), Just(Mode::Velocity), Just(Mode::Effort)];
    let target =
        (finite(), finite(), finite()).prop_map(|(p, v, e)| JointTarget { position: p, velocity: v, effort: e });
    let command = (mode, joints(target)).prop_map(|(mode, joints)| Message::Command(Command { mode, joints }));
    let state = prop_oneof![Just(DeviceState::Waiting), Just(DeviceState::Active), Just(DeviceState::Safe)];
    let jf = (finite(), finite(), finite(), any::<u16>()).prop_map(|(p, v, e, s)| JointFeedback {
        position: p,
        velocity: v,
        effort: e,
        status: s,
    });
    let feedback =
        (any::<u16>(), any::<u32>(), state, joints(jf)).prop_map(|(echo_seq, echo_stamp_us, state, joints)| {
            Message::Feedback(Feedback { echo_seq, echo_stamp_us, state, joints })
        });
    let heartbeat = (any::<u16>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c, d)| {
        Message::Heartbeat(Heartbeat { echo_seq: a, echo_stamp_us: b, rx_frames: c, rx_errors: d })
    });
    let code = prop_oneof![
        Just(FaultCode::Watchdog),
        Just(FaultCode::CommandRejected),
        Just(FaultCode::ConfigRejected),
        Just(FaultCode::Overcurrent),
        Just(FaultCode::Overtemperature),
        Just(FaultCode::Encoder),
        Just(FaultCode::Other),
    ];
    let fault = (code, any::<u8>(), any::<u32>())
        .prop_map(|(code, joint, detail)| Message::Fault(Fault { code, joint, detail }));
    let config = (any::<u8>(), any::<u16>(), any::<u16>()).prop_map(|(joints, watchdog_ms, feedback_period_ms)| {
        Message::Config(Config { joints, watchdog_ms, feedback_period_ms })
    });
    prop_oneof![command, feedback, heartbeat, fault, config]
}

fn frame() -> impl Strategy<Value = Frame> {
    (any::<u16>(), any::<u32>(), message()).prop_map(|(seq, stamp_us, message)| Frame { seq, stamp_us, message })
}

fn wire(f: &Frame) -> Vec<u8> {
    let mut out = [0u8; MAX_ENCODED];
    let n = encode(f, &mut out).unwrap();
    out[..n].to_vec()
}

fn decode_all(d: &mut Decoder, bytes: &[u8]) -> (Vec<Frame>, Vec<FrameError>) {
    let (mut ok, mut bad) = (vec![], vec![]);
    for r in d.feed(bytes) {
        match r {
            Ok(f) => ok.push(f),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

/// A frame whose CRC is right over a header the caller chose: what a peer with another
/// protocol version, or a newer message kind, sends.
fn raw_frame(version: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut raw = vec![version, kind, 1, 0, 2, 0, 0, 0];
    raw.extend_from_slice(payload);
    raw.extend_from_slice(&CRC.checksum(&raw).to_le_bytes());
    let mut out = vec![0u8; raw.len() + raw.len() / 254 + 3];
    out[0] = 0;
    let n = cobs::encode(&raw, &mut out[1..]);
    out.truncate(n + 1);
    out.push(0);
    out
}

fn heartbeat(seq: u16) -> Frame {
    Frame { seq, stamp_us: 7, message: Message::Heartbeat(Heartbeat::default()) }
}

proptest! {
    #[test]
    fn every_message_kind_round_trips(f in frame()) {
        let bytes = wire(&f);
        prop_assert_eq!(bytes[0], 0);
        prop_assert_eq!(*bytes.last().unwrap(), 0);
        prop_assert!(!bytes[1..bytes.len() - 1].contains(&0), "COBS leaves no zero inside a frame");
        let mut d = Decoder::new();
        let (ok, bad) = decode_all(&mut d, &bytes);
        prop_assert_eq!(ok, vec![f]);
        prop_assert!(bad.is_empty());
        prop_assert_eq!(d.stats().frames, 1);
    }

    #[test]
    fn frames_split_anywhere_still_decode(fs in prop::collection::vec(frame(), 1..5), cut in any::<prop::sample::Index>()) {
        let bytes: Vec<u8> = fs.iter().flat_map(wire).collect();
        let at = cut.index(bytes.len());
        let mut d = Decoder::new();
        let (mut ok, _) = decode_all(&mut d, &bytes[..at]);
        ok.extend(decode_all(&mut d, &bytes[at..]).0);
        prop_assert_eq!(ok, fs);
    }

    #[test]
    fn garbage_between_frames_is_counted_and_the_frames_still_arrive(
        fs in prop::collection::vec(frame(), 1..6),
        junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 6),
    ) {
        let mut bytes = Vec::new();
        for (f, j) in fs.iter().zip(&junk) {
            bytes.extend_from_slice(j);
            bytes.extend(wire(f));
        }
        let mut d = Decoder::new();
        let (ok, bad) = decode_all(&mut d, &bytes);
        prop_assert_eq!(ok, fs, "every frame survives the garbage before it");
        prop_assert_eq!(d.stats().total_errors() as usize, bad.len());
        prop_assert_eq!(d.stats().bytes as usize, bytes.len());
    }

    #[test]
    fn a_flipped_byte_never_passes_as_another_valid_frame(f in frame(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let mut bytes = wire(&f);
        let i = 1 + at.index(bytes.len() - 2);
        bytes[i] ^= x;
        let mut d = Decoder::new();
        let (ok, bad) = decode_all(&mut d, &bytes);
        // A flip to zero splits the frame in two; either way nothing valid comes out of it.
        prop_assert!(ok.is_empty(), "corruption produced {:?}", ok);
        prop_assert!(!bad.is_empty());
        // The next frame decodes.
        let (next, _) = decode_all(&mut d, &wire(&f));
        prop_assert_eq!(next, vec![f]);
    }

    #[test]
    fn random_bytes_never_panic_and_every_drop_is_counted(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut d = Decoder::new();
        let (ok, bad) = decode_all(&mut d, &bytes);
        prop_assert_eq!(d.stats().frames as usize, ok.len());
        prop_assert_eq!(d.stats().total_errors() as usize, bad.len());
    }
}

#[test]
fn the_largest_messages_fit_the_buffers() {
    let full = |i: usize| i as f32 * -1.5e38;
    let fb = Frame {
        seq: u16::MAX,
        stamp_us: u32::MAX,
        message: Message::Feedback(Feedback {
            echo_seq: u16::MAX,
            echo_stamp_us: u32::MAX,
            state: DeviceState::Safe,
            joints: (0..MAX_JOINTS)
                .map(|i| JointFeedback { position: full(i), velocity: full(i), effort: full(i), status: u16::MAX })
                .collect(),
        }),
    };
    let cmd = Frame {
        seq: 1,
        stamp_us: 2,
        message: Message::Command(Command {
            mode: Mode::Effort,
            joints: (0..MAX_JOINTS).map(|i| JointTarget { position: full(i), velocity: 1.0, effort: -1.0 }).collect(),
        }),
    };
    for f in [fb, cmd] {
        let mut d = Decoder::new();
        assert_eq!(decode_all(&mut d, &wire(&f)).0, vec![f]);
    }
    let mut small = [0u8; 8];
    assert_eq!(encode(&heartbeat(1), &mut small), Err(EncodeError::BufferTooSmall));
}

#[test]
fn a_truncated_frame_costs_only_itself() {
    let (a, b) = (wire(&heartbeat(1)), wire(&heartbeat(2)));
    let mut d = Decoder::new();
    // Cut a frame short, at every length, then send a whole one: the whole one decodes.
    for cut in 2..a.len() - 1 {
        let mut bytes = a[..cut].to_vec();
        bytes.extend_from_slice(&b);
        let (ok, bad) = decode_all(&mut d, &bytes);
        assert_eq!(ok, vec![heartbeat(2)], "cut at {cut}");
        assert_eq!(bad.len(), 1, "cut at {cut}: {bad:?}");
    }
    assert_eq!(d.stats().frames as usize, a.len() - 3);
    // Short cuts are too short for a header and CRC; longer ones fail COBS or the CRC.
    let s = d.stats();
    assert!(s.count(FrameError::Truncated) > 0);
    assert_eq!(s.total_errors() as usize, a.len() - 3);
    assert_eq!(s.count(FrameError::Truncated) + s.count(FrameError::Cobs) + s.count(FrameError::Crc), s.total_errors());
}

#[test]
fn a_wrong_crc_is_counted_as_such() {
    let mut raw = raw_frame(VERSION, Kind::Heartbeat as u8, &[0, 0, 0, 0]);
    let mut d = Decoder::new();
    assert_eq!(decode_all(&mut d, &raw).0.len(), 1, "the hand-made frame is valid");
    // Change the CRC's first byte inside the COBS bytes: the last data byte before the trailer.
    let n = raw.len();
    raw[n - 2] = if raw[n - 2] == 0x55 { 0x56 } else { 0x55 };
    let (ok, bad) = decode_all(&mut d, &raw);
    assert!(ok.is_empty());
    assert_eq!(bad, vec![FrameError::Crc]);
    assert_eq!(d.stats().count(FrameError::Crc), 1);
}

#[test]
fn another_version_an_unknown_kind_and_a_bad_payload_are_counted_by_kind() {
    let mut d = Decoder::new();
    let mut bytes = raw_frame(VERSION + 1, Kind::Heartbeat as u8, &[0, 0, 0, 0]);
    bytes.extend(raw_frame(VERSION, 99, &[]));
    // A heartbeat's payload with a byte too many, then one cut short.
    bytes.extend(raw_frame(VERSION, Kind::Heartbeat as u8, &[0, 0, 0, 0, 7]));
    bytes.extend(raw_frame(VERSION, Kind::Heartbeat as u8, &[0, 0]));
    // A fault code past the last variant.
    bytes.extend(raw_frame(VERSION, Kind::Fault as u8, &[42, 0, 0]));
    bytes.extend(wire(&heartbeat(3)));
    let (ok, bad) = decode_all(&mut d, &bytes);
    assert_eq!(ok, vec![heartbeat(3)]);
    assert_eq!(
        bad,
        vec![
            FrameError::Version,
            FrameError::UnknownKind,
            FrameError::Payload,
            FrameError::Payload,
            FrameError::Payload
        ]
    );
    let s = d.stats();
    assert_eq!(
        (s.count(FrameError::Version), s.count(FrameError::UnknownKind), s.count(FrameError::Payload)),
        (1, 1, 3)
    );
    assert!(FrameError::Version.to_string().contains("update the firmware or the host"));
}

#[test]
fn a_run_without_delimiters_overflows_once_and_the_decoder_recovers() {
    let mut d = Decoder::new();
    let mut bytes = vec![0x55u8; MAX_ENCODED * 3];
    bytes.extend(wire(&heartbeat(4)));
    let (ok, bad) = decode_all(&mut d, &bytes);
    assert_eq!(ok, vec![heartbeat(4)]);
    assert_eq!(bad, vec![FrameError::Overflow]);
    assert_eq!(d.stats().count(FrameError::Overflow), 1);
}

/// Golden frames, derived by hand from the layout (header table in the module docs, postcard's
/// payload rules), not produced by this crate: a reordered field, another varint or float
/// encoding, another CRC or another framing fails here even where every round trip still holds.
mod golden {
    use super::*;

    /// A Command frame before COBS: header ‖ payload ‖ CRC-32C.
    const COMMAND: [u8; 38] = [
        0x01, // version 1
        0x01, // kind: Command
        0x07, 0x00, // seq 7, little-endian
        0x40, 0x42, 0x0f, 0x00, // stamp 1 000 000 µs, little-endian
        0x01, // mode: Velocity (variant 1 of Position, Velocity, Effort)
        0x02, // two joints
        0x00, 0x00, 0x00, 0x3f, // joint 0 position 0.5 (f32 little-endian)
        0x00, 0x00, 0x80, 0xbf, // joint 0 velocity -1.0
        0x00, 0x00, 0x00, 0x40, // joint 0 effort 2.0
        0x00, 0x00, 0xc0, 0x3f, // joint 1 position 1.5
        0x00, 0x00, 0x80, 0x3e, // joint 1 velocity 0.25
        0x00, 0x00, 0x40, 0xc0, // joint 1 effort -3.0
        0xb3, 0x3a, 0xf7, 0x1e, // CRC-32C of the 34 bytes above, little-endian
    ];

    /// A Feedback frame before COBS.
    const FEEDBACK: [u8; 45] = [
        0x01, // version 1
        0x02, // kind: Feedback
        0x2c, 0x01, // seq 300
        0x40, 0xe2, 0x01, 0x00, // stamp 123 456 µs
        0x07, // echo_seq 7 (varint)
        0xc0, 0x84, 0x3d, // echo_stamp_us 1 000 000 (varint: 0x40|0x80, 0x04|0x80, 0x3d)
        0x01, // state: Active (variant 1 of Waiting, Active, Safe)
        0x02, // two joints
        0x00, 0x00, 0x00, 0x3f, // joint 0 position 0.5
        0x00, 0x00, 0x80, 0xbf, // joint 0 velocity -1.0
        0x00, 0x00, 0x00, 0x40, // joint 0 effort 2.0
        0x11, // joint 0 status SAFE | ENCODER (varint)
        0x00, 0x00, 0xc0, 0x3f, // joint 1 position 1.5
        0x00, 0x00, 0x80, 0x3e, // joint 1 velocity 0.25
        0x00, 0x00, 0x40, 0xc0, // joint 1 effort -3.0
        0xac, 0x02, // joint 1 status 300 (varint: 0x2c|0x80, 0x02)
        0xfb, 0xed, 0xc8, 0x0b, // CRC-32C of the 41 bytes above
    ];

    fn command() -> Frame {
        let joints = [
            JointTarget { position: 0.5, velocity: -1.0, effort: 2.0 },
            JointTarget { position: 1.5, velocity: 0.25, effort: -3.0 },
        ];
        Frame {
            seq: 7,
            stamp_us: 1_000_000,
            message: Message::Command(Command { mode: Mode::Velocity, joints: joints.into_iter().collect() }),
        }
    }

    fn feedback() -> Frame {
        let joints = [
            JointFeedback { position: 0.5, velocity: -1.0, effort: 2.0, status: status::SAFE | status::ENCODER },
            JointFeedback { position: 1.5, velocity: 0.25, effort: -3.0, status: 300 },
        ];
        Frame {
            seq: 300,
            stamp_us: 123_456,
            message: Message::Feedback(Feedback {
                echo_seq: 7,
                echo_stamp_us: 1_000_000,
                state: DeviceState::Active,
                joints: joints.into_iter().collect(),
            }),
        }
    }

    /// CRC-32C bit by bit (reflected polynomial 0x82F63B78), independent of the `crc` crate.
    fn crc32c(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
            }
        }
        !c
    }

    /// `0x00, COBS(raw), 0x00`, written from the COBS definition, independent of the `cobs` crate:
    /// each run of up to 254 non-zero bytes is preceded by its length + 1, the zero after it dropped.
    fn on_the_wire(raw: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        let mut code_at = out.len();
        out.push(1);
        for &b in raw {
            if b == 0 {
                code_at = out.len();
                out.push(1);
            } else {
                out.push(b);
                out[code_at] += 1;
                if out[code_at] == 0xff {
                    code_at = out.len();
                    out.push(1);
                }
            }
        }
        out.push(0);
        out
    }

    #[test]
    fn the_reference_crc_and_cobs_are_right() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283, "the CRC-32C check value");
        assert_eq!(on_the_wire(&[0x11, 0x22, 0x00, 0x33]), [0, 0x03, 0x11, 0x22, 0x02, 0x33, 0]);
        assert_eq!(on_the_wire(&[0x00]), [0, 0x01, 0x01, 0]);
        for raw in [&COMMAND[..], &FEEDBACK[..]] {
            let (body, crc) = raw.split_at(raw.len() - CRC_LEN);
            assert_eq!(crc, crc32c(body).to_le_bytes(), "the CRC written in the golden frame");
        }
    }

    #[test]
    fn command_and_feedback_encode_to_their_golden_frames() {
        for (what, frame, raw) in [("command", command(), &COMMAND[..]), ("feedback", feedback(), &FEEDBACK[..])] {
            assert_eq!(wire(&frame), on_the_wire(raw), "{what}");
        }
    }

    #[test]
    fn golden_frames_decode_to_their_messages() {
        for (what, frame, raw) in [("command", command(), &COMMAND[..]), ("feedback", feedback(), &FEEDBACK[..])] {
            let mut d = Decoder::new();
            let got: Vec<_> = d.feed(&on_the_wire(raw)).collect();
            assert_eq!(got, [Ok(frame)], "{what}");
        }
    }
}
