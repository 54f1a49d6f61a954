//! A fault-injecting TCP proxy: put it between a process under test and a
//! server (Redis, PostgreSQL) to add latency or cut the network.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use pgws_testkit::proxy::{Direction, Proxy};
//! use std::time::Duration;
//! let redis: std::net::SocketAddr = "127.0.0.1:6379".parse().unwrap();
//! let proxy = Proxy::start(redis).await?;
//! proxy.set_delay(Direction::Both, Duration::from_millis(2)); // 4 ms round trips
//! let url = format!("redis://{}", proxy.addr());
//! // … start the process under test with `url` …
//! proxy.partition(); // every connection reset, new ones refused
//! proxy.heal(); // connections accepted again
//! # Ok(()) }
//! ```
//!
//! * **Delay** is one-way and per direction: every chunk read from one side
//!   is written to the other no earlier than `delay` after it was read, in
//!   order. Throughput is not limited (chunks in flight overlap), so a
//!   delay models distance, not a slow link. A new delay applies to the
//!   bytes read after it is set.
//! * **Hold** keeps the bytes travelling upstream (client → target) from
//!   [`Proxy::hold`] until [`Proxy::release`], then delivers them in order:
//!   a request in flight for as long as a test likes (longer than a lock's
//!   ttl). [`Proxy::wait_held`] says when a given request is among them.
//! * **Partition** resets every proxied connection (both sides see a reset,
//!   as after a peer's crash) and resets each new one as soon as it is
//!   accepted, until [`Proxy::heal`]. The listening port stays the same
//!   throughout, so the client can reconnect to the same address.
//!
//! The proxy runs on the caller's Tokio runtime and stops (connections
//! included) when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Which way bytes travel through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (whoever connects to the proxy) to the target.
    Upstream,
    /// From the target back to the client.
    Downstream,
    /// Both ways.
    Both,
}

/// Chunks read but not yet written, per connection and direction, before
/// reading waits (TCP back-pressure then reaches the sender).
const IN_FLIGHT: usize = 256;

/// The size of one read.
const CHUNK: usize = 16 * 1024;

/// What the proxy's tasks share with its handle.
#[derive(Debug)]
struct Shared {
    /// One-way delays: upstream, downstream.
    delays: Mutex<(Duration, Duration)>,
    /// `true` while upstream bytes are held.
    hold: watch::Sender<bool>,
    /// What was read upstream while held (for [`Proxy::wait_held`]).
    held: Mutex<Vec<u8>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    live: AtomicU64,
}

impl Shared {
    fn delay(&self, upstream: bool) -> Duration {
        let d = self.delays.lock().unwrap_or_else(|p| p.into_inner());
        if upstream {
            d.0
        } else {
            d.1
        }
    }
}

/// A running proxy (see the module documentation).
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    /// `true` while partitioned; connections watch it.
    partitioned: watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on `127.0.0.1:0` and forward every connection to `target`,
    /// with no delay.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            delays: Mutex::default(),
            hold: watch::channel(false).0,
            held: Mutex::default(),
            accepted: AtomicU64::default(),
            refused: AtomicU64::default(),
            live: AtomicU64::default(),
        });
        let (partitioned, watching) = watch::channel(false);
        let accepting = tokio::spawn(accept(listener, target, shared.clone(), watching));
        Ok(Proxy {
            addr,
            target,
            shared,
            partitioned,
            accepting,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Delay the bytes travelling `direction` by `delay` (one way).
    pub fn set_delay(&self, direction: Direction, delay: Duration) {
        let mut d = self.shared.delays.lock().unwrap_or_else(|p| p.into_inner());
        if direction != Direction::Downstream {
            d.0 = delay;
        }
        if direction != Direction::Upstream {
            d.1 = delay;
        }
    }

    /// Hold what clients send (upstream) until [`Proxy::release`].
    pub fn hold(&self) {
        self.shared
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.shared.hold.send_replace(true);
    }

    /// Deliver what was held, in order, and stop holding.
    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Wait until `needle` is among the bytes held, within
    /// [`crate::names::WAIT`].
    pub async fn wait_held(&self, needle: &[u8]) {
        let deadline = std::time::Instant::now() + crate::names::WAIT;
        loop {
            let seen = {
                let held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
                held.windows(needle.len()).any(|w| w == needle)
            };
            if seen {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{:?} never reached the proxy",
                String::from_utf8_lossy(needle)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reset every connection and every new one until [`Proxy::heal`].
    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    /// End a partition: new connections are forwarded again.
    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }

    /// Whether the proxy is partitioned.
    pub fn is_partitioned(&self) -> bool {
        *self.partitioned.borrow()
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Connections reset on arrival during a partition so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Acquire)
    }

    /// Connections being forwarded right now.
    pub fn live(&self) -> u64 {
        self.shared.live.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet: every connection ends.
        self.accepting.abort();
    }
}

/// Accept until the proxy is dropped; connections run in a set owned here.
async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    partitioned: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if *partitioned.borrow() {
                    shared.refused.fetch_add(1, Ordering::AcqRel);
                    reset(client);
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::AcqRel);
                connections.spawn(forward(client, target, shared.clone(), partitioned.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Close `stream` with a reset rather than a FIN. (`set_linger` is
/// deprecated because a non-zero linger blocks the thread on drop; a zero
/// linger never does.)
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Forward one connection until either side closes or a partition starts.
async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut partitioned: watch::Receiver<bool>,
) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.live.fetch_add(1, Ordering::AcqRel);
    let cut = {
        // Borrowed halves: once the select is over, the streams are whole
        // again and a cut can reset them.
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, &shared, true);
        let down = pump(server_read, client_write, &shared, false);
        tokio::select! {
            _ = partitioned.wait_for(|p| *p) => true,
            _ = async { tokio::join!(up, down) } => false,
        }
    };
    shared.live.fetch_sub(1, Ordering::AcqRel);
    if cut {
        reset(client);
        reset(server);
    }
}

/// Copy `from` to `to`, each chunk no earlier than the direction's delay
/// after it was read. Ends at EOF (passed on as a shutdown) or an error on
/// either side.
async fn pump<R, W>(mut from: R, mut to: W, shared: &Shared, upstream: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (chunks, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reading = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            if upstream && *shared.hold.borrow() {
                shared
                    .held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf);
            }
            let due = Instant::now() + shared.delay(upstream);
            if chunks.send((due, buf)).await.is_err() {
                break;
            }
        }
    };
    let writing = async move {
        let mut hold = shared.hold.subscribe();
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if upstream && hold.wait_for(|held| !*held).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}

#[cfg(test)]
mod tests;
