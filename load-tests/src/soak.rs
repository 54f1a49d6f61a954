//! The soak: many sockets for a long time under steady traffic, watching
//! the server's memory. Readers spread over channels receive NOTIFYs at a
//! fixed rate; writer sockets send at a fixed rate on a channel of their
//! own, counted by a LISTEN on the listen channel. Every `sample` seconds
//! the server's RSS is recorded; the report gives the trend after the
//! warm-up (a least-squares slope), messages lost either way, and sockets
//! the server closed.

use crate::client::Ws;
use crate::options::Common;
use crate::scenarios::{
    count_notifies, latency_fields, open_sockets, publish, server_rss, start_readers, CpuMark,
    Report,
};
use fastwebsockets::{Frame, Payload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the soak runs.
pub struct Soak {
    /// Reader sockets.
    pub sockets: usize,
    /// Channels they spread over.
    pub channels: usize,
    /// NOTIFYs per second.
    pub rate: u64,
    /// Writer sockets.
    pub writers: usize,
    /// Client messages per second, all writers together.
    pub write_rate: u64,
    /// How long.
    pub seconds: u64,
    /// RSS sampling period.
    pub sample: u64,
    /// Samples before this many seconds are warm-up.
    pub warmup: u64,
}

pub async fn soak(c: &Common, s: Soak) -> anyhow::Result<Report> {
    let mut report = Report::new("soak", c);
    let tag = format!("soak{}", std::process::id());
    let write_tag = format!("{tag}w");
    let rss_before = server_rss(c);
    let readers = open_sockets(c, s.sockets, "r", |i| format!("{tag}-r{}", i % s.channels)).await?;
    let writer_sockets = open_sockets(c, s.writers, "w", |_| write_tag.clone()).await?;
    // Subscriptions (cluster mode) follow each upgrade; a bounded moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (arrived, _, listener) = count_notifies(c, write_tag.clone(), started).await?;
    let group = start_readers(readers);
    let mark = CpuMark::now(c);

    let samples = Arc::new(Mutex::new(Vec::<(f64, f64)>::new()));
    let sampler = {
        let (samples, c, every) = (samples.clone(), c.clone(), s.sample);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            loop {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64();
                let mib = server_rss(&c) as f64 / 1_048_576.0;
                eprintln!("soak t={t:>5.0}s server RSS {mib:.1} MiB");
                samples.lock().expect("samples").push((t, mib));
            }
        })
    };
    let sent_writes = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(write_steadily(
        writer_sockets,
        s.write_rate,
        s.seconds,
        write_tag.clone(),
        sent_writes.clone(),
    ));
    let channels = s.channels;
    let notified = publish(c, s.rate, s.seconds, 64, |seq| {
        format!("{tag}-r{}", seq as usize % channels)
    })
    .await?;
    let writers_left = writing.await?;
    let per_channel = (s.sockets / s.channels) as u64;
    let expected = notified * per_channel;
    group.drain(expected).await;
    let sent = sent_writes.load(Ordering::Relaxed);
    let wait_writes = Instant::now() + Duration::from_secs(30);
    while arrived.load(Ordering::Relaxed) < sent && Instant::now() < wait_writes {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (server_cpu, _, _) = mark.since();
    let elapsed = mark.at.elapsed().as_secs_f64();
    sampler.abort();
    listener.abort();
    let (received, reordered, latency, ended) = group.finish_counting_closes().await;
    drop(writers_left);

    let samples = samples.lock().expect("samples").clone();
    let warm: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= s.warmup as f64)
        .collect();
    report.set("sockets", s.sockets as u64);
    report.set("channels", s.channels as u64);
    report.set("notify_per_s", s.rate);
    report.set("writers", s.writers as u64);
    report.set("writes_per_s", s.write_rate);
    report.set("seconds", s.seconds);
    report.set("expected_deliveries", expected);
    report.set("delivered", received);
    report.set("lost", expected.saturating_sub(received));
    report.set("reordered", reordered);
    report.set("writes_sent", sent);
    report.set("writes_arrived", arrived.load(Ordering::Relaxed));
    report.set(
        "writes_lost",
        sent.saturating_sub(arrived.load(Ordering::Relaxed)),
    );
    report.set("unexpected_closes", ended);
    latency_fields(&mut report, &latency);
    report.set(
        "server_cpu_percent",
        (server_cpu / elapsed * 1000.0).round() / 10.0,
    );
    report.set(
        "server_rss_before_mib",
        round1(rss_before as f64 / 1_048_576.0),
    );
    if let (Some(first), Some(last)) = (warm.first(), warm.last()) {
        report.set("server_rss_after_warmup_mib", round1(first.1));
        report.set("server_rss_end_mib", round1(last.1));
        report.set(
            "server_rss_max_mib",
            round1(warm.iter().map(|s| s.1).fold(0.0, f64::max)),
        );
        report.set(
            "rss_slope_kib_per_min",
            round1(slope(&warm) * 1024.0 * 60.0),
        );
    }
    report.set(
        "rss_samples_mib",
        samples
            .iter()
            .map(|(_, m)| round1(*m))
            .collect::<Vec<f64>>(),
    );
    Ok(report)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Least-squares slope of (t, y) points, per unit of t.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points
        .iter()
        .map(|(t, y)| (t - mean_t) * (y - mean_y))
        .sum();
    let den: f64 = points.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Send `rate` messages a second in all, round-robin over `sockets`, for
/// `seconds`; returns the sockets (kept open until the end).
async fn write_steadily(
    mut sockets: Vec<Ws>,
    rate: u64,
    seconds: u64,
    tag: String,
    sent: Arc<AtomicU64>,
) -> Vec<Ws> {
    if sockets.is_empty() || rate == 0 {
        return sockets;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * seconds;
    for seq in 0..total {
        tick.tick().await;
        let i = seq as usize % sockets.len();
        let text = format!("{tag} {seq}");
        if sockets[i]
            .write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
            .await
            .is_ok()
        {
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    sockets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let flat: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 5.0)).collect();
        assert_eq!(slope(&flat), 0.0);
        let rising: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 2.0 * t as f64 + 1.0)).collect();
        assert!((slope(&rising) - 2.0).abs() < 1e-9);
    }
}
