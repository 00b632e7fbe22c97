//! Versioned binary encoding for everything stored on disk or sent between nodes.
//!
//! Every value is `[format_version: u8][bincode body]`. Decoding checks the version, applies a
//! size limit (bincode's standard config has none) and checks that the whole input was consumed.

use serde::{de::DeserializeOwned, Serialize};

/// Largest value we ever decode (a Raft entry holding a full ingest batch is the biggest).
pub const DECODE_LIMIT_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("empty input: no format version byte")]
    Empty,
    #[error("format version {found} is not supported (this build reads version {expected})")]
    UnsupportedVersion { found: u8, expected: u8 },
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("{trailing} trailing bytes after the value")]
    TrailingBytes { trailing: usize },
    #[error("encoding failed: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

pub fn encode<T: Serialize>(format_version: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(format_version);
    let body = bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(format_version: u8, bytes: &[u8]) -> Result<T, CodecError> {
    decode_with_limit::<T, DECODE_LIMIT_BYTES>(format_version, bytes)
}

/// The most a value decoded by [`decode_received`] may claim, whatever its size.
pub const RECEIVED_DECODE_LIMIT_BYTES: usize = 1 << 30;

/// Like [`decode`], for bytes from the network (and committed log entries, which came from it):
/// the value may claim at most four times the bytes actually received, rounded up to a power of
/// two (at least 16 KiB, at most [`RECEIVED_DECODE_LIMIT_BYTES`]). bincode allocates a string of
/// its announced length, and a container of its announced count times the element's size, before
/// reading them; without this a 10-byte frame announcing 200 MiB would make us allocate 200 MiB.
/// Four, because an honest value claims more than its encoding: a batch's items are 288 bytes
/// in memory besides their strings, about 2.8 times the encoding of the smallest valid
/// annotation (test `honest_commands_decode_within_the_received_limit`).
pub fn decode_received<T: DeserializeOwned>(format_version: u8, bytes: &[u8]) -> Result<T, CodecError> {
    macro_rules! tiers {
        ($($input:expr),*) => {
            $(if bytes.len() <= $input {
                return decode_with_limit::<T, { 4 * $input }>(format_version, bytes);
            })*
        };
    }
    tiers!(
        4 << 10,
        8 << 10,
        16 << 10,
        32 << 10,
        64 << 10,
        128 << 10,
        256 << 10,
        512 << 10,
        1 << 20,
        2 << 20,
        4 << 20,
        8 << 20,
        16 << 20,
        32 << 20,
        64 << 20,
        128 << 20
    );
    decode_with_limit::<T, RECEIVED_DECODE_LIMIT_BYTES>(format_version, bytes)
}

/// Like [`decode`], with `LIMIT` bytes as the most the value may claim. bincode allocates a
/// string of its announced length (within the limit) before reading it, so input from a peer
/// that is not yet trusted (a handshake) gets a limit as small as the frames it may send.
pub fn decode_with_limit<T: DeserializeOwned, const LIMIT: usize>(format_version: u8, bytes: &[u8]) -> Result<T, CodecError> {
    let (&found, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if found != format_version {
        return Err(CodecError::UnsupportedVersion { found, expected: format_version });
    }
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, consumed) = bincode::serde::decode_from_slice(body, config).map_err(|e| CodecError::Decode(e.to_string()))?;
    if consumed != body.len() {
        return Err(CodecError::TrailingBytes { trailing: body.len() - consumed });
    }
    Ok(value)
}

/// Like [`decode`], but borrows strings from `bytes` instead of allocating them.
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(format_version: u8, bytes: &'a [u8]) -> Result<T, CodecError> {
    let (&found, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if found != format_version {
        return Err(CodecError::UnsupportedVersion { found, expected: format_version });
    }
    let (value, consumed) = bincode::serde::borrow_decode_from_slice(body, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if consumed != body.len() {
        return Err(CodecError::TrailingBytes { trailing: body.len() - consumed });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: String,
        c: Option<Vec<f32>>,
    }

    #[test]
    fn round_trip_and_version_check() {
        let value = Sample { a: 7, b: "joey".into(), c: Some(vec![0.5, -1.0]) };
        let bytes = encode(3, &value).unwrap();
        assert_eq!(bytes[0], 3);
        assert_eq!(decode::<Sample>(3, &bytes).unwrap(), value);
        assert_eq!(decode::<Sample>(4, &bytes), Err(CodecError::UnsupportedVersion { found: 3, expected: 4 }));
        assert_eq!(decode::<Sample>(3, &[]), Err(CodecError::Empty));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(1, &Sample { a: 1, b: String::new(), c: None }).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<Sample>(1, &bytes), Err(CodecError::TrailingBytes { trailing: 1 })));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let bytes = encode(1, &Sample { a: 1 << 40, b: "x".repeat(100), c: None }).unwrap();
        for cut in 1..bytes.len() {
            assert!(decode::<Sample>(1, &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn a_small_limit_refuses_a_long_announced_string() {
        // b: a string announcing 1 MiB (varint 0xfc + u32 LE) with no bytes behind it.
        let mut bytes = vec![1u8, 7];
        bytes.push(0xfc);
        bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
        let refused = decode_with_limit::<Sample, 4096>(1, &bytes);
        assert!(matches!(&refused, Err(CodecError::Decode(m)) if m.contains("LimitExceeded")), "{refused:?}");
        // With the default limit the same input fails later, at the end of the input.
        let late = decode::<Sample>(1, &bytes);
        assert!(matches!(&late, Err(CodecError::Decode(m)) if !m.contains("LimitExceeded")), "{late:?}");
        let fine = encode(1, &Sample { a: 7, b: "joey".into(), c: None }).unwrap();
        assert_eq!(decode_with_limit::<Sample, 4096>(1, &fine).unwrap().b, "joey");
    }

    #[test]
    fn received_bytes_cannot_claim_more_than_four_times_their_size() {
        // A 7-byte input announcing a 1 MiB string: refused by the limit, before allocating.
        let mut bytes = vec![1u8, 7];
        bytes.push(0xfc);
        bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
        let refused = decode_received::<Sample>(1, &bytes);
        assert!(matches!(&refused, Err(CodecError::Decode(m)) if m.contains("LimitExceeded")), "{refused:?}");
        // Honest values of every size decode.
        for len in [0usize, 100, 5_000, 70_000, 3_000_000] {
            let value = Sample { a: 1, b: "x".repeat(len), c: Some(vec![1.0; 10]) };
            assert_eq!(decode_received::<Sample>(1, &encode(1, &value).unwrap()).unwrap(), value, "{len}");
        }
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A string length of ~2^60: must fail on the limit, not try to allocate.
        let bytes = [1u8, 0, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Sample>(1, &bytes).is_err());
    }
}
