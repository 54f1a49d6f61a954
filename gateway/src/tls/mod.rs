//! TLS for the public listener (rustls with the ring provider): the
//! certificate and key, and the stream ([`stream`]) each connection is
//! served over.

pub mod stream;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Accepts TLS connections with one certificate and key.
#[derive(Clone)]
pub struct TlsAcceptor(Arc<rustls::ServerConfig>);

impl TlsAcceptor {
    /// Run the handshake on `tcp`.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<stream::TlsStream> {
        stream::accept(self.0.clone(), tcp).await
    }
}

/// Why TLS could not be set up; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("PGWS_CERTIFICATE_FILE: {0}")]
    Certificate(String),
    /// The key file is unreadable or holds no key.
    #[error("PGWS_KEY_FILE: {0}")]
    Key(String),
    /// rustls refused the pair.
    #[error("PGWS_CERTIFICATE_FILE/PGWS_KEY_FILE: {0}")]
    Pair(#[from] rustls::Error),
}

/// Build an acceptor from PEM files.
pub fn acceptor(certificate: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", certificate.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(format!("{}: {e}", certificate.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(format!(
            "{}: no certificate found",
            certificate.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // HTTP/2 first: one connection carries many event streams (and
    // publishes); websockets need HTTP/1.1, which browsers ask for on
    // their own connection (`docs/protocol.md`, "HTTP/2").
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor(Arc::new(config)))
}
