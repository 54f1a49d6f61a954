//! Presence (`PGWS_PRESENCE`): who is subscribed to a channel, across the
//! cluster, and `join`/`leave` events for subscribers that asked for them.
//!
//! A v2 subscription becomes a presence **member** of its channel once it
//! is live, and stops being one when it ends. This module owns the members
//! and answers the `presence` and `presence_stats` commands:
//!
//! * standalone ([`Presence::local`]): the [`store`] is the whole truth;
//!   join and leave events are handed to the hub, whose per-channel fan-out
//!   lock orders them with the channel's notifications;
//! * cluster ([`Presence::cluster`], [`redis`]): the store holds this
//!   gateway's own members; every change goes, in order, to Redis, whose
//!   script both updates the channel's presence hash and publishes the event
//!   on the channel's pub/sub channel — so every gateway receives it in the
//!   same order as the channel's messages — and queries read Redis. A
//!   gateway's entries live as long as its heartbeat; a dead gateway's are
//!   swept (with leave events) by whichever live gateway claims it first.
//!
//! Occupancy events (`PGWS_OCCUPANCY_EVENTS`, [`occupancy`]) ride on the
//! members: a channel is occupied while it has at least one, and the
//! transitions are seen where the members are counted — the store
//! standalone, the Redis scripts in cluster mode.
//!
//! `docs/architecture.md` ("Presence") argues the design and its bounds.

pub mod occupancy;
pub mod redis;
pub mod shared;
pub mod store;

use crate::bus::Delivery;
use crate::bus::Inbox;
use crate::hub::{Hub, SessionId};
use occupancy::Occupancy;
use pgws_protocol::presence::{Change, Member};
use prometheus::Registry;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use store::Store;

/// `PGWS_PRESENCE*`.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// `PGWS_PRESENCE`: presence is kept and may be queried.
    pub enabled: bool,
    /// `PGWS_PRESENCE_TTL`: how long a gateway's entries outlive its last
    /// heartbeat (cluster mode).
    pub ttl: Duration,
    /// `PGWS_PRESENCE_MAX_LIST`: most members a `presence` answer lists.
    pub max_list: usize,
    /// `PGWS_PRESENCE_INFO_MAX_BYTES`: largest `presence_info` claim kept.
    pub info_max_bytes: usize,
    /// `PGWS_OCCUPANCY_EVENTS`: `Some(PGWS_OCCUPANCY_GRACE)` when on.
    pub occupancy_grace: Option<Duration>,
}

pub use shared::{PresenceError, PresenceMetrics};

enum Backend {
    Local(Arc<Hub>),
    Redis(redis::RedisPresence),
}

/// Presence, shared by every session.
pub struct Presence {
    config: PresenceConfig,
    /// This process's id, the prefix of its client ids.
    gateway: String,
    store: Arc<Store>,
    backend: Backend,
    metrics: PresenceMetrics,
    occupancy: Option<Arc<Occupancy>>,
}

/// A random id for this process: 16 hex digits.
pub fn gateway_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let seed = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{seed:016x}")
}

impl Presence {
    /// Standalone presence: events through the hub.
    pub fn local(
        config: PresenceConfig,
        hub: Arc<Hub>,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Presence>> {
        Ok(Arc::new(Presence {
            occupancy: occupancy(&config, registry)?,
            config,
            gateway: gateway_id(),
            store: Arc::default(),
            backend: Backend::Local(hub),
            metrics: PresenceMetrics::register(registry)?,
        }))
    }

    /// Cluster presence, in Redis: its tasks run until `stop`.
    pub fn cluster(
        config: PresenceConfig,
        redis: redis::RedisSettings,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Presence>> {
        let metrics = PresenceMetrics::register(registry)?;
        let gateway = gateway_id();
        let store: Arc<Store> = Arc::default();
        let occupancy = occupancy(&config, registry)?;
        let backend = redis::RedisPresence::start(
            redis,
            gateway.clone(),
            config.ttl,
            store.clone(),
            metrics.clone(),
            occupancy.clone(),
        );
        Ok(Arc::new(Presence {
            occupancy,
            config,
            gateway,
            store,
            backend: Backend::Redis(backend),
            metrics,
        }))
    }

    /// The member a socket is listed as: `sub` and the bounded
    /// `presence_info` object from its claims.
    pub fn member(&self, session: SessionId, claims: &Map<String, Value>) -> Member {
        let info = match claims.get("presence_info") {
            None => None,
            Some(info @ Value::Object(_)) => {
                let text = info.to_string();
                if text.len() <= self.config.info_max_bytes {
                    Some(text)
                } else {
                    self.metrics.info_dropped.inc();
                    None
                }
            }
            Some(_) => {
                self.metrics.info_dropped.inc();
                None
            }
        };
        Member::new(
            format!("{}.{:x}", self.gateway, session.0),
            claims.get("sub"),
            info.as_deref(),
        )
    }

    /// `member`'s subscription to `channel` is live.
    pub fn join(&self, channel: &Arc<str>, member: &Member) {
        let changed = self.store.join(channel, member);
        if !changed.member {
            return;
        }
        self.metrics.changes.with_label_values(&["join"]).inc();
        self.announce(channel, member, Change::Join, changed.channel);
    }

    /// `member`'s subscription to `channel` ended.
    pub fn leave(&self, channel: &Arc<str>, member: &Member) {
        let changed = self.store.leave(channel, &member.client);
        if !changed.member {
            return;
        }
        self.metrics.changes.with_label_values(&["leave"]).inc();
        self.announce(channel, member, Change::Leave, changed.channel);
    }

    /// Send occupancy events to the meta channel through `sink`, when
    /// they are on.
    pub fn connect_occupancy(&self, sink: occupancy::Sink) {
        if let Some(occupancy) = &self.occupancy {
            occupancy.connect(sink);
        }
    }

    fn announce(&self, channel: &Arc<str>, member: &Member, change: Change, edge: bool) {
        match &self.backend {
            Backend::Local(hub) => {
                if let (Some(occupancy), true) = (&self.occupancy, edge) {
                    self.local_transition(occupancy, channel, change);
                }
                let entry = bytes::Bytes::from(member.entry.clone());
                hub.deliver(
                    channel,
                    Arc::new(Delivery::presence(channel.clone(), change, entry)),
                );
            }
            Backend::Redis(redis) => {
                redis.change(channel.clone(), member.clone(), change, edge);
            }
        }
    }

    /// Standalone: `channel` got its first member or lost its last.
    fn local_transition(&self, occupancy: &Arc<Occupancy>, channel: &Arc<str>, change: Change) {
        match change {
            Change::Join => occupancy.local_first(channel),
            Change::Leave => {
                let store = self.store.clone();
                occupancy.local_last(channel.clone(), move |c| store.stats(c).0 == 0);
            }
        }
    }

    /// The members of `channel`, as entry texts.
    pub async fn list(&self, channel: &str) -> Result<Vec<String>, PresenceError> {
        self.metrics.queries.with_label_values(&["presence"]).inc();
        match &self.backend {
            Backend::Local(_) => self
                .store
                .list(channel, self.config.max_list)
                .map_err(PresenceError::TooMany),
            Backend::Redis(redis) => redis.list(channel, self.config.max_list).await,
        }
    }

    /// `(clients, users)` of `channel`.
    pub async fn stats(&self, channel: &str) -> Result<(u64, u64), PresenceError> {
        self.metrics
            .queries
            .with_label_values(&["presence_stats"])
            .inc();
        match &self.backend {
            Backend::Local(_) => Ok(self.store.stats(channel)),
            Backend::Redis(redis) => redis.stats(channel).await,
        }
    }

    /// After the last session ended: write what is queued, then take this
    /// gateway off Redis (cluster mode), within `deadline`.
    pub async fn stop(&self, deadline: std::time::Instant) {
        if let Backend::Redis(redis) = &self.backend {
            redis.stop(deadline).await;
        }
    }
}

/// The occupancy events, when `PGWS_OCCUPANCY_EVENTS` is on.
fn occupancy(
    config: &PresenceConfig,
    registry: &Registry,
) -> prometheus::Result<Option<Arc<Occupancy>>> {
    config
        .occupancy_grace
        .map(|grace| Occupancy::new(grace, registry))
        .transpose()
}

/// Whether a token may query presence: its `presence` claim is `true`.
pub fn may_query(claims: &Map<String, Value>) -> bool {
    claims.get("presence") == Some(&Value::Bool(true))
}
