//! Watching what coordinators republish: a plain Redis subscription to a
//! websocket channel's pub/sub channel, decoded.

use crate::names::WAIT;
use futures_util::StreamExt;
use pgws_protocol::keys::KeySpace;
use tokio::sync::mpsc;

/// One republished notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Republished {
    /// The publishing coordinator's epoch.
    pub epoch: u64,
    /// The NOTIFY payload.
    pub payload: String,
    /// Its channel position (epoch: base and continuity; offset), when
    /// the publisher assigned one.
    pub position: Option<pgws_protocol::position::Position>,
}

/// Subscribe to websocket `channel` under `prefix` on the single Redis at
/// `url`; the subscription is in effect when this returns.
pub async fn subscribe(
    url: &str,
    prefix: &str,
    channel: &str,
) -> mpsc::UnboundedReceiver<Republished> {
    let client = redis::Client::open(url).expect("redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("redis pub/sub");
    pubsub
        .subscribe(KeySpace::new(prefix).channel(channel))
        .await
        .expect("SUBSCRIBE");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let bytes: Vec<u8> = message.get_payload_bytes().to_vec();
            let Ok(decoded) = pgws_protocol::republish::decode(bytes.into()) else {
                continue;
            };
            let item = Republished {
                epoch: decoded.epoch,
                payload: String::from_utf8_lossy(&decoded.payload).into_owned(),
                position: decoded.position,
            };
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next republished notification, within [`WAIT`].
pub async fn next(rx: &mut mpsc::UnboundedReceiver<Republished>) -> Republished {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("nothing republished in time")
        .expect("subscription ended")
}
