//! Inbound side: the accept loop, one task per accepted connection, and [`Responder`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{BufReader, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::frame::{self, FrameError};
use super::handshake::{HandshakeError, Side};
use super::peer::{self, AbortOnDrop, Outgoing, READ_BUFFER_BYTES};
use super::{handshake, Envelope, PeerStream, Shared, TransportError, WireError};
use crate::placement::NodeId;

/// Pause after a failed `accept` (typically out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// A message delivered to the application.
#[derive(Debug)]
pub enum Inbound {
    /// A Raft message for `shard` (opaque protobuf bytes) from node `from`.
    Raft { from: NodeId, shard: u32, message: Vec<u8> },
    /// A request from node `from`; answer it through `responder`.
    Request { from: NodeId, body: Vec<u8>, responder: Responder },
}

/// Sends the response to one request back on the connection it arrived on. Not answering and
/// dropping it sends [`WireError::NO_RESPONSE`], so the caller learns at once instead of at its
/// timeout. Cheap to move to another task.
#[derive(Debug)]
pub struct Responder {
    from: NodeId,
    request_id: u64,
    max_frame_bytes: usize,
    /// `None` once answered.
    tx: Option<mpsc::Sender<Outgoing>>,
}

impl Responder {
    pub fn from(&self) -> NodeId {
        self.from
    }

    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Queues the response without waiting. A response above the maximum frame size is replaced
    /// by a [`WireError::TOO_LARGE`] error for the caller, and the frame error returned here.
    /// `QueueFull` / `Disconnected` mean the caller will see a timeout or a disconnect instead.
    pub fn respond(mut self, body: Result<Vec<u8>, WireError>) -> Result<(), TransportError> {
        let Some(tx) = self.tx.take() else { return Ok(()) };
        let request_id = self.request_id;
        match frame::encode_payload(&Envelope::Response { request_id, body }, self.max_frame_bytes) {
            Ok(payload) => send(&tx, self.from, payload),
            Err(error) => {
                let refusal = Err(WireError::new(WireError::TOO_LARGE, error.to_string()));
                if let Ok(payload) = frame::encode_payload(&Envelope::Response { request_id, body: refusal }, self.max_frame_bytes) {
                    // Best effort: the error we return below is what matters to this caller.
                    let _ = send(&tx, self.from, payload);
                }
                Err(error.into())
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let body = Err(WireError::new(WireError::NO_RESPONSE, "request dropped without a response"));
            if let Ok(payload) = frame::encode_payload(&Envelope::Response { request_id: self.request_id, body }, self.max_frame_bytes) {
                let _ = send(&tx, self.from, payload);
            }
        }
    }
}

fn send(tx: &mpsc::Sender<Outgoing>, from: NodeId, payload: Vec<u8>) -> Result<(), TransportError> {
    tx.try_send(Outgoing { payload, request_id: None }).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => TransportError::QueueFull { peer: from },
        mpsc::error::TrySendError::Closed(_) => TransportError::Disconnected { peer: from },
    })
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    // Connection tasks live in this set, so aborting the accept loop closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    shared.counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
                    let open = shared.counters.inbound_open.load(Ordering::Acquire);
                    if open >= shared.config.max_inbound_connections as u64 {
                        shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node_id = shared.config.node_id, %addr, open, "too many peer connections; closing a new one");
                        continue; // dropping the stream closes it
                    }
                    shared.counters.inbound_open.fetch_add(1, Ordering::AcqRel);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        serve_connection(shared.clone(), stream, addr).await;
                        shared.counters.inbound_open.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Err(error) => {
                    tracing::warn!(node_id = shared.config.node_id, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow with every connection.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// TLS (when on) and the hello, within the handshake timeout.
async fn accept_peer(shared: &Shared, tcp: TcpStream) -> Result<(PeerStream, NodeId), HandshakeError> {
    let (mut stream, peer_certificate): (PeerStream, _) = match &shared.config.tls {
        Some(tls) => {
            let timeout_ms = shared.config.handshake_timeout_ms;
            let accepted = tokio::time::timeout(Duration::from_millis(timeout_ms), tls.acceptor.accept(tcp))
                .await
                .map_err(|_| HandshakeError::Timeout { timeout_ms })?
                .map_err(|e| HandshakeError::Tls(e.to_string()))?;
            // rustls required a client certificate chained to the cluster CA; the hello must
            // name the node it names.
            let certificate = accepted.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| c.clone().into_owned());
            (Box::new(accepted), certificate)
        }
        None => (Box::new(tcp), None),
    };
    let hello = handshake::exchange(&mut stream, &shared.config, Side::Acceptor { peer_certificate }).await?;
    Ok((stream, hello.node_id))
}

async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, addr: SocketAddr) {
    let node_id = shared.config.node_id;
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(node_id, %addr, %error, "set_nodelay failed");
    }
    let (stream, from) = match accept_peer(&shared, tcp).await {
        Ok(accepted) => accepted,
        Err(error) => {
            shared.counters.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node_id, %addr, %error, "refusing peer connection");
            return; // Dropping the stream closes it.
        }
    };
    tracing::debug!(node_id, from, %addr, "accepted peer connection");

    let (read_half, write_half) = tokio::io::split(stream);
    let (response_tx, response_rx) = mpsc::channel(shared.config.queue_capacity.max(1));
    let writer = tokio::spawn(write_responses(shared.clone(), response_rx, write_half));
    // Stop the writer when the reading side ends (its queue stays open while Responders live).
    let _abort_writer = AbortOnDrop(writer.abort_handle());

    let max_frame_bytes = shared.config.max_frame_bytes;
    let idle_timeout = Duration::from_millis(shared.config.idle_timeout_ms);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut scratch = Vec::new();
    loop {
        let read = tokio::time::timeout(idle_timeout, frame::read_frame::<_, Envelope>(&mut reader, max_frame_bytes, &mut scratch)).await;
        let envelope = match read {
            Err(_) => {
                shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node_id, from, "peer connection idle; closing");
                break;
            }
            Ok(Ok(Some(envelope))) => envelope,
            Ok(Ok(None)) => break,
            Ok(Err(error)) => {
                // Includes an oversize length prefix: we close without reading or allocating it.
                let level_is_warn = !matches!(error, FrameError::Io { .. } | FrameError::Truncated { .. });
                if level_is_warn {
                    tracing::warn!(node_id, from, %error, "bad frame from peer; closing");
                } else {
                    tracing::debug!(node_id, from, %error, "peer connection ended");
                }
                break;
            }
        };
        shared.counters.frames_received.fetch_add(1, Ordering::Relaxed);
        match envelope {
            Envelope::Raft { shard, message } => {
                // Never block the connection on a slow consumer: Raft retransmits what we drop.
                if shared.inbound_tx.try_send(Inbound::Raft { from, shard, message }).is_err() {
                    shared.counters.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(node_id, from, shard, "inbound channel full or closed; raft message dropped");
                }
            }
            Envelope::Request { request_id, body } => {
                let responder = Responder { from, request_id, max_frame_bytes, tx: Some(response_tx.clone()) };
                if let Err(e) = shared.inbound_tx.try_send(Inbound::Request { from, body, responder }) {
                    shared.counters.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                    let (mpsc::error::TrySendError::Full(msg) | mpsc::error::TrySendError::Closed(msg)) = e;
                    if let Inbound::Request { responder, .. } = msg {
                        let _ = responder.respond(Err(WireError::new(WireError::OVERLOADED, "node overloaded: inbound queue full")));
                    }
                }
            }
            other => {
                tracing::warn!(node_id, from, kind = peer::kind(&other), "unexpected frame on an inbound connection; closing");
                break;
            }
        }
    }
}

async fn write_responses(shared: Arc<Shared>, mut rx: mpsc::Receiver<Outgoing>, mut write_half: WriteHalf<PeerStream>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        if let Err(error) = peer::write_batch(&shared, first, &mut rx, &mut write_half, &mut batch, |_| true).await {
            tracing::debug!(node_id = shared.config.node_id, %error, "writing responses failed");
            return;
        }
    }
}
