//! Log compaction and snapshots with the driver over the sled log store: a replica far behind
//! catches up by snapshot, and a restart after compaction restores the stored snapshot and
//! replays the rest of the log. Deterministic: no sleeps, bounded loops.

use raft::eraftpb::Message;
use raft::Storage;
use rushes_cluster::driver::DriverError;
use rushes_cluster::log_store::{RaftLogStore, SledLogStore};
use rushes_cluster::sim::{ListMachine as Machine, SimCluster};
use rushes_cluster::{NodeId, RaftDriver, RaftSettings};

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
    let db = rushes_cluster::log_store::open_sled_when_released(&sled::Config::new().path(dir.path()), std::time::Duration::from_secs(10))
        .unwrap();
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

/// Three replicas over sled on the simulated network; replica 3 is cut off while the others
/// commit and compact, then catches up by snapshot, and restores it from sled after a restart.
#[test]
fn sled_replica_cut_off_catches_up_by_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids: [NodeId; 3] = [1, 2, 3];
    let dbs: Vec<sled::Db> = dirs.iter().map(|dir| sled::open(dir.path()).unwrap()).collect();
    let stores = ids.iter().zip(&dbs).map(|(&id, db)| (id, SledLogStore::open(db, &ids).unwrap())).collect();
    let mut cluster = SimCluster::with_stores(stores, 11);
    cluster.isolated = vec![3];
    assert!(cluster.run_until(300, |c| c.leaders().iter().any(|(id, _)| *id != 3)), "a connected replica leads");
    for i in 0..60 {
        assert!(cluster.propose_to_leader(payload(i)));
        cluster.step_all();
    }
    assert!(cluster.run_until(100, |c| c.log(1).len() == 60 && c.log(2).len() == 60));
    assert!(cluster.log(3).is_empty());
    for id in [1, 2] {
        cluster.compact(id);
        assert!(cluster.drivers[&id].store().first_index().unwrap() > 60);
    }
    cluster.isolated.clear();
    assert!(cluster.run_until(300, |c| c.log(3).len() == 60), "replica 3 did not catch up");
    assert_eq!(cluster.restores(3), 1, "replica 3 restored from a snapshot");
    assert_eq!(cluster.log(3), cluster.log(1));
    // Later entries reach it through the log.
    assert!(cluster.propose_to_leader(payload(60)));
    assert!(cluster.run_until(100, |c| c.log(3).len() == 61));
    assert_eq!(cluster.log(3), (0..61).map(payload).collect::<Vec<_>>());
    // Its sled store holds the snapshot: reopening restores it and replays the rest.
    let store3 = cluster.stores[&3].clone();
    store3.sync().unwrap();
    let snapshot = store3.stored_snapshot().unwrap().expect("follower stored the snapshot");
    drop(cluster);
    let store3 = SledLogStore::open(&dbs[2], &ids).unwrap();
    assert_eq!(store3.first_log_index(), snapshot.get_metadata().index + 1);
    let mut machine = Machine::default();
    let mut driver = RaftDriver::open(3, 0, &RaftSettings::default(), store3, 0, &mut machine).unwrap();
    assert_eq!(machine.restores, 1);
    drain(&mut driver, &mut machine);
    // Only committed entries replay; the last one's commit may not have been persisted before
    // the leader told us, so the replica may be one behind until it hears from a leader.
    assert!(machine.log.len() >= 60 && machine.log[..] == (0..61).map(payload).collect::<Vec<_>>()[..machine.log.len()]);
}
