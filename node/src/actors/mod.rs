//! What every actor of the node shares: a bounded [`Mailbox`] that counts what waits in it,
//! the [`ActorStats`] each actor reports (state, mailbox depth and capacity, messages handled,
//! handler latency, restarts, last error), the restart back-off of supervised actors, and the
//! dedicated threads ([`dedicated_arbiter`]) blocking actors run on.
//!
//! actix bounds a mailbox only approximately (each sender may overshoot by one), and does not
//! say how full it is. [`Mailbox::try_send`] reserves a slot in [`ActorStats`] first, so the
//! bound is exact and the depth is known; the actor releases the slot when it handles the
//! message ([`ActorStats::handling`]). The actix mailbox itself is sized above that bound, so
//! actix never parks a sender.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use parking_lot::Mutex;
use rushes_protocol::peer::ShardId;

use crate::metrics::Metrics;

/// What an actor is for; the name shown in `/v1/cluster` and in metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// A shard replica's Raft group member: proposals, peer messages, ticks, read index, and
    /// applying committed entries to the raw store (the ingest log).
    Raft,
    /// A shard replica's fusion stage: applied entries to one-second buckets.
    Fusion,
    /// A shard replica's index stage: buckets to Tantivy documents and usearch vectors.
    Index,
    /// The node's ingest router: splits batches by shard and sends each part to its leader.
    IngestRouter,
    /// The node's search coordinator: plans, scatters to shards, hedges, merges.
    Coordinator,
    /// The node's replica of the metadata group: the replicated cluster map.
    Meta,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Raft => "raft",
            ActorKind::Fusion => "fusion",
            ActorKind::Index => "index",
            ActorKind::IngestRouter => "ingest_router",
            ActorKind::Coordinator => "coordinator",
            ActorKind::Meta => "meta",
        }
    }
}

/// An actor's state as its last transition left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorState {
    Starting = 0,
    /// Waiting for messages.
    Idle = 1,
    /// Running a handler.
    Busy = 2,
    /// Failed and waiting out its back-off before the supervisor starts it again.
    Restarting = 3,
    /// Stopped for good after a failure it cannot recover from (the cause is `last_error`).
    Failed = 4,
    /// Stopped at shutdown.
    Stopped = 5,
}

impl ActorState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorState::Starting => "starting",
            ActorState::Idle => "idle",
            ActorState::Busy => "busy",
            ActorState::Restarting => "restarting",
            ActorState::Failed => "failed",
            ActorState::Stopped => "stopped",
        }
    }

    fn from_u8(value: u8) -> ActorState {
        match value {
            0 => ActorState::Starting,
            1 => ActorState::Idle,
            2 => ActorState::Busy,
            3 => ActorState::Restarting,
            4 => ActorState::Failed,
            _ => ActorState::Stopped,
        }
    }
}

/// Counters and state of one actor, shared between the actor, its senders and the status
/// endpoints. Cheap to update: atomics and pre-labelled metric handles.
pub struct ActorStats {
    pub kind: ActorKind,
    pub shard: Option<ShardId>,
    /// The thread the actor runs on (its arbiter), for the actor map.
    pub thread: String,
    capacity: usize,
    depth: AtomicUsize,
    handled: AtomicU64,
    restarts: AtomicU64,
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
    handler_seconds: prometheus::Histogram,
    handled_total: prometheus::IntCounter,
    restarts_total: prometheus::IntCounter,
    depth_gauge: prometheus::IntGauge,
}

/// An actor's row in the actor map of `GET /v1/cluster` (the wire form, so peers report theirs).
pub type ActorView = rushes_protocol::peer::ActorStatus;

impl ActorStats {
    pub fn new(metrics: &Metrics, kind: ActorKind, shard: Option<ShardId>, thread: impl Into<String>, capacity: usize) -> Arc<ActorStats> {
        let shard_label = shard.map(|s| s.to_string()).unwrap_or_default();
        let labels = [kind.as_str(), shard_label.as_str()];
        metrics.actor_mailbox_capacity.with_label_values(&labels).set(capacity as i64);
        Arc::new(ActorStats {
            kind,
            shard,
            thread: thread.into(),
            capacity,
            depth: AtomicUsize::new(0),
            handled: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            state: AtomicU8::new(ActorState::Starting as u8),
            last_error: Mutex::new(None),
            handler_seconds: metrics.actor_handler_seconds.with_label_values(&labels),
            handled_total: metrics.actor_messages.with_label_values(&labels),
            restarts_total: metrics.actor_restarts.with_label_values(&labels),
            depth_gauge: metrics.actor_mailbox_depth.with_label_values(&labels),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Messages waiting in the mailbox (sent through [`Mailbox::try_send`], not yet handled).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    pub fn state(&self) -> ActorState {
        ActorState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: ActorState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn try_reserve(&self) -> bool {
        let reserved = self.depth.fetch_add(1, Ordering::AcqRel) < self.capacity;
        if !reserved {
            self.depth.fetch_sub(1, Ordering::AcqRel);
        }
        reserved
    }

    fn release(&self) {
        // Saturating: an actor may handle a message that was sent without a reservation
        // (actix internals, tests) without the count wrapping.
        let _ = self.depth.fetch_update(Ordering::AcqRel, Ordering::Acquire, |depth| Some(depth.saturating_sub(1)));
    }

    /// Call first in a handler of a message that came through [`Mailbox::try_send`]: frees its
    /// mailbox slot, marks the actor busy and times the handler until the guard is dropped.
    pub fn handling(self: &Arc<Self>) -> Handling {
        self.release();
        self.busy()
    }

    /// Like [`ActorStats::handling`], for messages an actor sends itself (timers, `notify`):
    /// they took no mailbox slot.
    pub fn busy(self: &Arc<Self>) -> Handling {
        if !matches!(self.state(), ActorState::Failed | ActorState::Stopped) {
            self.set_state(ActorState::Busy);
        }
        Handling { stats: self.clone(), started: Instant::now() }
    }

    /// A supervised actor failed (`cause`) and will be restarted.
    pub fn record_restart(&self, cause: String) {
        self.restarts.fetch_add(1, Ordering::AcqRel);
        self.restarts_total.inc();
        *self.last_error.lock() = Some(cause);
        self.set_state(ActorState::Restarting);
    }

    /// The actor stopped for good because of `cause`.
    pub fn record_failure(&self, cause: String) {
        *self.last_error.lock() = Some(cause);
        self.set_state(ActorState::Failed);
    }

    /// Copies the depth into its gauge (metrics are rendered from gauges).
    pub fn refresh_gauges(&self) {
        self.depth_gauge.set(self.depth() as i64);
    }

    pub fn view(&self) -> ActorView {
        ActorView {
            actor: self.kind.as_str().to_string(),
            shard: self.shard,
            thread: self.thread.clone(),
            state: self.state().as_str().to_string(),
            mailbox_depth: self.depth() as u64,
            mailbox_capacity: self.capacity as u64,
            messages_handled: self.handled.load(Ordering::Acquire),
            restarts: self.restarts(),
            last_error: self.last_error(),
        }
    }
}

/// Times one handler; records it and marks the actor idle again when dropped.
pub struct Handling {
    stats: Arc<ActorStats>,
    started: Instant,
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.stats.handled.fetch_add(1, Ordering::AcqRel);
        self.stats.handled_total.inc();
        self.stats.handler_seconds.observe(self.started.elapsed().as_secs_f64());
        if self.stats.state() == ActorState::Busy {
            self.stats.set_state(ActorState::Idle);
        }
    }
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("the {actor} actor has {capacity} messages waiting")]
    Full { actor: &'static str, capacity: usize },
    #[error("the {actor} actor has stopped")]
    Closed { actor: &'static str },
}

/// An actor's address with an exact bound on what waits in its mailbox.
pub struct Mailbox<A: Actor> {
    addr: Addr<A>,
    stats: Arc<ActorStats>,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Mailbox { addr: self.addr.clone(), stats: self.stats.clone() }
    }
}

/// actix's own capacity, above [`ActorStats`]'s bound so that its per-sender overshoot never
/// parks a sender (our count refuses first).
pub fn actix_capacity(capacity: usize) -> usize {
    capacity + 64
}

impl<A: Actor> Mailbox<A> {
    pub fn new(addr: Addr<A>, stats: Arc<ActorStats>) -> Mailbox<A> {
        Mailbox { addr, stats }
    }

    /// Queues `message` if the mailbox has room; never waits.
    pub fn try_send<M>(&self, message: M) -> Result<(), MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let actor = self.stats.kind.as_str();
        if !self.addr.connected() {
            return Err(MailboxError::Closed { actor });
        }
        if !self.stats.try_reserve() {
            return Err(MailboxError::Full { actor, capacity: self.stats.capacity });
        }
        self.addr.try_send(message).map_err(|error| {
            self.stats.release();
            match error {
                actix::prelude::SendError::Full(_) => MailboxError::Full { actor, capacity: self.stats.capacity },
                actix::prelude::SendError::Closed(_) => MailboxError::Closed { actor },
            }
        })
    }

    /// Queues one of the node's own control messages (shutdown) whatever the mailbox holds.
    /// Never on a client-driven path: those use [`Mailbox::try_send`].
    pub fn send_control<M>(&self, message: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        // Counted like any message, so the handler's `handling()` balances it.
        self.stats.depth.fetch_add(1, Ordering::AcqRel);
        self.addr.do_send(message);
    }

    pub fn stats(&self) -> &Arc<ActorStats> {
        &self.stats
    }

    pub fn connected(&self) -> bool {
        self.addr.connected()
    }
}

/// Restart back-off of a supervised actor: 100 ms doubling per consecutive failure, at most
/// 30 s, so a persistent fault (a full disk) does not spin while a passing one heals at once.
pub fn restart_backoff(consecutive_failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);
    FIRST.saturating_mul(1u32 << consecutive_failures.saturating_sub(1).min(16)).min(MAX)
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Thread priority of an actor's dedicated thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadPriority {
    Normal,
    /// Nice 10 on Linux: fusion and indexing yield the CPU to acknowledgements and searches
    /// and catch up from the durable raw store afterwards (the indexing-lag bound refuses
    /// writes if they fall too far behind). Not SCHED_IDLE: sled 0.34 holds a process-wide
    /// lock around reads and batches, and an idle thread preempted inside it stalls the raft
    /// actors (ARCHITECTURE.md). Threads this one starts (Tantivy's workers) inherit it.
    Background,
}

/// Nice value of background threads.
#[cfg(target_os = "linux")]
const BACKGROUND_NICE: libc::c_int = 10;

#[cfg(target_os = "linux")]
fn set_current_thread_priority(priority: ThreadPriority) {
    if priority == ThreadPriority::Normal {
        return;
    }
    // SAFETY: plain syscalls on the calling thread's own id.
    let result = unsafe {
        let thread_id = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread_id, BACKGROUND_NICE)
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn set_current_thread_priority(_priority: ThreadPriority) {}

/// A dedicated thread with its own event loop for one blocking actor (sled flushes, Tantivy
/// commits, usearch adds), so no async worker ever blocks on its disk work. `name` becomes
/// the OS thread's name (as `top -H` and `perf` show it; at most 15 bytes are kept).
pub fn dedicated_arbiter(name: String, priority: ThreadPriority) -> std::io::Result<actix::Arbiter> {
    actix::Arbiter::try_with_tokio_rt(move || {
        // The factory runs on the new thread, before its event loop starts.
        name_current_thread(&name);
        set_current_thread_priority(priority);
        tokio::runtime::Builder::new_current_thread().enable_all().thread_name(name).build()
    })
}

#[cfg(target_os = "linux")]
fn name_current_thread(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which `bytes` is.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn name_current_thread(_name: &str) {}

/// Makes sure an actix `System` is registered on this thread: actors and arbiters need one.
/// The server and the CLI run inside one; tests and tools that open shards on a plain thread
/// get a system running on a thread of its own.
pub fn ensure_system() {
    if actix::System::try_current().is_some() {
        return;
    }
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("actix-system".into())
        .spawn(move || {
            let runner = actix::System::new();
            let _ = sender.send(actix::System::current());
            runner.block_on(std::future::pending::<()>());
        })
        .unwrap_or_else(|e| panic!("cannot start the actor system thread: {e}"));
    match receiver.recv() {
        Ok(system) => actix::System::set_current(system),
        Err(_) => panic!("the actor system thread did not start"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleeper;
    impl Actor for Sleeper {
        type Context = actix::Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Nap(std::sync::mpsc::Receiver<()>);

    impl Handler<Nap> for Sleeper {
        type Result = ();
        fn handle(&mut self, nap: Nap, _: &mut Self::Context) {
            // Blocks its own dedicated thread until the test lets it go.
            let _ = nap.0.recv();
        }
    }

    #[test]
    fn a_full_mailbox_refuses_exactly_at_its_capacity_and_counts_its_depth() {
        ensure_system();
        let metrics = Metrics::new();
        let stats = ActorStats::new(&metrics, ActorKind::Index, Some(3), "test", 2);
        let arbiter = dedicated_arbiter("sleeper".into(), ThreadPriority::Normal).expect("arbiter");
        let addr = Sleeper::start_in_arbiter(&arbiter.handle(), |ctx| {
            ctx.set_mailbox_capacity(actix_capacity(2));
            Sleeper
        });
        let mailbox = Mailbox::new(addr, stats.clone());
        // The first nap is taken off the mailbox (by actix, not our count: the handler never
        // calls `handling`), the next two fill it, the fourth is refused.
        let mut wakers = Vec::new();
        for expected in [Ok(()), Ok(()), Err(MailboxError::Full { actor: "index", capacity: 2 })] {
            let (wake, nap) = std::sync::mpsc::channel();
            wakers.push(wake);
            assert_eq!(mailbox.try_send(Nap(nap)), expected);
        }
        assert_eq!(stats.depth(), 2);
        assert_eq!(stats.view().mailbox_capacity, 2);
        assert_eq!(stats.view().actor, "index");
        drop(wakers);
        arbiter.stop();
        let _ = arbiter.join();
    }

    #[test]
    fn restart_backoff_doubles_and_is_capped() {
        assert_eq!(restart_backoff(1), Duration::from_millis(100));
        assert_eq!(restart_backoff(2), Duration::from_millis(200));
        assert_eq!(restart_backoff(4), Duration::from_millis(800));
        assert_eq!(restart_backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn handling_frees_the_slot_and_counts_the_message() {
        let metrics = Metrics::new();
        let stats = ActorStats::new(&metrics, ActorKind::Fusion, Some(0), "test", 1);
        assert!(stats.try_reserve());
        assert!(!stats.try_reserve(), "capacity 1");
        {
            let _handling = stats.handling();
            assert_eq!(stats.state(), ActorState::Busy);
        }
        assert_eq!((stats.depth(), stats.view().messages_handled, stats.state()), (0, 1, ActorState::Idle));
        stats.record_restart("boom".into());
        assert_eq!((stats.restarts(), stats.state(), stats.last_error().as_deref()), (1, ActorState::Restarting, Some("boom")));
    }
}
