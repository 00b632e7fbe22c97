//! Mutual TLS between nodes. Every node holds a certificate from the cluster's own certificate
//! authority whose subject alternative name is `node-<id>`; each side of a connection checks
//! the other's chain against that CA, and the node id a peer claims in its hello must be the one
//! its certificate names. A certificate from another CA, or a hello claiming another node's id,
//! ends the handshake.
//!
//! [`ClusterCertificates::generate`] makes a CA and node certificates (`rushes cluster certs`);
//! [`PeerTls::from_pem`] loads what a node presents and trusts.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use crate::placement::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The name a node's certificate carries (its subject alternative name).
pub fn node_name(node: NodeId) -> String {
    format!("node-{node}")
}

/// What this node presents to peers and which CA it trusts, as rustls configurations.
pub struct PeerTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls { .. }")
    }
}

/// The TLS crypto provider of every rustls configuration in the project: *ring*, which builds
/// with a C compiler alone (aws-lc-rs needs cmake). rustls marks it deprecated because it has no
/// post-quantum key exchange; ARCHITECTURE.md says why that is accepted for now.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| TlsError::Pem { what, detail: e.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem { what, detail: "no certificate in the file".into() });
    }
    Ok(certificates)
}

impl PeerTls {
    /// `ca_pem`: the cluster CA; `cert_pem` and `key_pem`: this node's certificate (chain) and key.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<PeerTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates("the CA file", ca_pem)? {
            roots.add(ca).map_err(|e| TlsError::Pem { what: "the CA file", detail: e.to_string() })?;
        }
        let roots = Arc::new(roots);
        let chain = certificates("the certificate file", cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem { what: "the key file", detail: e.to_string() })?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        Ok(PeerTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The server name a dialer expects of `peer`'s certificate.
    pub(crate) fn server_name(peer: NodeId) -> Result<ServerName<'static>, TlsError> {
        ServerName::try_from(node_name(peer)).map_err(|e| TlsError::Pem { what: "a node name", detail: e.to_string() })
    }
}

/// Whether `certificate` (already verified against the CA by rustls) names `node`.
pub(crate) fn names_node(certificate: &CertificateDer<'_>, node: NodeId) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(certificate) else { return false };
    let Ok(name) = ServerName::try_from(node_name(node)) else { return false };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// A cluster's CA and the certificates of its nodes, as PEM.
pub struct ClusterCertificates {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// (node id, certificate PEM, key PEM).
    pub nodes: Vec<(NodeId, String, String)>,
}

impl ClusterCertificates {
    /// A new CA for `cluster_id` and a certificate for each of `nodes`.
    pub fn generate(cluster_id: &str, nodes: &[NodeId]) -> Result<ClusterCertificates, TlsError> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("rushes cluster {cluster_id} CA"));
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut issued = Vec::with_capacity(nodes.len());
        for &node in nodes {
            let (cert, key) = issue(&ca, &ca_key, cluster_id, node)?;
            issued.push((node, cert, key));
        }
        Ok(ClusterCertificates { ca_cert_pem: ca.pem(), ca_key_pem: ca_key.serialize_pem(), nodes: issued })
    }

    /// A certificate for `node` from an existing CA (adding a node, rotating one's key).
    pub fn issue_with(ca_cert_pem: &str, ca_key_pem: &str, cluster_id: &str, node: NodeId) -> Result<(String, String), TlsError> {
        let ca_key = rcgen::KeyPair::from_pem(ca_key_pem)?;
        let ca = rcgen::CertificateParams::from_ca_cert_pem(ca_cert_pem)?.self_signed(&ca_key)?;
        issue(&ca, &ca_key, cluster_id, node)
    }
}

impl ClusterCertificates {
    /// A server certificate for HTTPS (`http.tls_cert_file`) from an existing CA, valid for
    /// `names`: host names or IP addresses, as clients will dial them.
    pub fn issue_server(ca_cert_pem: &str, ca_key_pem: &str, names: &[String]) -> Result<(String, String), TlsError> {
        let ca_key = rcgen::KeyPair::from_pem(ca_key_pem)?;
        let ca = rcgen::CertificateParams::from_ca_cert_pem(ca_cert_pem)?.self_signed(&ca_key)?;
        // rcgen reads a name that parses as an IP address as an IP address entry.
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn issue(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair, cluster_id: &str, node: NodeId) -> Result<(String, String), TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![node_name(node)])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("rushes cluster {cluster_id} node {node}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node_only_and_load() {
        let certs = ClusterCertificates::generate("test", &[1, 2]).expect("generate");
        let (_, cert, key) = &certs.nodes[0];
        let der = certificates("cert", cert.as_bytes()).expect("pem")[0].clone();
        assert!(names_node(&der, 1));
        assert!(!names_node(&der, 2));
        assert!(!names_node(&der, 11), "node-11 is not node-1");
        PeerTls::from_pem(certs.ca_cert_pem.as_bytes(), cert.as_bytes(), key.as_bytes()).expect("loads");
        let (reissued, _) = ClusterCertificates::issue_with(&certs.ca_cert_pem, &certs.ca_key_pem, "test", 7).expect("issue with the CA");
        assert!(names_node(&certificates("cert", reissued.as_bytes()).expect("pem")[0], 7));
        assert!(PeerTls::from_pem(b"not pem", cert.as_bytes(), key.as_bytes()).is_err());
    }

    #[test]
    fn server_certificates_name_hosts_and_addresses() {
        let certs = ClusterCertificates::generate("test", &[]).expect("generate");
        let names = ["127.0.0.1".to_string(), "search.example.com".to_string()];
        let (cert, _) = ClusterCertificates::issue_server(&certs.ca_cert_pem, &certs.ca_key_pem, &names).expect("issue");
        let der = certificates("cert", cert.as_bytes()).expect("pem")[0].clone();
        let end_entity = webpki::EndEntityCert::try_from(&der).expect("parse");
        for (name, valid) in [("127.0.0.1", true), ("search.example.com", true), ("127.0.0.2", false), ("node-1", false)] {
            let server_name = ServerName::try_from(name.to_string()).expect("name");
            assert_eq!(end_entity.verify_is_valid_for_subject_name(&server_name).is_ok(), valid, "{name}");
        }
    }
}
