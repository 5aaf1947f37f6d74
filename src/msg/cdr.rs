//! CDR as ROS 2 puts it on the wire and in bags: a 4-byte encapsulation header (`00 01 00 00`
//! for little-endian plain CDR) and the classic CDR body, through the `cdr-encoding` crate that
//! RustDDS uses too.

use byteorder::{BigEndian, LittleEndian};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Encapsulation header of little-endian plain CDR (XCDR1), what ROS 2 uses.
pub const CDR_LE: [u8; 4] = [0, 1, 0, 0];
/// Encapsulation header of big-endian plain CDR.
pub const CDR_BE: [u8; 4] = [0, 0, 0, 0];

/// Why bytes could not be decoded as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdrError {
    /// Fewer than four bytes.
    #[error("{0} bytes is too short for a CDR message")]
    TooShort(usize),
    /// An encapsulation other than plain CDR.
    #[error("encapsulation {0:02x}{1:02x} is not plain CDR (XCDR1); ROS 2 middlewares send 0001")]
    Encapsulation(u8, u8),
    /// The body does not decode as the type.
    #[error("the body does not decode as {type_name}: {message}")]
    Body {
        /// The type expected.
        type_name: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The value cannot be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Appends the header and the little-endian CDR body of `value` to `out`.
pub fn encode_into<M: Serialize>(value: &M, out: &mut Vec<u8>) -> Result<(), CdrError> {
    out.extend_from_slice(&CDR_LE);
    cdr_encoding::to_writer::<M, LittleEndian, _>(&mut *out, value).map_err(|e| CdrError::Encode(e.to_string()))
}

/// The header and the little-endian CDR body of `value`.
pub fn encode<M: Serialize>(value: &M) -> Result<Vec<u8>, CdrError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a message that borrows from `bytes` (an image's pixels), either byte order.
pub fn decode_borrowed<'a, M: Deserialize<'a>>(bytes: &'a [u8], type_name: &'static str) -> Result<M, CdrError> {
    if bytes.len() < 4 {
        return Err(CdrError::TooShort(bytes.len()));
    }
    let body = &bytes[4..];
    let body_err = |e: cdr_encoding::Error| CdrError::Body { type_name, message: e.to_string() };
    match [bytes[0], bytes[1]] {
        [0, 1] => cdr_encoding::from_bytes::<M, LittleEndian>(body).map(|(m, _)| m).map_err(body_err),
        [0, 0] => cdr_encoding::from_bytes::<M, BigEndian>(body).map(|(m, _)| m).map_err(body_err),
        [a, b] => Err(CdrError::Encapsulation(a, b)),
    }
}

/// Decodes a message (header and body), either byte order.
pub fn decode<M: DeserializeOwned>(bytes: &[u8], type_name: &'static str) -> Result<M, CdrError> {
    decode_borrowed(bytes, type_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::*;

    #[test]
    fn the_float64_multi_array_from_the_notes_encodes_byte_for_byte() {
        let m = Float64MultiArray {
            layout: MultiArrayLayout {
                dim: vec![MultiArrayDimension { label: "joints".into(), size: 3, stride: 3 }],
                data_offset: 0,
            },
            data: vec![0.1, -0.2, 0.3],
        };
        let hex = "0001000001000000070000006a6f696e74730000030000000300000000000000030000009a9999999999b93f9a9999999999c9bf333333333333d33f";
        assert_eq!(hex::encode(encode(&m).unwrap()), hex);
        assert_eq!(decode::<Float64MultiArray>(&hex::decode(hex).unwrap(), Float64MultiArray::TYPE).unwrap(), m);
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert_eq!(decode::<Bool>(&[0, 1], Bool::TYPE), Err(CdrError::TooShort(2)));
        assert!(matches!(decode::<Bool>(&[0, 7, 0, 0, 1], Bool::TYPE), Err(CdrError::Encapsulation(0, 7))));
        let err = decode::<JointState>(&[0, 1, 0, 0, 9, 9], JointState::TYPE).unwrap_err();
        assert!(err.to_string().contains("sensor_msgs/msg/JointState"), "{err}");
    }
}
