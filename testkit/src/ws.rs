//! Websocket clients (tokio-tungstenite): connect, be refused, read, close.

use crate::names::WAIT;
use futures_util::{SinkExt, StreamExt};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client websocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Open a websocket, panicking on refusal.
pub async fn connect(url: &str) -> Ws {
    match try_connect(url.into_client_request().expect("request")).await {
        Ok(ws) => ws,
        Err(e) => panic!("connect {url}: {e:?}"),
    }
}

/// Open a websocket; a refusal comes back as status and body.
pub async fn try_connect(
    request: tungstenite::handshake::client::Request,
) -> Result<Ws, (u16, String)> {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err((0, "timeout".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Ok(Err(e)) => Err((0, e.to_string())),
    }
}

pub async fn refused(url: &str) -> (u16, String) {
    match try_connect(url.into_client_request().expect("request")).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(e) => e,
    }
}

/// The next text message (answering nothing else), within [`WAIT`].
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => panic!("no message within {WAIT:?}"),
            Ok(None) => panic!("socket ended"),
            Ok(Some(Err(e))) => panic!("socket error: {e}"),
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Close(c)))) => panic!("closed: {c:?}"),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Read until the close frame; returns its code and reason. Data frames
/// before it are skipped.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("no close within {WAIT:?}"),
            Ok(None) => panic!("socket ended without a close frame"),
            Ok(Some(Err(e))) => panic!("socket error before close: {e}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Ok(Some(Ok(Message::Close(None)))) => {
                return (u16::from(CloseCode::Status), String::new())
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}
