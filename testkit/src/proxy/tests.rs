use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

/// An echo server on loopback; its address.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Send `text` and read back as many bytes.
async fn round_trip(s: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(text).await?;
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(BOUND, s.read_exact(&mut got))
        .await
        .map_err(|_| std::io::Error::other("no echo in time"))??;
    Ok(got)
}

/// Whether the connection ends (EOF or reset) within [`BOUND`].
async fn ends(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(BOUND, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn bytes_pass_both_ways_unchanged() {
    let proxy = Proxy::start(echo_server().await).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut s, &big).await.expect("echo"), big);
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.live(), 1);
}

#[tokio::test]
async fn a_delay_holds_each_direction_back() {
    let proxy = Proxy::start(echo_server().await).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    // Warm the connection to the target up first.
    round_trip(&mut s, b"warm").await.expect("echo");

    proxy.set_delay(Direction::Upstream, Duration::from_millis(40));
    let started = Instant::now();
    round_trip(&mut s, b"up").await.expect("echo");
    let up_only = started.elapsed();
    assert!(up_only >= Duration::from_millis(40), "{up_only:?}");

    proxy.set_delay(Direction::Both, Duration::from_millis(40));
    let started = Instant::now();
    round_trip(&mut s, b"both").await.expect("echo");
    let both = started.elapsed();
    assert!(both >= Duration::from_millis(80), "{both:?}");

    proxy.set_delay(Direction::Both, Duration::ZERO);
    // Order is kept across many small writes in flight together.
    proxy.set_delay(Direction::Downstream, Duration::from_millis(5));
    let mut sent = Vec::new();
    for i in 0..100u8 {
        s.write_all(&[i]).await.expect("write");
        sent.push(i);
    }
    let mut got = vec![0u8; sent.len()];
    tokio::time::timeout(BOUND, s.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, sent);
}

#[tokio::test]
async fn a_partition_resets_connections_and_refuses_new_ones_until_healed() {
    let proxy = Proxy::start(echo_server().await).await.expect("proxy");
    let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut before, b"hello").await.expect("echo");

    proxy.partition();
    assert!(proxy.is_partitioned());
    assert!(ends(&mut before).await, "a live connection is cut");
    // The port still accepts at the TCP level, then resets.
    let mut during = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert!(ends(&mut during).await, "a new connection is refused");
    assert_eq!(proxy.refused(), 1);
    let deadline = Instant::now() + BOUND;
    while proxy.live() != 0 {
        assert!(Instant::now() < deadline, "connections still live");
        tokio::task::yield_now().await;
    }

    proxy.heal();
    let mut after = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(
        round_trip(&mut after, b"again").await.expect("echo"),
        b"again"
    );
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn an_unreachable_target_resets_the_client() {
    // A port nobody listens on: bind, note it, close.
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = Proxy::start(gone).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert!(ends(&mut s).await);
}

#[tokio::test]
async fn dropping_the_proxy_ends_its_connections() {
    let proxy = Proxy::start(echo_server().await).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut s, b"x").await.expect("echo");
    drop(proxy);
    assert!(ends(&mut s).await);
}

#[tokio::test]
async fn held_bytes_arrive_in_order_only_after_release() {
    let proxy = Proxy::start(echo_server().await).await.expect("proxy");
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(
        round_trip(&mut s, b"before").await.expect("echo"),
        b"before"
    );
    proxy.hold();
    s.write_all(b"first ").await.expect("write");
    s.write_all(b"second").await.expect("write");
    proxy.wait_held(b"second").await;
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
            .await
            .is_err(),
        "nothing passes while held"
    );
    proxy.release();
    let mut got = vec![0u8; 12];
    tokio::time::timeout(BOUND, s.read_exact(&mut got))
        .await
        .expect("released in time")
        .expect("read");
    assert_eq!(&got, b"first second");
}
