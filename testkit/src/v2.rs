//! A protocol v2 test client: commands with ids, replies matched to them,
//! everything else kept in arrival order for the test to read.

use crate::names::WAIT;
use crate::ws::{try_connect, Ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// A v2 client socket.
pub struct V2 {
    pub ws: Ws,
    next_id: u64,
    /// Frames received that were not the reply being waited for.
    pub frames: VecDeque<Value>,
}

/// A v2 upgrade request for `url` (the token, if any, already in it).
pub fn v2_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(pgws_protocol::v2::SUBPROTOCOL),
    );
    request
}

/// A channel's position as a client keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub epoch: String,
    pub offset: u64,
}

impl Pos {
    /// The position a reply or a message frame carries.
    pub fn of(frame: &Value) -> Pos {
        Pos {
            epoch: frame["epoch"].as_str().expect("epoch").to_string(),
            offset: frame["offset"].as_u64().expect("offset"),
        }
    }
}

impl V2 {
    /// Open a v2 socket on `url`, panicking on refusal.
    pub async fn connect(url: &str) -> V2 {
        match try_connect(v2_request(url)).await {
            Ok(ws) => V2 {
                ws,
                next_id: 1,
                frames: VecDeque::new(),
            },
            Err(e) => panic!("v2 connect {url}: {e:?}"),
        }
    }

    /// Send a text frame as it is.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next frame, in arrival order, within [`WAIT`].
    pub async fn next_frame(&mut self) -> Value {
        if let Some(frame) = self.frames.pop_front() {
            return frame;
        }
        self.read().await
    }

    async fn read(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no frame within {WAIT:?}"),
                Ok(None) => panic!("socket ended"),
                Ok(Some(Err(e))) => panic!("socket error: {e}"),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return serde_json::from_str(&t).expect("a JSON frame")
                }
                Ok(Some(Ok(Message::Close(c)))) => panic!("closed: {c:?}"),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Send `command` (an object without `id`) with the next id; its reply.
    pub async fn request(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send_text(&command.to_string()).await;
        self.reply_to(id).await
    }

    /// The reply to command `id`; other frames are kept in order.
    pub async fn reply_to(&mut self, id: u64) -> Value {
        if let Some(at) = self
            .frames
            .iter()
            .position(|f| f["type"] == "reply" && f["id"] == id)
        {
            return self.frames.remove(at).expect("present");
        }
        loop {
            let frame = self.read().await;
            if frame["type"] == "reply" && frame["id"] == id {
                return frame;
            }
            self.frames.push_back(frame);
        }
    }

    /// Subscribe to `channel`, from `since` when given; the reply.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&Pos>) -> Value {
        let mut command = json!({"type": "subscribe", "channel": channel});
        if let Some(p) = since {
            command["since"] = json!({"epoch": p.epoch, "offset": p.offset});
        }
        self.request(command).await
    }

    /// The next `message` frame (other frames are skipped).
    pub async fn next_message(&mut self) -> Value {
        loop {
            let frame = self.next_frame().await;
            if frame["type"] == "message" {
                return frame;
            }
        }
    }

    /// The next `n` message frames: each one's offset and data.
    pub async fn read_messages(&mut self, n: usize) -> Vec<(u64, String)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let m = self.next_message().await;
            out.push((
                m["offset"].as_u64().expect("offset"),
                m["data"].as_str().expect("data").to_string(),
            ));
        }
        out
    }

    /// Read until the close frame; its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        crate::ws::expect_close(&mut self.ws).await
    }
}

/// Read `total` messages of `channel`, dropping the socket after batches of
/// varying size (1 to 150 messages) and recovering from the last position
/// read through a new socket from `connect(n)` (n = recoveries so far) each
/// time. Returns the offsets read, in order, and the number of recoveries.
/// Panics if a recovery is refused or the epoch changes.
pub async fn read_while_reconnecting<F, Fut>(
    mut client: V2,
    channel: &str,
    mut pos: Pos,
    total: usize,
    mut connect: F,
) -> (Vec<u64>, usize)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = V2>,
{
    let mut seen = Vec::with_capacity(total);
    let mut recoveries = 0;
    while seen.len() < total {
        let batch = 1 + (recoveries * 37) % 150;
        for _ in 0..batch {
            if seen.len() == total {
                break;
            }
            let p = Pos::of(&client.next_message().await);
            assert_eq!(p.epoch, pos.epoch, "one epoch throughout");
            seen.push(p.offset);
            pos = p;
        }
        if seen.len() < total {
            recoveries += 1;
            client = connect(recoveries).await;
            let reply = client.subscribe(channel, Some(&pos)).await;
            assert_eq!(reply["recovered"], true, "{reply}");
        }
    }
    (seen, recoveries)
}
