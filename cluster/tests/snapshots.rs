//! Log compaction and snapshots with the driver over the sled log store: a replica far behind
//! catches up by snapshot, and a restart after compaction restores the stored snapshot and
//! replays the rest of the log. Deterministic: no sleeps, bounded loops.

use std::collections::BTreeMap;

use raft::eraftpb::{Entry, Message, MessageType};
use raft::Storage;
use rushes_cluster::driver::{DriverError, StateMachine};
use rushes_cluster::log_store::{RaftLogStore, SledLogStore};
use rushes_cluster::{NodeId, RaftDriver, RaftSettings};

/// Applied payloads; the snapshot is the list, length-prefixed.
#[derive(Default, Debug, Clone, PartialEq)]
struct Machine {
    log: Vec<Vec<u8>>,
    restores: usize,
}

impl StateMachine for Machine {
    fn apply(&mut self, entry: &Entry) -> Result<(), String> {
        self.log.push(entry.data.to_vec());
        Ok(())
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        rushes_protocol::codec::encode(1, &self.log).map_err(|e| e.to_string())
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.log = rushes_protocol::codec::decode(1, data).map_err(|e| e.to_string())?;
        self.restores += 1;
        Ok(())
    }
}

fn payload(i: u32) -> Vec<u8> {
    format!("item-{i}").into_bytes()
}

fn drain(driver: &mut RaftDriver<SledLogStore>, machine: &mut Machine) -> Vec<Message> {
    let mut messages = vec![];
    for _ in 0..100 {
        if !driver.has_ready() {
            break;
        }
        messages.extend(driver.run_ready_with(machine).unwrap().messages);
    }
    messages
}

#[test]
fn single_voter_restart_after_compaction_restores_snapshot_and_replays_log() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RaftSettings::default();
    let mut expected = Machine::default();
    {
        let db = sled::open(dir.path()).unwrap();
        let store = SledLogStore::open(&db, &[1]).unwrap();
        let mut driver = RaftDriver::open(1, 3, &settings, store.clone(), 0, &mut expected).unwrap();
        driver.campaign().unwrap();
        drain(&mut driver, &mut expected);
        assert!(driver.is_leader());
        for i in 0..30 {
            driver.propose(vec![], payload(i)).unwrap();
            drain(&mut driver, &mut expected);
        }
        assert!(matches!(driver.compact(driver.applied_index() + 1, vec![]), Err(DriverError::CompactBeyondApplied { .. })));
        driver.compact_state_machine(&expected).unwrap();
        let snapshot_index = driver.applied_index();
        assert_eq!(store.first_log_index(), snapshot_index + 1);
        for i in 30..40 {
            driver.propose(vec![], payload(i)).unwrap();
            drain(&mut driver, &mut expected);
        }
        assert_eq!(expected.log, (0..40).map(payload).collect::<Vec<_>>());
        assert_eq!(store.first_log_index(), snapshot_index + 1, "later entries stay in the log");
        db.flush().unwrap();
    }
    // Reopen the same database with an empty state machine (applied = 0).
    let db = sled::open(dir.path()).unwrap();
    let store = SledLogStore::open(&db, &[1]).unwrap();
    assert!(store.first_log_index() > 1);
    assert!(
        matches!(RaftDriver::new(1, 3, &settings, store.clone(), 0), Err(DriverError::BehindLogStart { applied: 0, .. })),
        "the apply-only constructor cannot skip compacted entries"
    );
    let mut machine = Machine::default();
    let mut driver = RaftDriver::open(1, 3, &settings, store.clone(), 0, &mut machine).unwrap();
    assert_eq!(machine.restores, 1, "restored from the stored snapshot");
    assert_eq!(machine.log, expected.log[..30].to_vec(), "the snapshot holds the first 30 entries");
    driver.campaign().unwrap();
    drain(&mut driver, &mut machine);
    assert_eq!(machine.log, expected.log, "the rest of the log replayed after the snapshot");
    driver.propose(vec![], payload(40)).unwrap();
    drain(&mut driver, &mut machine);
    assert_eq!(machine.log.last(), Some(&payload(40)));
}

/// Three replicas over sled on an in-process network; replica 3 is cut off while the others
/// commit and compact, then catches up by snapshot.
#[test]
fn sled_replica_cut_off_catches_up_by_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let settings = RaftSettings::default();
    let ids: [NodeId; 3] = [1, 2, 3];
    let mut drivers = BTreeMap::new();
    let mut machines: BTreeMap<NodeId, Machine> = BTreeMap::new();
    let mut dbs = vec![];
    for (i, &id) in ids.iter().enumerate() {
        let db = sled::open(dirs[i].path()).unwrap();
        let store = SledLogStore::open(&db, &ids).unwrap();
        let machine = machines.entry(id).or_default();
        drivers.insert(id, RaftDriver::open(id, 0, &settings, store, 0, machine).unwrap());
        dbs.push(db);
    }
    let mut cut_off = true;
    let round = |drivers: &mut BTreeMap<NodeId, RaftDriver<SledLogStore>>, machines: &mut BTreeMap<NodeId, Machine>, cut_off: bool| {
        let mut messages = vec![];
        for (id, driver) in drivers.iter_mut() {
            driver.tick();
            messages.extend(drain(driver, machines.get_mut(id).unwrap()));
        }
        for message in messages {
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let (from, to) = (message.from, message.to);
            let delivered = !(cut_off && (from == 3 || to == 3));
            if delivered {
                drivers.get_mut(&to).unwrap().step(message).unwrap();
            }
            if snapshot {
                drivers.get_mut(&from).unwrap().report_snapshot(to, delivered);
            }
        }
    };
    // Node 1 campaigns first so the leader is one of the connected replicas.
    drivers.get_mut(&1).unwrap().campaign().unwrap();
    for _ in 0..200 {
        if drivers[&1].is_leader() {
            break;
        }
        round(&mut drivers, &mut machines, cut_off);
    }
    assert!(drivers[&1].is_leader());
    for i in 0..60 {
        drivers.get_mut(&1).unwrap().propose(vec![], payload(i)).unwrap();
        round(&mut drivers, &mut machines, cut_off);
    }
    for _ in 0..50 {
        if machines[&1].log.len() == 60 && machines[&2].log.len() == 60 {
            break;
        }
        round(&mut drivers, &mut machines, cut_off);
    }
    assert_eq!(machines[&2].log.len(), 60);
    assert!(machines[&3].log.is_empty());
    for id in [1, 2] {
        let machine = machines[&id].clone();
        let driver = drivers.get_mut(&id).unwrap();
        driver.compact_state_machine(&machine).unwrap();
        assert!(driver.store().first_index().unwrap() > 60);
    }
    cut_off = false;
    for _ in 0..300 {
        if machines[&3].log.len() == 60 {
            break;
        }
        round(&mut drivers, &mut machines, cut_off);
    }
    assert_eq!(machines[&3].restores, 1, "replica 3 restored from a snapshot");
    assert_eq!(machines[&3].log, machines[&1].log);
    // Later entries reach it through the log.
    drivers.get_mut(&1).unwrap().propose(vec![], payload(60)).unwrap();
    for _ in 0..50 {
        if machines[&3].log.len() == 61 {
            break;
        }
        round(&mut drivers, &mut machines, cut_off);
    }
    assert_eq!(machines[&3].log, (0..61).map(payload).collect::<Vec<_>>());
    // Its sled store holds the snapshot: reopening restores it and replays the rest.
    let store3 = drivers[&3].store().clone();
    store3.sync().unwrap();
    let snapshot = store3.stored_snapshot().unwrap().expect("follower stored the snapshot");
    drop(drivers);
    let store3 = SledLogStore::open(&dbs[2], &ids).unwrap();
    assert_eq!(store3.first_log_index(), snapshot.get_metadata().index + 1);
    let mut machine = Machine::default();
    let mut driver = RaftDriver::open(3, 0, &settings, store3, 0, &mut machine).unwrap();
    assert_eq!(machine.restores, 1);
    drain(&mut driver, &mut machine);
    // Only committed entries replay; the last one's commit may not have been persisted before
    // the leader told us, so the replica may be one behind until it hears from a leader.
    assert!(machine.log.len() >= 60 && machine.log[..] == (0..61).map(payload).collect::<Vec<_>>()[..machine.log.len()]);
}
