//! A gateway with native TLS (its own throw-away PKI), and clients that
//! trust it and offer chosen ALPN protocols.

#![allow(dead_code)]

use pgws_testkit::{certs, unique, Server};
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;

/// A gateway with TLS; its certificates are removed when it is dropped.
pub struct TlsGateway {
    pub gw: Server,
    pub ca: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl TlsGateway {
    /// Start a gateway with a certificate for 127.0.0.1 and `extra` env.
    pub async fn start(tag: &str, extra: &[(&str, &str)]) -> TlsGateway {
        let dir = std::env::temp_dir().join(unique(&format!("pgws-{tag}")));
        let pki = certs::Pki::new(&dir, tag);
        let id = pki.issue("server", "localhost", &["127.0.0.1"]);
        let mut builder = Server::gateway()
            .env("PGWS_CERTIFICATE_FILE", id.cert.display().to_string())
            .env("PGWS_KEY_FILE", id.key.display().to_string());
        for (k, v) in extra {
            builder = builder.env(k, *v);
        }
        TlsGateway {
            gw: builder.start().await,
            ca: pki.ca.clone(),
            dir,
        }
    }

    /// A TLS connection offering `alpn`.
    pub async fn connect(
        &self,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&self.ca).expect("pem") {
            roots.add(c.expect("cert")).expect("root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tcp = tokio::net::TcpStream::connect(self.gw.addr)
            .await
            .expect("tcp");
        connector.connect(name, tcp).await.expect("tls handshake")
    }
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
