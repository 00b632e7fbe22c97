//! The search coordinator: one actor per node. It admits a search (one of
//! `limits.search_queue_depth` slots, held from planning to the last phase), plans it, and runs
//! its three phases over every shard it needs through [`ShardSearch`] clients (this node's
//! replica, or another node's), then merges the shards' answers:
//!
//! 1. `hits` on every needed shard: each leaf's hits, summarized;
//! 2. the global statistics of those summaries, then `candidates`: the shards' ranked assets;
//! 3. the global top `limit` assets, then `finish` on the shards that hold them: clips and
//!    evidence. Shards holding none of them only drop their state.
//!
//! A shard that fails or runs out of time in any phase is left out of the later ones and
//! counted failed: a partial answer is labelled, never silent. It also answers suggest's
//! moments (cached per completed query while the data is unchanged, and warmed ahead of
//! keystrokes once the data settles), and `explain`.
//!
//! The actor only admits work; each search runs as a future on the actor's thread, its
//! shard-local phases on the blocking pool.

pub mod client;
pub mod export;
pub mod reads;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message as ActixMessage, WrapFuture};
use rushes_cluster::ShardId;
use rushes_protocol::peer::{LeafSummary, RankedAssets};
use rushes_protocol::{ApiError, AssetHits, ErrorCode, SearchRequest, SearchResponse, ShardCounts};

pub use self::client::{LocalShardSearch, RemoteShardSearch, SearchPermit, ShardSearch};
use crate::actors::{ActorState, ActorStats};
use crate::metrics::Metrics;
use crate::node::ClusterView;
use crate::query::plan::Plan;
use crate::query::planner::Planner;
use crate::search;

/// Most completed queries whose moments are kept (the cache is emptied when full).
const SUGGEST_MOMENTS_CACHE_ENTRIES: usize = 1024;
/// Nearest scenes the embedded words of a suggestion's moments search asks for. A full `q`
/// asks for `limits.max_vector_k` (every matching scene, for whole clips); five preview moments
/// need only the nearest, and 10,000 neighbours cost most of a keystroke's 30 ms at 500 hours.
const SUGGEST_SEMANTIC_K: usize = 200;
/// Best seconds a shard keeps of each words or phrase leaf of a suggestion's moments search.
/// Every second of a common word ("we were o" completes to "we were on") was collected,
/// sorted, fused and cut into clips to show five of them; the 2,000 best seconds of a shard
/// hold its best clips, and a keystroke costs what they do.
const SUGGEST_TEXT_HITS_MAX: usize = 2_000;
/// Labels whose suggest moments are computed ahead of keystrokes after the data changes.
pub const SUGGEST_WARM_LABELS_MAX: usize = 256;
/// How often the coordinator checks whether the data settled (then warms suggest's cache).
const SUGGEST_WARM_CHECK: Duration = Duration::from_secs(1);

/// Run a search; the reply is the merged answer.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Search {
    pub request: SearchRequest,
    pub reply: tokio::sync::oneshot::Sender<Result<SearchResponse, ApiError>>,
}

/// Plan a search without running it.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Explain {
    pub request: SearchRequest,
    pub reply: tokio::sync::oneshot::Sender<Result<Plan, ApiError>>,
}

/// The top moments of a completed suggestion (empty when they cannot be had).
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct SuggestMoments {
    pub query: String,
    pub reply: tokio::sync::oneshot::Sender<Vec<AssetHits>>,
}

pub struct Coordinator {
    view: Arc<ClusterView>,
    planner: Arc<Planner>,
    stats: Arc<ActorStats>,
    /// One permit per search in flight (`limits.search_queue_depth`).
    slots: Arc<tokio::sync::Semaphore>,
    /// Suggest's moments per completed query, with the data version they were computed at:
    /// every keystroke of "J", "Jo", "Joe" completes to the same query, searched once.
    suggest_moments: HashMap<String, (u64, Vec<AssetHits>)>,
    /// Data version last seen by the warm-up check, the one whose label moments are all
    /// cached, and whether a warm-up runs.
    warm_last_seen: Option<u64>,
    warmed_version: Arc<AtomicU64>,
    warming: bool,
}

impl Coordinator {
    pub fn new(view: Arc<ClusterView>, planner: Arc<Planner>, stats: Arc<ActorStats>, warmed_version: Arc<AtomicU64>) -> Coordinator {
        let slots = Arc::new(tokio::sync::Semaphore::new(view.config.limits.search_queue_depth.max(1)));
        Coordinator { view, planner, stats, slots, suggest_moments: HashMap::new(), warm_last_seen: None, warmed_version, warming: false }
    }

    fn permit(&self) -> Result<SearchPermit, ApiError> {
        self.slots.clone().try_acquire_owned().map(Arc::new).map_err(|_| ApiError::overloaded("too many searches in flight; retry shortly"))
    }

    fn cache_moments(&mut self, query: String, version: u64, assets: Vec<AssetHits>) {
        if self.suggest_moments.len() >= SUGGEST_MOMENTS_CACHE_ENTRIES {
            self.suggest_moments.clear();
        }
        self.suggest_moments.insert(query, (version, assets));
    }

    /// Once the data has settled (no change for a check interval) after a change, searches
    /// each vocabulary label (at most [`SUGGEST_WARM_LABELS_MAX`]) into suggest's cache, so a
    /// keystroke that completes to a name costs a cache lookup. Labels are searched as suggest
    /// completes to them: spelled as the models wrote them ("Joey"). Yields to real traffic: a
    /// label whose search finds no free slot is skipped. First, the local replicas sum their
    /// dialogue fields' tokens for BM25, which a first words search would otherwise pay.
    fn warm_suggest_moments(&mut self, ctx: &mut Context<Self>) {
        let version = self.view.data_version();
        let settled = self.warm_last_seen == Some(version);
        self.warm_last_seen = Some(version);
        if self.warming || !settled || self.warmed_version.load(Ordering::Acquire) == version {
            return;
        }
        self.warming = true;
        let labels: std::collections::BTreeSet<String> = self.planner.vocabulary().into_keys().take(SUGGEST_WARM_LABELS_MAX).collect();
        let (view, planner, slots) = (self.view.clone(), self.planner.clone(), self.slots.clone());
        let work = async move {
            let shards = view.shards();
            let _ = tokio::task::spawn_blocking(move || {
                for shard in shards {
                    if let Err(e) = shard.index.warm_text_statistics() {
                        tracing::warn!(shard = shard.id, "warming the text statistics failed: {e}");
                    }
                }
            })
            .await;
            let mut moments = Vec::new();
            let mut spelled: Vec<String> = planner.label_displays(labels).await.into_values().collect();
            spelled.sort();
            for label in spelled {
                if view.data_version() != version {
                    return (version, moments, false);
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
                if let Ok(assets) = moments_of(&view, &planner, Arc::new(permit), label.clone()).await {
                    moments.push((label, assets));
                }
            }
            (version, moments, true)
        };
        ctx.spawn(work.into_actor(self).map(|(version, moments, complete), coordinator, _| {
            coordinator.warming = false;
            for (label, assets) in moments {
                coordinator.cache_moments(label, version, assets);
            }
            if complete && coordinator.view.data_version() == version {
                coordinator.warmed_version.store(version, Ordering::Release);
            }
        }));
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.set_state(ActorState::Idle);
        ctx.run_interval(SUGGEST_WARM_CHECK, |coordinator, ctx| coordinator.warm_suggest_moments(ctx));
    }
}

impl Handler<Search> for Coordinator {
    type Result = ();

    fn handle(&mut self, search: Search, ctx: &mut Context<Self>) {
        let handling = self.stats.handling();
        let permit = match self.permit() {
            Ok(permit) => permit,
            Err(e) => {
                let _ = search.reply.send(Err(e));
                return;
            }
        };
        let (view, planner) = (self.view.clone(), self.planner.clone());
        let reply = search.reply;
        ctx.spawn(
            async move {
                // The handler's timing covers the whole search, admission to merged answer.
                let _handling = handling;
                let _ = reply.send(run_search(&view, &planner, permit, search.request).await);
            }
            .into_actor(self),
        );
    }
}

impl Handler<Explain> for Coordinator {
    type Result = ();

    fn handle(&mut self, explain: Explain, ctx: &mut Context<Self>) {
        let handling = self.stats.handling();
        // Planning calls the embedder and reads vocabularies: it holds a search slot too.
        let permit = match self.permit() {
            Ok(permit) => permit,
            Err(e) => {
                let _ = explain.reply.send(Err(e));
                return;
            }
        };
        let planner = self.planner.clone();
        let reply = explain.reply;
        ctx.spawn(
            async move {
                let (_handling, _permit) = (handling, permit);
                let _ = reply.send(planner.explain(explain.request).await);
            }
            .into_actor(self),
        );
    }
}

impl Handler<SuggestMoments> for Coordinator {
    type Result = ();

    fn handle(&mut self, moments: SuggestMoments, ctx: &mut Context<Self>) {
        let _handling = self.stats.handling();
        let version = self.view.data_version();
        if let Some((cached_version, assets)) = self.suggest_moments.get(&moments.query) {
            if *cached_version == version {
                let _ = moments.reply.send(assets.clone());
                return;
            }
        }
        let Ok(permit) = self.permit() else {
            let _ = moments.reply.send(Vec::new());
            return;
        };
        let (view, planner, query) = (self.view.clone(), self.planner.clone(), moments.query);
        let reply = moments.reply;
        let work = {
            let query = query.clone();
            async move { moments_of(&view, &planner, permit, query).await }
        };
        ctx.spawn(work.into_actor(self).map(move |found, coordinator, _| match found {
            Ok(assets) => {
                coordinator.cache_moments(query, version, assets.clone());
                let _ = reply.send(assets);
            }
            Err(_) => {
                let _ = reply.send(Vec::new());
            }
        }));
    }
}

/// Plans and runs one search.
async fn run_search(
    view: &Arc<ClusterView>,
    planner: &Arc<Planner>,
    permit: SearchPermit,
    request: SearchRequest,
) -> Result<SearchResponse, ApiError> {
    let started = Instant::now();
    let strong = request.consistency == Some(rushes_protocol::Consistency::Strong);
    let plan = planner.plan(request).await?;
    let response = run_plan(view, plan, strong, started, permit).await?;
    view.metrics.query_seconds.with_label_values(&["search"]).observe(started.elapsed().as_secs_f64());
    Ok(response)
}

/// The top five moments of a completed suggestion: one clip per asset.
async fn moments_of(
    view: &Arc<ClusterView>,
    planner: &Arc<Planner>,
    permit: SearchPermit,
    query: String,
) -> Result<Vec<AssetHits>, ApiError> {
    let started = Instant::now();
    let request = SearchRequest { q: Some(query), per_asset: Some(1), limit: Some(5), ..Default::default() };
    let mut plan = planner.plan(request).await?;
    plan.cap_semantic_k(SUGGEST_SEMANTIC_K);
    plan.text_hits_max = Some(SUGGEST_TEXT_HITS_MAX);
    // First where every typed word is said: the best of those are the moments, found
    // best-first. Only when the words are never said together does the query run as a
    // search would run it (half of the words, their stems and neighbours).
    let mut preview = plan.clone();
    let words_checker = planner.clone();
    let (preview, narrowed) = tokio::task::spawn_blocking(move || {
        let narrowed = preview.require_every_word(|word| words_checker.is_dialogue_word(word));
        (preview, narrowed)
    })
    .await
    .map_err(|e| ApiError::internal(format!("narrowing the suggestion's words failed: {e}")))?;
    if narrowed.is_empty() {
        return Ok(run_plan(view, plan, false, started, permit).await?.assets);
    }
    let assets = run_plan(view, preview, false, started, permit.clone()).await?.assets;
    if said_in(&assets, &narrowed) {
        return Ok(assets);
    }
    Ok(run_plan(view, plan, false, started, permit).await?.assets)
}

/// Whether any clip of `assets` matched one of the `leaves` (the plan's leaf indexes).
fn said_in(assets: &[AssetHits], leaves: &[usize]) -> bool {
    assets.iter().flat_map(|asset| &asset.clips).flat_map(|clip| &clip.matches).any(|m| leaves.contains(&m.clause))
}

/// Runs a compiled plan over every shard it needs (with an `asset_ids` filter, only the
/// shards that own those assets: placement is by asset) and merges their answers.
pub async fn run_plan(
    view: &Arc<ClusterView>,
    plan: Plan,
    strong: bool,
    started: Instant,
    permit: SearchPermit,
) -> Result<SearchResponse, ApiError> {
    // One deadline for the whole request, whatever the number of shards and phases.
    let deadline = tokio::time::Instant::now() + view.request_timeout();
    let shard_count = view.shard_map().shard_count() as usize;
    let needed: Vec<ShardId> = match &plan.filters.asset_ids {
        Some(ids) => {
            let owners: HashSet<ShardId> = ids.iter().map(|id| view.shard_map().shard_for_asset(id)).collect();
            (0..shard_count as ShardId).filter(|shard| owners.contains(shard)).collect()
        }
        None => (0..shard_count as ShardId).collect(),
    };
    // The plan is encoded for other nodes only when a needed shard has no replica here.
    let wire_plan = match needed.iter().any(|&shard| view.local_shard(shard).is_none()) {
        true => Some(Arc::new(plan.to_wire().map_err(|e| ApiError::internal(format!("cannot send the plan to other nodes: {e}")))?)),
        false => None,
    };
    let query: u64 = rand::random();
    let plan = Arc::new(plan);
    let mut shards: Vec<Box<dyn ShardSearch>> = Vec::with_capacity(needed.len());
    for &shard in &needed {
        match (view.local_shard(shard), &wire_plan, &view.net) {
            (Some(replica), _, _) => {
                shards.push(Box::new(LocalShardSearch::new(replica.clone(), plan.clone(), permit.clone(), strong, deadline)))
            }
            (None, Some(wire), Some(net)) => shards.push(Box::new(RemoteShardSearch::new(
                shard,
                view.shard_map().replicas(shard).to_vec(),
                net.clone(),
                query,
                wire.clone(),
                strong,
                deadline,
            ))),
            // No replica here and no peers: the shard cannot answer (counted failed).
            _ => {}
        }
    }
    let gathered = run_phases(shards, &plan, deadline, Some(&view.metrics)).await;
    let skipped = shard_count - needed.len();
    let ok = gathered.answered + skipped;
    let counts = ShardCounts { total: shard_count, ok, failed: shard_count - ok, skipped };
    // An eventual search answers with the shards it reached (`shards.failed` says how many it
    // lacks); a strong one promises every acknowledged write, which a missing shard breaks.
    if strong && counts.failed > 0 {
        let code = if tokio::time::Instant::now() >= deadline { ErrorCode::Timeout } else { ErrorCode::Unavailable };
        return Err(ApiError::new(
            code,
            format!(
                "a strong search could not confirm {} of its {} shards (no leader reachable, or no quorum, before the request \
                 timeout); retry, or search with consistency \"eventual\" for what the reachable replicas hold",
                counts.failed,
                needed.len()
            ),
        )
        .with_retry_after(1));
    }
    Ok(search::merge(gathered.assets, gathered.totals, &plan, counts, started.elapsed().as_millis() as u64))
}

/// What the phases gathered from the shards.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The chosen assets with their clips, from every shard (not yet sorted or cut).
    pub assets: Vec<AssetHits>,
    /// (assets with any clip, assets after the cursor), summed over the shards.
    pub totals: (usize, usize),
    /// Shards that succeeded in every phase they took part in.
    pub answered: usize,
}

/// The three phases over `shards`, each written once for every kind of shard client.
pub async fn run_phases(
    mut shards: Vec<Box<dyn ShardSearch>>,
    plan: &Plan,
    deadline: tokio::time::Instant,
    metrics: Option<&Metrics>,
) -> Gathered {
    // Phase one: every leaf's hits, summarized.
    let summaries: Vec<Option<Vec<LeafSummary>>> =
        futures_util::future::join_all(shards.iter_mut().map(|shard| phase(shard.as_mut(), "hits", deadline, metrics, |s| s.hits()))).await;
    let mut answering: Vec<(Box<dyn ShardSearch>, Vec<LeafSummary>)> =
        shards.into_iter().zip(summaries).filter_map(|(shard, summary)| summary.map(|s| (shard, s))).collect();
    let all_summaries: Vec<Vec<LeafSummary>> = answering.iter().map(|(_, summary)| summary.clone()).collect();
    let stats = Arc::new(search::global_stats(plan, &all_summaries));
    // Phase two: fused scores, clips, each shard's best assets.
    let ranked: Vec<Option<RankedAssets>> = futures_util::future::join_all(answering.iter_mut().map(|(shard, _)| {
        let stats = stats.clone();
        phase(shard.as_mut(), "candidates", deadline, metrics, move |s| s.candidates(stats))
    }))
    .await;
    let mut gathered = Gathered::default();
    for ranked in ranked.iter().flatten() {
        gathered.totals.0 += ranked.total_assets;
        gathered.totals.1 += ranked.remaining_assets;
    }
    // Phase three only for the assets that make the global top `limit`: evidence costs bucket
    // reads, and each shard would otherwise pay for `limit` assets of its own.
    let keep = search::choose_assets(&ranked, plan.limit);
    let finishing =
        answering.iter_mut().zip(&ranked).zip(keep).filter(|((_, ranked), _)| ranked.is_some()).map(|(((shard, _), _), keep)| {
            let timed = if keep.is_empty() { "release" } else { "evidence" };
            phase(shard.as_mut(), timed, deadline, metrics, move |s| s.finish(keep))
        });
    for finished in futures_util::future::join_all(finishing).await {
        if let Some(mut assets) = finished {
            gathered.answered += 1;
            gathered.assets.append(&mut assets);
        }
    }
    gathered
}

/// One shard's phase, timed and bounded by `deadline`; `None` (logged) when it failed.
async fn phase<'a, T>(
    shard: &'a mut dyn ShardSearch,
    name: &'static str,
    deadline: tokio::time::Instant,
    metrics: Option<&Metrics>,
    run: impl FnOnce(&'a mut dyn ShardSearch) -> client::PhaseFuture<'a, T>,
) -> Option<T> {
    let (id, replica) = (shard.shard(), shard.replica());
    let timer = metrics.map(|m| m.search_phase_seconds.with_label_values(&[name, replica]).start_timer());
    let outcome = tokio::time::timeout_at(deadline, run(shard)).await;
    drop(timer);
    match outcome {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) if e.code == ErrorCode::Internal => {
            tracing::error!(shard = id, phase = name, replica, error = %e.message, "shard search failed");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(shard = id, phase = name, replica, code = e.code.as_str(), error = %e.message, "shard search failed");
            None
        }
        Err(_) => {
            tracing::warn!(shard = id, phase = name, replica, "shard search timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use rushes_protocol::peer::GlobalStats;

    use super::client::PhaseFuture;
    use super::*;
    use crate::query::plan::plan_of_json;

    /// A plan with one label leaf and `limit` assets per page.
    fn label_plan(limit: usize) -> Plan {
        plan_of_json(serde_json::json!({"clauses": [{"type": "label", "label": "Joey"}], "limit": limit}))
    }

    /// What the coordinator asked of a fake shard.
    #[derive(Debug, Default)]
    struct Calls {
        stats: Option<GlobalStats>,
        keep: Option<Vec<String>>,
    }

    struct FakeShard {
        shard: ShardId,
        summary: LeafSummary,
        ranked: Vec<(f64, &'static str)>,
        /// The phase that fails, or never answers.
        fails_in: Option<&'static str>,
        stalls_in: Option<&'static str>,
        calls: Arc<Mutex<Calls>>,
    }

    impl FakeShard {
        fn new(shard: ShardId, min: f32, max: f32, ranked: &[(f64, &'static str)]) -> (Box<dyn ShardSearch>, Arc<Mutex<Calls>>) {
            Self::with_fault(shard, min, max, ranked, None, None)
        }

        fn with_fault(
            shard: ShardId,
            min: f32,
            max: f32,
            ranked: &[(f64, &'static str)],
            fails_in: Option<&'static str>,
            stalls_in: Option<&'static str>,
        ) -> (Box<dyn ShardSearch>, Arc<Mutex<Calls>>) {
            let calls = Arc::new(Mutex::new(Calls::default()));
            let summary = LeafSummary { min: Some(min), max: Some(max), top: vec![], similarities: vec![] };
            let fake = FakeShard { shard, summary, ranked: ranked.to_vec(), fails_in, stalls_in, calls: calls.clone() };
            (Box::new(fake), calls)
        }

        fn phase<T: Send + 'static>(&self, name: &'static str, value: T) -> PhaseFuture<'static, T> {
            let (fails, stalls, shard) = (self.fails_in == Some(name), self.stalls_in == Some(name), self.shard);
            Box::pin(async move {
                if stalls {
                    std::future::pending::<()>().await;
                }
                if fails {
                    return Err(ApiError::unavailable(format!("shard {shard} fails in {name}")));
                }
                Ok(value)
            })
        }
    }

    impl ShardSearch for FakeShard {
        fn shard(&self) -> ShardId {
            self.shard
        }

        fn replica(&self) -> &'static str {
            "fake"
        }

        fn hits(&mut self) -> PhaseFuture<'_, Vec<LeafSummary>> {
            self.phase("hits", vec![self.summary.clone()])
        }

        fn candidates(&mut self, stats: Arc<GlobalStats>) -> PhaseFuture<'_, RankedAssets> {
            self.calls.lock().stats = Some((*stats).clone());
            let ranked = RankedAssets {
                ranked: self.ranked.iter().map(|(score, id)| (*score, id.to_string())).collect(),
                total_assets: self.ranked.len(),
                remaining_assets: self.ranked.len(),
            };
            self.phase("candidates", ranked)
        }

        fn finish(&mut self, keep: HashSet<String>) -> PhaseFuture<'_, Vec<AssetHits>> {
            let mut kept: Vec<String> = keep.into_iter().collect();
            kept.sort();
            self.calls.lock().keep = Some(kept.clone());
            let assets = self
                .ranked
                .iter()
                .filter(|(_, id)| kept.iter().any(|k| k == id))
                .map(|(score, id)| AssetHits {
                    asset_id: id.to_string(),
                    title: None,
                    series: None,
                    season: None,
                    episode: None,
                    score: *score,
                    clips: vec![],
                })
                .collect();
            self.phase("finish", assets)
        }
    }

    fn deadline_in(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    fn ids(gathered: &Gathered) -> Vec<String> {
        let mut ids: Vec<String> = gathered.assets.iter().map(|a| a.asset_id.clone()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn the_global_top_assets_are_finished_only_on_the_shards_that_hold_them() {
        let (s0, c0) = FakeShard::new(0, 1.0, 5.0, &[(0.9, "a"), (0.5, "b")]);
        let (s1, c1) = FakeShard::new(1, 0.5, 9.0, &[(0.8, "c")]);
        let (s2, c2) = FakeShard::new(2, 2.0, 3.0, &[(0.95, "d"), (0.1, "e")]);
        let gathered = run_phases(vec![s0, s1, s2], &label_plan(2), deadline_in(10_000), None).await;
        assert_eq!(ids(&gathered), ["a", "d"]);
        assert_eq!(gathered.answered, 3);
        assert_eq!(gathered.totals, (5, 5));
        assert_eq!(c0.lock().keep.as_deref(), Some(&["a".to_string()][..]));
        assert_eq!(c1.lock().keep.as_deref(), Some(&[][..]), "a shard with none of the top assets only releases its state");
        assert_eq!(c2.lock().keep.as_deref(), Some(&["d".to_string()][..]));
        // Normalization is global: every shard got the min and max over all shards.
        for calls in [&c0, &c1, &c2] {
            let stats = calls.lock().stats.clone().expect("phase two ran");
            assert_eq!((stats.leaves[0].min, stats.leaves[0].max), (0.5, 9.0));
        }
    }

    #[tokio::test]
    async fn a_shard_failing_a_phase_is_left_out_of_the_later_ones_and_not_counted() {
        let (s0, c0) = FakeShard::new(0, 1.0, 2.0, &[(0.9, "a")]);
        let (s1, c1) = FakeShard::with_fault(1, 1.0, 2.0, &[(0.99, "b")], Some("candidates"), None);
        let (s2, c2) = FakeShard::with_fault(2, 0.0, 100.0, &[(0.7, "c")], Some("hits"), None);
        let gathered = run_phases(vec![s0, s1, s2], &label_plan(10), deadline_in(10_000), None).await;
        assert_eq!(ids(&gathered), ["a"]);
        assert_eq!(gathered.answered, 1);
        assert!(c1.lock().keep.is_none(), "no phase three after a failed phase two");
        assert!(c2.lock().stats.is_none(), "no phase two after a failed phase one");
        let stats = c0.lock().stats.clone().expect("phase two ran");
        assert_eq!(stats.leaves[0].max, 2.0, "a shard that failed phase one adds nothing to the statistics");
    }

    #[tokio::test]
    async fn a_shard_that_never_answers_is_cut_off_at_the_deadline() {
        let (s0, _) = FakeShard::new(0, 1.0, 2.0, &[(0.9, "a")]);
        let (s1, c1) = FakeShard::with_fault(1, 1.0, 2.0, &[(0.8, "b")], None, Some("finish"));
        let gathered = run_phases(vec![s0, s1], &label_plan(10), deadline_in(200), None).await;
        assert_eq!(ids(&gathered), ["a"]);
        assert_eq!(gathered.answered, 1);
        assert_eq!(c1.lock().keep.as_deref(), Some(&["b".to_string()][..]), "it was asked, then given up on");
    }

    #[tokio::test]
    async fn no_shards_gather_nothing() {
        let gathered = run_phases(vec![], &label_plan(10), deadline_in(1_000), None).await;
        assert!(gathered.assets.is_empty());
        assert_eq!((gathered.answered, gathered.totals), (0, (0, 0)));
    }
}
