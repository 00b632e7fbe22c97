//! Hostile input on the node's own decoders and parsers: peer requests, Raft messages and
//! snapshot references from peers; subtitle files, typed queries and cursors from clients.
//! Whatever arrives, the answer is a value or an error, never a panic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rushes_node::ingest::subtitles::parse_subtitles;
use rushes_node::peer::{decode_raft, decode_request, SMALL_REQUEST_BYTES_MAX};
use rushes_node::query::plan::Cursor;
use rushes_node::query::understand::{understand, Vocabulary};
use rushes_node::shard::snapshot::SnapshotData;
use rushes_protocol::codec;
use rushes_protocol::peer::{PeerRequest, PEER_FORMAT};

const SRT: &str =
    "1\r\n00:00:01,000 --> 00:00:02,500\r\nWe were on a break!\r\n\r\n2\r\n00:00:03,000 --> 00:00:04,000\r\n<i>Pivot.</i>\r\n";
const VTT: &str =
    "WEBVTT\n\nNOTE made by hand\n\n00:01.000 --> 00:02.500 line:0\n<v Ross>We were on a break!\n\n00:00:03.000 --> 00:00:04.000\nPivot.\n";

/// A valid text with one character replaced, removed or inserted, or cut short.
fn mutated_text(samples: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (0..samples.len(), any::<prop::sample::Index>(), any::<u8>(), 0u8..4).prop_map(move |(which, at, byte, how)| {
        let mut bytes = samples[which].as_bytes().to_vec();
        let at = at.index(bytes.len());
        match how {
            0 => bytes[at] = byte,
            1 => {
                bytes.remove(at);
            }
            2 => bytes.insert(at, byte),
            _ => bytes.truncate(at),
        }
        bytes
    })
}

/// Text from the corners of Unicode that break byte arithmetic: characters whose lower case
/// has another byte length, combining marks, quotes of every kind, control characters.
fn awkward_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 \"'’“”«»\\-.:,\u{212A}\u{0130}\u{1E9E}\u{03A3}\u{3000}\u{0301}\u{FFFD}\u{0000}\\PC]{0,48}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn peer_requests_from_any_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512), prefix in any::<bool>()) {
        let mut body = bytes;
        if prefix {
            // Past the format byte, into the variants.
            body.insert(0, PEER_FORMAT);
        }
        let _ = decode_request(&body);
        let _ = decode_raft(&body);
        let _ = SnapshotData::parse(&body);
    }

    #[test]
    fn subtitle_files_parse_or_name_the_line(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated_text(&[SRT, VTT])],
    ) {
        let mut reports = Vec::new();
        match parse_subtitles(&bytes, &mut |done, total| reports.push((done, total))) {
            Ok(parsed) => {
                prop_assert!(!parsed.cues.is_empty());
                for cue in &parsed.cues {
                    prop_assert!(cue.start_ms < cue.end_ms, "a cue ends before it starts: {:?}", cue);
                }
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
        prop_assert!(reports.iter().all(|&(done, total)| done <= total && total == bytes.len()), "progress {:?}", reports);
    }

    #[test]
    fn any_typed_query_is_understood_without_panicking(q in prop_oneof![awkward_text(), any::<String>()]) {
        let labels: BTreeMap<String, Vec<String>> = [("joey", "character"), ("central perk", "scene"), ("kitchen", "scene"), ("k", "object")]
            .into_iter()
            .map(|(label, track)| (label.to_string(), vec![track.to_string()]))
            .collect();
        let series = vec!["Friends".to_string(), "K\u{212A}".to_string()];
        let understood = understand(&q, &Vocabulary { labels: &labels, series: &series });
        prop_assert!(understood.ignored_words.len() <= q.len());
    }

    #[test]
    fn any_cursor_text_decodes_to_a_valid_cursor_or_none(text in prop_oneof![any::<String>(), "1[0-9a-fA-F]{0,40}", "1[0-9a-f\u{212A}]{16,24}"]) {
        if let Some(cursor) = Cursor::decode(&text) {
            prop_assert!(cursor.score.is_finite());
            prop_assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
    }
}

#[test]
fn only_a_forwarded_write_may_be_large() {
    // A large request of any other kind is refused before it is decoded.
    let status = codec::encode(PEER_FORMAT, &PeerRequest::Status).expect("encode");
    let mut padded = status.clone();
    padded.resize(SMALL_REQUEST_BYTES_MAX + 1, 0);
    let error = decode_request(&padded).expect_err("a 16 MiB status request is refused");
    assert!(error.message.contains("only forwarded writes"), "{}", error.message);
    assert!(matches!(decode_request(&status), Ok(PeerRequest::Status)));
    // A large forwarded write decodes.
    let command = vec![7u8; SMALL_REQUEST_BYTES_MAX + 10];
    let propose = codec::encode(PEER_FORMAT, &PeerRequest::Propose { shard: 1, command: command.clone() }).expect("encode");
    match decode_request(&propose) {
        Ok(PeerRequest::Propose { shard: 1, command: decoded }) => assert_eq!(decoded, command),
        other => panic!("a large forwarded write must decode: {other:?}"),
    }
}
