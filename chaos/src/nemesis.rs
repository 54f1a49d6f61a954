//! The nemesis: a seeded schedule of faults, injected into a running
//! [`Topology`] and healed, each logged with its start and end. Faults:
//! link partitions (coordinator ↔ Redis, coordinator ↔ PostgreSQL, every
//! coordinator ↔ PostgreSQL, gateway ↔ Redis, the leader isolated from
//! both), SIGSTOP of the leader past the lock ttl, `kill -9` of the leader
//! or of a standby (restarted after the fault), PostgreSQL restarts (fast
//! and immediate), Redis restarts (SIGKILL, append-only file kept), and two
//! of them at once.

use crate::rng::Rng;
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
}

impl Kind {
    /// Every kind, in the order the report lists them.
    pub const ALL: [Kind; 10] = [
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
    ];

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
        matches!(self, Kind::RestartPg | Kind::RestartRedis)
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
    /// A detail (fast/immediate restart).
    pub detail: &'static str,
    /// When it was injected (run seconds).
    pub start: f64,
    /// When it was healed.
    pub end: f64,
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:7.2}s – {:7.2}s  {}", self.start, self.end, self.kind)?;
        match (self.kind, self.target) {
            (Kind::GatewayRedis, Some(t)) => write!(f, " (gateway {t})")?,
            (_, Some(t)) => write!(f, " (coordinator {t})")?,
            _ => {}
        }
        if !self.detail.is_empty() {
            write!(f, " [{}]", self.detail)?;
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
        ];
        names.iter().position(|n| *n == name).map(|i| Kind::ALL[i])
    }
}

/// The seeded schedule: steps until `total` is used up, drawing from
/// `kinds` (every kind when empty).
pub fn schedule(rng: &mut Rng, total: Duration, kinds: &[Kind]) -> Vec<Step> {
    let pool: &[Kind] = if kinds.is_empty() { &Kind::ALL } else { kinds };
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
        let hold = if pause {
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
}

/// Inject `kind`; what to undo, the target and a detail.
async fn inject(
    topo: &mut Topology,
    kind: Kind,
    leader: usize,
    rng: &mut Rng,
) -> (Undo, Option<usize>, &'static str) {
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
                },
            )
        }
        Kind::AllCoordinatorsPg => {
            let links: Vec<Link> = (0..n).map(Link::CoordinatorPg).collect();
            for &link in &links {
                topo.cut(link, true);
            }
            (Undo::Links(links), None, "")
        }
        Kind::GatewayRedis => {
            let g = rng.below(topo.gateways.len());
            topo.cut(Link::GatewayRedis(g), true);
            (Undo::Links(vec![Link::GatewayRedis(g)]), Some(g), "")
        }
        Kind::IsolateLeader => {
            let links = vec![Link::CoordinatorRedis(leader), Link::CoordinatorPg(leader)];
            for &link in &links {
                topo.cut(link, true);
            }
            (Undo::Links(links), Some(leader), "")
        }
        Kind::PauseLeader => {
            topo.pause_coordinator(leader, true).await;
            (Undo::Continue(leader), Some(leader), "")
        }
        Kind::KillLeader => {
            topo.kill_coordinator(leader);
            (Undo::Restart(leader), Some(leader), "")
        }
        Kind::KillStandby => {
            topo.kill_coordinator(other);
            (Undo::Restart(other), Some(other), "")
        }
        Kind::RestartPg => {
            let immediate = rng.below(2) == 0;
            topo.pg.stop_with(immediate).await;
            (
                Undo::StartPg,
                None,
                if immediate { "immediate" } else { "fast" },
            )
        }
        Kind::RestartRedis => {
            topo.redis.stop();
            (Undo::StartRedis, None, "")
        }
    }
}

async fn heal(topo: &mut Topology, undo: Undo) {
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
        Undo::StartRedis => topo.redis.restart().await,
    }
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
        for (u, kind, target, detail) in undo {
            heal(topo, u).await;
            let injected = Injected {
                kind,
                target,
                detail,
                start,
                end: clock.now(),
            };
            eprintln!("nemesis: {injected}");
            log.push(injected);
        }
        tokio::time::sleep(step.quiet).await;
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
        for kind in Kind::ALL {
            assert!(
                a.iter().any(|s| s.kinds.contains(&kind)),
                "{kind} never scheduled"
            );
        }
    }
}
