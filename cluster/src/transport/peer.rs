//! Outbound side: one task per peer that connects, handshakes, writes batches from the peer's
//! bounded queue, reads responses, and reconnects with backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::frame::{self, FrameError};
use super::handshake::{HandshakeError, Side};
use super::{handshake, Envelope, PeerStream, Shared, TransportError};
use crate::placement::NodeId;

/// Read buffer per connection: many small frames per syscall.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;

/// One queued frame payload (version byte + body, length prefix added by the writer).
pub(crate) struct Outgoing {
    pub payload: Vec<u8>,
    /// Set for requests, so the writer can skip a request whose caller already gave up.
    pub request_id: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No connection attempt has finished yet; calls are queued.
    Connecting,
    Connected,
    /// The last attempt failed or the connection dropped; calls fail fast, Raft messages queue.
    Down,
}

impl PeerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => PeerState::Connecting,
            1 => PeerState::Connected,
            _ => PeerState::Down,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            PeerState::Connecting => 0,
            PeerState::Connected => 1,
            PeerState::Down => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub peer: NodeId,
    pub addr: SocketAddr,
    pub state: PeerState,
    /// Successful handshakes so far (a value above 1 means the transport has reconnected).
    pub connections_established: u64,
    pub queued_messages: usize,
    pub pending_requests: usize,
    /// Why the last connection attempt failed or the last connection ended.
    pub last_error: Option<TransportError>,
}

type PendingMap = HashMap<u64, oneshot::Sender<Result<Vec<u8>, TransportError>>>;

pub(crate) struct PeerShared {
    peer: NodeId,
    addr: SocketAddr,
    state: AtomicU8,
    pending: Mutex<PendingMap>,
    next_request_id: AtomicU64,
    connections_established: AtomicU64,
    last_error: Mutex<Option<TransportError>>,
}

impl PeerShared {
    fn state(&self) -> PeerState {
        PeerState::from_u8(self.state.load(Ordering::SeqCst))
    }

    fn set_state(&self, state: PeerState) {
        self.state.store(state.as_u8(), Ordering::SeqCst);
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.lock().len()
    }

    fn is_pending(&self, request_id: u64) -> bool {
        self.pending.lock().contains_key(&request_id)
    }

    fn complete(&self, request_id: u64, result: Result<Vec<u8>, TransportError>) {
        // Removed already if the caller timed out: the late response is simply discarded.
        if let Some(tx) = self.pending.lock().remove(&request_id) {
            // The receiver is gone only if the caller was cancelled; nothing to do then.
            let _ = tx.send(result);
        } else {
            tracing::debug!(peer = self.peer, request_id, "response for a call that is no longer pending");
        }
    }

    fn fail_all_pending(&self, error: &TransportError) {
        let pending = std::mem::take(&mut *self.pending.lock());
        for (_, tx) in pending {
            let _ = tx.send(Err(error.clone()));
        }
    }

    fn record_error(&self, error: TransportError) {
        *self.last_error.lock() = Some(error);
    }
}

/// Removes a call's pending entry however the call ends (answer, timeout, error, cancellation),
/// so the map never holds entries for callers that are gone.
struct PendingGuard<'a> {
    state: &'a PeerShared,
    request_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.state.pending.lock().remove(&self.request_id);
    }
}

pub(crate) struct PeerHandle {
    pub(crate) state: Arc<PeerShared>,
    tx: mpsc::Sender<Outgoing>,
    task: JoinHandle<()>,
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.task.abort();
        self.state.set_state(PeerState::Down);
        self.state.fail_all_pending(&TransportError::Disconnected { peer: self.state.peer });
    }
}

impl PeerHandle {
    pub(crate) fn spawn(runtime: &tokio::runtime::Handle, shared: Arc<Shared>, peer: NodeId, addr: SocketAddr) -> Self {
        let (tx, rx) = mpsc::channel(shared.config.queue_capacity.max(1));
        let state = Arc::new(PeerShared {
            peer,
            addr,
            state: AtomicU8::new(PeerState::Connecting.as_u8()),
            pending: Mutex::new(HashMap::new()),
            next_request_id: AtomicU64::new(1),
            connections_established: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let task = runtime.spawn(run_peer(shared, state.clone(), rx));
        PeerHandle { state, tx, task }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    pub(crate) fn sender(&self) -> mpsc::Sender<Outgoing> {
        self.tx.clone()
    }

    pub(crate) fn send_raft(&self, shard: u32, message: Vec<u8>, max_frame_bytes: usize) -> Result<(), TransportError> {
        let payload = frame::encode_payload(&Envelope::Raft { shard, message }, max_frame_bytes)?;
        enqueue(&self.tx, self.state.peer, Outgoing { payload, request_id: None })
    }

    pub(crate) fn status(&self) -> PeerStatus {
        PeerStatus {
            peer: self.state.peer,
            addr: self.state.addr,
            state: self.state.state(),
            connections_established: self.state.connections_established.load(Ordering::SeqCst),
            queued_messages: self.tx.max_capacity() - self.tx.capacity(),
            pending_requests: self.state.pending_len(),
            last_error: self.state.last_error.lock().clone(),
        }
    }
}

fn enqueue(tx: &mpsc::Sender<Outgoing>, peer: NodeId, item: Outgoing) -> Result<(), TransportError> {
    tx.try_send(item).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => TransportError::QueueFull { peer },
        mpsc::error::TrySendError::Closed(_) => TransportError::Shutdown,
    })
}

pub(crate) async fn call(
    state: &PeerShared,
    tx: &mpsc::Sender<Outgoing>,
    body: Vec<u8>,
    timeout: Duration,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, TransportError> {
    let peer = state.peer;
    let request_id = state.next_request_id.fetch_add(1, Ordering::Relaxed);
    let payload = frame::encode_payload(&Envelope::Request { request_id, body }, max_frame_bytes)?;
    let (done_tx, done_rx) = oneshot::channel();
    let _guard = PendingGuard { state, request_id };
    state.pending.lock().insert(request_id, done_tx);
    // Checked after registering: the writer marks the peer down *before* failing pending calls,
    // so either we see Down here or our entry is failed by that sweep. No call can hang.
    if state.state() == PeerState::Down {
        return Err(TransportError::NotConnected { peer });
    }
    enqueue(tx, peer, Outgoing { payload, request_id: Some(request_id) })?;
    match tokio::time::timeout(timeout, done_rx).await {
        Err(_) => Err(TransportError::Timeout { peer, timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) }),
        // The sender was dropped without an answer: the peer handle went away.
        Ok(Err(_)) => Err(TransportError::Disconnected { peer }),
        Ok(Ok(result)) => result,
    }
}

/// Jittered exponential backoff between connection attempts.
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    current_ms: u64,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Self {
        let min_ms = min_ms.max(1);
        Backoff { min_ms, max_ms: max_ms.max(min_ms), current_ms: min_ms }
    }

    fn reset(&mut self) {
        self.current_ms = self.min_ms;
    }

    /// Somewhere in [current/2, current], so peers that lost the same node do not retry in step.
    fn next_delay(&mut self) -> Duration {
        let base_ms = self.current_ms;
        self.current_ms = base_ms.saturating_mul(2).min(self.max_ms);
        let jitter_ms = rand::thread_rng().gen_range(0..=base_ms / 2);
        Duration::from_millis(base_ms - base_ms / 2 + jitter_ms)
    }
}

async fn connect(shared: &Shared, state: &PeerShared) -> Result<PeerStream, TransportError> {
    let config = &shared.config;
    let peer = state.peer;
    let timeout_ms = config.connect_timeout_ms;
    let tcp = tokio::time::timeout(Duration::from_millis(timeout_ms), TcpStream::connect(state.addr))
        .await
        .map_err(|_| TransportError::ConnectTimeout { peer, timeout_ms })??;
    // Frames are batched by the writer already; Nagle would only add latency to small requests.
    tcp.set_nodelay(true)?;
    let mut stream: PeerStream = match &config.tls {
        Some(tls) => {
            // rustls checks the peer's chain against the cluster CA and that it names `peer`.
            let name = super::tls::PeerTls::server_name(peer).map_err(|e| HandshakeError::Tls(e.to_string()))?;
            let handshake_ms = config.handshake_timeout_ms;
            let connected = tokio::time::timeout(Duration::from_millis(handshake_ms), tls.connector.connect(name, tcp))
                .await
                .map_err(|_| HandshakeError::Timeout { timeout_ms: handshake_ms })?
                .map_err(|e| HandshakeError::Tls(e.to_string()))?;
            Box::new(connected)
        }
        None => Box::new(tcp),
    };
    handshake::exchange(&mut stream, config, Side::Dialer { peer }).await?;
    Ok(stream)
}

async fn run_peer(shared: Arc<Shared>, state: Arc<PeerShared>, mut rx: mpsc::Receiver<Outgoing>) {
    let peer = state.peer;
    let mut backoff = Backoff::new(shared.config.reconnect_backoff_min_ms, shared.config.reconnect_backoff_max_ms);
    let mut failures_in_a_row: u64 = 0;
    loop {
        let error = match connect(&shared, &state).await {
            Ok(stream) => {
                backoff.reset();
                failures_in_a_row = 0;
                state.connections_established.fetch_add(1, Ordering::SeqCst);
                shared.counters.connections_established.fetch_add(1, Ordering::Relaxed);
                state.set_state(PeerState::Connected);
                tracing::info!(node_id = shared.config.node_id, peer, addr = %state.addr, "connected to peer");
                match run_session(&shared, &state, &mut rx, stream).await {
                    Some(error) => {
                        tracing::warn!(node_id = shared.config.node_id, peer, %error, "connection to peer lost");
                        error
                    }
                    // The queue closed: the peer was removed or the transport shut down.
                    None => return,
                }
            }
            Err(error) => {
                failures_in_a_row += 1;
                // Log the first failure loudly; retries of a node that stays down go to debug.
                if matches!(error, TransportError::Handshake(_)) || failures_in_a_row == 1 {
                    tracing::warn!(node_id = shared.config.node_id, peer, addr = %state.addr, %error, "cannot connect to peer");
                } else {
                    tracing::debug!(node_id = shared.config.node_id, peer, addr = %state.addr, %error, failures_in_a_row, "cannot connect to peer");
                }
                error
            }
        };
        state.record_error(error);
        // Order matters for `call`: mark down first, then fail whatever is pending.
        state.set_state(PeerState::Down);
        state.fail_all_pending(&TransportError::Disconnected { peer });
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Aborts a spawned task when dropped, so a session's reader never outlives it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one connection until it fails (returns the error) or the queue closes (returns None).
async fn run_session(
    shared: &Arc<Shared>,
    state: &Arc<PeerShared>,
    rx: &mut mpsc::Receiver<Outgoing>,
    stream: PeerStream,
) -> Option<TransportError> {
    let (read_half, mut write_half) = tokio::io::split(stream);
    // The reader runs as its own task so responses are consumed even while a write is blocked.
    let mut reader = tokio::spawn(read_responses(shared.clone(), state.clone(), read_half));
    let _abort_reader = AbortOnDrop(reader.abort_handle());
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            ended = &mut reader => {
                return Some(match ended {
                    Ok(error) => error,
                    Err(join_error) => TransportError::Protocol { peer: state.peer, detail: format!("reader task failed: {join_error}") },
                });
            }
            item = rx.recv() => {
                let first = item?;
                if let Err(error) = write_batch(shared, first, rx, &mut write_half, &mut batch, |id| state.is_pending(id)).await {
                    return Some(error);
                }
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to `max_batch_bytes`) with one `write_all`.
/// Requests for which `is_live` is false (their caller gave up) are skipped.
pub(crate) async fn write_batch<W: AsyncWrite + Unpin>(
    shared: &Shared,
    first: Outgoing,
    rx: &mut mpsc::Receiver<Outgoing>,
    writer: &mut W,
    batch: &mut Vec<u8>,
    is_live: impl Fn(u64) -> bool,
) -> Result<(), TransportError> {
    let max_batch_bytes = shared.config.max_batch_bytes;
    batch.clear();
    let mut frames: u64 = 0;
    let mut next = Some(first);
    while let Some(item) = next.take() {
        if item.request_id.is_none_or(&is_live) {
            frame::append_frame(batch, &item.payload);
            frames += 1;
        }
        if batch.len() < max_batch_bytes {
            next = rx.try_recv().ok();
        }
    }
    if frames > 0 {
        let timeout_ms = shared.config.write_timeout_ms;
        let write = async {
            writer.write_all(batch).await?;
            writer.flush().await
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), write).await {
            Err(_) => {
                return Err(TransportError::Io {
                    kind: std::io::ErrorKind::TimedOut,
                    message: format!("write made no progress for {timeout_ms} ms"),
                })
            }
            Ok(result) => result?,
        }
        shared.counters.frames_sent.fetch_add(frames, Ordering::Relaxed);
        shared.counters.batches_written.fetch_add(1, Ordering::Relaxed);
    }
    // Do not keep a huge buffer around after an unusually large batch.
    if batch.capacity() > 4 * max_batch_bytes.max(frame::LENGTH_PREFIX_BYTES) {
        *batch = Vec::new();
    }
    Ok(())
}

/// Reads responses on an outbound connection until it ends; returns why it ended.
async fn read_responses(shared: Arc<Shared>, state: Arc<PeerShared>, read_half: ReadHalf<PeerStream>) -> TransportError {
    let peer = state.peer;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut scratch = Vec::new();
    loop {
        match frame::read_frame::<_, Envelope>(&mut reader, shared.config.max_frame_bytes, &mut scratch).await {
            Ok(Some(Envelope::Response { request_id, body })) => {
                shared.counters.frames_received.fetch_add(1, Ordering::Relaxed);
                state.complete(request_id, body.map_err(TransportError::Remote));
            }
            Ok(Some(other)) => {
                return TransportError::Protocol { peer, detail: format!("unexpected {} on an outbound connection", kind(&other)) };
            }
            Ok(None) => return TransportError::Disconnected { peer },
            Err(error @ FrameError::TooLarge { .. }) => {
                tracing::warn!(peer, %error, "peer sent an oversize frame; closing");
                return error.into();
            }
            Err(error) => return error.into(),
        }
    }
}

pub(crate) fn kind(envelope: &Envelope) -> &'static str {
    match envelope {
        Envelope::Hello(_) => "hello",
        Envelope::Raft { .. } => "raft message",
        Envelope::Request { .. } => "request",
        Envelope::Response { .. } => "response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_and_resets() {
        let mut backoff = Backoff::new(100, 1000);
        let mut expected_base_ms = 100;
        for _ in 0..10 {
            let delay_ms = backoff.next_delay().as_millis() as u64;
            assert!(delay_ms >= expected_base_ms / 2 && delay_ms <= expected_base_ms, "{delay_ms} vs base {expected_base_ms}");
            expected_base_ms = (expected_base_ms * 2).min(1000);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
        // Degenerate settings do not panic or spin at zero.
        let mut zero = Backoff::new(0, 0);
        assert!(zero.next_delay() >= Duration::from_millis(0));
    }
}
