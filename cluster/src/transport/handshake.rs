//! Connection handshake: both sides send [`Hello`] first, then check the other's.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{self, FrameError, WIRE_VERSION};
use super::{Envelope, TransportConfig};
use crate::placement::NodeId;

/// A hello is tiny; reading it with a small maximum means an unauthenticated connection cannot
/// make us allocate a full-size frame.
const HELLO_MAX_FRAME_BYTES: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub wire_version: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer belongs to cluster {theirs:?}, this node to {ours:?}")]
    ClusterMismatch { ours: String, theirs: String },
    #[error("peer speaks wire version {found}, this build speaks {supported}")]
    UnsupportedWireVersion { found: u8, supported: u8 },
    #[error("expected node {expected} at this address, found node {found}")]
    UnexpectedNodeId { expected: NodeId, found: NodeId },
    #[error("peer claims this node's own id {node_id}")]
    SameNodeId { node_id: NodeId },
    #[error("node {node_id} is not a member of this cluster")]
    NotAMember { node_id: NodeId },
    #[error("peer claims to be node {claimed} but its certificate does not name node-{claimed}")]
    CertificateMismatch { claimed: NodeId },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("first frame was not a hello")]
    NotHello,
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error("no hello within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("handshake frame: {0}")]
    Frame(FrameError),
}

impl From<FrameError> for HandshakeError {
    fn from(e: FrameError) -> Self {
        match e {
            // The version byte of the hello frame is the first place a version mismatch shows.
            FrameError::UnsupportedVersion { found, .. } => HandshakeError::UnsupportedWireVersion { found, supported: WIRE_VERSION },
            other => HandshakeError::Frame(other),
        }
    }
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Frame(e.into())
    }
}

/// Checks a peer's hello. `expected_peer` is the node id we dialed, `None` when accepting.
pub(crate) fn check_hello(config: &TransportConfig, hello: &Hello, expected_peer: Option<NodeId>) -> Result<(), HandshakeError> {
    if hello.wire_version != WIRE_VERSION {
        return Err(HandshakeError::UnsupportedWireVersion { found: hello.wire_version, supported: WIRE_VERSION });
    }
    if hello.cluster_id != config.cluster_id {
        return Err(HandshakeError::ClusterMismatch { ours: config.cluster_id.clone(), theirs: hello.cluster_id.clone() });
    }
    if hello.node_id == config.node_id {
        return Err(HandshakeError::SameNodeId { node_id: hello.node_id });
    }
    if let Some(expected) = expected_peer {
        if expected != hello.node_id {
            return Err(HandshakeError::UnexpectedNodeId { expected, found: hello.node_id });
        }
    }
    if config.allowed_peers.as_ref().is_some_and(|members| !members.contains(hello.node_id)) {
        return Err(HandshakeError::NotAMember { node_id: hello.node_id });
    }
    Ok(())
}

/// Which side of a connection this node is in the handshake.
pub(crate) enum Side<'a> {
    /// We dialed `peer`: we speak first, then check that the one who answers is `peer` (with
    /// TLS, rustls already checked its certificate names `peer`).
    Dialer { peer: NodeId },
    /// We accepted: the caller speaks first, and we answer only once its hello is checked,
    /// against its certificate too when TLS is on (so a stranger learns nothing about us).
    Acceptor { peer_certificate: Option<CertificateDer<'a>> },
}

/// Exchanges hellos (the dialer first) and checks the peer's, within the configured handshake
/// timeout. Reads exactly one frame, so the stream can be split and buffered afterwards.
pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &TransportConfig,
    side: Side<'_>,
) -> Result<Hello, HandshakeError> {
    let ours = Envelope::Hello(Hello { cluster_id: config.cluster_id.clone(), node_id: config.node_id, wire_version: WIRE_VERSION });
    let frame = frame::encode_frame(&ours, HELLO_MAX_FRAME_BYTES)?;
    let timeout_ms = config.handshake_timeout_ms;
    let work = async {
        if let Side::Dialer { .. } = side {
            stream.write_all(&frame).await?;
            stream.flush().await?;
        }
        let mut scratch = Vec::new();
        if !frame::read_frame_payload(stream, HELLO_MAX_FRAME_BYTES, &mut scratch).await? {
            return Err(HandshakeError::Closed);
        }
        // The peer is not trusted yet: nothing in its hello may claim more than the hello's size.
        let hello = match frame::decode_payload_with_limit::<Envelope, HELLO_MAX_FRAME_BYTES>(&scratch)? {
            Envelope::Hello(hello) => hello,
            _ => return Err(HandshakeError::NotHello),
        };
        match &side {
            Side::Dialer { peer } => check_hello(config, &hello, Some(*peer))?,
            Side::Acceptor { peer_certificate } => {
                check_hello(config, &hello, None)?;
                if config.tls.is_some() {
                    let named = peer_certificate.as_ref().is_some_and(|certificate| super::tls::names_node(certificate, hello.node_id));
                    if !named {
                        return Err(HandshakeError::CertificateMismatch { claimed: hello.node_id });
                    }
                }
                stream.write_all(&frame).await?;
            }
        }
        stream.flush().await?;
        Ok(hello)
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), work).await.map_err(|_| HandshakeError::Timeout { timeout_ms })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TransportConfig {
        TransportConfig::new("prod", 1, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn hello(cluster_id: &str, node_id: NodeId, wire_version: u8) -> Hello {
        Hello { cluster_id: cluster_id.into(), node_id, wire_version }
    }

    #[test]
    fn check_hello_accepts_and_refuses() {
        let config = config();
        assert_eq!(check_hello(&config, &hello("prod", 2, WIRE_VERSION), None), Ok(()));
        assert_eq!(check_hello(&config, &hello("prod", 2, WIRE_VERSION), Some(2)), Ok(()));
        assert_eq!(
            check_hello(&config, &hello("staging", 2, WIRE_VERSION), None),
            Err(HandshakeError::ClusterMismatch { ours: "prod".into(), theirs: "staging".into() })
        );
        assert_eq!(
            check_hello(&config, &hello("prod", 2, WIRE_VERSION + 1), None),
            Err(HandshakeError::UnsupportedWireVersion { found: WIRE_VERSION + 1, supported: WIRE_VERSION })
        );
        assert_eq!(check_hello(&config, &hello("prod", 1, WIRE_VERSION), None), Err(HandshakeError::SameNodeId { node_id: 1 }));
        assert_eq!(
            check_hello(&config, &hello("prod", 3, WIRE_VERSION), Some(2)),
            Err(HandshakeError::UnexpectedNodeId { expected: 2, found: 3 })
        );
    }

    #[test]
    fn frame_version_mismatch_maps_to_unsupported_wire_version() {
        let error: HandshakeError = FrameError::UnsupportedVersion { found: 9, expected: WIRE_VERSION }.into();
        assert_eq!(error, HandshakeError::UnsupportedWireVersion { found: 9, supported: WIRE_VERSION });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, ..Default::default() })]

        /// Whatever a stranger sends first, the acceptor refuses it without a panic and without
        /// saying a word (it answers only a hello it has checked), within the handshake timeout.
        #[test]
        fn an_acceptor_refuses_any_bytes_without_answering(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128), cut in 0usize..64) {
            use tokio::io::AsyncReadExt;
            let mut config = config();
            config.handshake_timeout_ms = 200;
            config.allowed_peers = Some(crate::transport::AllowedPeers::new([2]));
            // Arbitrary bytes, or a valid hello of a non-member cut short.
            let hello = frame::encode_frame(&Envelope::Hello(hello("prod", 3, WIRE_VERSION)), HELLO_MAX_FRAME_BYTES).expect("encode");
            let sent = if cut % 2 == 0 { bytes } else { hello[..cut.min(hello.len())].to_vec() };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
            let (outcome, answered) = runtime.block_on(async {
                let (mut stranger, mut acceptor) = tokio::io::duplex(4096);
                stranger.write_all(&sent).await.expect("write");
                stranger.shutdown().await.expect("shutdown");
                let outcome = exchange(&mut acceptor, &config, Side::Acceptor { peer_certificate: None }).await;
                drop(acceptor);
                let mut answered = Vec::new();
                stranger.read_to_end(&mut answered).await.expect("read");
                (outcome, answered)
            });
            proptest::prop_assert!(outcome.is_err(), "accepted {:?}", outcome);
            proptest::prop_assert!(answered.is_empty(), "answered a stranger with {} bytes", answered.len());
        }
    }

    #[test]
    fn a_member_hello_is_answered_and_a_non_member_is_not() {
        use tokio::io::AsyncReadExt;
        let mut config = config();
        config.allowed_peers = Some(crate::transport::AllowedPeers::new([2]));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        for (node, accepted) in [(2, true), (3, false)] {
            let hello = frame::encode_frame(&Envelope::Hello(hello("prod", node, WIRE_VERSION)), HELLO_MAX_FRAME_BYTES).expect("encode");
            let (outcome, answered) = runtime.block_on(async {
                let (mut peer, mut acceptor) = tokio::io::duplex(4096);
                peer.write_all(&hello).await.expect("write");
                let outcome = exchange(&mut acceptor, &config, Side::Acceptor { peer_certificate: None }).await;
                drop(acceptor);
                let mut answered = Vec::new();
                peer.read_to_end(&mut answered).await.expect("read");
                (outcome, answered)
            });
            assert_eq!(outcome.is_ok(), accepted, "node {node}: {outcome:?}");
            assert_eq!(!answered.is_empty(), accepted, "node {node} answered: {}", answered.len());
        }
    }
}
