//! The store of an instance: its event log, live feed and presence, each
//! with a memory and a Redis implementation (`log.rs`, `feed.rs`,
//! `presence_store.rs` say what each keeps). The rest of parlor holds the
//! three parts, never a backend: a third backend is three implementations.

use std::sync::Arc;
use std::time::Duration;

use crate::feed::{Feed, FeedEvent};
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
}

impl Store {
    /// The embedded store, and its live feed's events.
    pub fn memory(
        history: usize,
        retention: Duration,
    ) -> (Store, async_channel::Receiver<FeedEvent>) {
        let (feed, events) = MemoryFeed::new();
        let store = Store {
            log: Arc::new(MemoryLog::new(history, retention, feed.clone())),
            presence: Arc::new(MemoryPresence::new(feed.clone())),
            feed: Arc::new(feed),
        };
        (store, events)
    }

    /// The store on Redis, and its live feed's events.
    pub async fn redis(
        connect: RedisOptions<'_>,
        log: LogOptions,
        instance: &str,
        presence_ttl: Duration,
    ) -> Result<(Store, async_channel::Receiver<FeedEvent>), String> {
        let redis = Arc::new(Redis::connect(connect).await?);
        let (feed, events) = RedisFeed::start(redis.clone());
        let store = Store {
            log: Arc::new(RedisLog::new(redis.clone(), log)),
            presence: Arc::new(RedisPresence::new(redis, instance, presence_ttl)),
            feed: Arc::new(feed),
        };
        Ok((store, events))
    }

    /// Whether the log answers and the live feed is connected.
    pub fn is_ready(&self) -> bool {
        self.log.is_ready() && self.feed.is_ready()
    }
}
