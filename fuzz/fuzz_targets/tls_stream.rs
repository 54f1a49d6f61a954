//! The native-TLS accept path: arbitrary bytes from a peer, then end of
//! file, through the real `accept` (rustls' unbuffered state machine
//! driven by `TlsStream`) over an in-memory transport, so each run is
//! deterministic. The first input byte sets how many bytes each read
//! returns (1–256), so records split at every boundary. Properties:
//! nothing panics (the second review's panic was here); the handshake ends
//! — with an error, since nothing here completes one — without waiting.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws_gateway::tls::stream::{accept, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// The peer's bytes, handed out `chunk` at a time, then end of file;
/// what the server writes is dropped.
struct Peer<'a> {
    input: &'a [u8],
    at: Cell<usize>,
    chunk: usize,
}

impl Transport for Peer<'_> {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn try_read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let rest = &self.input[self.at.get()..];
        let n = rest.len().min(self.chunk).min(buf.capacity() - buf.len());
        buf.extend_from_slice(&rest[..n]);
        self.at.set(self.at.get() + n);
        Ok(n)
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

static CONFIG: LazyLock<Arc<rustls::ServerConfig>> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("certificate");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
});

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let peer = Peer {
        input,
        at: Cell::new(0),
        chunk: usize::from(chunk) + 1,
    };
    let outcome = RUNTIME.with(|rt| rt.block_on(accept(CONFIG.clone(), peer)));
    // Only a whole client handshake could succeed, and the peer never
    // answers the server's flight.
    assert!(outcome.is_err());
});
