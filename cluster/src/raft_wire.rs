//! A structural check of Raft messages from peers, before the protobuf crate parses them.
//!
//! RUSTSEC-2024-0437 (protobuf < 3.7.2): skipping an unknown *group* field recursed once per
//! nested group with no depth limit, so a few hundred kilobytes of group-start tags overflowed
//! the stack and aborted the process, every shard of the node with it. The protobuf 2.28 that
//! raft-rs 0.7 is built on turns out not to recurse there (a nested group is an error; see
//! `protobuf_itself_refuses_nested_groups`), but that is a property of one parser version, not
//! one we can rely on for input from the network. The eraftpb schema uses no groups, so a
//! message is refused if any message it holds (the Raft message, its entries, its snapshot and
//! that snapshot's metadata and configuration, and the configuration changes carried by
//! conf-change entries) has a group field, or a malformed tag, varint or length. What is left
//! is what any protobuf parser handles without unbounded recursion: submessages only where the
//! schema has them, four deep at most. The scan reads tags and skips byte fields by their
//! length: its cost grows with the number of fields, not with the size of the entries.

/// Why a Raft message's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftWireError {
    #[error("a {message} holds a group field (wire type {wire_type}), which no Raft message uses")]
    Group { message: &'static str, wire_type: u8 },
    #[error("a {message} has an unknown wire type {wire_type}")]
    WireType { message: &'static str, wire_type: u8 },
    #[error("a {message} is cut short or has an overlong varint")]
    Truncated { message: &'static str },
    #[error("a {message} has field number 0")]
    FieldZero { message: &'static str },
}

/// The eraftpb messages a peer's Raft message can hold, and which of their fields hold other
/// messages (every other length-delimited field is bytes or packed numbers: opaque to protobuf's
/// recursion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    Message,
    Entry,
    Snapshot,
    SnapshotMetadata,
    ConfState,
    ConfChange,
    ConfChangeV2,
    ConfChangeSingle,
}

impl Schema {
    fn name(self) -> &'static str {
        match self {
            Schema::Message => "Message",
            Schema::Entry => "Entry",
            Schema::Snapshot => "Snapshot",
            Schema::SnapshotMetadata => "SnapshotMetadata",
            Schema::ConfState => "ConfState",
            Schema::ConfChange => "ConfChange",
            Schema::ConfChangeV2 => "ConfChangeV2",
            Schema::ConfChangeSingle => "ConfChangeSingle",
        }
    }

    fn submessage(self, field: u64) -> Option<Schema> {
        match (self, field) {
            (Schema::Message, 7) => Some(Schema::Entry),
            (Schema::Message, 9) => Some(Schema::Snapshot),
            (Schema::Snapshot, 2) => Some(Schema::SnapshotMetadata),
            (Schema::SnapshotMetadata, 1) => Some(Schema::ConfState),
            (Schema::ConfChangeV2, 2) => Some(Schema::ConfChangeSingle),
            _ => None,
        }
    }
}

/// Entry types whose data the driver parses as a configuration change.
const ENTRY_CONF_CHANGE: u64 = 1;
const ENTRY_CONF_CHANGE_V2: u64 = 2;
const ENTRY_TYPE_FIELD: u64 = 1;
const ENTRY_DATA_FIELD: u64 = 4;

/// Checks a peer's serialized `eraftpb::Message` before it is parsed.
pub fn check_raft_message(bytes: &[u8]) -> Result<(), RaftWireError> {
    check(bytes, Schema::Message)
}

/// Checks the data of a conf-change entry before it is parsed.
pub fn check_conf_change(bytes: &[u8], v2: bool) -> Result<(), RaftWireError> {
    check(bytes, if v2 { Schema::ConfChangeV2 } else { Schema::ConfChange })
}

fn check(bytes: &[u8], schema: Schema) -> Result<(), RaftWireError> {
    let message = schema.name();
    let mut rest = bytes;
    // An entry's type may come after its data: remember both and check the data at the end.
    let mut entry_type = 0;
    let mut entry_data: Option<&[u8]> = None;
    while !rest.is_empty() {
        let tag = read_varint(&mut rest).ok_or(RaftWireError::Truncated { message })?;
        let (field, wire_type) = (tag >> 3, (tag & 7) as u8);
        if field == 0 {
            return Err(RaftWireError::FieldZero { message });
        }
        match wire_type {
            0 => {
                let value = read_varint(&mut rest).ok_or(RaftWireError::Truncated { message })?;
                if schema == Schema::Entry && field == ENTRY_TYPE_FIELD {
                    entry_type = value;
                }
            }
            1 => take(&mut rest, 8).ok_or(RaftWireError::Truncated { message }).map(drop)?,
            5 => take(&mut rest, 4).ok_or(RaftWireError::Truncated { message }).map(drop)?,
            2 => {
                let len = read_varint(&mut rest).ok_or(RaftWireError::Truncated { message })?;
                let len = usize::try_from(len).map_err(|_| RaftWireError::Truncated { message })?;
                let value = take(&mut rest, len).ok_or(RaftWireError::Truncated { message })?;
                if let Some(inner) = schema.submessage(field) {
                    check(value, inner)?;
                } else if schema == Schema::Entry && field == ENTRY_DATA_FIELD {
                    entry_data = Some(value);
                }
            }
            3 | 4 => return Err(RaftWireError::Group { message, wire_type }),
            _ => return Err(RaftWireError::WireType { message, wire_type }),
        }
    }
    match (entry_type, entry_data) {
        (ENTRY_CONF_CHANGE, Some(data)) => check_conf_change(data, false),
        (ENTRY_CONF_CHANGE_V2, Some(data)) => check_conf_change(data, true),
        _ => Ok(()),
    }
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if rest.len() < len {
        return None;
    }
    let (value, tail) = rest.split_at(len);
    *rest = tail;
    Some(value)
}

fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (position, &byte) in rest.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * position);
        if byte & 0x80 == 0 {
            *rest = &rest[position + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protobuf::Message as _;
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};

    fn full_message() -> Message {
        let mut change = ConfChangeSingle::default();
        change.set_change_type(ConfChangeType::AddLearnerNode);
        change.node_id = 4;
        let mut conf_change = ConfChangeV2::default();
        conf_change.mut_changes().push(change);
        let mut conf_entry = Entry::default();
        conf_entry.set_entry_type(EntryType::EntryConfChangeV2);
        conf_entry.data = conf_change.write_to_bytes().expect("encode").into();
        let mut entry = Entry::default();
        entry.data = vec![0x0b; 64].into();
        entry.index = 7;
        let mut snapshot = Snapshot::default();
        snapshot.data = b"opaque".to_vec().into();
        let mut conf_state = ConfState::default();
        conf_state.voters = vec![1, 2, 3];
        snapshot.mut_metadata().set_conf_state(conf_state);
        snapshot.mut_metadata().index = 9;
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 1;
        message.from = 2;
        message.priority = -3;
        message.context = b"ctx".to_vec().into();
        message.set_entries(vec![entry, conf_entry].into());
        message.set_snapshot(snapshot);
        message
    }

    #[test]
    fn every_real_message_passes() {
        let bytes = full_message().write_to_bytes().expect("encode");
        assert_eq!(check_raft_message(&bytes), Ok(()));
        assert_eq!(check_raft_message(&[]), Ok(()));
    }

    #[test]
    fn nested_groups_are_refused_at_any_depth() {
        // The attack: nothing but group-start tags (field 1, wire type 3).
        assert!(matches!(check_raft_message(&[0x0b; 1 << 16]), Err(RaftWireError::Group { message: "Message", .. })));
        // A group inside an entry, inside the snapshot's configuration, inside a conf change.
        let mut message = full_message();
        message.mut_entries()[0].data = b"bytes may hold anything".to_vec().into();
        let mut bad_conf_change = b"\x12\x02".to_vec();
        bad_conf_change.extend_from_slice(&[0x0b, 0x0c]);
        message.mut_entries()[1].data = bad_conf_change.into();
        let bytes = message.write_to_bytes().expect("encode");
        assert!(
            matches!(check_raft_message(&bytes), Err(RaftWireError::Group { message: "ConfChangeSingle", .. })),
            "{:?}",
            check_raft_message(&bytes)
        );
        // Appended to an entry as an unknown field.
        let mut entry = Entry::default().write_to_bytes().expect("encode");
        entry.extend_from_slice(&[0x5b, 0x5c]);
        let mut outer = vec![0x3a, entry.len() as u8];
        outer.extend_from_slice(&entry);
        assert!(matches!(check_raft_message(&outer), Err(RaftWireError::Group { message: "Entry", .. })));
    }

    /// What the module comment says of protobuf 2.28: a nested unknown group is an error, not
    /// a recursion. If an upgrade changes this, the check above is what still stands.
    #[test]
    fn protobuf_itself_refuses_nested_groups() {
        // Field 100, wire type 3 (start group), repeated: tag varint 0xa3 0x06.
        let nested: Vec<u8> = [0xa3u8, 0x06].iter().copied().cycle().take(1 << 20).collect();
        assert!(Message::parse_from_bytes(&nested).is_err());
        assert!(matches!(check_raft_message(&nested), Err(RaftWireError::Group { message: "Message", wire_type: 3 })));
    }

    #[test]
    fn malformed_framing_is_refused() {
        assert_eq!(check_raft_message(&[0x08]), Err(RaftWireError::Truncated { message: "Message" }));
        assert!(check_raft_message(&[0x08; 11]).is_err());
        assert_eq!(check_raft_message(&[0x3a, 0x05, 0x08]), Err(RaftWireError::Truncated { message: "Message" }));
        assert_eq!(check_raft_message(&[0x00, 0x01]), Err(RaftWireError::FieldZero { message: "Message" }));
        assert_eq!(check_raft_message(&[0x0e]), Err(RaftWireError::WireType { message: "Message", wire_type: 6 }));
        assert_eq!(check_raft_message(&[0xff; 12]), Err(RaftWireError::Truncated { message: "Message" }));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// What passes the check parses without a crash; random bytes and damaged real messages
        /// never make the check itself panic.
        #[test]
        fn whatever_passes_the_check_parses_safely(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, value)| {
                    let mut bytes = full_message().write_to_bytes().expect("encode");
                    let at = at.index(bytes.len());
                    bytes[at] = value;
                    bytes
                }),
            ]
        ) {
            if check_raft_message(&bytes).is_ok() {
                if let Ok(message) = Message::parse_from_bytes(&bytes) {
                    for entry in message.get_entries() {
                        if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                            let _ = ConfChangeV2::parse_from_bytes(entry.get_data());
                        }
                    }
                }
            }
        }
    }
}
