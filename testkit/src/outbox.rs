//! The durable outbox under test: a private database per test, senders
//! that record what they committed, and the checker that compares it with
//! what every reader received.
//!
//! The checker's invariants, per reader and channel:
//!
//! * **lost** — a message whose transaction surely committed never arrived;
//! * **duplicated** — a message arrived more than once;
//! * **unexpected** — a message arrived that was never sent, or whose
//!   transaction surely rolled back;
//! * **reordered** — `b` arrived after `a` although `b`'s commit had
//!   returned before `a`'s commit was even issued (real-time commit order:
//!   the only order an observer outside the database can prove).
//!
//! A transaction whose `COMMIT` failed on a broken connection may or may
//! not have committed: its messages are *maybe* — allowed once or never.

use crate::db::db_uri;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A database of its own, dropped (with its connections) when this is.
pub struct TestDb {
    pub name: String,
    pub uri: String,
}

fn with_database(uri: &str, database: &str) -> String {
    match uri.rfind('/') {
        Some(i) if uri[..i].contains("://") && !uri[..i].ends_with('/') => {
            let rest = &uri[i + 1..];
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{}/{database}{query}", &uri[..i])
        }
        _ => format!("{uri} dbname={database}"),
    }
}

impl TestDb {
    /// Create a fresh database on the shared server.
    pub async fn create() -> TestDb {
        let name = crate::names::unique("pgws_t")
            .replace('-', "_")
            .to_lowercase();
        let admin = crate::db::db().await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("CREATE DATABASE");
        TestDb {
            uri: with_database(&db_uri(), &name),
            name,
        }
    }

    /// A client of this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.uri, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&db_uri(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// How a sent message's transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `COMMIT` returned: it committed, between these instants.
    Committed { issued: Instant, returned: Instant },
    /// It rolled back: never to be delivered.
    RolledBack,
    /// `COMMIT` failed on a broken connection: committed or not.
    Maybe,
}

/// Every payload sent on one channel, with its outcome, in send order.
pub type Sent = Vec<(String, Outcome)>;

/// What the senders did, per channel.
#[derive(Default, Clone)]
pub struct Ledger(Arc<Mutex<HashMap<String, Sent>>>);

impl Ledger {
    pub fn record(&self, channel: &str, payload: &str, outcome: Outcome) {
        self.0
            .lock()
            .expect("ledger")
            .entry(channel.to_string())
            .or_default()
            .push((payload.to_string(), outcome));
    }

    /// Committed (surely) messages on `channel`.
    pub fn committed(&self, channel: &str) -> usize {
        self.0.lock().expect("ledger").get(channel).map_or(0, |v| {
            v.iter()
                .filter(|(_, o)| matches!(o, Outcome::Committed { .. }))
                .count()
        })
    }

    /// Check what one reader received on `channel`, in arrival order.
    pub fn check(&self, channel: &str, received: &[String]) -> Report {
        let sent = self
            .0
            .lock()
            .expect("ledger")
            .get(channel)
            .cloned()
            .unwrap_or_default();
        check(&sent, received)
    }
}

/// What the checker found for one reader and channel.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub received: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub unexpected: Vec<String>,
    pub reordered: Vec<(String, String)>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.reordered.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {}, lost {} {:?}, duplicated {} {:?}, unexpected {} {:?}, reordered {} {:?}",
            self.received,
            self.lost.len(),
            self.lost.iter().take(5).collect::<Vec<_>>(),
            self.duplicated.len(),
            self.duplicated.iter().take(5).collect::<Vec<_>>(),
            self.unexpected.len(),
            self.unexpected.iter().take(5).collect::<Vec<_>>(),
            self.reordered.len(),
            self.reordered.iter().take(5).collect::<Vec<_>>(),
        )
    }
}

/// The checker (see the module documentation).
pub fn check(sent: &[(String, Outcome)], received: &[String]) -> Report {
    let outcome: HashMap<&str, Outcome> = sent.iter().map(|(p, o)| (p.as_str(), *o)).collect();
    let mut report = Report {
        received: received.len(),
        ..Report::default()
    };
    let mut seen = HashSet::new();
    for payload in received {
        if !seen.insert(payload.as_str()) {
            report.duplicated.push(payload.clone());
        }
        match outcome.get(payload.as_str()) {
            None | Some(Outcome::RolledBack) => report.unexpected.push(payload.clone()),
            _ => {}
        }
    }
    for (payload, o) in sent {
        if matches!(o, Outcome::Committed { .. }) && !seen.contains(payload.as_str()) {
            report.lost.push(payload.clone());
        }
    }
    // Reordered: some later arrival's commit returned before this one's
    // was issued. Walk from the end keeping the earliest "returned".
    let mut earliest_later: Option<(Instant, &str)> = None;
    for payload in received.iter().rev() {
        if let Some(Outcome::Committed { issued, returned }) = outcome.get(payload.as_str()) {
            if let Some((later_returned, later)) = earliest_later {
                if later_returned < *issued {
                    report
                        .reordered
                        .push((later.to_string(), payload.to_string()));
                }
            }
            if earliest_later.is_none_or(|(t, _)| *returned < t) {
                earliest_later = Some((*returned, payload.as_str()));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn committed(at: Instant, from_ms: u64, to_ms: u64) -> Outcome {
        Outcome::Committed {
            issued: at + Duration::from_millis(from_ms),
            returned: at + Duration::from_millis(to_ms),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_clean_run_is_clean() {
        let t = Instant::now();
        let sent = vec![
            ("a".to_string(), committed(t, 0, 1)),
            ("b".to_string(), committed(t, 2, 3)),
            ("x".to_string(), Outcome::RolledBack),
            ("m".to_string(), Outcome::Maybe),
        ];
        assert!(check(&sent, &strings(&["a", "b"])).clean());
        assert!(check(&sent, &strings(&["a", "m", "b"])).clean());
    }

    #[test]
    fn every_violation_is_named() {
        let t = Instant::now();
        let sent = vec![
            ("a".to_string(), committed(t, 0, 1)),
            ("b".to_string(), committed(t, 2, 3)),
            ("c".to_string(), committed(t, 4, 5)),
            ("x".to_string(), Outcome::RolledBack),
        ];
        let report = check(&sent, &strings(&["b", "a", "a", "x", "zz"]));
        assert_eq!(report.lost, strings(&["c"]));
        assert_eq!(report.duplicated, strings(&["a"]));
        assert_eq!(report.unexpected, strings(&["x", "zz"]));
        assert_eq!(
            report.reordered,
            vec![("a".to_string(), "b".to_string())],
            "a committed before b was issued, yet arrived after it"
        );
    }

    #[test]
    fn overlapping_commits_may_arrive_in_either_order() {
        let t = Instant::now();
        let sent = vec![
            ("a".to_string(), committed(t, 0, 5)),
            ("b".to_string(), committed(t, 1, 4)),
        ];
        assert!(check(&sent, &strings(&["a", "b"])).clean());
        assert!(check(&sent, &strings(&["b", "a"])).clean());
    }

    #[test]
    fn database_names_replace_the_uri_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("host=h", "x"), "host=h dbname=x");
    }
}
