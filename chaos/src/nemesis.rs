//! The nemesis: a seeded schedule of faults, injected into a running
//! [`Topology`] and healed, each logged with its start and end. Faults:
//! link partitions (coordinator ↔ Redis, coordinator ↔ PostgreSQL, every
//! coordinator ↔ PostgreSQL, gateway ↔ Redis, the leader isolated from
//! both), SIGSTOP of the leader past the lock ttl, `kill -9` of the leader
//! or of a standby (restarted after the fault), PostgreSQL restarts (fast
//! and immediate), Redis restarts (SIGKILL, append-only file kept), and two
//! of them at once. Behind Sentinel (`--sentinel`): `SENTINEL FAILOVER`,
//! the master killed or paused until the sentinels promote the replica, and
//! a majority/minority split. With `--clock`: steps of one coordinator's
//! clock (libfaketime), the real-time clock only or the monotonic one too.

use crate::rng::Rng;
use crate::sentinel::DOWN_AFTER;
use crate::topology::{Link, Topology, TTL};
use crate::workload::Clock;
use std::fmt;
use std::time::Duration;

/// One fault kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A coordinator cut from Redis.
    CoordinatorRedis,
    /// A coordinator cut from PostgreSQL.
    CoordinatorPg,
    /// Every coordinator cut from PostgreSQL (nobody can LISTEN).
    AllCoordinatorsPg,
    /// A gateway cut from Redis.
    GatewayRedis,
    /// The leader cut from Redis and PostgreSQL.
    IsolateLeader,
    /// The leader SIGSTOPped for longer than the lock ttl.
    PauseLeader,
    /// `kill -9` of the leader, restarted when healed.
    KillLeader,
    /// `kill -9` of a standby, restarted when healed.
    KillStandby,
    /// PostgreSQL stopped (fast or immediate) and started again.
    RestartPg,
    /// Redis killed (SIGKILL) and started again from its append-only file.
    RestartRedis,
    /// `SENTINEL FAILOVER`: the replica promoted, the master demoted.
    SentinelFailover,
    /// The master `kill -9`ed (restarted when healed, as whatever the
    /// sentinels make of it).
    KillMaster,
    /// The master SIGSTOPped past the sentinels' down-after: they promote
    /// the replica; SIGCONT when healed.
    PauseMaster,
    /// The master, one sentinel and one coordinator cut from everything
    /// else (the majority promotes the replica); healed afterwards.
    SentinelSplit,
    /// One coordinator's real-time clock stepped by seconds to minutes.
    ClockStep,
    /// One coordinator's real-time and monotonic clocks stepped (a broken
    /// VM).
    ClockStepMonotonic,
}

impl Kind {
    /// Every kind, in the order the report lists them.
    pub const ALL: [Kind; 16] = [
        Kind::CoordinatorRedis,
        Kind::CoordinatorPg,
        Kind::AllCoordinatorsPg,
        Kind::GatewayRedis,
        Kind::IsolateLeader,
        Kind::PauseLeader,
        Kind::KillLeader,
        Kind::KillStandby,
        Kind::RestartPg,
        Kind::RestartRedis,
        Kind::SentinelFailover,
        Kind::KillMaster,
        Kind::PauseMaster,
        Kind::SentinelSplit,
        Kind::ClockStep,
        Kind::ClockStepMonotonic,
    ];

    /// The kinds a run draws from: the first ten with a single Redis; behind
    /// Sentinel the Redis restart is replaced by the four Sentinel kinds;
    /// `clock` adds the two clock steps.
    pub fn pool(sentinel: bool, clock: bool) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| match k {
                Kind::RestartRedis => !sentinel,
                k if k.on_sentinel() => sentinel,
                Kind::ClockStep | Kind::ClockStepMonotonic => clock,
                _ => true,
            })
            .collect()
    }

    /// A Sentinel fault (the master may change).
    pub fn on_sentinel(self) -> bool {
        matches!(
            self,
            Kind::SentinelFailover | Kind::KillMaster | Kind::PauseMaster | Kind::SentinelSplit
        )
    }

    /// Whether the fault targets the leader (two such are never combined).
    fn on_leader(self) -> bool {
        matches!(
            self,
            Kind::IsolateLeader | Kind::PauseLeader | Kind::KillLeader
        )
    }

    /// Whether the fault restarts a shared server (never combined with
    /// another one that does).
    fn on_server(self) -> bool {
        matches!(self, Kind::RestartPg | Kind::RestartRedis) || self.on_sentinel()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::CoordinatorRedis => "partition coordinator-redis",
            Kind::CoordinatorPg => "partition coordinator-postgresql",
            Kind::AllCoordinatorsPg => "partition all coordinators-postgresql",
            Kind::GatewayRedis => "partition gateway-redis",
            Kind::IsolateLeader => "isolate leader",
            Kind::PauseLeader => "pause leader (SIGSTOP > ttl)",
            Kind::KillLeader => "kill -9 leader",
            Kind::KillStandby => "kill -9 standby",
            Kind::RestartPg => "restart postgresql",
            Kind::RestartRedis => "restart redis",
            Kind::SentinelFailover => "sentinel failover (SENTINEL FAILOVER)",
            Kind::KillMaster => "kill -9 redis master",
            Kind::PauseMaster => "pause redis master (SIGSTOP > down-after)",
            Kind::SentinelSplit => "sentinel split (master + 1 sentinel + 1 coordinator)",
            Kind::ClockStep => "clock step (real-time clock)",
            Kind::ClockStepMonotonic => "clock step (real-time and monotonic)",
        };
        f.write_str(s)
    }
}

/// A fault as injected: what, on whom, when.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The kind.
    pub kind: Kind,
    /// The coordinator or gateway it hit (`None` for servers/all).
    pub target: Option<usize>,
    /// A detail (fast/immediate restart, the masters, the step).
    pub detail: String,
    /// When it was injected (run seconds).
    pub start: f64,
    /// When it was healed (for a Sentinel fault: and the old master was a
    /// replica again, or the sentinels kept it).
    pub end: f64,
    /// A Sentinel fault that changed the master: when acknowledged client
    /// writes may be lost — acknowledged by the old master and not
    /// replicated before the promotion (docs/architecture.md, "Writes lost
    /// to a Sentinel failover"). `None`: no write may be lost.
    pub write_loss: Option<(f64, f64)>,
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:7.2}s – {:7.2}s  {}", self.start, self.end, self.kind)?;
        match (self.kind, self.target) {
            (Kind::GatewayRedis, Some(t)) => write!(f, " (gateway {t})")?,
            (k, Some(t)) if k.on_sentinel() => write!(f, " (redis node {t})")?,
            (_, Some(t)) => write!(f, " (coordinator {t})")?,
            _ => {}
        }
        if !self.detail.is_empty() {
            write!(f, " [{}]", self.detail)?;
        }
        if let Some((from, to)) = self.write_loss {
            write!(f, " writes may be lost {from:.2}s–{to:.2}s")?;
        }
        Ok(())
    }
}

/// One step of the schedule: one or two fault kinds held for `hold`, then
/// healed and left alone for `quiet`.
#[derive(Debug, Clone)]
pub struct Step {
    /// The faults injected together.
    pub kinds: Vec<Kind>,
    /// How long they are held.
    pub hold: Duration,
    /// The calm after healing.
    pub quiet: Duration,
}

impl Kind {
    /// The kind a short name (`Kind`'s variant name in kebab case, e.g.
    /// `coordinator-pg`, `pause-leader`) names.
    pub fn by_name(name: &str) -> Option<Kind> {
        let names = [
            "coordinator-redis",
            "coordinator-pg",
            "all-coordinators-pg",
            "gateway-redis",
            "isolate-leader",
            "pause-leader",
            "kill-leader",
            "kill-standby",
            "restart-pg",
            "restart-redis",
            "sentinel-failover",
            "kill-master",
            "pause-master",
            "sentinel-split",
            "clock-step",
            "clock-step-monotonic",
        ];
        names.iter().position(|n| *n == name).map(|i| Kind::ALL[i])
    }
}

/// The seeded schedule: steps until `total` is used up, drawing from
/// `kinds` (the single-Redis pool when empty).
pub fn schedule(rng: &mut Rng, total: Duration, kinds: &[Kind]) -> Vec<Step> {
    let plain = Kind::pool(false, false);
    let pool: &[Kind] = if kinds.is_empty() { &plain } else { kinds };
    let mut out = Vec::new();
    let mut used = Duration::ZERO;
    while used < total {
        let first = pool[rng.below(pool.len())];
        let mut kinds = vec![first];
        if rng.below(4) == 0 {
            let second = pool[rng.below(pool.len())];
            let clash = second == first
                || (second.on_leader() && first.on_leader())
                || (second.on_server() && first.on_server());
            if !clash {
                kinds.push(second);
            }
        }
        let pause = kinds.contains(&Kind::PauseLeader);
        let failover = kinds.contains(&Kind::PauseMaster) || kinds.contains(&Kind::SentinelSplit);
        let hold = if failover {
            // Past the sentinels' down-after and their election: 2–3.5
            // down-afters.
            Duration::from_millis(rng.range(
                DOWN_AFTER.as_millis() as u64 * 2,
                DOWN_AFTER.as_millis() as u64 * 7 / 2,
            ))
        } else if pause {
            // Longer than the lock ttl: 1.5–3 ttl.
            Duration::from_millis(
                rng.range(TTL.as_millis() as u64 * 3 / 2, TTL.as_millis() as u64 * 3),
            )
        } else {
            Duration::from_millis(rng.range(1000, 5000))
        };
        let quiet = Duration::from_millis(rng.range(3000, 6000));
        used += hold + quiet;
        out.push(Step { kinds, hold, quiet });
    }
    out
}

/// What must be undone to heal one fault.
enum Undo {
    Links(Vec<Link>),
    Continue(usize),
    Restart(usize),
    StartPg,
    StartRedis,
    /// A Sentinel fault on data node `old` (the master then): heal by
    /// continuing, restarting or unsplitting, then wait for the outcome.
    Master(usize, MasterUndo),
    /// Clock `k` back to the real time.
    Clock(usize),
    /// Nothing to undo (a Sentinel fault without a named master).
    Nothing,
}

/// How a Sentinel fault on the master is healed.
#[derive(Clone, Copy)]
enum MasterUndo {
    Failover,
    Restart,
    Continue,
    Unsplit,
}

/// Inject `kind`; what to undo, the target and a detail.
async fn inject(
    topo: &mut Topology,
    kind: Kind,
    leader: usize,
    rng: &mut Rng,
) -> (Undo, Option<usize>, String) {
    let n = topo.coordinators.len();
    let other = (leader + 1 + rng.below(n - 1)) % n;
    match kind {
        Kind::CoordinatorRedis | Kind::CoordinatorPg => {
            let i = if rng.below(2) == 0 { leader } else { other };
            let link = if kind == Kind::CoordinatorRedis {
                Link::CoordinatorRedis(i)
            } else {
                Link::CoordinatorPg(i)
            };
            topo.cut(link, true);
            (
                Undo::Links(vec![link]),
                Some(i),
                if i == leader {
                    "the leader"
                } else {
                    "a standby"
                }
                .into(),
            )
        }
        Kind::AllCoordinatorsPg => {
            let links: Vec<Link> = (0..n).map(Link::CoordinatorPg).collect();
            for &link in &links {
                topo.cut(link, true);
            }
            (Undo::Links(links), None, String::new())
        }
        Kind::GatewayRedis => {
            let g = rng.below(topo.gateways.len());
            topo.cut(Link::GatewayRedis(g), true);
            (
                Undo::Links(vec![Link::GatewayRedis(g)]),
                Some(g),
                String::new(),
            )
        }
        Kind::IsolateLeader => {
            let links = vec![Link::CoordinatorRedis(leader), Link::CoordinatorPg(leader)];
            for &link in &links {
                topo.cut(link, true);
            }
            (Undo::Links(links), Some(leader), String::new())
        }
        Kind::PauseLeader => {
            topo.pause_coordinator(leader, true).await;
            (Undo::Continue(leader), Some(leader), String::new())
        }
        Kind::KillLeader => {
            topo.kill_coordinator(leader);
            (Undo::Restart(leader), Some(leader), String::new())
        }
        Kind::KillStandby => {
            topo.kill_coordinator(other);
            (Undo::Restart(other), Some(other), String::new())
        }
        Kind::RestartPg => {
            let immediate = rng.below(2) == 0;
            topo.pg.stop_with(immediate).await;
            (
                Undo::StartPg,
                None,
                if immediate { "immediate" } else { "fast" }.into(),
            )
        }
        Kind::RestartRedis => {
            if let Some(r) = &mut topo.redis {
                r.stop();
            }
            (Undo::StartRedis, None, String::new())
        }
        Kind::SentinelFailover | Kind::KillMaster | Kind::PauseMaster | Kind::SentinelSplit => {
            let Some(master) = topo.sentinel.as_ref().and_then(|s| s.master()) else {
                return (Undo::Nothing, None, "no master named: skipped".into());
            };
            let (undo, detail) = match kind {
                Kind::SentinelFailover => {
                    let ok = topo.sentinel.as_ref().is_some_and(|s| s.failover());
                    (
                        MasterUndo::Failover,
                        if ok { "" } else { "refused" }.to_string(),
                    )
                }
                Kind::KillMaster => {
                    if let Some(s) = &mut topo.sentinel {
                        s.data[master].kill();
                    }
                    (MasterUndo::Restart, String::new())
                }
                Kind::PauseMaster => {
                    if let Some(s) = &mut topo.sentinel {
                        s.data[master].pause(true);
                    }
                    (MasterUndo::Continue, String::new())
                }
                _ => {
                    let c = if rng.below(2) == 0 { leader } else { other };
                    topo.split(&[c], true);
                    (
                        MasterUndo::Unsplit,
                        format!(
                            "coordinator {c} ({}) with the minority",
                            if c == leader {
                                "the leader"
                            } else {
                                "a standby"
                            }
                        ),
                    )
                }
            };
            (Undo::Master(master, undo), Some(master), detail)
        }
        Kind::ClockStep | Kind::ClockStepMonotonic => {
            let k = usize::from(kind == Kind::ClockStepMonotonic);
            let secs = rng.range(5, 180) as i64 * if rng.below(2) == 0 { 1 } else { -1 };
            topo.step_clock(k, secs);
            let target = topo.clocks.get(k).map(|c| c.coordinator);
            (Undo::Clock(k), target, format!("{secs:+} s"))
        }
    }
}

/// After a Sentinel fault on data node `old` healed: wait (bounded) for
/// the sentinels' outcome — a new master and the old one its replica, or
/// the old one kept. When the old master became a replica (`None`: the
/// master did not change).
async fn settle(topo: &Topology, old: usize, how: MasterUndo, clock: Clock) -> Option<f64> {
    let s = topo.sentinel.as_ref()?;
    if matches!(how, MasterUndo::Failover) {
        // SENTINEL FAILOVER answers at once; the promotion follows.
        s.wait_new_master(old, Duration::from_secs(10)).await;
    }
    // A failover may be under way when the fault is healed (a killed
    // master started again while the sentinels promote its replica): wait
    // until they are at rest before judging whether the master changed.
    let demoted = match s.wait_stable(Duration::from_secs(30)).await {
        Some(m) if m != old => {
            s.wait_replica(old, Duration::from_secs(20)).await;
            Some(clock.now())
        }
        Some(_) => None,
        None => {
            eprintln!("pgws-chaos: the sentinels did not come to rest within 30 s");
            // Judge by who is named now; a lost write is then a violation
            // unless the master did change.
            s.master().filter(|m| *m != old).map(|_| clock.now())
        }
    };
    // One fault at a time: the next one starts once the replica has the
    // master's data set again (its first sync after a failover). Without
    // this wait the nemesis found Sentinel promoting a replica that was
    // demoted seconds before and had not synced yet — seconds of the bus's
    // state (history, offsets, continuity) lost, docs/architecture.md
    // "What the nemesis found".
    if !s.wait_synced(Duration::from_secs(30)).await {
        eprintln!("pgws-chaos: the replica did not sync within 30 s");
    }
    demoted
}

/// Heal; for a Sentinel fault that changed the master, when the old one
/// became a replica.
async fn heal(topo: &mut Topology, undo: Undo, clock: Clock) -> Option<f64> {
    match undo {
        Undo::Links(links) => {
            for link in links {
                topo.cut(link, false);
            }
        }
        Undo::Continue(i) => topo.pause_coordinator(i, false).await,
        Undo::Restart(i) => {
            if topo.coordinators[i].server.is_none() {
                topo.start_coordinator(i).await;
            }
        }
        Undo::StartPg => topo.pg.start_again().await,
        Undo::StartRedis => {
            if let Some(r) = &mut topo.redis {
                r.restart().await
            }
        }
        Undo::Clock(k) => topo.step_clock(k, 0),
        Undo::Nothing => {}
        Undo::Master(old, how) => {
            match how {
                MasterUndo::Failover => {}
                MasterUndo::Restart => {
                    if let Some(s) = &mut topo.sentinel {
                        if let Err(e) = s.restart_data(old) {
                            eprintln!("pgws-chaos: restart redis node {old}: {e}");
                        }
                    }
                }
                MasterUndo::Continue => {
                    if let Some(s) = &mut topo.sentinel {
                        s.data[old].pause(false);
                    }
                }
                MasterUndo::Unsplit => {
                    topo.split(&[], false);
                }
            }
            return settle(topo, old, how, clock).await;
        }
    }
    None
}

/// Run `steps` against `topo`; every fault as injected.
pub async fn run(
    topo: &mut Topology,
    steps: &[Step],
    rng: &mut Rng,
    clock: Clock,
) -> Vec<Injected> {
    let mut log = Vec::new();
    for step in steps {
        let leader = match topo.leaders().await.as_slice() {
            [one, ..] => *one,
            [] => rng.below(topo.coordinators.len()),
        };
        let start = clock.now();
        let mut undo = Vec::new();
        for &kind in &step.kinds {
            let (u, target, detail) = inject(topo, kind, leader, rng).await;
            undo.push((u, kind, target, detail));
        }
        tokio::time::sleep(step.hold).await;
        let mut settled = Duration::ZERO;
        for (u, kind, target, detail) in undo {
            let before = tokio::time::Instant::now();
            let demoted = heal(topo, u, clock).await;
            if kind.on_sentinel() {
                settled += before.elapsed();
            }
            let end = clock.now();
            // The documented loss: writes the old master acknowledged and
            // had not replicated (its lag: a second is generous) before it
            // was cut off from the gateways (a split: they are on the
            // majority side), or — killed and started again, paused and
            // continued, or failed over while alive — before it was
            // demoted (gateways follow it until the sentinels name another).
            let write_loss = demoted.map(|demoted| match kind {
                Kind::SentinelSplit => (start - 1.0, start + 0.5),
                _ => (start - 1.0, demoted),
            });
            let injected = Injected {
                kind,
                target,
                detail,
                start,
                end,
                write_loss,
            };
            eprintln!("nemesis: {injected}");
            log.push(injected);
        }
        // Waiting for the sentinels' outcome (up to ~10 s: Sentinel
        // reconfigures a demoted master after 4 hello periods) counts as
        // calm: the cluster is whole again meanwhile.
        tokio::time::sleep(step.quiet.saturating_sub(settled)).await;
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_schedule_and_pauses_outlast_the_ttl() {
        let a = schedule(&mut Rng::new(3), Duration::from_secs(600), &[]);
        let b = schedule(&mut Rng::new(3), Duration::from_secs(600), &[]);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        for step in &a {
            assert!(!step.kinds.is_empty() && step.kinds.len() <= 2);
            if step.kinds.contains(&Kind::PauseLeader) {
                assert!(step.hold > TTL, "{step:?}");
            }
            if let [x, y] = step.kinds.as_slice() {
                assert_ne!(x, y);
                assert!(!(x.on_leader() && y.on_leader()));
            }
        }
        for kind in Kind::pool(false, false) {
            assert!(
                a.iter().any(|s| s.kinds.contains(&kind)),
                "{kind} never scheduled"
            );
        }
    }

    #[test]
    fn behind_sentinel_the_redis_restart_gives_way_to_the_sentinel_faults() {
        let pool = Kind::pool(true, true);
        assert!(!pool.contains(&Kind::RestartRedis));
        assert_eq!(pool.len(), Kind::ALL.len() - 1);
        let steps = schedule(&mut Rng::new(5), Duration::from_secs(900), &pool);
        for kind in &pool {
            assert!(
                steps.iter().any(|s| s.kinds.contains(kind)),
                "{kind} never scheduled"
            );
        }
        for step in &steps {
            let sentinel = step.kinds.iter().filter(|k| k.on_sentinel()).count();
            assert!(sentinel <= 1, "{step:?}");
            if step.kinds.contains(&Kind::PauseMaster) {
                assert!(step.hold >= DOWN_AFTER * 2, "{step:?}");
            }
        }
    }
}
