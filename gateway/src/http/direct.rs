//! An HTTP/1 connection's first request, read before hyper sees the
//! connection, and the event stream it may open served without hyper.
//!
//! hyper keeps an HTTP/1 connection's state for a streaming response's
//! whole life — an 8 KiB read buffer and an 8 KiB header write buffer —
//! and an idle event stream is mostly that (docs/benchmarks.md, "Server-Sent
//! Events beside websockets"); a websocket gives them back at the upgrade.
//! So the first request head of every HTTP/1 connection (plain TCP, or
//! TLS with ALPN `http/1.1`) is read here: a `GET` that asks for
//! `text/event-stream` (not an upgrade, no body, nothing pipelined behind
//! it) is opened by the same code as through hyper
//! ([`open_event_stream`]: checks, limits, counters, recovery, refusals), and its response is written here — the same head hyper
//! writes, then every frame of the stream as one chunk, flushed — with no
//! buffer kept between events; a 16-byte read notices the client going
//! away. Everything else is handed to hyper with the bytes already read
//! ([`Prefixed`]), and so is the connection once a stream the server
//! ended leaves it reusable (keep-alive, as hyper would).
//!
//! Only a connection's first request is served here: an event stream
//! asked for on a connection that already carried a request (a browser
//! reusing a keep-alive connection) goes through hyper, with the same
//! wire format and hyper's per-connection buffers.

use super::events::{event_stream_response, open_event_stream, wants_event_stream};
use super::response::Body;
use super::state::{HttpState, PendingCell, MAX_HEAD};
use crate::sse::stream::SseStream;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, Uri, Version};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The first read's room; doubled up to [`MAX_HEAD`] for larger heads.
const FIRST_READ: usize = 2048;
/// Most headers parsed (hyper's own limit; more: hyper answers 431).
const MAX_HEADERS: usize = 100;
/// Room before an event frame for its chunk-size line (hex digits, CRLF).
const CHUNK_LINE: usize = 18;

/// What a connection's first bytes were.
pub(super) enum First {
    /// Closed (or failed) before a whole head arrived.
    Closed,
    /// A request for an event stream, and nothing after its head.
    EventStream(Request<()>),
    /// Anything else: hyper reads these bytes first.
    Other(Bytes),
}

/// Read the first request head (the caller bounds the time).
pub(super) async fn read_first<S: AsyncRead + Unpin>(io: &mut S) -> First {
    let mut buf = Vec::with_capacity(FIRST_READ);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                // hyper answers 431.
                return First::Other(buf.into());
            }
            buf.reserve(buf.capacity());
        }
        let before = buf.len();
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return First::Closed,
            Ok(_) => {}
        }
        // httparse reads a head from its start: parse again only once a
        // line has ended, not for every byte of a head that arrives a byte
        // at a time (quadratic: ~30,000 parses of up to 30 KiB for one
        // head sent a byte per packet, as hyper avoids). A head ends with
        // a line.
        if before > 0 && !buf[before..].contains(&b'\n') {
            continue;
        }
        match parse(&buf) {
            None => continue,
            Some(Some(request)) => return First::EventStream(request),
            Some(None) => return First::Other(buf.into()),
        }
    }
}

/// `None`: the head is incomplete; `Some(None)`: not an event-stream
/// request served here (or not valid: hyper says why).
fn parse(buf: &[u8]) -> Option<Option<Request<()>>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(len)) if len == buf.len() => {
            Some(event_stream_request(&head))
        }
        Ok(httparse::Status::Complete(_)) | Err(_) => Some(None),
    }
}

fn event_stream_request(head: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if head.version != Some(1) || head.method != Some("GET") {
        return None;
    }
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.version_mut() = Version::HTTP_11;
    *request.uri_mut() = Uri::try_from(head.path?).ok()?;
    let headers = request.headers_mut();
    for h in head.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    // One `content-length: 0` at most: several (even if hyper would take
    // them when they agree) are hyper's to judge, as any framing it may
    // refuse — the two parsers must never frame a connection differently.
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || match (lengths.next(), lengths.next()) {
            (None, _) => false,
            (Some(length), None) => length.as_bytes() != b"0",
            (Some(_), Some(_)) => true,
        };
    let ours = !has_body
        && wants_event_stream(&request)
        && !fastwebsockets::upgrade::is_upgrade_request(&request);
    ours.then_some(request)
}

/// Whether the request asks to close the connection after its response.
fn wants_close<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// What is left of the connection once the request is answered.
pub(super) enum After {
    /// Ready for the next request (hyper serves it).
    KeepAlive,
    /// Closed, or to be closed.
    Close,
}

/// Open the event stream `request` asks for and serve it on `io`, or
/// answer why not.
pub(super) async fn serve<S>(
    io: &mut S,
    request: Request<()>,
    state: &HttpState,
    pending: &PendingCell,
) -> After
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let close = wants_close(&request);
    let limit = state.sessions.limits.send_timeout;
    // Boxed: the opening's state is not kept for the stream's life.
    let opened = Box::pin(open_event_stream(&request, state, pending)).await;
    drop(request);
    let ended = match opened {
        Ok(stream) => stream_events(io, stream, close, limit).await,
        Err(refusal) => respond(io, refusal, close, limit).await,
    };
    match ended {
        Ok(true) if !close && !state.sessions.shutdown.is_cancelled() => After::KeepAlive,
        Ok(_) => After::Close,
        Err(e) => {
            tracing::debug!(error = %e, "event stream connection failed");
            After::Close
        }
    }
}

/// Write a whole response (a refusal); `Ok(true)`: written.
async fn respond<S>(
    io: &mut S,
    response: Response<Body>,
    close: bool,
    limit: Duration,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
{
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut out = head(&Response::from_parts(parts, ()), Some(body.len()), close);
    out.extend_from_slice(&body);
    send(io, &out, limit).await?;
    Ok(true)
}

/// Write and flush `bytes` within `limit` (`PGWS_SEND_TIMEOUT`, as for a
/// websocket's frame): a client that stopped reading (its TCP window
/// closed) does not hold its stream — its slot, its place on its
/// channels, past its token's `exp` — for ever.
async fn send<S>(io: &mut S, bytes: &[u8], limit: Duration) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let sent = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match tokio::time::timeout(limit, sent).await {
        Ok(sent) => sent,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client does not read (PGWS_SEND_TIMEOUT)",
        )),
    }
}

/// Write the stream's head and then its events as they come, one chunk
/// per frame; `Ok(true)` when the server ended it (the last chunk
/// written, the connection reusable), `Ok(false)` when the client went
/// away or sent bytes (a pipelined request is not served after a stream).
async fn stream_events<S>(
    io: &mut S,
    mut stream: SseStream,
    close: bool,
    limit: Duration,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let written = write_events(io, &mut stream, close, limit).await;
    if written
        .as_ref()
        .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut)
    {
        stream.stalled();
    }
    written
}

async fn write_events<S>(
    io: &mut S,
    stream: &mut SseStream,
    close: bool,
    limit: Duration,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let response = event_stream_response(());
    send(io, &head(&response, None, close), limit).await?;
    drop(response);
    let mut probe = [0u8; 16];
    loop {
        let mut out = vec![0; CHUNK_LINE];
        let more = tokio::select! {
            more = poll_fn(|cx| stream.poll_events(cx, &mut out)) => more,
            read = io.read(&mut probe) => {
                // The end of the client's side, or bytes where none are
                // expected: the stream is over.
                let _ = read;
                return Ok(false);
            }
        };
        if !more {
            send(io, b"0\r\n\r\n", limit).await?;
            return Ok(true);
        }
        send(io, chunk(&mut out), limit).await?;
    }
}

/// Frame `out` (`CHUNK_LINE` bytes of room, then the data) as one HTTP/1.1
/// chunk, as hyper does: the size in hexadecimal, CRLF, data, CRLF.
fn chunk(out: &mut Vec<u8>) -> &[u8] {
    let size = format!("{:X}\r\n", out.len() - CHUNK_LINE);
    let start = CHUNK_LINE - size.len();
    out[start..CHUNK_LINE].copy_from_slice(size.as_bytes());
    out.extend_from_slice(b"\r\n");
    &out[start..]
}

/// A response head as hyper writes it: the status line, the response's
/// headers, the framing (`content-length`, or chunked), `connection:
/// close` when asked, and `date`.
fn head<B>(response: &Response<B>, length: Option<usize>, close: bool) -> Vec<u8> {
    let status = response.status();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in response.headers() {
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    match length {
        Some(n) => line(b"content-length", n.to_string().as_bytes()),
        None => line(b"transfer-encoding", b"chunked"),
    }
    if close {
        line(b"connection", b"close");
    }
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    line(b"date", date.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// A connection whose first bytes were already read: they are read again
/// first (by hyper), then the connection. The bytes are freed once read.
pub(super) struct Prefixed<S> {
    prefix: Option<Bytes>,
    io: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(prefix: Bytes, io: S) -> Prefixed<S> {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Prefixed { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = &mut self.prefix {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if prefix.is_empty() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(text: &str) -> Option<Option<Request<()>>> {
        parse(text.as_bytes())
    }

    #[test]
    fn only_a_whole_event_stream_get_is_taken() {
        let sse = "GET /chan/tok HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        let taken = first(sse).expect("complete").expect("ours");
        assert_eq!(taken.uri().path(), "/chan/tok");
        assert!(first(&sse[..sse.len() - 2]).is_none(), "partial");
        for other in [
            "GET /chan/tok HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /chan HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 0\r\n\r\n",
            "GET /chan/tok HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            "GET /t HTTP/1.1\r\nAccept: text/event-stream\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /t HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 3\r\n\r\nabc",
            "GET /t HTTP/1.1\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /t HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
            "GET /t HTTP/1.1\r\nAccept: text/event-stream\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(first(other), Some(None)),
                "{other:?} must go to hyper"
            );
        }
    }

    #[test]
    fn frames_are_chunks_as_hyper_writes_them() {
        let mut out = vec![0; CHUNK_LINE];
        out.extend_from_slice(&[b'x'; 26]);
        assert_eq!(
            chunk(&mut out),
            format!("1A\r\n{}\r\n", "x".repeat(26)).as_bytes()
        );
        let response = event_stream_response(());
        let text = String::from_utf8(head(&response, None, false)).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        assert!(text.contains("\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\ndate: "));
        assert!(text.ends_with(" GMT\r\n\r\n"));
    }

    /// Gives one byte per read, as a client sending a byte per packet.
    struct ByteByByte(Vec<u8>, usize);

    impl AsyncRead for ByteByByte {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(&b) = self.0.get(self.1) {
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_head_a_byte_at_a_time_is_not_parsed_for_every_byte() {
        let mut head = b"GET /t HTTP/1.1\r\nAccept: text/event-stream\r\n".to_vec();
        for i in 0..20 {
            head.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(1500)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let started = std::time::Instant::now();
        let first = read_first(&mut ByteByByte(head, 0)).await;
        assert!(matches!(first, First::EventStream(_)));
        // Parsed from the start for every byte: ~30,000 parses of up to
        // 30 KiB (~180 ms with dependencies optimised); per line: 22 (~3 ms).
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(50), "{took:?}");
    }

    #[tokio::test]
    async fn the_prefix_is_read_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut text = String::new();
        io.read_to_string(&mut text).await.expect("read");
        assert_eq!(text, "hello world");
        assert!(io.prefix.is_none());
    }
}
