//! Echo suppression: what a socket published, so that fan-out does not
//! send it back (v2 `subscribe` with `"echo":false`, v1 `?echo=false`).
//!
//! A writer's message comes back as the NOTIFY payload the gateway itself
//! built — the envelope, byte for byte, in both modes (standalone: through
//! PostgreSQL; cluster: the Redis stream, the leader's NOTIFY, its `LISTEN`
//! and Redis pub/sub). So the origin needs no mark in the envelope (whose
//! shape v1 consumers rely on): the socket remembers the fingerprint of
//! every envelope it publishes, and fan-out skips a delivery whose payload
//! has a remembered fingerprint, consuming it. Remembered is a multiset: two
//! identical envelopes (the same claims, payload and microsecond) are
//! skipped twice, and another socket's identical envelope consumes that
//! socket's own entry, not this one's. What never comes back (a database
//! that does not `LISTEN`) is forgotten after [`REMEMBER_FOR`] or once
//! [`REMEMBER_MAX`] newer envelopes are remembered.
//!
//! The fingerprint ([`fingerprint`]) is keyed per process, so a client
//! cannot craft a collision to have another message skipped.

pub use crate::bus::fingerprint;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a published envelope is remembered waiting for its echo.
pub const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Most envelopes one socket remembers.
pub const REMEMBER_MAX: usize = 1024;

/// One socket's published envelopes waiting for their echo.
#[derive(Default)]
pub struct Echoes(Mutex<Remembered>);

#[derive(Default)]
struct Remembered {
    counts: HashMap<u64, u32>,
    order: VecDeque<(Instant, u64)>,
}

impl Remembered {
    fn forget_oldest(&mut self) {
        if let Some((_, print)) = self.order.pop_front() {
            if let Some(n) = self.counts.get_mut(&print) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&print);
                }
            }
        }
    }
}

impl Echoes {
    /// Remember an envelope this socket is publishing.
    pub fn remember(&self, envelope: &[u8]) {
        let print = fingerprint(envelope);
        let now = Instant::now();
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while r
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > REMEMBER_FOR)
            || r.order.len() >= REMEMBER_MAX
        {
            r.forget_oldest();
        }
        r.order.push_back((now, print));
        *r.counts.entry(print).or_default() += 1;
    }

    /// Whether a delivery with fingerprint `print` is this socket's own
    /// echo; if so it is consumed (the oldest entry with that print: echoes
    /// come back in publish order, so it is near the front).
    pub fn take(&self, print: u64) -> bool {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !r.counts.contains_key(&print) {
            return false;
        }
        if let Some(at) = r.order.iter().position(|(_, p)| *p == print) {
            r.order.remove(at);
        }
        if let Some(n) = r.counts.get_mut(&print) {
            *n -= 1;
            if *n == 0 {
                r.counts.remove(&print);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_published_envelope_is_skipped_once() {
        let e = Echoes::default();
        e.remember(b"a");
        e.remember(b"a");
        assert!(e.take(fingerprint(b"a")));
        assert!(e.take(fingerprint(b"a")));
        assert!(!e.take(fingerprint(b"a")));
        assert!(!e.take(fingerprint(b"b")));
    }

    #[test]
    fn memory_is_bounded() {
        let e = Echoes::default();
        for i in 0..(REMEMBER_MAX + 10) {
            e.remember(format!("m{i}").as_bytes());
        }
        assert!(!e.take(fingerprint(b"m0")), "the oldest is forgotten");
        assert!(e.take(fingerprint(format!("m{}", REMEMBER_MAX + 9).as_bytes())));
        let r = e.0.lock().expect("lock");
        assert!(r.order.len() <= REMEMBER_MAX);
    }
}
