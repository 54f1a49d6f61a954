//! A Server-Sent Events client over a raw socket (HTTP/1.1, chunked), and
//! a raw HTTP POST: what a browser's `EventSource` and `fetch` send,
//! parsed as the HTML standard's event-stream parser does.

use crate::names::WAIT;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One block of the stream: an event, an `id`-only block, or a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseBlock {
    /// `event:`.
    pub event: Option<String>,
    /// `id:`.
    pub id: Option<String>,
    /// `data:` lines joined with `\n`; `None` without any.
    pub data: Option<String>,
    /// `retry:`.
    pub retry: Option<u64>,
    /// A `:` comment line's text.
    pub comment: Option<String>,
}

/// An open event stream.
pub struct Sse {
    stream: TcpStream,
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body of a refusal (non-200).
    pub body: String,
    raw: Vec<u8>,
    chunked: bool,
    text: Vec<u8>,
    /// The last `id` seen, as a browser keeps it.
    pub last_event_id: Option<String>,
}

impl Sse {
    /// `GET path` with `Accept: text/event-stream` and `extra` headers.
    pub async fn open(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Sse {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        );
        for (name, value) in extra {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut sse = Sse {
            stream,
            status: 0,
            headers: Vec::new(),
            body: String::new(),
            raw: Vec::new(),
            chunked: false,
            text: Vec::new(),
            last_event_id: None,
        };
        sse.read_head().await;
        if sse.status != 200 {
            let length: Option<usize> = sse.header("content-length").and_then(|l| l.parse().ok());
            while length.is_none_or(|n| sse.text.len() < n) && sse.fill().await {}
            sse.body = String::from_utf8_lossy(&sse.text).into_owned();
        }
        sse
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(end) = find(&self.raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                self.raw.drain(..end + 4);
                let mut lines = head.lines();
                self.status = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                for line in lines {
                    if let Some((n, v)) = line.split_once(':') {
                        self.headers
                            .push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                self.chunked = self.header("transfer-encoding") == Some("chunked");
                return;
            }
            assert!(
                self.read_more().await,
                "the connection closed before the head"
            );
        }
    }

    async fn read_more(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(_) => panic!("nothing from the stream within {WAIT:?}"),
        }
    }

    /// Move decoded body bytes into `text`; false at the end of the body.
    async fn fill(&mut self) -> bool {
        if !self.chunked {
            if !self.raw.is_empty() {
                self.text.append(&mut self.raw);
                return true;
            }
            return self.read_more().await && {
                self.text.append(&mut self.raw);
                true
            };
        }
        loop {
            if let Some(line_end) = find(&self.raw, b"\r\n") {
                let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
                if size == 0 {
                    return false;
                }
                if self.raw.len() >= line_end + 2 + size + 2 {
                    let chunk: Vec<u8> = self.raw[line_end + 2..line_end + 2 + size].to_vec();
                    self.raw.drain(..line_end + 2 + size + 2);
                    self.text.extend_from_slice(&chunk);
                    return true;
                }
            }
            if !self.read_more().await {
                return false;
            }
        }
    }

    /// The next block; `None` once the stream ended.
    pub async fn next_block(&mut self) -> Option<SseBlock> {
        loop {
            if let Some((end, len)) = block_end(&self.text) {
                let block: Vec<u8> = self.text.drain(..end + len).collect();
                let block = parse_block(&String::from_utf8_lossy(&block[..end]));
                if let Some(id) = &block.id {
                    self.last_event_id = Some(id.clone());
                }
                return Some(block);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next block with data (comments and `id`-only blocks skipped).
    pub async fn next_event(&mut self) -> SseBlock {
        loop {
            let block = self.next_block().await.expect("the stream ended");
            if block.data.is_some() {
                return block;
            }
        }
    }

    /// The data of the next `n` message events (unnamed).
    pub async fn messages(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = self.next_event().await;
            assert_eq!(e.event, None, "a message event: {e:?}");
            out.push(e.data.expect("data"));
        }
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where the first block ends (an empty line) and the terminator's length.
fn block_end(text: &[u8]) -> Option<(usize, usize)> {
    find(text, b"\n\n").map(|i| (i, 2))
}

fn parse_block(text: &str) -> SseBlock {
    let mut block = SseBlock::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            block.comment = Some(comment.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => block.event = Some(value.to_string()),
            "id" => block.id = Some(value.to_string()),
            "data" => data.push(value),
            "retry" => block.retry = value.parse().ok(),
            _ => {}
        }
    }
    if !data.is_empty() {
        block.data = Some(data.join("\n"));
    }
    block
}

/// `POST path` with `body` and `extra` headers: status, headers, body.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    // A refusal may come (and the socket close) before the whole body went.
    let _ = stream.write_all(&bytes).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("a response in time");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}
