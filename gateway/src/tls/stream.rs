//! A server-side TLS stream on rustls' *unbuffered* API, where this type,
//! not rustls, owns the buffers: a connection at rest holds none.
//!
//! rustls' buffered API (what `tokio-rustls` wraps) keeps room for a 4 KiB
//! read in every connection for its whole life — with idle websockets that
//! was most of what native TLS cost per socket (docs/benchmarks.md,
//! "Native TLS"). Here the receive buffer is allocated when the socket is
//! readable and freed once its bytes are processed, decrypted plaintext is
//! held only until it is read, and encrypted output only until it is sent.
//!
//! One function, [`TlsStream::advance`], drives rustls' state machine one
//! state at a time; reading, writing, the handshake and shutdown are loops
//! around it.
//!
//! What a peer can make a connection hold is bounded by [`MAX_INCOMING`]:
//! the receive buffer grows by doubling but never past it (its capacity,
//! not only its length), and plaintext is decrypted from at most that many
//! bytes at a time. The stream runs over any [`Transport`] — a
//! `TcpStream` in the server, memory in the fuzz target.

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The receive buffer's first size, allocated when the socket is readable.
const READ_CHUNK: usize = 4096;
/// The most TLS bytes held unprocessed — the receive buffer's capacity
/// never exceeds it: one record of the largest size TLS allows (5 bytes of
/// header, 2^14 of plaintext, 2,048 of expansion). A client's handshake
/// message must fit in it (a ClientHello is 0.5–2 KiB; this server asks
/// for no client certificate), and after the handshake an incomplete
/// record is always shorter. Before the handshake completes this is most
/// of what an anonymous peer can make a connection hold
/// (`docs/security.md`).
pub const MAX_INCOMING: usize = 5 + (1 << 14) + 2048;
/// The most plaintext encrypted per `poll_write` (a few full records).
const MAX_WRITE: usize = 64 * 1024;

/// Where one turn of the state machine left the connection.
enum Step {
    /// Something was done (plaintext decrypted, a handshake record queued):
    /// turn again.
    Again,
    /// Nothing to do until more bytes arrive from the peer.
    NeedInput,
    /// Application data may be written; nothing else is pending.
    Open,
    /// This many bytes of the caller's data were encrypted and queued.
    Wrote(usize),
    /// The peer closed its side (close_notify); we may still write.
    PeerClosed,
    /// Both sides are closed.
    Closed,
}

/// What a TLS stream runs over: a byte stream that says when it is
/// readable, so the receive buffer is allocated only once there are bytes.
pub trait Transport: AsyncWrite + Unpin {
    /// Ready when a read would not block (bytes, end of file or an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Read into `buf`'s spare capacity (the caller leaves some), never
    /// beyond it; `WouldBlock` when nothing is there after all, `Ok(0)` at
    /// end of file.
    fn try_read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize>;
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        // With spare capacity a `Vec` hands out exactly that: no growth.
        self.try_read_buf(buf)
    }
}

/// A TLS connection over a [`Transport`], after its handshake.
pub struct TlsStream<T = TcpStream> {
    tcp: T,
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not yet processed.
    incoming: Vec<u8>,
    /// Decrypted and not yet read, from `plaintext_at` on.
    plaintext: Vec<u8>,
    plaintext_at: usize,
    /// TLS bytes to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer ended its side: reads return end of file.
    read_closed: bool,
    /// close_notify is queued.
    close_queued: bool,
    /// rustls or the transport failed: rustls is not driven again, except
    /// to take the alert it queued for the failure (see [`Failure`]).
    failed: Option<Failure>,
}

/// How a connection failed, which decides whether rustls is asked for an
/// alert: only after an error of its own has it queued one. Driving it
/// again in any other state makes it parse the buffer anew — after our own
/// error (end of file mid-message) its offsets may refer to bytes that are
/// gone, and after its error it would meet the same bad record twice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// rustls refused what the peer sent and queued a fatal alert.
    Tls,
    /// The transport failed, or a limit of ours: rustls queued nothing.
    Transport,
}

/// Accept TLS on `tcp`: the whole handshake.
pub async fn accept<T: Transport>(config: Arc<ServerConfig>, tcp: T) -> io::Result<TlsStream<T>> {
    let mut stream = TlsStream::new(config, tcp)?;
    if let Err(e) = poll_fn(|cx| stream.poll_handshake(cx)).await {
        stream.send_alert().await;
        return Err(e);
    }
    Ok(stream)
}

impl<T> TlsStream<T> {
    /// Whether the client chose HTTP/2 (ALPN `h2`) in the handshake.
    pub fn is_h2(&self) -> bool {
        self.conn.alpn_protocol() == Some(b"h2")
    }
}

impl<T: Transport> TlsStream<T> {
    /// A connection before its handshake.
    fn new(config: Arc<ServerConfig>, tcp: T) -> io::Result<TlsStream<T>> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        Ok(TlsStream {
            tcp,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plaintext_at: 0,
            outgoing: Vec::new(),
            sent: 0,
            read_closed: false,
            close_queued: false,
            failed: None,
        })
    }
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What filling an output buffer needs.
enum Fill {
    /// rustls needs this many bytes of room.
    Room(usize),
    Failed(io::Error),
}

impl From<EncodeError> for Fill {
    fn from(e: EncodeError) -> Fill {
        match e {
            EncodeError::InsufficientSize(size) => Fill::Room(size.required_size),
            e => Fill::Failed(invalid(e)),
        }
    }
}

impl From<EncryptError> for Fill {
    fn from(e: EncryptError) -> Fill {
        match e {
            EncryptError::InsufficientSize(size) => Fill::Room(size.required_size),
            e => Fill::Failed(invalid(e)),
        }
    }
}

/// Append to `out` what `fill` writes, with exactly the room rustls asks
/// for (it is asked first with none).
fn append(
    out: &mut Vec<u8>,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Fill>,
) -> io::Result<()> {
    let start = out.len();
    let room = match fill(&mut []) {
        Ok(_) => return Ok(()),
        Err(Fill::Room(room)) => room,
        Err(Fill::Failed(e)) => return Err(e),
    };
    out.resize(start + room, 0);
    let written = fill(&mut out[start..]);
    let written = match written {
        Ok(n) => n,
        Err(Fill::Room(_)) => {
            out.truncate(start);
            return Err(io::Error::other(
                "TLS output does not fit the room asked for",
            ));
        }
        Err(Fill::Failed(e)) => {
            out.truncate(start);
            return Err(e);
        }
    };
    out.truncate(start + written);
    Ok(())
}

/// Act on one state of rustls' machine: decrypted records into
/// `plaintext` (adding what they consumed to `discard`), records to send
/// into `outgoing`, and with `write` a prefix of it encrypted.
fn turn(
    state: ConnectionState<'_, '_, rustls::server::ServerConnectionData>,
    write: Option<&[u8]>,
    discard: &mut usize,
    plaintext: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
) -> io::Result<Step> {
    Ok(match state {
        ConnectionState::ReadTraffic(mut traffic) => {
            while let Some(record) = traffic.next_record() {
                let record = record.map_err(invalid)?;
                *discard += record.discard;
                plaintext.extend_from_slice(record.payload);
            }
            Step::Again
        }
        ConnectionState::EncodeTlsData(mut encode) => {
            append(outgoing, |buf| Ok(encode.encode(buf)?))?;
            Step::Again
        }
        // The encoded records wait in `outgoing`, sent in order before
        // anything encrypted later.
        ConnectionState::TransmitTlsData(transmit) => {
            transmit.done();
            Step::Again
        }
        ConnectionState::BlockedHandshake => Step::NeedInput,
        ConnectionState::WriteTraffic(mut traffic) => match write {
            None => Step::Open,
            Some(data) => {
                let data = &data[..data.len().min(MAX_WRITE)];
                append(outgoing, |buf| Ok(traffic.encrypt(data, buf)?))?;
                Step::Wrote(data.len())
            }
        },
        ConnectionState::PeerClosed => Step::PeerClosed,
        ConnectionState::Closed => Step::Closed,
        ConnectionState::ReadEarlyData(_) => {
            return Err(invalid(rustls::Error::General(
                "early data is not accepted".into(),
            )))
        }
        _ => return Err(invalid(rustls::Error::General("unknown TLS state".into()))),
    })
}

impl<T: Transport> TlsStream<T> {
    /// One turn of rustls' state machine; with `write`, encrypt (a prefix
    /// of) it if application data may be sent.
    ///
    /// rustls' unbuffered API keeps offsets into `incoming` between calls:
    /// the bytes it asks to discard are discarded on every path, errors
    /// included, and nothing else in `incoming` is ever removed — otherwise
    /// the next call (the alert after a failed handshake) slices past the
    /// end of the buffer and panics.
    fn advance(&mut self, write: Option<&[u8]>) -> io::Result<Step> {
        if self.failed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection failed",
            ));
        }
        let UnbufferedStatus { mut discard, state } =
            self.conn.process_tls_records(&mut self.incoming);
        let step = state.map_err(invalid).and_then(|state| {
            turn(
                state,
                write,
                &mut discard,
                &mut self.plaintext,
                &mut self.outgoing,
            )
        });
        self.discard(discard);
        if step.is_err() {
            self.failed = Some(Failure::Tls);
        }
        step
    }

    /// Drop the first `n` bytes of `incoming`, as rustls asked.
    fn discard(&mut self, n: usize) {
        self.incoming.drain(..n.min(self.incoming.len()));
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
    }

    /// Read what the socket has into `incoming`; `false` at end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(invalid(rustls::Error::General(
                "TLS message too large".into(),
            ))));
        }
        loop {
            // Wait without a buffer: allocate only once there are bytes.
            ready!(self.tcp.poll_read_ready(cx))?;
            make_room(&mut self.incoming);
            match self.tcp.try_read_into(&mut self.incoming) {
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(_) => return Poll::Ready(Ok(true)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Send everything in `outgoing`; then free it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(self.poll_handshake_steps(cx));
        if result.is_err() && self.failed.is_none() {
            self.failed = Some(Failure::Transport);
        }
        Poll::Ready(result)
    }

    fn poll_handshake_steps(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.advance(None)? {
                Step::Again | Step::Wrote(_) => {}
                Step::Open => return self.poll_send(cx),
                Step::NeedInput => {
                    ready!(self.poll_send(cx))?;
                    if !ready!(self.poll_fill(cx))? {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Step::PeerClosed | Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                }
            }
        }
    }
}

/// Leave spare capacity in `buf` (which holds less than [`MAX_INCOMING`])
/// for the next read: doubling, but never to a capacity past
/// [`MAX_INCOMING`] — `Vec::reserve` would double a nearly full buffer to
/// twice the limit before the length check could refuse it.
fn make_room(buf: &mut Vec<u8>) {
    if buf.capacity() > buf.len() {
        return;
    }
    let target = (buf.capacity() * 2).clamp(READ_CHUNK, MAX_INCOMING);
    buf.reserve_exact(target - buf.len());
}

impl<T: Transport> AsyncRead for TlsStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plaintext_at < this.plaintext.len() {
                let available = &this.plaintext[this.plaintext_at..];
                let n = available.len().min(buf.remaining());
                buf.put_slice(&available[..n]);
                this.plaintext_at += n;
                if this.plaintext_at == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plaintext_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match this.advance(None)? {
                Step::Again | Step::Wrote(_) => {}
                Step::PeerClosed | Step::Closed => this.read_closed = true,
                Step::Open | Step::NeedInput => {
                    // Post-handshake records rustls queued (a key update's
                    // answer) go out with the next write or flush; try now.
                    if this.sent < this.outgoing.len() {
                        let _ = this.poll_send(cx)?;
                    }
                    if !ready!(this.poll_fill(cx))? {
                        this.read_closed = true;
                    }
                }
            }
        }
    }
}

impl<T: Transport> AsyncWrite for TlsStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was queued before goes first, and bounds what is queued.
        ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match this.advance(Some(data))? {
                Step::Wrote(n) => {
                    // Queued: send what the socket takes now; the rest goes
                    // with the next write or flush.
                    if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                Step::Again | Step::Open => {}
                // Half-closed: reads end, writes go on.
                Step::PeerClosed => this.read_closed = true,
                Step::NeedInput | Step::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            if let Err(e) = this.queue_close_notify() {
                tracing::debug!(error = %e, "close_notify not sent");
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl<T: Transport> TlsStream<T> {
    /// After a failed handshake, send the alert rustls queued (a client
    /// offering only TLS 1.1 learns "protocol version", not a reset);
    /// best effort, bounded.
    async fn send_alert(&mut self) {
        if self.queue_alert() {
            let send = poll_fn(|cx| self.poll_send(cx));
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
        }
    }

    /// Move the alert rustls queued for its own failure into `outgoing`;
    /// `false` when there is none to send. rustls hands queued records out
    /// before it looks at any input, so one call takes the alert without
    /// parsing the buffer again (the same buffer is passed all the same:
    /// it is the one rustls' offsets refer to).
    fn queue_alert(&mut self) -> bool {
        if self.failed != Some(Failure::Tls) {
            return false;
        }
        self.failed = Some(Failure::Transport);
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        let queued = match state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                append(&mut self.outgoing, |buf| Ok(encode.encode(buf)?)).is_ok()
            }
            _ => false,
        };
        self.discard(discard);
        queued
    }

    /// Encrypt a close_notify alert into `outgoing`.
    fn queue_close_notify(&mut self) -> io::Result<()> {
        if self.failed.is_some() {
            // No close_notify after a failure: its alert, if rustls has one.
            self.queue_alert();
            return Ok(());
        }
        for _ in 0..8 {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let done = state.map_err(invalid).and_then(|state| {
                Ok(match state {
                    ConnectionState::WriteTraffic(mut traffic) => {
                        append(&mut self.outgoing, |buf| {
                            Ok(traffic.queue_close_notify(buf)?)
                        })?;
                        true
                    }
                    // Unread data pending: drop it, we are closing.
                    ConnectionState::ReadTraffic(mut traffic) => {
                        while let Some(record) = traffic.next_record() {
                            discard += record.map_err(invalid)?.discard;
                        }
                        false
                    }
                    ConnectionState::TransmitTlsData(transmit) => {
                        transmit.done();
                        false
                    }
                    _ => true,
                })
            });
            self.discard(discard);
            if done.is_err() {
                self.failed = Some(Failure::Tls);
            }
            if done? {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgws_testkit::raw::stalled_client_hello;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn configs() -> (Arc<ServerConfig>, tokio_rustls::TlsConnector) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let cert: CertificateDer<'static> = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            Arc::new(server),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A megabyte each way: many records per read, writes larger than
    /// `MAX_WRITE`, and the server answering after the client's
    /// close_notify (a half-close), then closing with its own.
    #[tokio::test]
    async fn a_megabyte_each_way_across_a_half_close() {
        let (server_config, connector) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = accept(server_config, tcp).await.expect("handshake");
            let mut got = Vec::new();
            tls.read_to_end(&mut got)
                .await
                .expect("read to the client's end");
            assert_eq!(
                got,
                pattern(1 << 20, 1),
                "the client's bytes, whole and in order"
            );
            tls.write_all(&pattern(1 << 20, 2)).await.expect("write");
            tls.shutdown().await.expect("shutdown");
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        for chunk in pattern(1 << 20, 1).chunks(7_777) {
            tls.write_all(chunk).await.expect("client write");
        }
        tls.shutdown().await.expect("client close_notify");
        let mut back = Vec::new();
        tls.read_to_end(&mut back)
            .await
            .expect("a clean end: the server's close_notify");
        assert_eq!(
            back,
            pattern(1 << 20, 2),
            "the server's bytes, whole and in order"
        );
        server.await.expect("server task");
    }

    /// Run a server handshake against a raw client that writes `bytes`,
    /// optionally half-closes, and reads to the end: what the server's
    /// task ended with, and what the client received.
    async fn raw_handshake(
        bytes: &[u8],
        half_close: bool,
    ) -> (Result<io::Result<()>, tokio::task::JoinError>, Vec<u8>) {
        let (server_config, _) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept(server_config, tcp).await.map(|_| ())
        });
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(bytes).await.expect("write");
        if half_close {
            tcp.shutdown().await.expect("half-close");
        }
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        (server.await, answer)
    }

    /// Bytes that are not TLS fail the handshake, and the client is told
    /// with an alert record rather than a reset.
    #[tokio::test]
    async fn a_failed_handshake_sends_an_alert() {
        let (outcome, answer) = raw_handshake(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
        assert!(
            outcome.expect("server task").is_err(),
            "the handshake failed"
        );
        assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    }

    /// A record holding the start of a ClientHello that the peer never
    /// finishes, then end of file: rustls still refers to the buffered
    /// fragment when the alert is encoded (the second review's panic:
    /// `range start index 19 out of range for slice of length 0`).
    #[tokio::test]
    async fn a_truncated_client_hello_then_eof_fails_without_a_panic() {
        let hello = [
            0x16, 0x03, 0x01, 0x00, 0x0e, 0x01, 0x00, 0x00, 0x64, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0,
            0,
        ];
        let (outcome, _) = raw_handshake(&hello, true).await;
        assert!(
            !outcome.as_ref().is_err_and(|e| e.is_panic()),
            "the accept task panicked"
        );
        assert!(
            outcome.expect("server task").is_err(),
            "the handshake failed"
        );
    }

    /// Bytes given in advance, then either end of file or a stall (a peer
    /// that sends no more and does not close); writes are taken and
    /// dropped.
    struct Memory {
        input: Vec<u8>,
        at: std::cell::Cell<usize>,
        eof: bool,
    }

    impl Transport for Memory {
        fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.at.get() < self.input.len() || self.eof {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn try_read_into(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
            let rest = &self.input[self.at.get()..];
            let n = rest.len().min(buf.capacity() - buf.len()).min(1500);
            if n == 0 && !self.eof {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            buf.extend_from_slice(&rest[..n]);
            self.at.set(self.at.get() + n);
            Ok(n)
        }
    }

    impl AsyncWrite for Memory {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The second review's 128 KiB: the receive buffer doubled past the
    /// limit before the size check. Its capacity — what the allocator
    /// holds — stays within `MAX_INCOMING` however a stalled handshake
    /// message is sized, and one larger than the limit is refused.
    #[test]
    fn a_stalled_handshake_never_holds_more_than_max_incoming() {
        let (config, _) = configs();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for (announced, sent) in [(0xfff0, 0xfff0), (0xfff0, MAX_INCOMING - 200), (4000, 3000)] {
            let input = stalled_client_hello(announced, sent);
            let total = input.len();
            let memory = Memory {
                input,
                at: Default::default(),
                eof: false,
            };
            let mut stream = TlsStream::new(config.clone(), memory).expect("connection");
            let outcome = stream.poll_handshake(&mut cx);
            assert!(
                stream.incoming.capacity() <= MAX_INCOMING,
                "{announced} announced, {sent} sent: {} bytes held",
                stream.incoming.capacity()
            );
            match outcome {
                Poll::Pending => assert!(total <= MAX_INCOMING, "{total} bytes buffered"),
                Poll::Ready(result) => assert!(
                    result.is_err() && total > MAX_INCOMING,
                    "only a message over the limit fails ({total} bytes)"
                ),
            }
        }
    }
}
