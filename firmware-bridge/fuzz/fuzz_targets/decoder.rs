//! The decoder and the device half on arbitrary bytes: never a panic, every byte and every dropped
//! frame counted, and every frame that decodes encodes back to the same bytes. When the first byte
//! is odd, the rest is taken as a frame's content and given a valid CRC and COBS, so the fuzzer
//! reaches the header and payload checks behind the CRC as well.
#![no_main]

use firmware_bridge::device::{Device, DeviceConfig};
use firmware_bridge::protocol::{CRC, Decoder, MAX_ENCODED, MAX_FRAME, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut framed = [0u8; MAX_ENCODED + 8];
    let bytes: &[u8] = if mode & 1 == 1 {
        let mut raw = [0u8; MAX_FRAME + 4];
        let n = rest.len().min(MAX_FRAME);
        raw[..n].copy_from_slice(&rest[..n]);
        let crc = CRC.checksum(&raw[..n]).to_le_bytes();
        raw[n..n + 4].copy_from_slice(&crc);
        let k = cobs::encode(&raw[..n + 4], &mut framed[1..]);
        &framed[..k + 2]
    } else {
        rest
    };

    let mut decoder = Decoder::new();
    let (mut ok, mut bad) = (0u32, 0u32);
    for r in decoder.feed(bytes) {
        match r {
            Ok(frame) => {
                ok += 1;
                let mut first = [0u8; MAX_ENCODED];
                let n = encode(&frame, &mut first).expect("a decoded frame fits MAX_ENCODED");
                let mut again = Decoder::new();
                let back = again.feed(&first[..n]).next().expect("one frame").expect("it decodes");
                let mut second = [0u8; MAX_ENCODED];
                let m = encode(&back, &mut second).expect("it fits again");
                // Bytes, not frames: a NaN target is not equal to itself.
                assert_eq!(&first[..n], &second[..m]);
            }
            Err(_) => bad += 1,
        }
    }
    let s = decoder.stats();
    assert_eq!((s.frames, s.total_errors(), s.bytes as usize), (ok, bad, bytes.len()));

    // The device half on the same bytes, split where the first byte says, as interrupts split them.
    let mut device = Device::new(DeviceConfig { joints: 3, watchdog_ms: 50, feedback_period_ms: 10 });
    let cut = usize::from(mode) % (bytes.len() + 1);
    device.receive(&bytes[..cut], 0);
    device.receive(&bytes[cut..], 1000);
    let _ = device.tick(60_000);
    let mut out = [0u8; MAX_ENCODED];
    let joints = [Default::default(); 3];
    for _ in 0..8 {
        if device.transmit(70_000, &joints, &mut out).is_none() {
            break;
        }
    }
});
