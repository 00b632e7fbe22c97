//! Hostile input: whatever bytes a client or a peer sends, decoding and parsing answer with a
//! value or an error, never a panic, and never an allocation much larger than the input. Random
//! bytes rarely get past the first byte, so each decoder is also fed valid encodings with bytes
//! flipped, cut or spliced, which walk deep into the decoder.

use proptest::prelude::*;
use rushes_protocol::codec;
use rushes_protocol::model::{IngestItem, ShardCommand, StoredAnnotation, StoredAsset, SHARD_COMMAND_FORMAT};
use rushes_protocol::peer::{AssetRead, ConflictProbe, PeerReply, PeerRequest, PEER_FORMAT};
use rushes_protocol::validate::{parse_batch, validate_command, BodyFormat, IngestLimits};

const ANNOTATION: &str = r#"{"id":"a-1","asset_id":"s01e01","model":"faces","model_version":"2","track":"character","start_ms":1000,"end_ms":2000,"confidence":0.9,"label":"Joey"}"#;
const SCENE: &str = r#"{"id":"v-1","asset_id":"s01e01","model":"clip","model_version":"1","track":"scene","start_ms":0,"end_ms":4000,"confidence":1,"label":"kitchen","vector_space":"scene","vector":[0.5,0.25,0.125,1]}"#;

fn limits() -> IngestLimits {
    let mut limits = IngestLimits::default();
    limits.vector_spaces[0].dimensions = 4;
    limits
}

fn valid_command() -> ShardCommand {
    let body = format!("{ANNOTATION}\n{SCENE}\n");
    let items = parse_batch(body.as_bytes(), BodyFormat::Ndjson, &limits())
        .expect("the sample batch is valid")
        .into_iter()
        .map(|parsed| {
            let (annotation, vector) = StoredAnnotation::from_validated(parsed.annotation);
            IngestItem { raw_json: parsed.raw_json, annotation, vector }
        })
        .collect();
    ShardCommand::Ingest { items }
}

fn valid_commands() -> Vec<Vec<u8>> {
    let upsert = ShardCommand::UpsertAsset {
        asset_id: "s01e01".into(),
        record: StoredAsset {
            title: Some("The One".into()),
            series: Some("Friends".into()),
            season: Some(1),
            episode: Some(1),
            duration_ms: Some(1_320_000),
            fps: Some(23.976),
        },
    };
    [valid_command(), upsert].iter().map(|command| codec::encode(SHARD_COMMAND_FORMAT, command).expect("encode")).collect()
}

fn valid_requests() -> Vec<Vec<u8>> {
    let command = codec::encode(SHARD_COMMAND_FORMAT, &valid_command()).expect("encode");
    let requests = vec![
        PeerRequest::Propose { shard: 2, command },
        PeerRequest::Status,
        PeerRequest::SearchFinish { query: 7, shard: 1, keep: vec!["s01e01".into(), "s01e02".into()] },
        PeerRequest::Vocabulary,
        PeerRequest::AssetRead(AssetRead::Buckets { asset_id: "s01e01".into(), from_ms: Some(0), to_ms: None }),
        PeerRequest::SnapshotChunk { shard: 3, after: Some(b"key".to_vec()), min_applied: 12 },
        PeerRequest::DialogueWord { word: "break".into(), shard: 0 },
        PeerRequest::NodeStatus,
        PeerRequest::CheckConflicts {
            shard: 1,
            probes: vec![ConflictProbe { asset_id: "s01e01".into(), annotation_id: "a-1".into(), raw_hash: 0x5eed }],
        },
    ];
    requests.iter().map(|request| codec::encode(PEER_FORMAT, request).expect("encode")).collect()
}

/// A valid encoding with one of: a byte flipped, a cut, a run of 0xff (a huge announced length)
/// or random bytes spliced in.
fn mutated(samples: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (0..samples.len(), any::<prop::sample::Index>(), any::<u8>(), 0u8..4, prop::collection::vec(any::<u8>(), 0..16)).prop_map(
        move |(which, at, value, how, spliced)| {
            let mut bytes = samples[which].clone();
            let at = at.index(bytes.len().max(1));
            match how {
                0 => {
                    if let Some(byte) = bytes.get_mut(at) {
                        *byte ^= value.max(1);
                    }
                }
                1 => bytes.truncate(at),
                2 => {
                    let end = (at + 8).min(bytes.len());
                    bytes[at..end].fill(0xff);
                }
                _ => {
                    let at = at.min(bytes.len());
                    bytes.splice(at..at, spliced);
                }
            }
            bytes
        },
    )
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn peer_requests_decode_or_fail_cleanly(bytes in prop_oneof![any_bytes(), mutated(valid_requests())]) {
        if let Ok(PeerRequest::Propose { command, .. }) = codec::decode_received::<PeerRequest>(PEER_FORMAT, &bytes) {
            // What a forwarded write carries is decoded and validated before it is proposed.
            if let Ok(command) = codec::decode_received::<ShardCommand>(SHARD_COMMAND_FORMAT, &command) {
                let _ = validate_command(&command, &limits());
                let _ = command.check_invariants();
            }
        }
    }

    #[test]
    fn peer_replies_decode_or_fail_cleanly(bytes in any_bytes()) {
        let _ = codec::decode_received::<PeerReply>(PEER_FORMAT, &bytes);
    }

    #[test]
    fn shard_commands_decode_validate_or_fail_cleanly(bytes in prop_oneof![any_bytes(), mutated(valid_commands())]) {
        if let Ok(command) = codec::decode_received::<ShardCommand>(SHARD_COMMAND_FORMAT, &bytes) {
            // The HTTP limits are tighter than the hard limits: what passes them passes both.
            if validate_command(&command, &limits()).is_ok() {
                prop_assert_eq!(command.check_invariants(), Ok(()));
            }
        }
    }

    #[test]
    fn batches_parse_or_name_the_problem(
        bytes in prop_oneof![
            any_bytes(),
            mutated(vec![format!("[{ANNOTATION},{SCENE}]").into_bytes(), format!("{ANNOTATION}\n{SCENE}").into_bytes()]),
        ],
        ndjson in any::<bool>(),
    ) {
        let format = if ndjson { BodyFormat::Ndjson } else { BodyFormat::JsonArray };
        match parse_batch(&bytes, format, &limits()) {
            Ok(items) => {
                prop_assert!(!items.is_empty());
                for item in items {
                    // Every accepted item's raw bytes are a slice of the body, kept untouched.
                    prop_assert!(bytes.windows(item.raw_json.len()).any(|window| window == item.raw_json.as_slice()));
                }
            }
            Err(error) => prop_assert!(!error.message.is_empty()),
        }
    }
}

#[test]
fn a_tiny_input_announcing_a_huge_length_is_refused_without_allocating_it() {
    // Format byte, Propose, shard 0, then a byte string claiming 2^62 bytes.
    let mut forged = vec![PEER_FORMAT, 0, 0, 0xff];
    forged.extend_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(codec::decode_received::<PeerRequest>(PEER_FORMAT, &forged).is_err());
    let mut forged = vec![SHARD_COMMAND_FORMAT, 0, 0xfd];
    forged.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(codec::decode_received::<ShardCommand>(SHARD_COMMAND_FORMAT, &forged).is_err());
}

/// The smallest valid annotation, many times over, and full-size ones: a legal batch always
/// decodes within the limit sized by its bytes, so it is never refused where it is applied.
#[test]
fn honest_commands_decode_within_the_received_limit() {
    const SMALLEST: &str = r#"{"id":"a","asset_id":"b","model":"m","model_version":"1","track":"t","start_ms":0,"end_ms":1,"label":"x"}"#;
    let limits = IngestLimits { max_batch_items: 100_000, ..limits() };
    for (line, count) in [(SMALLEST, 1), (SMALLEST, 1000), (SMALLEST, 100_000), (ANNOTATION, 2000), (SCENE, 20_000)] {
        let body: String = (0..count).map(|i| format!("{}\n", line.replacen("\"id\":\"", &format!("\"id\":\"{i}-"), 1))).collect();
        let items: Vec<IngestItem> = parse_batch(body.as_bytes(), BodyFormat::Ndjson, &limits)
            .expect("a valid batch")
            .into_iter()
            .map(|parsed| {
                let (annotation, vector) = StoredAnnotation::from_validated(parsed.annotation);
                IngestItem { raw_json: parsed.raw_json, annotation, vector }
            })
            .collect();
        let command = ShardCommand::Ingest { items };
        let bytes = codec::encode(SHARD_COMMAND_FORMAT, &command).expect("encode");
        let decoded = codec::decode_received::<ShardCommand>(SHARD_COMMAND_FORMAT, &bytes)
            .unwrap_or_else(|e| panic!("{count} x {} bytes, encoded in {} bytes: {e}", line.len(), bytes.len()));
        assert_eq!(decoded, command);
    }
}
