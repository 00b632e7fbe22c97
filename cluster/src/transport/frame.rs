//! Frame format of the peer transport: `[u32 big-endian length][u8 wire version][bincode body]`.
//!
//! The length counts the version byte plus the body (not the length prefix itself). The version
//! byte and body are produced and checked by [`rushes_protocol::codec`] (decode limit, trailing
//! bytes). Both sides enforce a maximum frame size: a sender refuses to build a larger frame, and a
//! receiver rejects a length prefix above its maximum before allocating anything for the body.

use rushes_protocol::codec::{self, CodecError};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Wire version spoken by this build; it is the version byte of every frame and is repeated in
/// the handshake `Hello` so a refusal can name it.
pub const WIRE_VERSION: u8 = 1;

/// Size of the big-endian length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Default maximum frame size (version byte + body). Large enough for a Raft append carrying a
/// full ingest batch; snapshots bigger than this must be chunked by the caller.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Above this, a reader's scratch buffer is released after use so one huge frame does not pin
/// memory for the life of the connection.
const SCRATCH_KEEP_BYTES: usize = 1024 * 1024;

/// Initial reservation for a frame body: the body buffer then grows with the bytes actually
/// received, so a peer that announces a large (but allowed) frame and sends little costs little.
const INITIAL_BODY_RESERVE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len_bytes} bytes exceeds the maximum of {max_frame_bytes} bytes")]
    TooLarge { len_bytes: u64, max_frame_bytes: usize },
    #[error("empty frame: no wire version byte")]
    Empty,
    #[error("wire version {found} is not supported (this build speaks {expected})")]
    UnsupportedVersion { found: u8, expected: u8 },
    #[error("frame body does not decode: {0}")]
    Decode(String),
    #[error("frame has {trailing_bytes} trailing bytes after the value")]
    TrailingBytes { trailing_bytes: usize },
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("stream ended inside a frame ({received_bytes} of {expected_bytes} bytes)")]
    Truncated { received_bytes: usize, expected_bytes: usize },
    #[error("i/o error ({kind:?}): {message}")]
    Io { kind: std::io::ErrorKind, message: String },
}

impl From<CodecError> for FrameError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Empty => FrameError::Empty,
            CodecError::UnsupportedVersion { found, expected } => FrameError::UnsupportedVersion { found, expected },
            CodecError::Decode(m) => FrameError::Decode(m),
            CodecError::TrailingBytes { trailing } => FrameError::TrailingBytes { trailing_bytes: trailing },
            CodecError::Encode(m) => FrameError::Encode(m),
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io { kind: e.kind(), message: e.to_string() }
    }
}

fn check_len(len_bytes: u64, max_frame_bytes: usize) -> Result<(), FrameError> {
    // The u32 prefix caps a frame at 4 GiB whatever the configured maximum says.
    if len_bytes > max_frame_bytes as u64 || len_bytes > u64::from(u32::MAX) {
        return Err(FrameError::TooLarge { len_bytes, max_frame_bytes });
    }
    Ok(())
}

/// Encodes `value` as a frame payload (version byte + body, no length prefix), refusing payloads
/// above `max_frame_bytes`. Senders encode at enqueue time so the caller gets this error directly.
pub fn encode_payload<T: Serialize>(value: &T, max_frame_bytes: usize) -> Result<Vec<u8>, FrameError> {
    let payload = codec::encode(WIRE_VERSION, value)?;
    check_len(payload.len() as u64, max_frame_bytes)?;
    Ok(payload)
}

/// Appends the length prefix and `payload` (from [`encode_payload`], so its size is checked).
pub fn append_frame(out: &mut Vec<u8>, payload: &[u8]) {
    // encode_payload guarantees payload.len() <= u32::MAX; saturate rather than wrap just in case.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Encodes a complete frame (length prefix included).
pub fn encode_frame<T: Serialize>(value: &T, max_frame_bytes: usize) -> Result<Vec<u8>, FrameError> {
    let payload = encode_payload(value, max_frame_bytes)?;
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + payload.len());
    append_frame(&mut out, &payload);
    Ok(out)
}

/// Decodes a frame payload (version byte + body). bincode 2 allocates a byte string or
/// `String` of its announced length before checking the input holds that many bytes, so the
/// value may claim at most four times the payload's size ([`codec::decode_received`]).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(codec::decode_received(WIRE_VERSION, payload)?)
}

/// Decodes one frame from the front of `buf`. Returns `Ok(None)` when `buf` holds only part of a
/// frame (the caller needs more bytes), or the value and the number of bytes it used. An oversize
/// length prefix is an error as soon as the prefix is readable.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8], max_frame_bytes: usize) -> Result<Option<(T, usize)>, FrameError> {
    let Some(&[a, b, c, d]) = buf.get(..LENGTH_PREFIX_BYTES) else {
        return Ok(None);
    };
    let len_bytes = u32::from_be_bytes([a, b, c, d]);
    check_len(u64::from(len_bytes), max_frame_bytes)?;
    let end = LENGTH_PREFIX_BYTES + len_bytes as usize;
    let Some(payload) = buf.get(LENGTH_PREFIX_BYTES..end) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, end)))
}

/// Reads one frame from `reader`. Returns `Ok(None)` on a clean end of stream at a frame boundary.
///
/// The length prefix is checked against `max_frame_bytes` before any body byte is read or any
/// body memory is reserved. Reads exactly one frame's bytes, so a caller may hand the reader to a
/// buffered reader afterwards without losing data (the handshake relies on this). `scratch` is
/// reused between frames to avoid an allocation per frame.
pub async fn read_frame<R, T>(reader: &mut R, max_frame_bytes: usize, scratch: &mut Vec<u8>) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    if !read_frame_payload(reader, max_frame_bytes, scratch).await? {
        return Ok(None);
    }
    decode_payload(scratch).map(Some)
}

/// Decodes a payload from a peer not trusted yet: the value may claim at most `LIMIT` bytes, so
/// an announced string length cannot make us allocate more than that.
pub fn decode_payload_with_limit<T: DeserializeOwned, const LIMIT: usize>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(codec::decode_with_limit::<T, LIMIT>(WIRE_VERSION, payload)?)
}

/// Reads one frame's payload (version byte + body) into `scratch`, checked like [`read_frame`];
/// `false` on a clean end of stream at a frame boundary.
pub async fn read_frame_payload<R>(reader: &mut R, max_frame_bytes: usize, scratch: &mut Vec<u8>) -> Result<bool, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        let n = reader.read(&mut prefix[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(FrameError::Truncated { received_bytes: filled, expected_bytes: LENGTH_PREFIX_BYTES });
        }
        filled += n;
    }
    let len_bytes = u32::from_be_bytes(prefix) as usize;
    check_len(len_bytes as u64, max_frame_bytes)?;

    if scratch.capacity() > SCRATCH_KEEP_BYTES {
        *scratch = Vec::new();
    }
    scratch.clear();
    scratch.reserve(len_bytes.min(INITIAL_BODY_RESERVE_BYTES));
    // `take` bounds the read to this frame; read_to_end grows the buffer only as bytes arrive.
    let received_bytes = (&mut *reader).take(len_bytes as u64).read_to_end(scratch).await?;
    if received_bytes < len_bytes {
        return Err(FrameError::Truncated {
            received_bytes: LENGTH_PREFIX_BYTES + received_bytes,
            expected_bytes: LENGTH_PREFIX_BYTES + len_bytes,
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        body: Vec<u8>,
        note: String,
    }

    fn msg(id: u64) -> Msg {
        Msg { id, body: vec![id as u8; 10 + id as usize], note: format!("m{id}") }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime")
    }

    #[test]
    fn round_trip() {
        let frame = encode_frame(&msg(3), DEFAULT_MAX_FRAME_BYTES).expect("encode");
        assert_eq!(u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize, frame.len() - LENGTH_PREFIX_BYTES);
        assert_eq!(frame[LENGTH_PREFIX_BYTES], WIRE_VERSION);
        let (decoded, used) = decode_frame::<Msg>(&frame, DEFAULT_MAX_FRAME_BYTES).expect("decode").expect("complete");
        assert_eq!(decoded, msg(3));
        assert_eq!(used, frame.len());

        let mut scratch = Vec::new();
        let mut reader: &[u8] = &frame;
        let read: Option<Msg> = rt().block_on(read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES, &mut scratch)).expect("read");
        assert_eq!(read, Some(msg(3)));
    }

    #[test]
    fn sender_refuses_oversize_frame() {
        let big = Msg { id: 1, body: vec![7; 2000], note: String::new() };
        assert!(matches!(encode_frame(&big, 1000), Err(FrameError::TooLarge { max_frame_bytes: 1000, .. })));
        assert!(matches!(encode_payload(&big, 1000), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn oversize_length_prefix_rejected_without_allocation() {
        // Announces a 4 GiB frame followed by a few bytes only.
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[WIRE_VERSION, 1, 2, 3]);
        let max = DEFAULT_MAX_FRAME_BYTES;
        assert_eq!(
            decode_frame::<Msg>(&bytes, max).map(|_| ()),
            Err(FrameError::TooLarge { len_bytes: u64::from(u32::MAX), max_frame_bytes: max })
        );
        // Only the prefix is needed to refuse it.
        assert!(matches!(decode_frame::<Msg>(&bytes[..4], max), Err(FrameError::TooLarge { .. })));

        // Streaming: rejected right after the prefix, with nothing reserved for the body, and the
        // remaining bytes left unread (we did not wait for a body that will never come).
        let mut scratch = Vec::new();
        let mut reader: &[u8] = &bytes;
        let res = rt().block_on(read_frame::<_, Msg>(&mut reader, max, &mut scratch));
        assert!(matches!(res, Err(FrameError::TooLarge { .. })), "{res:?}");
        assert_eq!(scratch.capacity(), 0);
        assert_eq!(reader.len(), 4);

        // Just above a small maximum is refused too; exactly at it is accepted.
        let frame = encode_frame(&msg(5), DEFAULT_MAX_FRAME_BYTES).expect("encode");
        let payload_bytes = frame.len() - LENGTH_PREFIX_BYTES;
        assert!(matches!(decode_frame::<Msg>(&frame, payload_bytes - 1), Err(FrameError::TooLarge { .. })));
        assert!(decode_frame::<Msg>(&frame, payload_bytes).expect("at max").is_some());
    }

    #[test]
    fn truncated_frame() {
        let frame = encode_frame(&msg(9), DEFAULT_MAX_FRAME_BYTES).expect("encode");
        let rt = rt();
        for cut in 0..frame.len() {
            // From a buffer: incomplete, not an error.
            assert_eq!(decode_frame::<Msg>(&frame[..cut], DEFAULT_MAX_FRAME_BYTES).expect("partial"), None);
            // From a stream that ends: clean EOF only at 0, otherwise Truncated.
            let mut reader: &[u8] = &frame[..cut];
            let mut scratch = Vec::new();
            let res = rt.block_on(read_frame::<_, Msg>(&mut reader, DEFAULT_MAX_FRAME_BYTES, &mut scratch));
            if cut == 0 {
                assert_eq!(res, Ok(None));
            } else {
                assert!(
                    matches!(res, Err(FrameError::Truncated { received_bytes, expected_bytes }) if received_bytes == cut && expected_bytes == if cut < 4 { 4 } else { frame.len() }),
                    "cut {cut}: {res:?}"
                );
            }
        }
        // A length prefix that is shorter than the encoded value: the body does not decode.
        let mut short = frame.clone();
        let len = (frame.len() - LENGTH_PREFIX_BYTES - 3) as u32;
        short[..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode_frame::<Msg>(&short, DEFAULT_MAX_FRAME_BYTES).is_err());
    }

    #[test]
    fn wrong_version_byte() {
        let mut frame = encode_frame(&msg(1), DEFAULT_MAX_FRAME_BYTES).expect("encode");
        frame[LENGTH_PREFIX_BYTES] = WIRE_VERSION + 1;
        assert_eq!(
            decode_frame::<Msg>(&frame, DEFAULT_MAX_FRAME_BYTES).map(|_| ()),
            Err(FrameError::UnsupportedVersion { found: WIRE_VERSION + 1, expected: WIRE_VERSION })
        );
        // A zero-length frame has no version byte at all.
        assert_eq!(decode_frame::<Msg>(&[0, 0, 0, 0], DEFAULT_MAX_FRAME_BYTES).map(|_| ()), Err(FrameError::Empty));
    }

    #[test]
    fn trailing_bytes_inside_frame_rejected() {
        let payload = encode_payload(&msg(2), DEFAULT_MAX_FRAME_BYTES).expect("encode");
        let mut padded = payload.clone();
        padded.push(0);
        let mut frame = Vec::new();
        append_frame(&mut frame, &padded);
        assert_eq!(decode_frame::<Msg>(&frame, DEFAULT_MAX_FRAME_BYTES).map(|_| ()), Err(FrameError::TrailingBytes { trailing_bytes: 1 }));
    }

    #[test]
    fn multiple_frames_in_one_buffer() {
        let mut buf = Vec::new();
        for id in 0..5 {
            append_frame(&mut buf, &encode_payload(&msg(id), DEFAULT_MAX_FRAME_BYTES).expect("encode"));
        }
        // Buffer decoding, frame by frame.
        let mut offset = 0;
        let mut seen = Vec::new();
        while let Some((m, used)) = decode_frame::<Msg>(&buf[offset..], DEFAULT_MAX_FRAME_BYTES).expect("decode") {
            seen.push(m);
            offset += used;
        }
        assert_eq!(offset, buf.len());
        assert_eq!(seen, (0..5).map(msg).collect::<Vec<_>>());

        // Stream decoding reads exactly one frame at a time, then a clean end of stream.
        let rt = rt();
        let mut reader: &[u8] = &buf;
        let mut scratch = Vec::new();
        for id in 0..5 {
            let m: Option<Msg> = rt.block_on(read_frame(&mut reader, DEFAULT_MAX_FRAME_BYTES, &mut scratch)).expect("read");
            assert_eq!(m, Some(msg(id)));
        }
        assert_eq!(rt.block_on(read_frame::<_, Msg>(&mut reader, DEFAULT_MAX_FRAME_BYTES, &mut scratch)), Ok(None));
    }

    fn envelope_frames() -> Vec<Vec<u8>> {
        use crate::transport::{Envelope, Hello, WireError};
        [
            Envelope::Hello(Hello { cluster_id: "prod".into(), node_id: 2, wire_version: WIRE_VERSION }),
            Envelope::Raft { shard: 3, message: vec![8, 1, 16, 2, 24, 3] },
            Envelope::Request { request_id: 9, body: b"request".to_vec() },
            Envelope::Response { request_id: 9, body: Ok(b"reply".to_vec()) },
            Envelope::Response { request_id: 10, body: Err(WireError::new(WireError::BAD_REQUEST, "no")) },
        ]
        .iter()
        .map(|envelope| encode_frame(envelope, DEFAULT_MAX_FRAME_BYTES).expect("encode"))
        .collect()
    }

    /// Arbitrary bytes, or valid frames with a byte flipped, cut short, or with a run of 0xff
    /// (a huge announced length) written over them.
    fn hostile_frames() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let frames = envelope_frames();
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            (0..frames.len(), any::<proptest::sample::Index>(), any::<u8>(), 0u8..3).prop_map(move |(which, at, value, how)| {
                let mut bytes = frames[which].clone();
                let at = at.index(bytes.len());
                match how {
                    0 => bytes[at] ^= value.max(1),
                    1 => bytes.truncate(at),
                    _ => {
                        let end = (at + 8).min(bytes.len());
                        bytes[at..end].fill(0xff)
                    }
                }
                bytes
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

        /// No bytes from a peer panic the decoder, make it read past the frame, or pass a frame
        /// over the limit; the buffered and the streaming readers agree.
        #[test]
        fn any_bytes_decode_to_a_frame_or_an_error(bytes in hostile_frames()) {
            use crate::transport::Envelope;
            let max = 1024;
            let buffered = decode_frame::<Envelope>(&bytes, max);
            if let Ok(Some((_, used))) = &buffered {
                proptest::prop_assert!(*used <= bytes.len() && *used <= LENGTH_PREFIX_BYTES + max);
            }
            let mut scratch = Vec::new();
            let mut reader: &[u8] = &bytes;
            let streamed = rt().block_on(read_frame::<_, Envelope>(&mut reader, max, &mut scratch));
            proptest::prop_assert!(scratch.capacity() <= max.max(64), "reserved {} bytes", scratch.capacity());
            match (&buffered, &streamed) {
                (Ok(Some((a, _))), Ok(Some(b))) => proptest::prop_assert_eq!(format!("{a:?}"), format!("{b:?}")),
                (Ok(Some(_)), other) => proptest::prop_assert!(false, "buffered decoded, streamed {other:?}"),
                (Err(_), Ok(Some(_))) => proptest::prop_assert!(false, "streamed decoded what the buffered reader refused"),
                _ => {}
            }
        }
    }
}
