//! A fault-injecting TCP proxy on loopback, the nemesis's network: the
//! kernel here has no `netem`, so delay and loss between one process and a
//! server (Redis, PostgreSQL) are made by standing in between.
//!
//! * [`FaultProxy::hold`] / [`FaultProxy::release`]: what the process
//!   sends is read but held, then delivered in order — a network delay
//!   as long as the test likes (longer than a lock ttl: the request is in
//!   flight while the lock moves). [`FaultProxy::wait_held`] says when a
//!   given request is among the held bytes.
//! * [`FaultProxy::cut`] / [`FaultProxy::heal`]: every connection is
//!   closed and new ones are refused (a partition), until healed.
//!
//! The proxy's tasks end when it is dropped.

use crate::names::WAIT;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A proxy from a loopback port to `upstream`.
pub struct FaultProxy {
    /// Where processes connect instead of the server.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    /// True while client-to-server bytes are held.
    held: watch::Sender<bool>,
    /// Bumped to close every connection.
    generation: watch::Sender<u64>,
    /// True while new connections are refused.
    refusing: AtomicBool,
    /// Bytes read from clients while holding, for `wait_held`.
    seen_held: Mutex<Vec<u8>>,
}

impl FaultProxy {
    /// Start proxying a fresh loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            held: watch::Sender::new(false),
            generation: watch::Sender::new(0),
            refusing: AtomicBool::new(false),
            seen_held: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// From now on, hold what clients send (reading it all).
    pub fn hold(&self) {
        self.seen().clear();
        self.shared.held.send_replace(true);
    }

    /// Deliver everything held, in order, and pass through again.
    pub fn release(&self) {
        self.shared.held.send_replace(false);
    }

    /// Wait until `needle` is among the bytes held since [`hold`](Self::hold).
    pub async fn wait_held(&self, needle: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !self.seen().windows(needle.len()).any(|w| w == needle) {
            assert!(
                Instant::now() < deadline,
                "{:?} never reached the proxy",
                String::from_utf8_lossy(needle)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Close every connection and refuse new ones (a partition).
    pub fn cut(&self) {
        self.shared.refusing.store(true, Ordering::Release);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Accept connections again.
    pub fn heal(&self) {
        self.shared.refusing.store(false, Ordering::Release);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.shared
            .seen_held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.held.send_replace(false);
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.refusing.load(Ordering::Acquire) {
            continue;
        }
        tokio::spawn(serve(client, shared.clone()));
    }
}

/// One connection, until either side closes or the proxy cuts it.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut generation = shared.generation.subscribe();
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = forward_held(client_read, server_write, &shared) => {}
        _ = pass(server_read, client_write) => {}
        _ = generation.changed() => {}
    }
}

/// Client to server: read continuously (so held requests can be seen),
/// write only while not holding.
async fn forward_held(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // Moves `tx` in: once the client is done, the writer drains and ends.
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if *shared.held.borrow() {
                let mut seen = shared.seen_held.lock().unwrap_or_else(|p| p.into_inner());
                seen.extend_from_slice(&buf[..n]);
            }
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    };
    let write = async {
        let mut held = shared.held.subscribe();
        while let Some(chunk) = rx.recv().await {
            if held.wait_for(|h| !*h).await.is_err() || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}

async fn pass(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        buf
    }

    #[tokio::test]
    async fn held_bytes_arrive_in_order_only_after_release() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        client.write_all(b"one ").await.expect("write");
        assert_eq!(read_exactly(&mut client, 4).await, b"one ");
        proxy.hold();
        client.write_all(b"two three").await.expect("write");
        proxy.wait_held(b"three").await;
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(200), client.read(&mut byte)).await;
        assert!(early.is_err(), "nothing passes while held");
        proxy.release();
        assert_eq!(read_exactly(&mut client, 9).await, b"two three");
    }

    #[tokio::test]
    async fn a_cut_closes_connections_and_refuses_new_ones_until_healed() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        proxy.cut();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(WAIT, client.read(&mut byte))
            .await
            .expect("closed in time");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut refused = TcpStream::connect(proxy.addr)
            .await
            .expect("accepted by the kernel");
        let answer = tokio::time::timeout(WAIT, refused.read(&mut byte))
            .await
            .expect("closed in time");
        assert!(matches!(answer, Ok(0) | Err(_)), "{answer:?}");
        proxy.heal();
        let mut again = TcpStream::connect(proxy.addr).await.expect("connect");
        again.write_all(b"back").await.expect("write");
        assert_eq!(read_exactly(&mut again, 4).await, b"back");
    }
}
