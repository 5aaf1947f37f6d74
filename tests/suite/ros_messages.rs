//! Golden CDR: every message type skillgraft speaks, encoded exactly as rosbags (an independent
//! implementation, tools/make_cdr_fixtures.py) encodes it, and decoded back.

use std::path::Path;

use skillgraft::msg::cdr;
use skillgraft::msg::*;

fn check<M: RosMessage + PartialEq + std::fmt::Debug>(file: &serde_json::Value) -> usize {
    assert_eq!(file["type"], M::TYPE);
    let cases = file["cases"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let msg: M =
            serde_json::from_value(case["message"].clone()).unwrap_or_else(|e| panic!("{} case {i}: {e}", M::TYPE));
        let want = case["cdr"].as_str().unwrap();
        assert_eq!(
            hex::encode(cdr::encode(&msg).unwrap()),
            want,
            "{} case {i}: encoding differs from rosbags",
            M::TYPE
        );
        let back: M = cdr::decode(&hex::decode(want).unwrap(), M::TYPE).unwrap();
        assert_eq!(back, msg, "{} case {i}: decoding", M::TYPE);
    }
    cases.len()
}

#[test]
fn every_message_type_matches_rosbags_byte_for_byte() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cdr");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let n = match file["type"].as_str().unwrap() {
            Time::TYPE => check::<Time>(&file),
            Duration::TYPE => check::<Duration>(&file),
            Header::TYPE => check::<Header>(&file),
            StringMsg::TYPE => check::<StringMsg>(&file),
            Bool::TYPE => check::<Bool>(&file),
            Float32MultiArray::TYPE => check::<Float32MultiArray>(&file),
            Float64MultiArray::TYPE => check::<Float64MultiArray>(&file),
            JointState::TYPE => check::<JointState>(&file),
            Image::TYPE => check::<Image>(&file),
            CompressedImage::TYPE => check::<CompressedImage>(&file),
            Imu::TYPE => check::<Imu>(&file),
            Vector3::TYPE => check::<Vector3>(&file),
            Point::TYPE => check::<Point>(&file),
            Quaternion::TYPE => check::<Quaternion>(&file),
            Twist::TYPE => check::<Twist>(&file),
            JointTrajectory::TYPE => check::<JointTrajectory>(&file),
            KeyValue::TYPE => check::<KeyValue>(&file),
            DiagnosticStatus::TYPE => check::<DiagnosticStatus>(&file),
            DiagnosticArray::TYPE => check::<DiagnosticArray>(&file),
            other => panic!("{}: no Rust type for {other}", path.display()),
        };
        checked.push((file["type"].as_str().unwrap().to_string(), n));
    }
    checked.sort();
    assert_eq!(checked.len(), 19, "{checked:?}");
}

#[test]
fn truncated_and_foreign_bytes_are_errors_not_panics() {
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cdr/sensor_msgs__JointState.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let bytes = hex::decode(file["cases"][0]["cdr"].as_str().unwrap()).unwrap();
    for cut in 0..bytes.len() - 8 {
        assert!(cdr::decode::<JointState>(&bytes[..cut], JointState::TYPE).is_err(), "cut at {cut}");
    }
    let mut wild = bytes.clone();
    wild[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(cdr::decode::<JointState>(&wild, JointState::TYPE).is_err());
    let mut wild = bytes.clone();
    wild[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(cdr::decode::<JointState>(&wild, JointState::TYPE).is_err());
}

#[test]
fn image_views_borrow_the_same_pixels_the_owned_messages_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cdr");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    for case in read("sensor_msgs__Image.json")["cases"].as_array().unwrap() {
        let bytes = hex::decode(case["cdr"].as_str().unwrap()).unwrap();
        let owned: Image = cdr::decode(&bytes, Image::TYPE).unwrap();
        let view: ImageView<'_> = cdr::decode_borrowed(&bytes, Image::TYPE).unwrap();
        assert_eq!(
            (view.width, view.height, view.step, view.encoding.as_str()),
            (owned.width, owned.height, owned.step, owned.encoding.as_str())
        );
        assert_eq!(view.data, owned.data.as_slice());
    }
    for case in read("sensor_msgs__CompressedImage.json")["cases"].as_array().unwrap() {
        let bytes = hex::decode(case["cdr"].as_str().unwrap()).unwrap();
        let owned: CompressedImage = cdr::decode(&bytes, CompressedImage::TYPE).unwrap();
        let view: CompressedImageView<'_> = cdr::decode_borrowed(&bytes, CompressedImage::TYPE).unwrap();
        assert_eq!((view.format.as_str(), view.data), (owned.format.as_str(), owned.data.as_slice()));
    }
}
