//! What a client that breaks RFC 6455 gets, over raw sockets: malformed
//! close frames, a reserved length bit, invalid UTF-8 split across
//! fragments, fragments that together exceed the message limit, and frame
//! headers that announce more than they send.

mod common;

use common::raw::{client_frame, Raw};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

async fn upgraded(gw: &Server) -> Raw {
    Raw::upgraded(gw.addr, &format!("/chat/{}", token(json!({"mode": "rw"})))).await
}

#[tokio::test]
async fn malformed_close_frames_are_answered_with_1002_or_1007() {
    let gw = Server::start().await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (vec![0x03], 1002, "a one-byte body"),
        (999u16.to_be_bytes().to_vec(), 1002, "code 999"),
        (1005u16.to_be_bytes().to_vec(), 1002, "code 1005"),
        (1006u16.to_be_bytes().to_vec(), 1002, "code 1006"),
        (1016u16.to_be_bytes().to_vec(), 1002, "code 1016"),
        (5000u16.to_be_bytes().to_vec(), 1002, "code 5000"),
        (
            vec![0x03, 0xE8, 0xff, 0xfe],
            1007,
            "a reason that is not UTF-8",
        ),
        (vec![0x03, 0xE8, b'b', b'y', b'e'], 1000, "a valid close"),
        (vec![0x0F, 0xA0], 1000, "an application code (4000)"),
        (Vec::new(), 1000, "no body"),
    ];
    for (body, want, what) in cases {
        let mut raw = upgraded(&gw).await;
        raw.send(&client_frame(true, 0x8, &body)).await;
        assert_eq!(raw.expect_close().await.0, want, "{what}");
    }
}

#[tokio::test]
async fn a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() {
    let gw = Server::start().await;
    let mut raw = upgraded(&gw).await;
    let mut frame = vec![0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 5];
    frame.extend_from_slice(&[1, 2, 3, 4]);
    raw.send(&frame).await;
    assert_eq!(raw.expect_close().await.0, 1002);
}

#[tokio::test]
async fn invalid_utf8_closes_the_socket_at_the_first_bad_fragment() {
    let gw = Server::start().await;
    let mut raw = upgraded(&gw).await;
    raw.send(&client_frame(false, 0x1, b"fine so far ")).await;
    // The message never ends: the close must come from this fragment.
    raw.send(&client_frame(false, 0x0, &[0xC3, 0x28])).await;
    assert_eq!(raw.expect_close().await.0, 1007);
}

#[tokio::test]
async fn the_message_limit_spans_fragments_and_is_enforced_from_the_header() {
    let gw = Server::gateway()
        .env("PGWS_MAX_MESSAGE_SIZE", "65536")
        .start()
        .await;
    let mut raw = upgraded(&gw).await;
    raw.send(&client_frame(false, 0x1, &vec![b'a'; 65_535]))
        .await;
    // A continuation announcing 65,536 bytes (each frame alone is within
    // the limit), of which only a few are sent: refused from its header.
    let mut header = vec![0x00, 0x80 | 127];
    header.extend_from_slice(&65_536u64.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4, b'x', b'y']);
    raw.send(&header).await;
    assert_eq!(raw.expect_close().await.0, 1009);
}

/// Bytes waiting, unread, in the receive queues of the server's end of
/// every established connection to `port` (`/proc/net/tcp`).
fn unread_on_server(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let established = *fields.get(3)? == "01";
            let rx = u64::from_str_radix(fields.get(4)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && established).then_some(rx)
        })
        .sum()
}

#[tokio::test]
async fn frame_headers_announcing_64_kib_cost_no_more_than_idle_sockets() {
    // Enough sockets that a one-off allocation of the process (a thread's
    // arena, a buffer pool growing: ~2 MiB) is not mistaken for a cost per
    // socket.
    const SOCKETS: u64 = 1000;
    let gw = Server::start().await;
    let before = gw.rss_kib();
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(upgraded(&gw).await);
    }
    let idle = gw.rss_kib();
    // 14 bytes each: a text frame announcing 65,536 bytes, then nothing.
    let attack = [0x81, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 0x37, 0xfa, 0x21, 0x3d];
    for raw in sockets.iter_mut() {
        raw.send(&attack).await;
    }
    // Wait until the gateway has read every header.
    let deadline = Instant::now() + WAIT;
    while unread_on_server(gw.addr.port()) > 0 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not read the headers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attacked = gw.rss_kib();
    let idle_per_socket = idle.saturating_sub(before) as f64 / SOCKETS as f64;
    let attacked_per_socket = attacked.saturating_sub(before) as f64 / SOCKETS as f64;
    println!(
        "RSS per socket: idle {idle_per_socket:.1} KiB, after the 14-byte headers {attacked_per_socket:.1} KiB"
    );
    assert!(
        attacked_per_socket <= (2.0 * idle_per_socket).max(idle_per_socket + 4.0),
        "14 bytes cost {attacked_per_socket:.1} KiB per socket (idle: {idle_per_socket:.1} KiB)"
    );
}
