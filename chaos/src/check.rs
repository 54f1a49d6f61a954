//! The checker: what the workload sent and observed, judged against the
//! cluster's invariants (docs/architecture.md, "What the nemesis checks").
//! Each finding is either a violation (the run fails) or an expected,
//! documented loss with its reason; everything checked is counted.

use crate::nemesis::{Injected, Kind};
use crate::workload::{RecorderLog, Sent, V1Log, V2Event, V2Log, WriterLog};
use pgws_protocol::position::Epoch;
use pgws_testkit::checker::{reused_offsets, Offered};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How many violations of one kind the report lists (all are counted).
const FIRST: usize = 5;

/// Seconds after a gateway's Redis link is healed (or Redis restarted)
/// during which its v1 readers may still miss what is published: the
/// gateway notices (a silent partition: a timeout), reconnects (its
/// backoff is capped at 5 s) and subscribes again.
const RESUBSCRIBE: f64 = 12.0;

/// Everything a run produced, for the checker.
pub struct Observed<'a> {
    /// Per channel: what the notifier sent.
    pub sent: &'a [Vec<Sent>],
    /// v1 readers.
    pub v1: &'a [V1Log],
    /// v2 readers.
    pub v2: &'a [V2Log],
    /// Writers.
    pub writers: &'a [WriterLog],
    /// The direct LISTEN.
    pub recorder: &'a RecorderLog,
    /// Faults.
    pub faults: &'a [Injected],
    /// Every coordinator's log, all processes.
    pub coordinator_logs: &'a [String],
    /// When the tail (everything healed, a leader elected) began.
    pub tail_from: f64,
    /// The numbered messages were outbox sends (`pgws.send`): the outbox
    /// rules apply (docs/architecture.md, "The outbox variant").
    pub outbox: bool,
}

/// The verdict.
#[derive(Debug, Default)]
pub struct Verdict {
    /// What was checked, by name.
    pub checked: BTreeMap<&'static str, u64>,
    /// Expected (documented) losses, by reason.
    pub expected: BTreeMap<&'static str, u64>,
    /// Violations, by invariant.
    pub violations: BTreeMap<&'static str, u64>,
    /// The first violations of each invariant, with context.
    pub first: BTreeMap<&'static str, Vec<String>>,
    /// Announced losses (v2 readers) by the faults in force when the lost
    /// notification was sent ("none" when no fault was).
    pub lost_during: BTreeMap<String, u64>,
    /// Announced holes as v2 readers saw them, each once: channel, first
    /// and last number missing, when they were sent, the epochs around.
    pub holes: BTreeMap<(usize, u64, u64), String>,
}

impl Verdict {
    pub fn violation_public(&mut self, kind: &'static str, context: String) {
        self.violation(kind, context)
    }

    fn violation(&mut self, kind: &'static str, context: String) {
        *self.violations.entry(kind).or_default() += 1;
        let list = self.first.entry(kind).or_default();
        if list.len() < FIRST {
            list.push(context);
        }
    }

    fn expect(&mut self, reason: &'static str, n: u64) {
        *self.expected.entry(reason).or_default() += n;
    }

    fn count(&mut self, what: &'static str, n: u64) {
        *self.checked.entry(what).or_default() += n;
    }

    /// No violation.
    pub fn ok(&self) -> bool {
        self.violations.values().all(|n| *n == 0)
    }
}

/// Per channel: number → when sent and whether committed.
type SentIndex = Vec<HashMap<u64, (f64, bool)>>;

/// Per channel: number → every position it was delivered at.
type Positions = Vec<HashMap<u64, BTreeSet<(String, u64)>>>;

/// Judge `o`.
pub fn check(o: &Observed) -> Verdict {
    let mut v = Verdict::default();
    let sent: SentIndex = o
        .sent
        .iter()
        .map(|s| s.iter().map(|x| (x.num, (x.at, x.committed))).collect())
        .collect();
    for s in o.sent {
        v.count(
            "notifications committed",
            s.iter().filter(|x| x.committed).count() as u64,
        );
        v.count(
            "notifications ambiguous (connection lost)",
            s.iter().filter(|x| !x.committed).count() as u64,
        );
    }
    let positions = positions(o, &mut v);
    if o.outbox {
        outbox_epochs(o, &mut v);
    }
    let terms = leadership(o, &mut v);
    for log in o.v2 {
        check_v2(log, &sent, &terms, &mut v, o);
    }
    for log in o.v1 {
        check_v1(log, &sent, &positions, o, &mut v);
    }
    if o.outbox {
        // A "maybe" (its COMMIT's answer lost) may arrive or not — at most
        // once, which the duplicate rule checks; how many did is counted.
        let arrived = positions
            .iter()
            .enumerate()
            .flat_map(|(ch, map)| map.keys().map(move |n| (ch, *n)))
            .filter(|(ch, n)| sent[*ch].get(n).is_some_and(|s| !s.1))
            .count();
        v.count(
            "outbox: ambiguous sends that arrived (committed after all)",
            arrived as u64,
        );
    }
    check_writes(o, &mut v);
    v
}

/// The published positions of every number, from every v2 reader (live
/// and recovered); an offset of one epoch used for two numbers, or one
/// number published at two positions, is a violation.
fn positions(o: &Observed, v: &mut Verdict) -> Positions {
    let mut out: Positions = vec![HashMap::new(); o.sent.len()];
    let mut offered: Vec<Vec<Offered>> = vec![Vec::new(); o.sent.len()];
    for log in o.v2 {
        for e in &log.events {
            if let V2Event::Message {
                epoch, offset, num, ..
            } = e
            {
                out[log.channel]
                    .entry(*num)
                    .or_default()
                    .insert((epoch.clone(), *offset));
                offered[log.channel].push(Offered {
                    epoch: epoch.clone(),
                    offset: *offset,
                    payload: num.to_string(),
                });
            }
        }
    }
    for (ch, list) in offered.iter().enumerate() {
        v.count("v2 positions compared", list.len() as u64);
        let (n, first) = reused_offsets(list.iter());
        for (epoch, offset, a, b) in first {
            v.violation(
                "v2 offset reused for two payloads (live vs recovered views differ)",
                format!("channel {ch}: epoch {epoch} offset {offset} carried {a} and {b}"),
            );
        }
        for _ in FIRST.min(n)..n {
            v.violation(
                "v2 offset reused for two payloads (live vs recovered views differ)",
                String::new(),
            );
        }
    }
    for (ch, map) in out.iter().enumerate() {
        for (num, at) in map {
            if at.len() > 1 {
                v.violation(
                    "notification published twice (two positions)",
                    format!("channel {ch}: number {num} at {at:?}"),
                );
            }
        }
    }
    out
}

/// Outbox: every message of a channel, on every reader, live or
/// recovered, carries one durable epoch for the whole run — the epoch is the
/// channel's base and the outbox generation, and nothing here rewinds the
/// database, so a second epoch (or a leader's non-durable one) is a
/// violation whatever the faults did.
fn outbox_epochs(o: &Observed, v: &mut Verdict) {
    let mut first: Vec<Option<(String, usize, f64)>> = vec![None; o.sent.len()];
    for log in o.v2 {
        for e in &log.events {
            let V2Event::Message { at, epoch, num, .. } = e else {
                continue;
            };
            v.count("outbox epochs compared", 1);
            if !Epoch::parse(epoch).is_some_and(|p| p.continuity.is_durable()) {
                v.violation(
                    "outbox: a message not in a durable epoch",
                    format!(
                        "gateway {} channel {} at {at:.2}s: number {num} in {epoch}",
                        log.gateway, log.channel
                    ),
                );
                continue;
            }
            match &first[log.channel] {
                None => first[log.channel] = Some((epoch.clone(), log.gateway, *at)),
                Some((e0, g0, at0)) if e0 != epoch => v.violation(
                    "outbox: epoch changed while the outbox generation is unchanged",
                    format!(
                        "channel {}: {e0} (gateway {g0}, {at0:.2}s), then {epoch} (gateway {}, {at:.2}s, number {num})",
                        log.channel, log.gateway
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

/// A Redis restart between `from` and `to` (seconds): the one fault after
/// which an away outbox reader may be told `recovered:false`.
fn redis_restarted(faults: &[Injected], from: f64, to: f64) -> bool {
    faults
        .iter()
        .any(|f| f.kind == Kind::RestartRedis && f.start <= to && f.end >= from)
}

/// Leadership from the coordinators' logs: each fencing epoch won by one
/// process only. Returns every epoch any coordinator became leader in.
fn leadership(o: &Observed, v: &mut Verdict) -> BTreeSet<u64> {
    let mut won: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, log) in o.coordinator_logs.iter().enumerate() {
        for line in log.lines().filter(|l| l.contains("became leader")) {
            let Some(epoch) = field(line, "epoch=").and_then(|e| e.parse::<u64>().ok()) else {
                continue;
            };
            if let Some(other) = won.insert(epoch, i) {
                v.violation(
                    "two leaders in one fencing epoch",
                    format!("epoch {epoch}: coordinators {other} and {i}"),
                );
            }
        }
    }
    v.count("leader terms", won.len() as u64);
    for (needle, what) in [
        (
            "took over where the predecessor stopped",
            "takeovers gapless (coordinator logs)",
        ),
        (
            "took over with a gap",
            "takeovers with a reported gap (coordinator logs)",
        ),
        (
            "lease lapsed",
            "leases lapsed before renewal (coordinator logs)",
        ),
        (
            "the fencing epoch moved on",
            "batches refused as deposed (coordinator logs)",
        ),
    ] {
        let n = o
            .coordinator_logs
            .iter()
            .map(|l| l.matches(needle).count() as u64)
            .sum();
        v.count(what, n);
    }
    won.into_keys().collect()
}

/// The value after `key` in a log line, up to a space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next()
}

/// Whether `epoch` is an outbox (durable) epoch.
fn is_durable(epoch: &str) -> bool {
    Epoch::parse(epoch).is_some_and(|p| p.continuity.is_durable())
}

fn committed(sent: &HashMap<u64, (f64, bool)>, n: u64) -> bool {
    sent.get(&n).is_some_and(|s| s.1)
}

/// One v2 reader: never-sent, duplicated, reordered numbers; a recovery
/// answered `recovered:true` that is not exactly the missing range; a
/// message of an older term after a newer one (a fenced leader's); a
/// committed number missing between two received ones without the reader
/// being told (a new epoch or `recovered:false` between them); and, after
/// everything healed, delivery must resume.
fn check_v2(log: &V2Log, sent: &SentIndex, terms: &BTreeSet<u64>, v: &mut Verdict, o: &Observed) {
    let ch = log.channel;
    let who = format!("v2 reader (gateway {}, channel {ch})", log.gateway);
    let mut seen = BTreeSet::new();
    let mut last: Option<(u64, String, f64)> = None;
    let mut first_subscribed: Option<f64> = None;
    // Outbox: told `recovered:false` before the first delivery while the
    // only epoch the reader ever had was not durable (it subscribed before
    // the channel's first send: a provisional epoch the first send
    // replaces).
    let mut provisional_then_told = false;
    let mut had_durable = false;
    let mut told = true;
    let mut replay: Option<(String, u64, u64, f64)> = None; // epoch, next offset, left, at
    let mut newest_term: Option<(u64, u64, u64)> = None; // base, term, session
    for e in &log.events {
        match e {
            V2Event::Subscribed {
                at,
                since,
                epoch,
                offset,
                recovered,
                replayed,
            } => {
                v.count("v2 subscriptions", 1);
                first_subscribed.get_or_insert(*at);
                let durable = is_durable(epoch);
                if last.is_none()
                    && !had_durable
                    && durable
                    && *recovered == Some(false)
                    && since
                        .as_ref()
                        .is_some_and(|(e, o)| *o == 0 && !is_durable(e))
                {
                    provisional_then_told = true;
                }
                had_durable |= durable;
                if let Some((epoch0, left, ..)) = replay.take().map(|r| (r.0, r.2)) {
                    if left > 0 {
                        v.count("v2 replays cut short by the socket", 1);
                        let _ = epoch0;
                    }
                }
                match (since, recovered) {
                    (Some((se, so)), Some(true)) => {
                        v.count("v2 recovered:true checked", 1);
                        if se != epoch || offset.checked_sub(*so) != Some(*replayed) {
                            v.violation(
                                "v2 recovered:true that is not exactly the missing range",
                                format!("{who} at {at:.2}s: since {se}/{so}, reply {epoch}/{offset} replayed {replayed}"),
                            );
                        }
                        replay = Some((se.clone(), so + 1, *replayed, *at));
                    }
                    (Some(_), _) => {
                        v.count("v2 recovered:false", 1);
                        told = true;
                    }
                    (None, _) => told = true,
                }
            }
            V2Event::Down { why, at } => {
                if let Some((ep, next, left, _)) = replay.take() {
                    if left > 0 && why.starts_with("offset gap") {
                        v.violation(
                            "v2 recovered:true that is not exactly the missing range",
                            format!("{who} at {at:.2}s: replay in {ep} broke off at offset {next} ({why})"),
                        );
                    }
                }
                if why.starts_with("offset gap") {
                    v.count("v2 live offset gaps (visible, recovered)", 1);
                }
            }
            V2Event::Message {
                at,
                epoch,
                offset,
                num,
            } => {
                v.count("v2 deliveries checked", 1);
                if let Some((ep, next, left, _)) = replay.as_mut() {
                    if *left > 0 {
                        if ep != epoch || next != offset {
                            v.violation(
                                "v2 recovered:true that is not exactly the missing range",
                                format!("{who} at {at:.2}s: replay expected {ep}/{next}, got {epoch}/{offset}"),
                            );
                        }
                        *next += 1;
                        *left -= 1;
                    }
                }
                if let Some(parsed) = Epoch::parse(epoch).filter(|p| !p.continuity.is_durable()) {
                    let key = (
                        parsed.base,
                        parsed.continuity.term,
                        parsed.continuity.session,
                    );
                    if !terms.contains(&parsed.continuity.term) {
                        v.violation(
                            "message of a term no coordinator led",
                            format!("{who} at {at:.2}s: number {num} at {epoch}/{offset}"),
                        );
                    }
                    if let Some(newest) = newest_term {
                        if newest.0 == key.0 && (key.1, key.2) < (newest.1, newest.2) {
                            v.violation(
                                "a fenced (older) term's message reached a reader after a newer term's",
                                format!("{who} at {at:.2}s: number {num} at {epoch}/{offset} after term {:x}.{:x}", newest.1, newest.2),
                            );
                        }
                    }
                    if newest_term.is_none_or(|n| key > n) {
                        newest_term = Some(key);
                    }
                }
                if !sent[ch].contains_key(num) {
                    v.violation(
                        "received but never sent",
                        format!("{who} at {at:.2}s: number {num}"),
                    );
                    continue;
                }
                if !seen.insert(*num) {
                    v.violation(
                        "duplicated delivery",
                        format!("{who} at {at:.2}s: number {num} at {epoch}/{offset} again"),
                    );
                    continue;
                }
                if o.outbox && last.is_none() {
                    // The reader subscribed before the first send: what
                    // committed after its subscription and before its
                    // first delivery must have reached it too.
                    let from = first_subscribed.unwrap_or(0.0);
                    let missing: Vec<u64> = (1..*num)
                        .filter(|n| committed(&sent[ch], *n) && sent[ch][n].0 >= from)
                        .collect();
                    if !missing.is_empty() && provisional_then_told {
                        v.expect(
                            "outbox v2: away before its first message, its epoch not durable yet, told recovered:false",
                            missing.len() as u64,
                        );
                    } else if !missing.is_empty() {
                        v.violation(
                            "outbox: committed send lost before the reader's first delivery",
                            format!(
                                "{who}: {} missing {:?}… before its first, {num} ({epoch}/{offset}, {at:.2}s), sent {:.2}s–{:.2}s",
                                missing.len(),
                                &missing[..missing.len().min(5)],
                                sent[ch][&missing[0]].0,
                                sent[ch][&missing[missing.len() - 1]].0
                            ),
                        );
                    }
                }
                if let Some((prev, prev_epoch, prev_at)) = &last {
                    if num < prev {
                        v.violation(
                            "reordered delivery",
                            format!("{who} at {at:.2}s: number {num} after {prev}"),
                        );
                        continue;
                    }
                    let missing: Vec<u64> = (prev + 1..*num)
                        .filter(|n| committed(&sent[ch], *n))
                        .collect();
                    if !missing.is_empty() && o.outbox {
                        let redis = told && redis_restarted(o.faults, *prev_at, *at);
                        if redis {
                            v.expect(
                                "outbox v2: away across a Redis restart, told recovered:false",
                                missing.len() as u64,
                            );
                        } else {
                            v.violation(
                                "outbox v2: committed send lost",
                                format!(
                                    "{who}: {} missing {:?}… between {prev} ({prev_epoch}, {prev_at:.2}s) and {num} ({epoch}/{offset}, {at:.2}s){}",
                                    missing.len(),
                                    &missing[..missing.len().min(5)],
                                    if told { ", told recovered:false" } else { "" }
                                ),
                            );
                        }
                    } else if !missing.is_empty() {
                        if told || prev_epoch != epoch {
                            v.expect(
                                "v2: lost, announced by a new epoch or recovered:false",
                                missing.len() as u64,
                            );
                            for n in &missing {
                                *v.lost_during
                                    .entry(during(o.faults, sent[ch][n].0))
                                    .or_default() += 1;
                            }
                            let (first, last) = (missing[0], missing[missing.len() - 1]);
                            v.holes.entry((ch, first, last)).or_insert_with(|| {
                                format!(
                                    "sent {:.2}s–{:.2}s, epochs {prev_epoch} → {epoch}{}",
                                    sent[ch][&first].0,
                                    sent[ch][&last].0,
                                    if told {
                                        " (told by recovered:false / a fresh subscription)"
                                    } else {
                                        ""
                                    }
                                )
                            });
                        } else {
                            v.violation(
                                "v2: committed notification lost without a new epoch (silent loss)",
                                format!(
                                    "{who}: {} missing {:?}… between {prev} ({prev_epoch}, {prev_at:.2}s) and {num} ({epoch}/{offset}, {at:.2}s)",
                                    missing.len(),
                                    &missing[..missing.len().min(5)]
                                ),
                            );
                        }
                    }
                }
                told = false;
                last = Some((*num, epoch.clone(), *at));
            }
        }
    }
    tail(&who, ch, last.map(|l| l.0), sent, v, o.tail_from);
}

/// The faults in force at `at` (from a second before each to five seconds
/// after it was healed), as one label.
fn during(faults: &[Injected], at: f64) -> String {
    let mut kinds: Vec<String> = faults
        .iter()
        .filter(|f| at >= f.start - 1.0 && at <= f.end + 5.0)
        .map(|f| f.kind.to_string())
        .collect();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        "no fault".into()
    } else {
        kinds.join(" + ")
    }
}

/// After everything healed and a leader was elected, every committed
/// notification sent from `tail_from` on must reach every reader.
fn tail(
    who: &str,
    ch: usize,
    last: Option<u64>,
    sent: &SentIndex,
    v: &mut Verdict,
    tail_from: f64,
) {
    let after = last.unwrap_or(0);
    let missed: Vec<u64> = sent[ch]
        .iter()
        .filter(|(n, (at, ok))| *ok && *at >= tail_from && **n > after)
        .map(|(n, _)| *n)
        .collect();
    v.count(
        "tail notifications checked",
        sent[ch]
            .values()
            .filter(|(at, ok)| *ok && *at >= tail_from)
            .count() as u64,
    );
    if !missed.is_empty() {
        let mut missed = missed;
        missed.sort_unstable();
        v.violation(
            "no delivery after every fault healed",
            format!(
                "{who}: last received {after}; {} tail notifications missing from {}",
                missed.len(),
                missed[0]
            ),
        );
    }
}

/// One v1 reader: never-sent, duplicated, reordered numbers, and each
/// committed number missing between two received ones classified.
fn check_v1(log: &V1Log, sent: &SentIndex, positions: &Positions, o: &Observed, v: &mut Verdict) {
    let ch = log.channel;
    let who = format!("v1 reader (gateway {}, channel {ch})", log.gateway);
    let mut seen = BTreeSet::new();
    let mut last: Option<(u64, f64)> = None;
    for &(num, at) in &log.got {
        v.count("v1 deliveries checked", 1);
        if !sent[ch].contains_key(&num) {
            v.violation(
                "received but never sent",
                format!("{who} at {at:.2}s: number {num}"),
            );
            continue;
        }
        if !seen.insert(num) {
            v.violation(
                "duplicated delivery",
                format!("{who} at {at:.2}s: number {num} again"),
            );
            continue;
        }
        if o.outbox && last.is_none() {
            let missing: Vec<u64> = (1..num)
                .filter(|n| {
                    committed(&sent[ch], *n) && outbox_v1_loss_reason(log, sent[ch][n].0).is_none()
                })
                .collect();
            if !missing.is_empty() {
                v.violation(
                    "outbox: committed send lost before the reader's first delivery",
                    format!(
                        "{who}: {} missing {:?}… before its first, {num} ({at:.2}s), sent {:.2}s–{:.2}s",
                        missing.len(),
                        &missing[..missing.len().min(5)],
                        sent[ch][&missing[0]].0,
                        sent[ch][&missing[missing.len() - 1]].0
                    ),
                );
            }
        }
        if let Some((prev, prev_at)) = last {
            if num < prev {
                v.violation(
                    "reordered delivery",
                    format!("{who} at {at:.2}s: number {num} after {prev}"),
                );
                continue;
            }
            for n in (prev + 1..num).filter(|n| committed(&sent[ch], *n)) {
                let reason = if o.outbox {
                    outbox_v1_loss_reason(log, sent[ch][&n].0)
                } else {
                    v1_loss_reason(log, n, sent, positions, o)
                };
                match reason {
                    Some(reason) => v.expect(reason, 1),
                    None => v.violation(
                        if o.outbox {
                            "outbox v1: committed send lost for a connected reader"
                        } else {
                            "v1: committed notification lost outside any announced hole or Redis outage"
                        },
                        format!("{who}: number {n} (sent {:.2}s) missing between {prev} ({prev_at:.2}s) and {num} ({at:.2}s)", sent[ch][&n].0),
                    ),
                }
            }
        }
        last = Some((num, at));
    }
    tail(&who, ch, last.map(|l| l.0), sent, v, o.tail_from);
}

/// Outbox: a v1 reader may miss a committed send only while it had no
/// socket. A gateway cut from Redis (or Redis restarting) is no excuse:
/// the leader publishes the backlog when it can, and the gateway fills the
/// offsets it missed from history before delivering more.
fn outbox_v1_loss_reason(log: &V1Log, at: f64) -> Option<&'static str> {
    log.down
        .iter()
        .any(|(from, to)| at >= from - 1.0 && at <= to + 1.0)
        .then_some("outbox v1: sent while the reader had no socket")
}

/// Why a v1 reader may have missed `n`: it was never published and the
/// sequence says so (a new epoch around it), or the reader's gateway could
/// not hear Redis then, or the reader had no socket. `None`: no reason.
/// A number no v2 reader received with the same epoch on both sides was
/// not necessarily never published: every v2 reader may have been away
/// and told `recovered:false` (history no longer reaching back) — then
/// only the outage or the missing socket excuses it.
fn v1_loss_reason(
    log: &V1Log,
    n: u64,
    sent: &SentIndex,
    positions: &Positions,
    o: &Observed,
) -> Option<&'static str> {
    let ch = log.channel;
    let at = sent[ch][&n].0;
    if !positions[ch].contains_key(&n) {
        let before = (1..n).rev().find_map(|k| positions[ch].get(&k));
        let after = (n + 1..=sent[ch].len() as u64).find_map(|k| positions[ch].get(&k));
        return match (
            before.and_then(|s| s.first()),
            after.and_then(|s| s.first()),
        ) {
            (Some(b), Some(a)) if b.0 != a.0 => {
                Some("v1: never published, a hole the epoch announces")
            }
            (None, _) | (_, None) => Some("v1: never published, at the edge of the run"),
            _ => v1_unheard(log, at, o),
        };
    }
    v1_unheard(log, at, o)
}

/// Why a v1 reader may have missed what was sent at `at`: its gateway could
/// not hear Redis then, or the reader had no socket.
fn v1_unheard(log: &V1Log, at: f64, o: &Observed) -> Option<&'static str> {
    let outage = o.faults.iter().any(|f| {
        let hits = match f.kind {
            Kind::GatewayRedis => f.target == Some(log.gateway),
            Kind::RestartRedis => true,
            // The gateways reconnect to whatever master the sentinels name.
            k if k.on_sentinel() => true,
            _ => false,
        };
        hits && at >= f.start - 1.0 && at <= f.end + RESUBSCRIBE
    });
    if outage {
        return Some("v1: published while its gateway could not hear Redis");
    }
    if log
        .down
        .iter()
        .any(|(from, to)| at >= from - 1.0 && at <= to + 1.0)
    {
        return Some("v1: published while the reader had no socket");
    }
    None
}

/// Every acknowledged write became a NOTIFY (at least once) — unless the
/// recorder itself was not listening at some point after the
/// acknowledgement (then it is unverifiable, counted, not a violation), or
/// it is the one documented loss: acknowledged inside a Sentinel fault's
/// write-loss window (by a master the sentinels then replaced, before it
/// replicated — see [`Injected::write_loss`]).
fn check_writes(o: &Observed, v: &mut Verdict) {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (p, _) in &o.recorder.seen {
        *seen.entry(p.as_str()).or_default() += 1;
    }
    for w in o.writers {
        v.count("writes acknowledged", w.acked.len() as u64);
        v.count(
            "writes not acknowledged (error or socket lost)",
            w.unacked as u64,
        );
        for (payload, at) in &w.acked {
            match seen.get(payload.as_str()) {
                Some(1) => {}
                Some(_) => v.expect("writes: NOTIFYed more than once (at least once)", 1),
                None if o.recorder.blind.iter().any(|(_, to)| to >= at) => v.expect(
                    "writes: unverifiable (the recorder's LISTEN was down after the ack)",
                    1,
                ),
                None => match sentinel_write_loss(o.faults, *at) {
                    Some(reason) => v.expect(reason, 1),
                    None => v.violation(
                        "acknowledged write never became a NOTIFY",
                        format!("gateway {}: {payload} acknowledged at {at:.2}s", w.gateway),
                    ),
                },
            }
        }
    }
}

/// The documented reason when `at` (an acknowledgement) lies in a
/// Sentinel fault's write-loss window, by the fault's kind.
fn sentinel_write_loss(faults: &[Injected], at: f64) -> Option<&'static str> {
    let f = faults.iter().find(|f| {
        f.write_loss
            .is_some_and(|(from, to)| at >= from && at <= to)
    })?;
    Some(match f.kind {
        Kind::KillMaster => "writes: lost to a Sentinel failover (kill -9 redis master; acknowledged by the old master, not replicated — documented)",
        Kind::PauseMaster => "writes: lost to a Sentinel failover (pause redis master; acknowledged by the old master, not replicated — documented)",
        Kind::SentinelSplit => "writes: lost to a Sentinel failover (split; acknowledged by the old master, not replicated — documented)",
        _ => "writes: lost to a Sentinel failover (SENTINEL FAILOVER; acknowledged by the old master, not replicated — documented)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(n: u64) -> Vec<Sent> {
        (1..=n)
            .map(|num| Sent {
                num,
                at: num as f64,
                committed: true,
            })
            .collect()
    }

    fn msg(epoch: &str, offset: u64, num: u64) -> V2Event {
        V2Event::Message {
            at: num as f64,
            epoch: epoch.into(),
            offset,
            num,
        }
    }

    fn sub(
        since: Option<(&str, u64)>,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        replayed: u64,
    ) -> V2Event {
        V2Event::Subscribed {
            at: 0.0,
            since: since.map(|(e, o)| (e.into(), o)),
            epoch: epoch.into(),
            offset,
            recovered,
            replayed,
        }
    }

    fn leader_log(epochs: &[u64]) -> String {
        epochs
            .iter()
            .map(|e| format!("INFO became leader epoch={e} node=x\n"))
            .collect()
    }

    fn run(events: Vec<V2Event>, n: u64) -> Verdict {
        let s = vec![sent(n)];
        let v2 = vec![V2Log {
            gateway: 0,
            channel: 0,
            events,
        }];
        let logs = vec![leader_log(&[1, 2])];
        check(&Observed {
            sent: &s,
            v1: &[],
            v2: &v2,
            writers: &[],
            recorder: &RecorderLog::default(),
            faults: &[],
            coordinator_logs: &logs,
            tail_from: 1e9,
            outbox: false,
        })
    }

    #[test]
    fn a_clean_v2_history_passes() {
        let v = run(
            vec![
                sub(None, "1.1.1", 0, None, 0),
                msg("1.1.1", 1, 1),
                msg("1.1.1", 2, 2),
                msg("1.1.1", 3, 3),
            ],
            3,
        );
        assert!(v.ok(), "{v:?}");
    }

    #[test]
    fn a_silent_loss_fails_and_an_announced_one_does_not() {
        let v = run(
            vec![
                sub(None, "1.1.1", 0, None, 0),
                msg("1.1.1", 1, 1),
                msg("1.1.1", 2, 3),
            ],
            3,
        );
        assert_eq!(v.violations.len(), 1, "{v:?}");
        let v = run(
            vec![
                sub(None, "1.1.1", 0, None, 0),
                msg("1.1.1", 1, 1),
                msg("1.2.1", 2, 3),
            ],
            3,
        );
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.expected.values().sum::<u64>(), 1);
    }

    #[test]
    fn an_inexact_recovery_and_an_old_term_after_a_new_one_fail() {
        let v = run(
            vec![
                sub(None, "1.1.1", 0, None, 0),
                msg("1.1.1", 1, 1),
                V2Event::Down {
                    at: 1.0,
                    why: "planned reconnect".into(),
                },
                sub(Some(("1.1.1", 1)), "1.1.1", 3, Some(true), 2),
                msg("1.1.1", 3, 3),
            ],
            3,
        );
        assert!(
            v.violations
                .contains_key("v2 recovered:true that is not exactly the missing range"),
            "{v:?}"
        );
        let v = run(
            vec![
                sub(None, "1.2.1", 0, None, 0),
                msg("1.2.1", 1, 1),
                msg("1.1.1", 2, 2),
            ],
            2,
        );
        assert!(v.violations.keys().any(|k| k.contains("fenced")), "{v:?}");
    }

    /// A v2 reader of channel 0 on gateway 1 that subscribed and got 1 in
    /// epoch 1.1.1, then `rest`.
    fn on_gateway_1(rest: Vec<V2Event>) -> Vec<V2Log> {
        let mut events = vec![sub(None, "1.1.1", 0, None, 0), msg("1.1.1", 1, 1)];
        events.extend(rest);
        vec![V2Log {
            gateway: 1,
            channel: 0,
            events,
        }]
    }

    /// The readers' histories judged (no writes, no tail).
    fn judge_readers(
        sent: &[Vec<Sent>],
        v1: &[V1Log],
        v2: &[V2Log],
        faults: &[Injected],
        logs: &[String],
    ) -> Verdict {
        check(&Observed {
            sent,
            v1,
            v2,
            writers: &[],
            recorder: &RecorderLog::default(),
            faults,
            coordinator_logs: logs,
            tail_from: 1e9,
            outbox: false,
        })
    }

    #[test]
    fn a_v1_loss_is_explained_only_by_an_announced_hole_or_its_gateway_s_redis_outage() {
        let s = vec![sent(6)];
        // Numbers 1..=6 published: 1–3 in one epoch, 4 never, 5–6 in another.
        let v2 = on_gateway_1(vec![
            msg("1.1.1", 2, 2),
            msg("1.1.1", 3, 3),
            msg("1.2.1", 4, 5),
            msg("1.2.1", 5, 6),
        ]);
        let logs = vec![leader_log(&[1, 2])];
        let v1 = |got: &[u64]| V1Log {
            gateway: 0,
            channel: 0,
            got: got.iter().map(|n| (*n, *n as f64)).collect(),
            down: Vec::new(),
        };
        let judge =
            |v1: Vec<V1Log>, faults: Vec<Injected>| judge_readers(&s, &v1, &v2, &faults, &logs);
        // 4 was never published and the epoch changed around it: expected.
        assert!(judge(vec![v1(&[1, 2, 3, 5, 6])], Vec::new()).ok());
        // 2 was published: missing it is a violation…
        let v = judge(vec![v1(&[1, 3, 5, 6])], Vec::new());
        assert_eq!(v.violations.len(), 1, "{v:?}");
        // …unless the reader's gateway was cut from Redis then.
        let cut = fault(Kind::GatewayRedis, Some(0), 1.5, 2.5);
        assert!(judge(vec![v1(&[1, 3, 5, 6])], vec![cut]).ok());
    }

    #[test]
    fn a_v1_loss_no_v2_reader_saw_in_one_epoch_is_excused_only_by_an_outage() {
        // Every v2 reader was away for 2–4 and told recovered:false (history
        // no longer reached back): 2–4 were published, in the same epoch.
        let s = vec![sent(5)];
        let v2 = on_gateway_1(vec![
            V2Event::Down {
                at: 1.2,
                why: "planned reconnect".into(),
            },
            sub(Some(("1.1.1", 1)), "1.1.1", 4, Some(false), 0),
            msg("1.1.1", 5, 5),
        ]);
        let v1 = vec![V1Log {
            gateway: 0,
            channel: 0,
            got: vec![(1, 1.0), (5, 5.0)],
            down: Vec::new(),
        }];
        let logs = vec![leader_log(&[1])];
        let judge = |faults: Vec<Injected>| judge_readers(&s, &v1, &v2, &faults, &logs);
        let v = judge(Vec::new());
        assert_eq!(
            v.violations
                .get("v1: committed notification lost outside any announced hole or Redis outage"),
            Some(&3),
            "{v:?}"
        );
        // The master killed meanwhile: the gateways could not hear Redis.
        let v = judge(vec![fault(Kind::KillMaster, Some(0), 1.5, 3.0)]);
        assert!(v.ok(), "{v:?}");
    }

    #[test]
    fn two_leaders_in_one_epoch_and_an_unacknowledged_loss_of_a_write_fail() {
        let logs = vec![leader_log(&[5]), leader_log(&[5])];
        let v = lost_write(&[], &logs);
        assert_eq!(
            v.violations.get("two leaders in one fencing epoch"),
            Some(&1)
        );
        assert_eq!(
            v.violations.get("acknowledged write never became a NOTIFY"),
            Some(&1)
        );
    }

    /// The durable epoch of outbox messages (term `Continuity::DURABLE`).
    const D: &str = "1.1fffffffffffff.0";

    fn run_outbox(events: Vec<V2Event>, n: u64, v1: Vec<V1Log>, faults: Vec<Injected>) -> Verdict {
        let s = vec![sent(n)];
        let v2 = vec![V2Log {
            gateway: 0,
            channel: 0,
            events,
        }];
        check(&Observed {
            sent: &s,
            v1: &v1,
            v2: &v2,
            writers: &[],
            recorder: &RecorderLog::default(),
            faults: &faults,
            coordinator_logs: &[],
            tail_from: 1e9,
            outbox: true,
        })
    }

    fn fault(kind: Kind, target: Option<usize>, start: f64, end: f64) -> Injected {
        Injected {
            kind,
            target,
            detail: String::new(),
            start,
            end,
            write_loss: None,
        }
    }

    /// Two acknowledged writes, w0-2 (acknowledged at 2.0 s) never seen as
    /// a NOTIFY, judged with `faults` and coordinator `logs`.
    fn lost_write(faults: &[Injected], logs: &[String]) -> Verdict {
        let writers = vec![WriterLog {
            gateway: 0,
            acked: vec![("w0-1".into(), 1.0), ("w0-2".into(), 2.0)],
            unacked: 0,
        }];
        let recorder = RecorderLog {
            seen: vec![("w0-1".into(), 1.5)],
            blind: vec![(0.0, 0.5)],
        };
        check(&Observed {
            sent: &[],
            v1: &[],
            v2: &[],
            writers: &writers,
            recorder: &recorder,
            faults,
            coordinator_logs: logs,
            tail_from: 1e9,
            outbox: false,
        })
    }

    #[test]
    fn a_lost_write_passes_only_inside_a_sentinel_failover_s_documented_window() {
        const LOST: &str = "acknowledged write never became a NOTIFY";
        // A failover that changed the master, the ack inside its window.
        let mut failover = fault(Kind::SentinelFailover, Some(0), 1.5, 4.0);
        failover.write_loss = Some((0.5, 4.0));
        let v = lost_write(&[failover.clone()], &[]);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.expected.values().sum::<u64>(), 1);
        // The same fault without a change of master: no loss allowed.
        failover.write_loss = None;
        assert_eq!(lost_write(&[failover], &[]).violations.get(LOST), Some(&1));
        // A window that ends before the acknowledgement.
        let mut kill = fault(Kind::KillMaster, Some(0), 1.8, 6.0);
        kill.write_loss = Some((0.8, 1.8));
        assert_eq!(lost_write(&[kill], &[]).violations.get(LOST), Some(&1));
        // Any other fault around it excuses nothing.
        let v = lost_write(&[fault(Kind::RestartRedis, None, 1.5, 2.5)], &[]);
        assert_eq!(v.violations.get(LOST), Some(&1));
    }

    #[test]
    fn outbox_a_clean_durable_history_passes_without_any_leader_term() {
        let v = run_outbox(
            vec![
                sub(None, D, 0, None, 0),
                msg(D, 1, 1),
                msg(D, 2, 2),
                msg(D, 3, 3),
            ],
            3,
            Vec::new(),
            Vec::new(),
        );
        assert!(v.ok(), "{v:?}");
    }

    #[test]
    fn outbox_a_loss_is_a_violation_even_when_told_unless_redis_restarted_meanwhile() {
        let told = vec![
            sub(None, D, 0, None, 0),
            msg(D, 1, 1),
            V2Event::Down {
                at: 1.0,
                why: "planned reconnect".into(),
            },
            sub(Some((D, 1)), D, 2, Some(false), 0),
            msg(D, 3, 3),
        ];
        let v = run_outbox(told.clone(), 3, Vec::new(), Vec::new());
        assert_eq!(
            v.violations.get("outbox v2: committed send lost"),
            Some(&1),
            "{v:?}"
        );
        let v = run_outbox(
            told,
            3,
            Vec::new(),
            vec![fault(Kind::RestartRedis, None, 1.5, 2.5)],
        );
        assert!(v.ok(), "{v:?}");
        // A new epoch announces nothing for the outbox: two violations.
        let v = run_outbox(
            vec![
                sub(None, D, 0, None, 0),
                msg(D, 1, 1),
                msg("2.1fffffffffffff.0", 3, 3),
            ],
            3,
            Vec::new(),
            Vec::new(),
        );
        assert!(
            v.violations.contains_key("outbox v2: committed send lost"),
            "{v:?}"
        );
        assert!(
            v.violations
                .contains_key("outbox: epoch changed while the outbox generation is unchanged"),
            "{v:?}"
        );
        // A leader's (non-durable) epoch on an outbox channel.
        let v = run_outbox(
            vec![sub(None, "1.1.1", 0, None, 0), msg("1.1.1", 1, 1)],
            1,
            Vec::new(),
            Vec::new(),
        );
        assert!(
            v.violations
                .contains_key("outbox: a message not in a durable epoch"),
            "{v:?}"
        );
    }

    #[test]
    fn outbox_a_reader_away_before_its_first_message_in_a_provisional_epoch_is_told() {
        // Subscribed before the channel's first send (a provisional epoch,
        // offset 0), away before receiving anything, back after three
        // sends: `recovered:false` — its position was never durable.
        let provisional = "5.3.1";
        let v = run_outbox(
            vec![
                sub(None, provisional, 0, None, 0),
                sub(Some((provisional, 0)), D, 2, Some(false), 0),
                msg(D, 3, 3),
            ],
            3,
            Vec::new(),
            Vec::new(),
        );
        assert!(v.ok(), "{v:?}");
        assert_eq!(
            v.expected.get(
                "outbox v2: away before its first message, its epoch not durable yet, told recovered:false"
            ),
            Some(&2)
        );
        // The same loss with no such answer is still a violation.
        let v = run_outbox(
            vec![sub(None, provisional, 0, None, 0), msg(D, 3, 3)],
            3,
            Vec::new(),
            Vec::new(),
        );
        assert!(!v.ok(), "{v:?}");
    }

    #[test]
    fn outbox_a_loss_before_the_first_delivery_fails() {
        let v1 = V1Log {
            gateway: 0,
            channel: 0,
            got: vec![(3, 3.0)],
            down: vec![(0.0, 0.5)],
        };
        let v = run_outbox(
            vec![sub(None, D, 0, None, 0), msg(D, 3, 3)],
            3,
            vec![v1],
            Vec::new(),
        );
        assert_eq!(
            v.violations
                .get("outbox: committed send lost before the reader's first delivery"),
            Some(&2),
            "{v:?}"
        );
    }

    #[test]
    fn outbox_a_v1_loss_is_excused_only_by_the_reader_s_own_missing_socket() {
        let v2 = vec![
            sub(None, D, 0, None, 0),
            msg(D, 1, 1),
            msg(D, 2, 2),
            msg(D, 3, 3),
        ];
        let v1 = |down: Vec<(f64, f64)>| V1Log {
            gateway: 0,
            channel: 0,
            got: vec![(1, 1.0), (3, 3.0)],
            down,
        };
        let cut = fault(Kind::GatewayRedis, Some(0), 1.5, 2.5);
        let v = run_outbox(v2.clone(), 3, vec![v1(Vec::new())], vec![cut]);
        assert_eq!(
            v.violations
                .get("outbox v1: committed send lost for a connected reader"),
            Some(&1),
            "{v:?}"
        );
        let v = run_outbox(v2, 3, vec![v1(vec![(1.8, 2.2)])], Vec::new());
        assert!(v.ok(), "{v:?}");
    }
}
