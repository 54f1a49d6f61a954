//! A websocket client over a raw TCP socket, for tests that must send what
//! no library would: malformed frames, partial headers, floods.

use crate::names::WAIT;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw connection and what has been read from it.
pub struct Raw {
    pub stream: TcpStream,
    pub seen: Vec<u8>,
}

/// The upgrade request for `path`, as a browser would send it.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Raw {
    /// Connect without sending anything.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw {
            stream,
            seen: Vec::new(),
        }
    }

    /// Connect and complete a websocket upgrade to `path`.
    pub async fn upgraded(addr: SocketAddr, path: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(upgrade_request(path).as_bytes()).await;
        raw.read_until(|s| find(s, b"\r\n\r\n").is_some()).await;
        assert!(
            raw.seen.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&raw.seen)
        );
        let end = find(&raw.seen, b"\r\n\r\n").expect("head") + 4;
        raw.seen.drain(..end);
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Read until `done` says the bytes so far suffice.
    pub async fn read_until(&mut self, done: impl Fn(&[u8]) -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        while !done(&self.seen) {
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .expect("the gateway answered in time")
                .expect("read");
            assert!(n > 0, "connection closed early: {:?}", self.seen);
            self.seen.extend_from_slice(&chunk[..n]);
        }
    }

    /// Read until the server's close frame; its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        self.read_until(|s| close_frame(s).is_some()).await;
        close_frame(&self.seen).expect("close frame")
    }

    /// Read until the connection ends; everything read.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        self.seen.extend_from_slice(&rest);
        std::mem::take(&mut self.seen)
    }
}

/// The first server close frame in `bytes`, skipping whole frames before it.
fn close_frame(bytes: &[u8]) -> Option<(u16, String)> {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0F;
        let (len, head) = match bytes[at + 1] & 0x7F {
            126 if at + 4 <= bytes.len() => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 => return None, // servers send no such close frames
            126 => return None,
            n => (n as usize, 2),
        };
        let end = at + head + len;
        if end > bytes.len() {
            return None;
        }
        if opcode == 0x8 {
            let body = &bytes[at + head..end];
            let code = if body.len() >= 2 {
                u16::from_be_bytes([body[0], body[1]])
            } else {
                1005
            };
            let reason = String::from_utf8_lossy(body.get(2..).unwrap_or(&[])).into_owned();
            return Some((code, reason));
        }
        at = end;
    }
    None
}

/// A TLS handshake message announcing `len` bytes of which `sent` are sent,
/// in records of the largest plaintext size: a ClientHello that never ends.
pub fn stalled_client_hello(len: usize, sent: usize) -> Vec<u8> {
    let mut message = vec![
        0x01,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0x03,
        0x03,
    ];
    message.resize(sent, 0);
    let mut records = Vec::new();
    for chunk in message.chunks(1 << 14) {
        records.extend_from_slice(&[0x16, 0x03, 0x01]);
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    records
}
