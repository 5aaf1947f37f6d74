//! The wire format between the host and the motor-controller firmware: messages, frames and a
//! streaming decoder. `no_std`, and nothing here allocates: every buffer has a fixed size.
//!
//! A frame on the wire is `0x00, COBS(header ‖ payload ‖ crc), 0x00`:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version ([`VERSION`]) |
//! | 1 | message kind ([`Kind`]) |
//! | 2 | sequence number, little-endian, per sender, wrapping |
//! | 4 | sender's timestamp in µs, little-endian, wrapping |
//! | n | payload: the message, serialised with postcard |
//! | 4 | CRC-32C (Castagnoli) of everything above, little-endian |
//!
//! The payload is postcard: fields in declaration order, `u16` and `u32` as LEB128 varints, `u8`
//! as one byte, `f32` as 4 bytes little-endian, an enum as the varint index of its variant, a joint
//! list as a varint count then the joints. A [`Command`] is `mode, count, (position, velocity,
//! effort)…`; a [`Feedback`] is `echo_seq, echo_stamp_us, state, count, (position, velocity,
//! effort, status)…`. `tests/protocol.rs` holds golden frames written out from this by hand.
//!
//! COBS removes every zero from the frame, so a zero byte only ever delimits frames. The zero
//! sent before each frame as well as after it ends any partial frame left on the line (a
//! controller that rebooted mid-frame, a cable plugged in mid-stream), so a truncated frame costs
//! only itself, never the frame after it.

use heapless::Vec;
use serde::{Deserialize, Serialize};

/// Protocol version; a frame with another one is counted and dropped.
pub const VERSION: u8 = 1;
/// Most joints one controller drives.
pub const MAX_JOINTS: usize = 16;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 8;
/// CRC bytes after the payload.
pub const CRC_LEN: usize = 4;
/// Largest payload: a Feedback for [`MAX_JOINTS`] joints with every varint at its longest.
pub const MAX_PAYLOAD: usize = 16 + MAX_JOINTS * 16;
/// Largest frame before COBS.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
/// Largest frame on the wire: COBS-encoded, with both delimiters. Size transmit buffers by it.
pub const MAX_ENCODED: usize = cobs::max_encoding_length(MAX_FRAME) + 2;
/// `joint` of a [`Fault`] that concerns no single joint.
pub const NO_JOINT: u8 = 0xFF;

/// CRC-32C (Castagnoli, iSCSI): Hamming distance 6 up to 5243 bits, so every error of up to five
/// bits in any frame this protocol can send is caught (CRC-32/IEEE keeps HD 6 only to 268 bits).
/// The table costs 1 KiB of flash; a controller short of flash can compute the same checksum with
/// `crc::Crc::<u32, crc::NoTable>` or a hardware CRC unit set to polynomial 0x1EDC6F41, reflected.
pub const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Per-joint status bits in [`JointFeedback::status`].
pub mod status {
    /// The controller is in its safe state (no valid command within the watchdog time).
    pub const SAFE: u16 = 1 << 0;
    /// The joint is at a position limit.
    pub const AT_LIMIT: u16 = 1 << 1;
    /// The drive limits its current.
    pub const OVERCURRENT: u16 = 1 << 2;
    /// The drive is too hot.
    pub const OVERTEMPERATURE: u16 = 1 << 3;
    /// The encoder reports an error.
    pub const ENCODER: u16 = 1 << 4;
}

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host to device: joint targets.
    Command = 1,
    /// Device to host: measured joints.
    Feedback = 2,
    /// Either way: liveness, echoed by the device.
    Heartbeat = 3,
    /// Device to host: something went wrong.
    Fault = 4,
    /// Host to device: settings; the device answers with the settings it applied.
    Config = 5,
}

impl Kind {
    /// The kind of a kind byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Command,
            2 => Kind::Feedback,
            3 => Kind::Heartbeat,
            4 => Kind::Fault,
            5 => Kind::Config,
            _ => return None,
        })
    }
}

/// What a command's targets mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Track `position` (with `velocity` and `effort` as feed-forward).
    Position,
    /// Track `velocity` (with `effort` as feed-forward).
    Velocity,
    /// Apply `effort`.
    Effort,
}

/// One joint's targets.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct JointTarget {
    /// rad (or m).
    pub position: f32,
    /// rad/s (or m/s).
    pub velocity: f32,
    /// N·m (or N).
    pub effort: f32,
}

/// Host to device: targets for every joint, in the controller's joint order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// How to read the targets.
    pub mode: Mode,
    /// One entry per joint.
    pub joints: Vec<JointTarget, MAX_JOINTS>,
}

/// The device's state as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// No valid command yet since start.
    Waiting,
    /// Following the latest command.
    Active,
    /// The watchdog tripped: no valid command within the timeout; motors in the safe state.
    Safe,
}

/// One joint as measured.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct JointFeedback {
    /// rad (or m).
    pub position: f32,
    /// rad/s (or m/s).
    pub velocity: f32,
    /// N·m (or N).
    pub effort: f32,
    /// [`status`] bits.
    pub status: u16,
}

/// Device to host: every joint, and which command it follows (for the round trip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// Sequence number of the latest command applied (0 before the first).
    pub echo_seq: u16,
    /// Host timestamp of that command, µs.
    pub echo_stamp_us: u32,
    /// The device's state.
    pub state: DeviceState,
    /// One entry per joint.
    pub joints: Vec<JointFeedback, MAX_JOINTS>,
}

/// Liveness, and the sender's receive counters. The device answers each host heartbeat with one
/// that echoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sequence number of the heartbeat answered (0 from the host).
    pub echo_seq: u16,
    /// Timestamp of the heartbeat answered, µs (0 from the host).
    pub echo_stamp_us: u32,
    /// Valid frames the sender has received.
    pub rx_frames: u32,
    /// Frames the sender has dropped as invalid (every kind of decode error).
    pub rx_errors: u32,
}

/// What a [`Fault`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultCode {
    /// No valid command within the watchdog time; `detail` is the timeout in ms.
    Watchdog,
    /// A command was refused; `detail` is a [`Reject`] code.
    CommandRejected,
    /// A config was refused; `detail` is the number of joints the device drives.
    ConfigRejected,
    /// A drive limits its current.
    Overcurrent,
    /// A drive is too hot.
    Overtemperature,
    /// An encoder error.
    Encoder,
    /// Firmware-specific; `detail` says what.
    Other,
}

/// Why a command was refused (`detail` of a `CommandRejected` fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reject {
    /// Its joint count is not the device's.
    JointCount = 1,
    /// A target is NaN or infinite.
    NotFinite = 2,
    /// Its sequence number is not newer than the last command's: a replayed or duplicated frame.
    Replayed = 3,
}

/// Device to host: a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What happened.
    pub code: FaultCode,
    /// The joint, or [`NO_JOINT`].
    pub joint: u8,
    /// Code-specific detail.
    pub detail: u32,
}

/// Host to device: settings. The device answers with the settings in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Joints the host will command; must equal the device's.
    pub joints: u8,
    /// Safe state after this long without a valid command, ms.
    pub watchdog_ms: u16,
    /// Feedback at least this often, ms (and after every command).
    pub feedback_period_ms: u16,
}

/// Any message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// See [`Command`].
    Command(Command),
    /// See [`Feedback`].
    Feedback(Feedback),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Fault`].
    Fault(Fault),
    /// See [`Config`].
    Config(Config),
}

impl Message {
    /// Its kind byte.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Command(_) => Kind::Command,
            Message::Feedback(_) => Kind::Feedback,
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::Fault(_) => Kind::Fault,
            Message::Config(_) => Kind::Config,
        }
    }
}

/// A message with its header fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Sender's sequence number.
    pub seq: u16,
    /// Sender's timestamp, µs.
    pub stamp_us: u32,
    /// The message.
    pub message: Message,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is shorter than the encoded frame; size it by [`MAX_ENCODED`].
    BufferTooSmall,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the output buffer is too small for the frame; size it by MAX_ENCODED")
    }
}

/// Encodes `frame` into `out` (delimiters included); returns the bytes written.
pub fn encode(frame: &Frame, out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut raw = [0u8; MAX_FRAME];
    raw[0] = VERSION;
    raw[1] = frame.message.kind() as u8;
    raw[2..4].copy_from_slice(&frame.seq.to_le_bytes());
    raw[4..8].copy_from_slice(&frame.stamp_us.to_le_bytes());
    let body = &mut raw[HEADER_LEN..HEADER_LEN + MAX_PAYLOAD];
    // The payload bound holds for every message (their vectors are capped at MAX_JOINTS), so a
    // failure here is a bug in MAX_PAYLOAD, caught by the tests at the largest messages.
    let n = match &frame.message {
        Message::Command(m) => postcard::to_slice(m, body),
        Message::Feedback(m) => postcard::to_slice(m, body),
        Message::Heartbeat(m) => postcard::to_slice(m, body),
        Message::Fault(m) => postcard::to_slice(m, body),
        Message::Config(m) => postcard::to_slice(m, body),
    }
    .map(|s| s.len())
    .map_err(|_| EncodeError::BufferTooSmall)?;
    let end = HEADER_LEN + n;
    let crc = CRC.checksum(&raw[..end]);
    raw[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let len = end + CRC_LEN;
    if out.len() < cobs::max_encoding_length(len) + 2 {
        return Err(EncodeError::BufferTooSmall);
    }
    out[0] = 0;
    let k = cobs::encode(&raw[..len], &mut out[1..]);
    out[1 + k] = 0;
    Ok(k + 2)
}

/// What was wrong with a frame the decoder dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes between two delimiters are not valid COBS (line noise, a partial frame).
    Cobs,
    /// Shorter than a header and a CRC (a frame cut short).
    Truncated,
    /// The CRC does not match (corrupted bytes).
    Crc,
    /// The CRC matches but the version is not [`VERSION`]: the peer speaks another protocol
    /// version; update the firmware or the host.
    Version,
    /// A kind byte this version does not know.
    UnknownKind,
    /// The payload does not decode as its kind's message, or has bytes left over.
    Payload,
    /// More bytes than the largest frame without a delimiter (garbage, or a baud mismatch).
    Overflow,
}

impl FrameError {
    /// Every kind, in counter order.
    pub const ALL: [FrameError; 7] = [
        FrameError::Cobs,
        FrameError::Truncated,
        FrameError::Crc,
        FrameError::Version,
        FrameError::UnknownKind,
        FrameError::Payload,
        FrameError::Overflow,
    ];

    /// Its name on diagnostics.
    pub fn name(self) -> &'static str {
        match self {
            FrameError::Cobs => "cobs",
            FrameError::Truncated => "truncated",
            FrameError::Crc => "crc",
            FrameError::Version => "version",
            FrameError::UnknownKind => "unknown_kind",
            FrameError::Payload => "payload",
            FrameError::Overflow => "overflow",
        }
    }

    /// Its index in [`DecodeStats::errors`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameError::Cobs => "invalid COBS between delimiters (line noise or a partial frame)",
            FrameError::Truncated => "a frame shorter than its header and CRC (cut short)",
            FrameError::Crc => "a CRC mismatch (corrupted bytes)",
            FrameError::Version => "another protocol version; update the firmware or the host so both speak the same",
            FrameError::UnknownKind => "an unknown message kind",
            FrameError::Payload => "a payload that does not decode as its message kind",
            FrameError::Overflow => "too many bytes without a delimiter (garbage, or a baud-rate mismatch)",
        })
    }
}

/// What a decoder has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeStats {
    /// Bytes fed.
    pub bytes: u32,
    /// Valid frames.
    pub frames: u32,
    /// Dropped frames, by [`FrameError::index`].
    pub errors: [u32; 7],
}

impl DecodeStats {
    /// Dropped frames of every kind.
    pub fn total_errors(&self) -> u32 {
        self.errors.iter().fold(0u32, |a, &b| a.wrapping_add(b))
    }

    /// Dropped frames of one kind.
    pub fn count(&self, kind: FrameError) -> u32 {
        self.errors[kind.index()]
    }
}

/// A streaming decoder: feed it bytes as they arrive, in any pieces; it yields each frame at its
/// closing delimiter, and drops and counts anything invalid, then carries on at the next
/// delimiter.
pub struct Decoder {
    buf: [u8; MAX_ENCODED],
    len: usize,
    overflowed: bool,
    stats: DecodeStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// An empty decoder.
    pub const fn new() -> Decoder {
        Decoder {
            buf: [0; MAX_ENCODED],
            len: 0,
            overflowed: false,
            stats: DecodeStats { bytes: 0, frames: 0, errors: [0; 7] },
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// One byte; at a delimiter, the frame it closes (or why it was dropped).
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        self.stats.bytes = self.stats.bytes.wrapping_add(1);
        if byte != 0 {
            if self.len < self.buf.len() {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflowed = true;
            }
            return None;
        }
        let (len, overflowed) = (self.len, self.overflowed);
        self.len = 0;
        self.overflowed = false;
        let result = if overflowed {
            Err(FrameError::Overflow)
        } else if len == 0 {
            // Two delimiters in a row: the gap between frames, not a frame.
            return None;
        } else {
            decode_frame(&mut self.buf[..len])
        };
        match result {
            Ok(_) => self.stats.frames = self.stats.frames.wrapping_add(1),
            Err(e) => self.stats.errors[e.index()] = self.stats.errors[e.index()].wrapping_add(1),
        }
        Some(result)
    }

    /// The frames (and drops) in `bytes`, in order.
    pub fn feed<'a>(&'a mut self, bytes: &'a [u8]) -> Frames<'a> {
        Frames { decoder: self, bytes }
    }
}

/// Iterator over the results of [`Decoder::feed`].
pub struct Frames<'a> {
    decoder: &'a mut Decoder,
    bytes: &'a [u8],
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((&b, rest)) = self.bytes.split_first() {
            self.bytes = rest;
            if let Some(r) = self.decoder.push(b) {
                return Some(r);
            }
        }
        None
    }
}

/// Decodes the COBS bytes between two delimiters (in place).
fn decode_frame(encoded: &mut [u8]) -> Result<Frame, FrameError> {
    let n = cobs::decode_in_place(encoded).map_err(|_| FrameError::Cobs)?;
    let raw = &encoded[..n];
    if raw.len() < HEADER_LEN + CRC_LEN {
        return Err(FrameError::Truncated);
    }
    let (body, crc) = raw.split_at(raw.len() - CRC_LEN);
    if CRC.checksum(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(FrameError::Crc);
    }
    if body[0] != VERSION {
        return Err(FrameError::Version);
    }
    let kind = Kind::from_u8(body[1]).ok_or(FrameError::UnknownKind)?;
    let seq = u16::from_le_bytes([body[2], body[3]]);
    let stamp_us = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
    let payload = &body[HEADER_LEN..];
    let message = match kind {
        Kind::Command => Message::Command(whole(payload)?),
        Kind::Feedback => Message::Feedback(whole(payload)?),
        Kind::Heartbeat => Message::Heartbeat(whole(payload)?),
        Kind::Fault => Message::Fault(whole(payload)?),
        Kind::Config => Message::Config(whole(payload)?),
    };
    Ok(Frame { seq, stamp_us, message })
}

/// A message that takes up the whole payload.
fn whole<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(payload) {
        Ok((m, [])) => Ok(m),
        _ => Err(FrameError::Payload),
    }
}
