//! The ingest router: one actor per node. It takes a validated batch, removes identical repeats,
//! refuses ids that already exist with other content, splits the batch by shard
//! (`shard_for_asset`), sends each part to its shard's leader (this node's replica, or another
//! node's through the peer transport, following leader hints through elections), and replies
//! once every part is committed on a quorum and applied.
//!
//! The actor admits work and counts it; the routing itself runs as futures on the actor's
//! thread (awaiting replicas and peers), and the blocking parts (deduplication, conflict
//! checks, encoding) on the blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message as ActixMessage, WrapFuture};
use rushes_cluster::{NodeId, ShardId};
use rushes_protocol::model::{same_raw_content, IngestItem, ShardCommand, StoredAnnotation, StoredAsset};
use rushes_protocol::peer::{ApplyOutcome, ConflictProbe, PeerReply, PeerRequest};
use rushes_protocol::validate::{validate_asset_id, validate_asset_record, ParsedItem};
use rushes_protocol::{ApiError, AssetRecord, ErrorCode, IngestReply};

use crate::actors::{ActorState, ActorStats};
use crate::node::ClusterView;
use crate::peer::{hedge, WriteCallError};
use crate::shard::{Shard, ShardError};

/// Longest wait for another node's answer to a conflict check.
const CONFLICT_CHECK_TIMEOUT: Duration = Duration::from_millis(2_000);
/// Longest wait for one forwarded write before routing again.
const FORWARD_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(3_000);

/// Store a validated batch; the reply comes once every annotation is committed and durable.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Ingest {
    pub items: Vec<ParsedItem>,
    pub reply: tokio::sync::oneshot::Sender<Result<IngestReply, ApiError>>,
}

/// Store an asset record.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct UpsertAsset {
    pub asset_id: String,
    pub record: AssetRecord,
    pub reply: tokio::sync::oneshot::Sender<Result<(), ApiError>>,
}

/// Propose a command that changes stored data other than by ingest (a delete, a purge) on
/// `shard`, through its leader; the reply is what applying it did.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct ProposeChange {
    pub shard: ShardId,
    pub command: ShardCommand,
    pub reply: tokio::sync::oneshot::Sender<Result<ApplyOutcome, ApiError>>,
}

pub struct IngestRouter {
    view: Arc<ClusterView>,
    stats: Arc<ActorStats>,
    /// Writes being routed now, and the most allowed (`limits.ingest_queue_depth`).
    in_flight: usize,
    in_flight_max: usize,
}

impl IngestRouter {
    pub fn new(view: Arc<ClusterView>, stats: Arc<ActorStats>) -> IngestRouter {
        let in_flight_max = view.config.limits.ingest_queue_depth.max(1);
        IngestRouter { view, stats, in_flight: 0, in_flight_max }
    }

    /// Takes one write in flight, or refuses it as overload.
    fn admit(&mut self) -> Result<(), ApiError> {
        if self.in_flight >= self.in_flight_max {
            return Err(ApiError::overloaded(format!(
                "{} writes are being routed on this node (limits.ingest_queue_depth); retry after the advertised delay",
                self.in_flight
            )));
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Runs `work` as one of the writes in flight and sends its result to `reply`; past
    /// `limits.ingest_queue_depth` the reply is an overload error at once.
    fn run_admitted<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        reply: tokio::sync::oneshot::Sender<Result<T, ApiError>>,
        work: impl std::future::Future<Output = Result<T, ApiError>> + 'static,
    ) {
        if let Err(e) = self.admit() {
            let _ = reply.send(Err(e));
            return;
        }
        ctx.spawn(work.into_actor(self).map(move |result, router, _| {
            router.in_flight -= 1;
            let _ = reply.send(result);
        }));
    }
}

impl Actor for IngestRouter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.set_state(ActorState::Idle);
        let interval_ms = self.view.config.retention.purge_superseded_interval_ms;
        if interval_ms > 0 {
            ctx.run_interval(Duration::from_millis(interval_ms), |router, ctx| {
                let view = router.view.clone();
                ctx.spawn(purge_led_shards(view).into_actor(router));
            });
        }
    }
}

/// `retention.purge_superseded_interval_ms`: every shard this node leads purges its superseded
/// model versions, as a replicated command (every replica removes the same annotations).
async fn purge_led_shards(view: Arc<ClusterView>) {
    for replica in view.shards().iter().filter(|replica| replica.is_leader()).cloned() {
        let shard = replica.id;
        let assets = match tokio::task::spawn_blocking(move || replica.store.assets_with_superseded_versions()).await {
            Ok(Ok(assets)) => assets,
            Ok(Err(e)) => {
                tracing::warn!(shard, error = %e, "listing superseded model versions failed");
                continue;
            }
            Err(_) => continue,
        };
        for chunk in assets.chunks(view.config.limits.max_batch_items.max(1)) {
            let command = match (ShardCommand::PurgeSuperseded { asset_ids: chunk.to_vec() }).encode() {
                Ok(command) => command,
                Err(_) => continue,
            };
            let deadline = tokio::time::Instant::now() + view.request_timeout();
            match propose_routed(&view, shard, command, true, deadline).await {
                Ok(ApplyOutcome::Deleted { annotations }) => {
                    tracing::info!(shard, assets = chunk.len(), annotations, "purged superseded model versions")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(shard, error = %e.message, "purging superseded model versions failed; the next round retries"),
            }
        }
    }
}

impl Handler<Ingest> for IngestRouter {
    type Result = ();

    fn handle(&mut self, ingest: Ingest, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let work = ingest_batch(self.view.clone(), ingest.items);
        self.run_admitted(ctx, ingest.reply, work);
    }
}

impl Handler<UpsertAsset> for IngestRouter {
    type Result = ();

    fn handle(&mut self, upsert: UpsertAsset, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let work = upsert_asset(self.view.clone(), upsert.asset_id, upsert.record);
        self.run_admitted(ctx, upsert.reply, work);
    }
}

impl Handler<ProposeChange> for IngestRouter {
    type Result = ();

    fn handle(&mut self, change: ProposeChange, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let view = self.view.clone();
        let (shard, command) = (change.shard, change.command);
        let work = async move {
            rushes_protocol::validate::validate_command(&command, &crate::node::ingest_limits(&view.config))?;
            let safe_to_repeat = command.safe_to_repeat();
            let command = command.encode().map_err(|e| ApiError::internal(e.to_string()))?;
            let deadline = tokio::time::Instant::now() + view.request_timeout();
            propose_routed(&view, shard, command, safe_to_repeat, deadline).await
        };
        self.run_admitted(ctx, change.reply, work);
    }
}

async fn ingest_batch(view: Arc<ClusterView>, items: Vec<ParsedItem>) -> Result<IngestReply, ApiError> {
    let started = Instant::now();
    let total = items.len();
    // Deduplication, conflict pre-checks (sled reads) and encoding are blocking work.
    let preparing = view.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare_ingest(&preparing, items))
        .await
        .map_err(|e| ApiError::internal(format!("ingest preparation failed: {e}")))??;
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    // Shards without a replica here are checked on another node's, before anything is
    // proposed anywhere: a conflict then stores nothing at all.
    if let Err(error) = check_remote_conflicts(&view, &prepared.remote_probes, deadline).await {
        view.metrics.ingest_requests.with_label_values(&[error.code.as_str()]).inc();
        return Err(error);
    }
    // Every shard's part goes to its leader at once; the reply waits for all of them.
    let parts = prepared.commands.into_iter().map(|(shard, command, positions)| {
        let view = view.clone();
        async move { (propose_routed(&view, shard, command, true, deadline).await, positions) }
    });
    let outcomes = futures_util::future::join_all(parts).await;
    let mut created = 0;
    let mut duplicates = prepared.batch_duplicates;
    let mut first_error: Option<ApiError> = None;
    let mut committed: Vec<usize> = Vec::new();
    for (outcome, positions) in outcomes {
        match outcome {
            Ok(ApplyOutcome::Applied { created: c, duplicates: d }) => {
                created += c;
                duplicates += d;
                committed.extend(&positions);
            }
            Ok(ApplyOutcome::Conflict { item, annotation_id }) => {
                first_error.get_or_insert(conflict(positions.get(item).copied().unwrap_or(item), &annotation_id));
            }
            Ok(ApplyOutcome::Deleted { .. }) => {
                first_error.get_or_insert(ApiError::internal("an ingest command was applied as a delete"));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(mut error) = first_error {
        if !committed.is_empty() {
            // Each shard's part is atomic, the batch across shards is not: say exactly what
            // is stored, and that sending the whole batch again is safe.
            committed.sort_unstable();
            let repeats: Vec<usize> = prepared
                .duplicate_positions
                .iter()
                .filter(|(_, original)| committed.binary_search(original).is_ok())
                .map(|(p, _)| *p)
                .collect();
            committed.extend(repeats);
            committed.sort_unstable();
            error.message = format!(
                "{} (the batch was stored in part: {} of its {total} annotations are committed, listed in committed_items; \
                 sending the whole batch again is safe, ids are idempotent)",
                error.message,
                committed.len()
            );
            error.committed_items = Some(committed);
        }
        view.metrics.ingest_requests.with_label_values(&[error.code.as_str()]).inc();
        return Err(error);
    }
    view.metrics.ingest_requests.with_label_values(&["ok"]).inc();
    view.metrics.ingest_annotations.inc_by(total as u64);
    Ok(IngestReply { accepted: total, created, duplicates, took_ms: started.elapsed().as_millis() as u64 })
}

async fn upsert_asset(view: Arc<ClusterView>, asset_id: String, record: AssetRecord) -> Result<(), ApiError> {
    validate_asset_id(&asset_id, view.config.limits.max_asset_id_bytes)
        .map_err(|m| ApiError::field("asset_id", format!("asset_id {m}")))?;
    validate_asset_record(&record, view.config.limits.max_time_ms)?;
    let shard = view.shard_map().shard_for_asset(&asset_id);
    let command = ShardCommand::UpsertAsset { asset_id, record: StoredAsset::from(record) };
    let safe_to_repeat = command.safe_to_repeat();
    let command = command.encode().map_err(|e| ApiError::internal(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    propose_routed(&view, shard, command, safe_to_repeat, deadline).await.map(|_| ())
}

/// One encoded ingest command per shard, with the batch positions of its items.
struct PreparedIngest {
    commands: Vec<(ShardId, Vec<u8>, Vec<usize>)>,
    batch_duplicates: usize,
    /// (position, position it repeats) of in-batch repeats: stored when what they repeat is.
    duplicate_positions: Vec<(usize, usize)>,
    /// Items of shards without a replica here, to check on another node's.
    remote_probes: BTreeMap<ShardId, RemoteProbes>,
}

/// A shard's items checked on another node: what is asked, and what to compare it with.
#[derive(Default)]
struct RemoteProbes {
    probes: Vec<ConflictProbe>,
    /// (batch position, raw bytes) of each probe.
    items: Vec<(usize, Vec<u8>)>,
}

/// Asks a replica of every shard this node lacks which items it already stores with other
/// bytes, and refuses the batch (409, nothing stored) if any of them differs as JSON. A shard
/// no replica answers for is not checked here: its leader's apply is authoritative anyway.
async fn check_remote_conflicts(
    view: &ClusterView,
    remote: &BTreeMap<ShardId, RemoteProbes>,
    deadline: tokio::time::Instant,
) -> Result<(), ApiError> {
    let Some(net) = &view.net else { return Ok(()) };
    let checks = remote.iter().map(|(&shard, probes)| async move {
        let request = PeerRequest::CheckConflicts { shard, probes: probes.probes.clone() };
        let replicas = view.shard_map().replicas(shard).to_vec();
        // The check is advisory: it must not eat the write's own time budget.
        let check_deadline = deadline.min(tokio::time::Instant::now() + CONFLICT_CHECK_TIMEOUT);
        (shard, probes, hedge::hedged_call(net, &replicas, request, check_deadline).await)
    });
    for (shard, probes, answer) in futures_util::future::join_all(checks).await {
        match answer {
            Ok((_, PeerReply::StoredAnnotations { stored })) => {
                for found in stored {
                    let Some((position, raw)) = probes.items.get(found.position as usize) else { continue };
                    if !same_raw_content(&found.raw, raw) {
                        return Err(conflict(*position, &probes.probes[found.position as usize].annotation_id));
                    }
                }
            }
            Ok((node, other)) => tracing::warn!(shard, node, reply = other.kind(), "unexpected answer to a conflict check"),
            Err(e) => tracing::debug!(shard, error = %e.message, "conflict check not answered; the leader's apply decides"),
        }
    }
    Ok(())
}

/// Splits a batch into one encoded command per shard, after removing identical repeats and
/// refusing ids that already exist with other content.
fn prepare_ingest(view: &ClusterView, items: Vec<ParsedItem>) -> Result<PreparedIngest, ApiError> {
    // In-batch duplicates: identical ones collapse, different content under one id is a conflict.
    let mut first_seen: HashMap<(String, String), usize> = HashMap::with_capacity(items.len());
    let mut by_shard: BTreeMap<ShardId, (Vec<IngestItem>, Vec<usize>)> = BTreeMap::new();
    let mut batch_duplicates = 0;
    let mut kept: Vec<(usize, IngestItem)> = Vec::with_capacity(items.len());
    let mut duplicate_positions = Vec::new();
    let mut remote_probes: BTreeMap<ShardId, RemoteProbes> = BTreeMap::new();
    for (position, item) in items.into_iter().enumerate() {
        let key = (item.annotation.asset_id.clone(), item.annotation.id.clone());
        let (annotation, vector) = StoredAnnotation::from_validated(item.annotation);
        let ingest_item = IngestItem { raw_json: item.raw_json, annotation, vector };
        if let Some(&kept_index) = first_seen.get(&key) {
            let (earlier, previous) = &kept[kept_index];
            let earlier = *earlier;
            if !same_raw_content(&previous.raw_json, &ingest_item.raw_json) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("id {:?} appears twice in this batch with different content (items {earlier} and {position})", key.1),
                )
                .with_item(position)
                .with_field("id"));
            }
            batch_duplicates += 1;
            duplicate_positions.push((position, earlier));
            continue;
        }
        first_seen.insert(key, kept.len());
        kept.push((position, ingest_item));
    }
    // Check stored ids before proposing, so a conflict normally stores nothing anywhere.
    // The shard re-checks when applying (authoritative, for concurrent writers).
    for (position, item) in kept {
        let shard_id = view.shard_map().shard_for_asset(&item.annotation.asset_id);
        // A local replica is checked here; other shards on another node's replica, before
        // anything is proposed. The leader's apply stays authoritative for concurrent writers.
        match view.local_shard(shard_id) {
            Some(shard) => {
                let existing_raw = shard
                    .store
                    .raw_annotation(&item.annotation.asset_id, &item.annotation.id)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                if existing_raw.is_some_and(|raw| !same_raw_content(&raw, &item.raw_json)) {
                    return Err(conflict(position, &item.annotation.id));
                }
            }
            None => {
                let probes = remote_probes.entry(shard_id).or_default();
                probes.probes.push(ConflictProbe {
                    asset_id: item.annotation.asset_id.clone(),
                    annotation_id: item.annotation.id.clone(),
                    raw_hash: xxhash_rust::xxh3::xxh3_64(&item.raw_json),
                });
                probes.items.push((position, item.raw_json.clone()));
            }
        }
        let entry = by_shard.entry(shard_id).or_default();
        entry.0.push(item);
        entry.1.push(position);
    }
    let mut commands = Vec::with_capacity(by_shard.len());
    for (shard_index, (items, positions)) in by_shard {
        let bytes = (ShardCommand::Ingest { items }).encode().map_err(|e| ApiError::internal(e.to_string()))?;
        commands.push((shard_index, bytes, positions));
    }
    Ok(PreparedIngest { commands, batch_duplicates, duplicate_positions, remote_probes })
}

/// Where one attempt to propose a routed write ended.
enum Routed {
    Done(ApplyOutcome),
    /// The replica asked does not lead the shard and proposed nothing; maybe it knows who does.
    NotLeader(Option<NodeId>),
    /// The write may have been proposed and may still commit (the leader changed with it in
    /// flight, or no answer came): only a command that is safe to repeat is proposed again.
    Unclear {
        leader: Option<NodeId>,
        error: ApiError,
    },
}

/// Proposes an encoded command on `shard` through its leader (local or forwarded) and waits
/// until it is committed on a quorum and applied. Follows leader hints and waits out elections
/// until `deadline` (the request timeout); then a retryable 503, nothing applied. After a
/// failure that may have let the command commit, it is proposed again only when
/// `safe_to_repeat` ([`ShardCommand::safe_to_repeat`]); otherwise the caller gets a `timeout` error
/// that says the outcome is unknown, rather than a second copy committed after later writes.
pub async fn propose_routed(
    view: &ClusterView,
    shard: ShardId,
    command: Vec<u8>,
    safe_to_repeat: bool,
    deadline: tokio::time::Instant,
) -> Result<ApplyOutcome, ApiError> {
    let replicas = view.shard_map().replicas(shard).to_vec();
    let node_id = view.node_id();
    let mut hint: Option<NodeId> = None;
    let mut next_replica = 0usize;
    let mut pause = Duration::from_millis(10);
    let mut last_error = None;
    loop {
        let local = view.local_shard(shard);
        if let Some(paused) = local.as_ref().filter(|replica| !replica.disk.has_room()) {
            // Alone, no other replica can take the write: say why now rather than at the deadline.
            if replicas.len() <= 1 {
                return Err(ShardError::disk_full(paused.id, &paused.disk).into());
            }
        }
        let target = hint.or_else(|| local.as_ref().and_then(|s| s.leader()));
        let attempt = match (target, &local) {
            (Some(node), Some(replica)) if node == node_id => propose_local(replica, command.clone(), deadline).await,
            (Some(node), _) if node != node_id => forward_propose(view, node, shard, command.clone(), deadline).await,
            // A node without a replica asks the replicas in turn; they answer with hints.
            (None, None) if !replicas.is_empty() => {
                let node = replicas[next_replica % replicas.len()];
                next_replica += 1;
                forward_propose(view, node, shard, command.clone(), deadline).await
            }
            _ => Ok(Routed::NotLeader(None)),
        };
        match attempt {
            Ok(Routed::Done(outcome)) => return Ok(outcome),
            Ok(Routed::NotLeader(new_hint)) => hint = new_hint.filter(|h| Some(*h) != target),
            Ok(Routed::Unclear { error, .. }) if !safe_to_repeat => return Err(error),
            Ok(Routed::Unclear { leader, error }) => {
                // A repeat is a no-op if the first copy commits too.
                hint = leader.filter(|h| Some(*h) != target);
                last_error = Some(error);
            }
            Err(e) if e.code.is_retryable() && e.code != ErrorCode::Overloaded => {
                hint = None;
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
        let now = tokio::time::Instant::now();
        if now + pause >= deadline {
            let mut detail = last_error.map(|e| format!(" (last error: {})", e.message)).unwrap_or_default();
            if let Some(paused) = local.as_ref().filter(|replica| !replica.disk.has_room()) {
                detail.push_str(&format!("; this node's replica is paused: {}", ShardError::disk_full(paused.id, &paused.disk)));
            }
            return Err(ApiError::unavailable(format!(
                "shard {shard} has no leader this node can reach{detail}; nothing was acknowledged, retry the same batch"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// An outcome nobody can know yet, as the client reads it: code `timeout` (HTTP 503).
fn outcome_unknown(shard: ShardId, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        format!("{why}: the write to shard {shard} may or may not be applied; read it back before writing it again (ids are idempotent, a batch may be sent again as it is)"),
    )
    .with_retry_after(1)
}

async fn propose_local(replica: &Shard, command: Vec<u8>, deadline: tokio::time::Instant) -> Result<Routed, ApiError> {
    let receiver = match replica.propose_encoded(command) {
        Ok(receiver) => receiver,
        Err(ShardError::NotLeader { leader, .. }) => return Ok(Routed::NotLeader(leader)),
        Err(e) => return Err(e.into()),
    };
    let shard = replica.id;
    match tokio::time::timeout_at(deadline, receiver).await {
        Err(_) => Ok(Routed::Unclear { leader: None, error: outcome_unknown(shard, "the write was not confirmed in time") }),
        Ok(Err(_)) => Ok(Routed::Unclear { leader: None, error: outcome_unknown(shard, "the shard stopped before confirming the write") }),
        // Refused before anything was proposed.
        Ok(Ok(Err(ShardError::NotLeader { leader, .. }))) => Ok(Routed::NotLeader(leader.or_else(|| replica.leader()))),
        Ok(Ok(Err(lost @ ShardError::LeadershipLost { leader, .. }))) => {
            Ok(Routed::Unclear { leader: leader.or_else(|| replica.leader()), error: lost.into() })
        }
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Ok(Ok(outcome))) => Ok(Routed::Done(outcome)),
    }
}

async fn forward_propose(
    view: &ClusterView,
    node: NodeId,
    shard: ShardId,
    command: Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<Routed, ApiError> {
    let Some(net) = &view.net else { return Ok(Routed::NotLeader(None)) };
    // One attempt never uses the whole budget: a paused or cut-off leader is replaced by an
    // election meanwhile, and the retry (for a command safe to repeat) finds it.
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now()).min(FORWARD_ATTEMPT_TIMEOUT);
    match net.call_write(node, &PeerRequest::Propose { shard, command }, timeout).await {
        Ok(PeerReply::Applied(outcome)) => Ok(Routed::Done(outcome)),
        Ok(PeerReply::NotLeader { leader }) => Ok(Routed::NotLeader(leader)),
        // The leader's own unclear outcomes travel as `timeout` errors ([`handle_forwarded_propose`]).
        Ok(PeerReply::Error(e)) if e.code == ErrorCode::Timeout => Ok(Routed::Unclear { leader: None, error: e }),
        Ok(PeerReply::Error(e)) => Err(e),
        Ok(other) => Err(ApiError::internal(format!("node {node} answered a write with {}", other.kind()))),
        Err(WriteCallError::NotSent(e)) => Err(e),
        Err(WriteCallError::MaybeDelivered(e)) => {
            Ok(Routed::Unclear { leader: None, error: outcome_unknown(shard, format!("node {node} did not answer ({})", e.message)) })
        }
    }
}

/// A peer's forwarded write: proposed here only if this node leads the shard.
pub async fn handle_forwarded_propose(view: &ClusterView, shard: ShardId, command: Vec<u8>) -> PeerReply {
    let Some(replica) = view.local_shard(shard) else { return PeerReply::NotLeader { leader: None } };
    if !replica.is_leader() {
        return PeerReply::NotLeader { leader: replica.leader() };
    }
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    match propose_local(&replica, command, deadline).await {
        Ok(Routed::Done(outcome)) => PeerReply::Applied(outcome),
        Ok(Routed::NotLeader(leader)) => PeerReply::NotLeader { leader },
        // Always code `timeout` (see `outcome_unknown`): the forwarding node must not take it for a refusal.
        Ok(Routed::Unclear { error, .. }) => PeerReply::Error(ApiError { code: ErrorCode::Timeout, ..error }),
        Err(e) => PeerReply::Error(e),
    }
}

fn conflict(item: usize, annotation_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("annotation id {annotation_id:?} already exists with different content; annotations are immutable, use a new id (or a new model_version to replace a model's output)"),
    )
    .with_item(item)
    .with_field("id")
}
