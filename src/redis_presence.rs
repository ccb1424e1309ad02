//! Presence in Redis: a sorted set per room whose members are `user \n
//! instance` and whose scores are expiry times, changed only by
//! `lua/presence.lua`, so that each arrival and departure is announced once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::Script;

use crate::fields::{Room, User};
use crate::log::{now_millis, StoreError};
use crate::presence_store::PresenceStore;
use crate::protocol;
use crate::redis::Redis;

pub struct RedisPresence {
    redis: Arc<Redis>,
    script: Script,
    /// This instance's name, in its entries.
    instance: String,
    /// How long an entry lives without a heartbeat.
    ttl: Duration,
}

impl RedisPresence {
    pub fn new(redis: Arc<Redis>, instance: &str, ttl: Duration) -> RedisPresence {
        RedisPresence {
            redis,
            script: Script::new(include_str!("lua/presence.lua")),
            instance: instance.to_owned(),
            ttl,
        }
    }

    /// Runs the script: `join` and `leave` of one user on this instance, or
    /// `beat`, the heartbeat of `users` and a sweep of expired entries.
    async fn run(&self, op: &str, room: &Room, users: &[User]) -> Result<(), StoreError> {
        let now = now_millis();
        let ttl = self.ttl.as_millis() as u64;
        let keys = &self.redis.keys;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(keys.presence(room))
            .key(keys.presence_counts(room))
            .arg(op)
            .arg(now)
            .arg(now + ttl)
            .arg(2 * ttl)
            .arg(keys.channel(room))
            .arg(protocol::member_prefix(room));
        invocation.arg(&self.instance);
        for user in users {
            invocation.arg(user.as_str());
        }
        let mut conn = self.redis.commands.clone();
        self.redis
            .bounded("presence", invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    async fn list(&self, room: &Room) -> Result<Vec<String>, StoreError> {
        let mut conn = self.redis.commands.clone();
        let mut query = redis::cmd("ZRANGEBYSCORE");
        query
            .arg(self.redis.keys.presence(room))
            .arg(format!("({}", now_millis()))
            .arg("+inf");
        let entries: Vec<String> = self
            .redis
            .bounded("presence", query.query_async(&mut conn))
            .await?;
        let mut users: Vec<String> = entries
            .iter()
            .filter_map(|entry| entry.split_once('\n').map(|(user, _)| user.to_owned()))
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }
}

impl PresenceStore for RedisPresence {
    fn arrive<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.run("join", room, std::slice::from_ref(user)).boxed()
    }

    fn depart<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.run("leave", room, std::slice::from_ref(user)).boxed()
    }

    fn beat<'a>(
        &'a self,
        room: &'a Room,
        users: &'a [User],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.run("beat", room, users).boxed()
    }

    fn users<'a>(&'a self, room: &'a Room) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.list(room).boxed()
    }
}
