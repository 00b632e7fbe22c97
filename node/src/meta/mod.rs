//! The metadata group: a small Raft group (its log in `data_dir/meta`, a sled database of its
//! own) whose state machine is the [`ClusterMap`]: the members, their addresses, and which node
//! holds which replica of every shard. Config only seeds the first bootstrap: the group's first
//! leader proposes the map computed from `cluster.nodes` (every bootstrap node computes the same
//! one), and from then on every node follows the map it replicates ([`MetaGroup::map`]).
//!
//! The [`MetaActor`] owns the group's raft-rs node on a thread of its own, like a shard's Raft
//! actor, but its state is a few kilobytes in memory: rebuilt on open from the stored snapshot
//! and the log, and snapshotted whole (inline) every [`COMPACT_EVERY_ENTRIES`]. The metadata
//! leader also drives membership changes (`orchestrator.rs`).

pub mod orchestrator;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message as ActixMessage};
use parking_lot::Mutex;
use raft::eraftpb::{Entry, Message};
use rushes_cluster::log_store::{LogStoreError, SledLogStore};
use rushes_cluster::membership::{ClusterMap, GroupChange, GroupObservation, MapCommand, MapError, MetaEntry, MAP_FORMAT, META_GROUP};
use rushes_cluster::{DriverError, NodeId, RaftDriver, RaftSettings, StateMachine};
use rushes_protocol::{codec, ApiError, ErrorCode};
use tokio::sync::{oneshot, watch};

use crate::actors::{actix_capacity, dedicated_arbiter, ActorKind, ActorState, ActorStats, ActorView, Mailbox, ThreadPriority};
use crate::metrics::Metrics;
use crate::shard::RaftOutbox;

/// Peer messages, proposals and requests waiting for the metadata actor.
const META_MAILBOX_CAPACITY: usize = 4096;
/// The log is compacted into a snapshot of the whole map past this many entries.
pub const COMPACT_EVERY_ENTRIES: u64 = 1_000;
const COMPACTION_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store in {path}: {source}")]
    Store { path: String, source: sled::Error },
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error(transparent)]
    Raft(#[from] DriverError),
    #[error("metadata codec: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("cannot start the metadata actor: {0}")]
    Thread(#[from] std::io::Error),
}

/// Why a map command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this node does not lead the metadata group (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Refused(#[from] MapError),
    #[error("the metadata group is busy: {0}")]
    Busy(String),
    #[error("the metadata replica stopped: {0}")]
    Stopped(String),
    #[error("the command was not committed within {0:?} (no quorum?)")]
    Timeout(Duration),
}

impl From<ProposeError> for ApiError {
    fn from(error: ProposeError) -> ApiError {
        match &error {
            ProposeError::NotLeader { .. } | ProposeError::Stopped(_) | ProposeError::Timeout(_) => {
                ApiError::unavailable(format!("{error}; retry")).with_retry_after(1)
            }
            ProposeError::Busy(_) => ApiError::overloaded(format!("{error}; retry")),
            ProposeError::Refused(_) => ApiError::new(ErrorCode::Conflict, error.to_string()),
        }
    }
}

/// The map as the metadata group's log builds it. Every replica applies the same entries in
/// the same order; an entry that does not decode, or a command the map refuses, changes nothing
/// anywhere (its outcome goes back to the proposer only).
#[derive(Default)]
pub struct MapMachine {
    pub map: Option<ClusterMap>,
    /// Outcomes of entries proposed with a context, for the waiting proposers.
    outcomes: Vec<(Vec<u8>, Result<(), MapError>)>,
}

impl StateMachine for MapMachine {
    type Error = MetaError;

    fn apply(&mut self, entry: &Entry) -> Result<(), MetaError> {
        let outcome = match codec::decode_received::<MetaEntry>(MAP_FORMAT, &entry.data) {
            Err(e) => {
                tracing::warn!(index = entry.index, error = %e, "ignored an unreadable metadata entry");
                Err(MapError::InvalidMove(format!("unreadable metadata entry: {e}")))
            }
            Ok(MetaEntry::Bootstrap(map)) => {
                if self.map.is_none() {
                    tracing::info!(cluster = %map.cluster_id, shards = map.shard_count, members = map.members.len(), "cluster map bootstrapped");
                    self.map = Some(map);
                }
                Ok(())
            }
            Ok(MetaEntry::Command(command)) => match &mut self.map {
                Some(map) => {
                    let outcome = map.apply(&command);
                    if let Err(e) = &outcome {
                        tracing::debug!(index = entry.index, ?command, error = %e, "map command refused");
                    }
                    outcome
                }
                None => Err(MapError::InvalidMove("the cluster map is not bootstrapped yet".to_string())),
            },
        };
        if !entry.context.is_empty() {
            self.outcomes.push((entry.context.to_vec(), outcome));
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, MetaError> {
        Ok(codec::encode(MAP_FORMAT, &self.map)?)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), MetaError> {
        self.map = codec::decode_received(MAP_FORMAT, data)?;
        Ok(())
    }
}

/// What other threads read about the metadata replica, lock-free.
#[derive(Default)]
pub struct MetaProgress {
    pub is_leader: AtomicBool,
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub failed: Mutex<Option<String>>,
    /// The group's Raft configuration as this replica has applied it: (voters, learners).
    pub configuration: Mutex<(Vec<NodeId>, Vec<NodeId>)>,
}

#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Step(pub Message);

#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct ProposeMap {
    pub command: MetaEntry,
    pub reply: oneshot::Sender<Result<Arc<ClusterMap>, ProposeError>>,
}

#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct ChangeMeta {
    pub change: GroupChange,
    pub reply: oneshot::Sender<Result<(), ProposeError>>,
}

#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct ObserveMeta {
    pub added: Option<NodeId>,
    pub reply: oneshot::Sender<Option<GroupObservation>>,
}

#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub done: std::sync::mpsc::SyncSender<()>,
}

#[derive(ActixMessage)]
#[rtype(result = "()")]
struct RunReady;

pub struct MetaActor {
    node_id: NodeId,
    boot_nonce: u64,
    driver: RaftDriver<SledLogStore>,
    machine: MapMachine,
    outbox: Arc<dyn RaftOutbox>,
    map_tx: watch::Sender<Option<Arc<ClusterMap>>>,
    progress: Arc<MetaProgress>,
    stats: Arc<ActorStats>,
    waiters: HashMap<u64, oneshot::Sender<Result<Arc<ClusterMap>, ProposeError>>>,
    next_id: u64,
    /// The map this node proposes if it leads a group that has none yet.
    bootstrap: Option<ClusterMap>,
    bootstrap_proposed_term: u64,
    tick_interval: Duration,
    single_voter: bool,
    ready_scheduled: bool,
}

impl Actor for MetaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.set_state(ActorState::Idle);
        if self.single_voter {
            if let Err(e) = self.driver.campaign() {
                return self.fail(ctx, e.into());
            }
        }
        self.run_ready(ctx);
        ctx.run_interval(self.tick_interval, |actor, ctx| {
            let _handling = actor.stats.busy();
            actor.driver.tick();
            actor.run_ready(ctx);
        });
        ctx.run_interval(COMPACTION_INTERVAL, |actor, ctx| {
            let _handling = actor.stats.busy();
            if let Err(e) = actor.compact() {
                actor.fail(ctx, e);
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(Err(ProposeError::Stopped("the node is stopping".to_string())));
        }
        if self.stats.state() != ActorState::Failed {
            self.stats.set_state(ActorState::Stopped);
        }
    }
}

impl Handler<Step> for MetaActor {
    type Result = ();

    fn handle(&mut self, Step(message): Step, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        if let Err(e) = self.driver.step(message) {
            // A message raft-rs refuses (from a removed member, say) is not a reason to stop.
            tracing::debug!(error = %e, "metadata group refused a message");
        }
        self.schedule_ready(ctx);
    }
}

impl Handler<ProposeMap> for MetaActor {
    type Result = ();

    fn handle(&mut self, request: ProposeMap, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let id = self.next_id;
        self.next_id += 1;
        let data = match codec::encode(MAP_FORMAT, &request.command) {
            Ok(data) => data,
            Err(e) => {
                let _ = request.reply.send(Err(ProposeError::Stopped(e.to_string())));
                return;
            }
        };
        match self.driver.propose(self.context(id), data) {
            Ok(()) => {
                self.waiters.insert(id, request.reply);
                self.schedule_ready(ctx);
            }
            Err(DriverError::NotLeader { leader, .. }) => {
                let _ = request.reply.send(Err(ProposeError::NotLeader { leader }));
            }
            Err(e) => {
                let _ = request.reply.send(Err(ProposeError::Stopped(e.to_string())));
            }
        }
    }
}

impl Handler<ChangeMeta> for MetaActor {
    type Result = ();

    fn handle(&mut self, request: ChangeMeta, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let result = self.driver.change_group(&request.change).map_err(|e| match e {
            DriverError::NotLeader { leader, .. } => ProposeError::NotLeader { leader },
            other => ProposeError::Busy(other.to_string()),
        });
        if result.is_ok() {
            tracing::info!(change = ?request.change, "metadata group configuration change proposed");
        }
        let _ = request.reply.send(result);
        self.schedule_ready(ctx);
    }
}

impl Handler<ObserveMeta> for MetaActor {
    type Result = ();

    fn handle(&mut self, request: ObserveMeta, _: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let _ = request.reply.send(self.driver.observation(request.added));
    }
}

impl Handler<RunReady> for MetaActor {
    type Result = ();

    fn handle(&mut self, _: RunReady, ctx: &mut Context<Self>) {
        let _handling = self.stats.busy();
        self.ready_scheduled = false;
        self.run_ready(ctx);
    }
}

impl Handler<Shutdown> for MetaActor {
    type Result = ();

    fn handle(&mut self, shutdown: Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
        let _ = shutdown.done.send(());
    }
}

impl MetaActor {
    fn context(&self, id: u64) -> Vec<u8> {
        let mut context = Vec::with_capacity(24);
        context.extend_from_slice(&self.node_id.to_be_bytes());
        context.extend_from_slice(&self.boot_nonce.to_be_bytes());
        context.extend_from_slice(&id.to_be_bytes());
        context
    }

    /// The waiting proposal an entry's context names, if this process proposed it.
    fn waiter_id(&self, context: &[u8]) -> Option<u64> {
        if context.len() != 24 || context[..8] != self.node_id.to_be_bytes() || context[8..16] != self.boot_nonce.to_be_bytes() {
            return None;
        }
        <[u8; 8]>::try_from(&context[16..]).ok().map(u64::from_be_bytes)
    }

    fn schedule_ready(&mut self, ctx: &mut Context<Self>) {
        if !self.ready_scheduled {
            self.ready_scheduled = true;
            ctx.notify(RunReady);
        }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, error: MetaError) {
        let cause = error.to_string();
        tracing::error!(error = %cause, "metadata actor stopped; this node follows its last known cluster map until it restarts");
        *self.progress.failed.lock() = Some(cause.clone());
        self.stats.record_failure(cause);
        ctx.stop();
    }

    fn run_ready(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = self.process_ready() {
            return self.fail(ctx, e);
        }
        // The first leader of a new cluster writes the bootstrap map (once per term at most; a
        // second copy committed by a later leader is ignored when applied).
        if self.driver.is_leader() && self.machine.map.is_none() && self.bootstrap_proposed_term != self.driver.term() {
            if let Some(map) = self.bootstrap.clone() {
                self.bootstrap_proposed_term = self.driver.term();
                match codec::encode(MAP_FORMAT, &MetaEntry::Bootstrap(map)) {
                    Ok(data) => {
                        if let Err(e) = self.driver.propose(vec![], data) {
                            tracing::warn!(error = %e, "could not propose the bootstrap map");
                        }
                    }
                    Err(e) => return self.fail(ctx, e.into()),
                }
                if let Err(e) = self.process_ready() {
                    self.fail(ctx, e);
                }
            }
        }
    }

    fn process_ready(&mut self) -> Result<(), MetaError> {
        while self.driver.has_ready() {
            let was_leader = self.driver.is_leader();
            let outbox = self.outbox.clone();
            let mut send = |messages: Vec<Message>| {
                for message in messages {
                    outbox.send(message.to, META_GROUP, message);
                }
            };
            let outcome = self.driver.run_ready_sending(&mut self.machine, &mut send)?;
            if outcome.conf_changed.is_some() {
                let conf = self.driver.conf_state();
                *self.progress.configuration.lock() = (conf.voters.clone(), conf.learners.clone());
            }
            let is_leader = self.driver.is_leader();
            self.progress.is_leader.store(is_leader, Ordering::Release);
            self.progress.leader.store(self.driver.leader_id().unwrap_or(0), Ordering::Release);
            self.progress.term.store(self.driver.term(), Ordering::Release);
            self.progress.commit.store(self.driver.commit_index(), Ordering::Release);
            self.progress.applied.store(self.driver.applied_index(), Ordering::Release);
            if outcome.applied_index.is_some() {
                let map = self.machine.map.clone().map(Arc::new);
                for (context, result) in std::mem::take(&mut self.machine.outcomes) {
                    if let Some(waiter) = self.waiter_id(&context).and_then(|id| self.waiters.remove(&id)) {
                        let answer = match (&map, result) {
                            (Some(map), Ok(())) => Ok(map.clone()),
                            (None, Ok(())) => Err(ProposeError::Refused(MapError::InvalidMove("no cluster map yet".to_string()))),
                            (_, Err(e)) => Err(ProposeError::Refused(e)),
                        };
                        let _ = waiter.send(answer);
                    }
                }
                let changed = match (&map, self.map_tx.borrow().as_ref()) {
                    (Some(new), Some(old)) => new.epoch != old.epoch,
                    (Some(_), None) => true,
                    _ => false,
                };
                if changed {
                    self.map_tx.send_replace(map);
                }
            }
            if was_leader && !is_leader {
                let leader = self.driver.leader_id();
                for (_, waiter) in self.waiters.drain() {
                    let _ = waiter.send(Err(ProposeError::NotLeader { leader }));
                }
            }
        }
        Ok(())
    }

    /// Compacts the log into a snapshot of the whole map: every [`COMPACT_EVERY_ENTRIES`], or
    /// at once when a new member needs a snapshot the store cannot give.
    fn compact(&mut self) -> Result<(), MetaError> {
        let applied = self.driver.applied_index();
        let wanted = self.driver.take_snapshot_wanted();
        if wanted || applied >= self.driver.store().first_log_index() + COMPACT_EVERY_ENTRIES {
            self.driver.compact_state_machine(&self.machine)?;
            if wanted {
                tracing::info!(index = applied, "saved a metadata snapshot a new member needed");
            }
        }
        Ok(())
    }
}

/// The node's handle on its metadata replica.
pub struct MetaGroup {
    mailbox: Mailbox<MetaActor>,
    pub map: watch::Receiver<Option<Arc<ClusterMap>>>,
    pub progress: Arc<MetaProgress>,
    arbiter: Mutex<Option<actix::Arbiter>>,
}

impl MetaGroup {
    /// Opens (or creates) the metadata replica in `data_dir/meta`. `initial_voters` is the
    /// group's first configuration (used only for a new log); `bootstrap` is the map this node
    /// proposes if it leads a group that has none.
    pub fn open(
        data_dir: &Path,
        node_id: NodeId,
        initial_voters: &[NodeId],
        bootstrap: Option<ClusterMap>,
        settings: &RaftSettings,
        tick_interval: Duration,
        outbox: Arc<dyn RaftOutbox>,
        metrics: &Metrics,
    ) -> Result<MetaGroup, MetaError> {
        crate::actors::ensure_system();
        let path = data_dir.join("meta");
        let db = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|source| MetaError::Store { path: path.display().to_string(), source })?;
        let log = SledLogStore::open(&db, initial_voters)?;
        let mut machine = MapMachine::default();
        let mut driver = RaftDriver::open(node_id, META_GROUP, settings, log, 0, &mut machine)?;
        // Replay what this replica had committed before the node starts anything, so it opens
        // the replicas its last known map gives it (no message can be due yet: nothing ticked).
        driver.run_ready_with(&mut machine)?;
        machine.outcomes.clear();
        let (map_tx, map) = watch::channel(machine.map.clone().map(Arc::new));
        let progress = Arc::new(MetaProgress::default());
        let conf = driver.conf_state();
        *progress.configuration.lock() = (conf.voters.clone(), conf.learners.clone());
        let single_voter = driver.conf_state().voters == [node_id];
        let arbiter = dedicated_arbiter("meta".to_string(), ThreadPriority::Normal)?;
        let stats = ActorStats::new(metrics, ActorKind::Meta, None, "meta", META_MAILBOX_CAPACITY);
        let actor = MetaActor {
            node_id,
            boot_nonce: rand::random(),
            driver,
            machine,
            outbox,
            map_tx,
            progress: progress.clone(),
            stats: stats.clone(),
            waiters: HashMap::new(),
            next_id: 1,
            bootstrap,
            bootstrap_proposed_term: 0,
            tick_interval,
            single_voter,
            ready_scheduled: false,
        };
        let mailbox = Mailbox::new(
            MetaActor::start_in_arbiter(&arbiter.handle(), move |ctx| {
                ctx.set_mailbox_capacity(actix_capacity(META_MAILBOX_CAPACITY));
                actor
            }),
            stats,
        );
        Ok(MetaGroup { mailbox, map, progress, arbiter: Mutex::new(Some(arbiter)) })
    }

    /// The map this replica has applied (`None` before the bootstrap entry).
    pub fn current(&self) -> Option<Arc<ClusterMap>> {
        self.map.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.progress.is_leader.load(Ordering::Acquire)
    }

    pub fn leader(&self) -> Option<NodeId> {
        Some(self.progress.leader.load(Ordering::Acquire)).filter(|&l| l != 0)
    }

    pub fn deliver_raft(&self, message: Message) -> bool {
        self.mailbox.try_send(Step(message)).is_ok()
    }

    /// Proposes `command` here (this replica must lead); answers with the map once applied.
    pub async fn propose(&self, command: MapCommand, timeout: Duration) -> Result<Arc<ClusterMap>, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.mailbox.try_send(ProposeMap { command: MetaEntry::Command(command), reply }).map_err(|e| ProposeError::Busy(e.to_string()))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped("the metadata actor stopped".to_string())),
            Err(_) => Err(ProposeError::Timeout(timeout)),
        }
    }

    pub async fn observe(&self, added: Option<NodeId>) -> Option<GroupObservation> {
        let (reply, answer) = oneshot::channel();
        self.mailbox.try_send(ObserveMeta { added, reply }).ok()?;
        answer.await.ok().flatten()
    }

    pub async fn change(&self, change: GroupChange) -> Result<(), ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.mailbox.try_send(ChangeMeta { change, reply }).map_err(|e| ProposeError::Busy(e.to_string()))?;
        answer.await.map_err(|_| ProposeError::Stopped("the metadata actor stopped".to_string()))?
    }

    pub fn actor(&self) -> ActorView {
        self.mailbox.stats().view()
    }

    pub fn refresh_gauges(&self) {
        self.mailbox.stats().refresh_gauges();
    }

    /// Stops the actor and its thread. Blocking.
    pub fn shutdown(&self) {
        let (done, confirmed) = std::sync::mpsc::sync_channel(1);
        self.mailbox.send_control(Shutdown { done });
        let _ = confirmed.recv_timeout(Duration::from_secs(10));
        if let Some(arbiter) = self.arbiter.lock().take() {
            arbiter.stop();
            let _ = arbiter.join();
        }
    }
}
