//! The Redis event log: history in a Stream per room, ids and epochs in a
//! small hash, and every change made by one script (`lua/append.lua`) that
//! stores a whole batch of one room in order and publishes it, so that any
//! number of instances share rooms through one Redis or one Redis Cluster.
//!
//! Replication in Redis is asynchronous, so a replica promoted in a failover
//! can lack the newest events and would give their ids to others. When the
//! room's master has replicas online, a batch is therefore stored, then
//! `WAIT`ed for on `--redis-replicas` of them, and only then published,
//! shown to reads (the meta's `safe` mark) and acked: nothing anyone has
//! seen can be lost by a failover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::{Script, Value};

use crate::fields::Room;
use crate::log::{
    now_millis, Append, Change, End, Epoch, Event, Log, Outcome, Page, Read, Seen, StoreError,
    Stored, REF_MEMORY,
};
use crate::protocol;
use crate::redis::{Failure, Redis};
use crate::topology::slot_of;

/// Pause between attempts of a send while Redis fails over.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The scripts, each after the room's shared rules (`lua/room.lua`).
const APPEND: &str = concat!(include_str!("lua/room.lua"), include_str!("lua/append.lua"));
const READ: &str = concat!(include_str!("lua/room.lua"), include_str!("lua/read.lua"));
const ANNOUNCE: &str = concat!(
    include_str!("lua/room.lua"),
    include_str!("lua/announce.lua")
);

/// How the log is run.
pub struct LogOptions {
    pub history: usize,
    /// How long a send keeps retrying while Redis fails over; `None` picks
    /// by mode.
    pub retry: Option<Duration>,
    /// Replicas an event must reach before it is published and acked (up to
    /// as many as the room's master has online).
    pub replicas: usize,
    /// How long a room's keys live after its last change.
    pub retention: Duration,
}

pub struct RedisLog {
    redis: Arc<Redis>,
    history: usize,
    retry: Duration,
    replicas: usize,
    retention: Duration,
    append: Script,
    read: Script,
    announce: Script,
}

/// One event as the append script returned it.
type Answer = (String, u64, u64, Value, Value);

impl RedisLog {
    pub fn new(redis: Arc<Redis>, options: LogOptions) -> RedisLog {
        let retry = options.retry.unwrap_or(if redis.cluster {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        });
        RedisLog {
            redis,
            history: options.history,
            retry,
            replicas: options.replicas,
            retention: options.retention,
            append: Script::new(APPEND),
            read: Script::new(READ),
            announce: Script::new(ANNOUNCE),
        }
    }

    /// Stores a batch, repeating the attempt for up to `--redis-retry-ms`
    /// while Redis fails over: always when every event has a ref (the script
    /// answers a repeat with the first outcome), and otherwise only after
    /// errors that say nothing was written.
    async fn append_retrying(
        &self,
        room: &Room,
        batch: &[Append],
        known: &[Seen],
    ) -> Result<Vec<Outcome>, StoreError> {
        let deadline = Instant::now() + self.retry;
        let all_refs = batch.iter().all(|a| a.reference.is_some());
        loop {
            match self.append_once(room, batch, known).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(failure) => {
                    let again = all_refs || failure.nothing_written;
                    if !again || Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(failure.error);
                    }
                    log::debug!("retrying sends to room {room}: {}", failure.error);
                    async_std::task::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// One attempt: the script stores (and, with no replica to wait for,
    /// publishes) in one round trip; otherwise `WAIT`, then announce.lua
    /// publishes and lets reads show the events.
    async fn append_once(
        &self,
        room: &Room,
        batch: &[Append],
        known: &[Seen],
    ) -> Result<Vec<Outcome>, Failure> {
        let keys = &self.redis.keys;
        let channel = keys.channel(room);
        let slot = slot_of(&channel);
        let replicas = self
            .redis
            .health
            .topology()
            .owner(slot)
            .map_or(0, |shard| shard.replicas.min(self.replicas));
        let mut invocation = self.append.prepare_invoke();
        invocation.key(keys.meta(room)).key(keys.stream(room));
        invocation
            .arg(self.history)
            .arg(REF_MEMORY.as_secs())
            .arg(&channel)
            .arg(Epoch::random().as_str())
            .arg(if replicas == 0 { "now" } else { "later" })
            .arg(self.retention.as_millis() as u64);
        // An append checks only the head: reusing ids below it is what
        // reads and the feed find out; an append could only add one.
        add_known(&mut invocation, known, false);
        let ts = now_millis();
        let mut ref_keys = 2;
        for append in batch {
            let Change::Message(text) = &append.change;
            let (prefix, suffix) =
                protocol::message_parts(room, append.user.as_str(), text.as_str(), ts);
            let ref_index = match &append.reference {
                Some(reference) => {
                    invocation.key(keys.reference(room, &append.user, reference));
                    ref_keys += 1;
                    ref_keys
                }
                None => 0,
            };
            invocation
                .arg(append.user.as_str())
                .arg(text.as_str())
                .arg(ts)
                .arg(crate::log::nonce())
                .arg(prefix)
                .arg(suffix)
                .arg(ref_index);
        }
        let mut conn = self.redis.commands.clone();
        let answers: Vec<Answer> = self
            .redis
            .attempt("append", invocation.invoke_async(&mut conn))
            .await?;
        if replicas > 0 {
            self.replicate(room, batch, &answers, replicas, slot)
                .await?;
        }
        Ok(answers.into_iter().map(outcome).collect())
    }

    /// After a store that did not publish: `WAIT` for the replicas, then
    /// publish the new events, and the repeats still in history (members
    /// drop what they already have).
    async fn replicate(
        &self,
        room: &Room,
        batch: &[Append],
        answers: &[Answer],
        replicas: usize,
        slot: u16,
    ) -> Result<(), Failure> {
        let mut payloads = Vec::new();
        for (append, (epoch, id, ts, repeat, nonce)) in batch.iter().zip(answers) {
            let Change::Message(text) = &append.change;
            let text = match repeat {
                Value::Nil => text.as_str().to_owned(),
                Value::BulkString(stored) if stored != b"gone" => {
                    String::from_utf8_lossy(stored).into_owned()
                }
                _ => continue,
            };
            let nonce: String = redis::from_redis_value_ref(nonce).unwrap_or_default();
            let frame = protocol::message(room, *id, append.user.as_str(), &text, *ts);
            payloads.push((
                epoch.clone(),
                *id,
                format!("{epoch} {id} {nonce} {}", frame.as_str()),
            ));
        }
        let Some(epoch) = payloads.first().map(|(epoch, _, _)| epoch.clone()) else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas)
            .arg(self.redis.timeout.as_millis() as u64 / 2);
        let mut conn = self.redis.commands.clone();
        let reached: usize = self
            .redis
            .attempt("wait for replicas", conn.on_slot(&wait, slot))
            .await?;
        if reached < replicas {
            self.redis.health.metrics.redis_error();
            return Err(Failure {
                error: StoreError(format!(
                    "room {room}: events reached {reached} of {replicas} replica(s) in time"
                )),
                nothing_written: false,
            });
        }
        let mut announce = self.announce.prepare_invoke();
        announce
            .key(self.redis.keys.meta(room))
            .arg(&epoch)
            .arg(self.redis.keys.channel(room));
        for (_, id, payload) in &payloads {
            announce.arg(id).arg(payload);
        }
        self.redis
            .attempt("publish", announce.invoke_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    async fn read_page(&self, room: &Room, read: Read) -> Result<Page, StoreError> {
        let slice = read.slice;
        let before = if slice.before == u64::MAX {
            "+".to_owned()
        } else {
            slice.before.to_string()
        };
        let keys = &self.redis.keys;
        let mut invocation = self.read.prepare_invoke();
        invocation
            .key(keys.meta(room))
            .key(keys.stream(room))
            .arg(slice.after)
            .arg(before)
            .arg(slice.limit)
            .arg(match slice.from {
                End::Oldest => "oldest",
                End::Newest => "newest",
            })
            .arg(Epoch::random().as_str())
            .arg(if read.create { "1" } else { "0" })
            .arg(self.retention.as_millis() as u64);
        add_known(&mut invocation, &read.known, true);
        let mut conn = self.redis.commands.clone();
        let (epoch, head, first, entries, head_nonce): (String, u64, u64, Vec<Value>, Value) = self
            .redis
            .bounded("read", invocation.invoke_async(&mut conn))
            .await?;
        let events = entries
            .iter()
            .map(|entry| event_of_entry(room, entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            epoch: Epoch::from(epoch),
            head,
            first,
            events,
            head_nonce: redis::from_redis_value_ref::<Option<u32>>(&head_nonce)
                .ok()
                .flatten(),
        })
    }
}

impl Log for RedisLog {
    fn append<'a>(
        &'a self,
        room: &'a Room,
        batch: &'a [Append],
        known: &'a [Seen],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        self.append_retrying(room, batch, known).boxed()
    }

    fn read<'a>(&'a self, room: &'a Room, read: Read) -> BoxFuture<'a, Result<Page, StoreError>> {
        self.read_page(room, read).boxed()
    }

    fn is_ready(&self) -> bool {
        self.redis.health.commands_ready()
    }

    fn describe(&self) -> String {
        let mode = if self.redis.cluster {
            "cluster"
        } else {
            "standalone"
        };
        format!(
            "Redis store ({mode}) at {}, key prefix {:?}: rooms are shared with every instance on it",
            self.redis.url,
            self.redis.keys.prefix()
        )
    }
}

/// What the caller saw, as the scripts take it: a count, then triples of
/// epoch, id and nonce (`''` when unknown, or with `nonces` false).
fn add_known(invocation: &mut redis::ScriptInvocation<'_>, known: &[Seen], nonces: bool) {
    invocation.arg(known.len());
    for seen in known {
        let nonce = seen.nonce.filter(|_| nonces);
        invocation
            .arg(seen.epoch.as_str())
            .arg(seen.id)
            .arg(nonce.map_or(String::new(), |n| n.to_string()));
    }
}

fn outcome((epoch, id, ts, _, _): Answer) -> Outcome {
    Ok(Stored {
        epoch: Epoch::from(epoch),
        id,
        ts,
    })
}

/// Decodes one stream entry, `[id, [field, value, …]]`, into an event.
fn event_of_entry(room: &Room, entry: &Value) -> Result<Event, StoreError> {
    let bad = || StoreError(format!("room {room}: unexpected stream entry {entry:?}"));
    let (stream_id, fields): (String, Vec<String>) =
        redis::from_redis_value_ref(entry).map_err(|_| bad())?;
    let id: u64 = stream_id
        .split('-')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair.get(1))
            .ok_or_else(bad)
    };
    let ts: u64 = field("ts")?.parse().map_err(|_| bad())?;
    let nonce: u32 = field("n")?.parse().map_err(|_| bad())?;
    Ok(Event {
        id,
        frame: protocol::message(room, id, field("user")?, field("text")?, ts),
        nonce,
    })
}
