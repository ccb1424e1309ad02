//! The store of an instance: its event log, live feed and presence, each
//! with a memory and a Redis implementation (`log.rs`, `feed.rs`,
//! `presence_store.rs` say what each keeps). The rest of parlor holds the
//! three parts, never a backend: a third backend is three implementations.

use std::sync::Arc;
use std::time::Duration;

use crate::feed::{Events, Feed};
use crate::log::Log;
use crate::memory_feed::MemoryFeed;
use crate::memory_log::MemoryLog;
use crate::memory_presence::MemoryPresence;
use crate::presence_store::PresenceStore;
use crate::redis::{Redis, RedisOptions};
use crate::redis_feed::RedisFeed;
use crate::redis_log::{LogOptions, RedisLog};
use crate::redis_presence::RedisPresence;

pub struct Store {
    pub log: Arc<dyn Log>,
    pub feed: Arc<dyn Feed>,
    pub presence: Arc<dyn PresenceStore>,
    /// Where the feed hands its events; the rooms set it.
    pub events: Events,
}

impl Store {
    /// The embedded store.
    pub fn memory(history: usize, retention: Duration, ref_memory: Duration) -> Store {
        let events = Events::default();
        let feed = MemoryFeed::start(events.clone());
        Store {
            log: Arc::new(MemoryLog::new(history, retention, ref_memory, feed.clone())),
            presence: Arc::new(MemoryPresence::new(feed.clone())),
            feed: Arc::new(feed),
            events,
        }
    }

    /// The store on Redis.
    pub async fn redis(
        connect: RedisOptions<'_>,
        log: LogOptions,
        instance: &str,
        presence_ttl: Duration,
    ) -> Result<Store, String> {
        let redis = Arc::new(Redis::connect(connect).await?);
        let events = Events::default();
        let feed = RedisFeed::start(redis.clone(), events.clone());
        Ok(Store {
            log: RedisLog::new(redis.clone(), log),
            presence: Arc::new(RedisPresence::new(redis, instance, presence_ttl)),
            feed: Arc::new(feed),
            events,
        })
    }

    /// Whether the log answers and the live feed is connected.
    pub fn is_ready(&self) -> bool {
        self.log.is_ready() && self.feed.is_ready()
    }
}
