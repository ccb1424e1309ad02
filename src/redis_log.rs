//! The Redis event log: history in a Stream per room, ids and epochs in a
//! small hash, what later events made of each message in another, and every
//! change made by one script (`lua/append.lua`) that stores a whole batch of
//! one room in order, checks each edit, delete and reaction against its
//! message in the same step, and publishes, so that any number of instances
//! share rooms through one Redis or one Redis Cluster.
//!
//! The appends of a room on this instance are stored a group at a time
//! (`append_groups.rs`): one script call for the sends of every connection
//! that came while the last group was being stored.
//!
//! Replication in Redis is asynchronous, so a replica promoted in a failover
//! can lack the newest events and would give their ids to others. When the
//! room's master has replicas online, a batch is therefore stored, then
//! `WAIT`ed for on `--redis-replicas` of them, and only then published,
//! shown to reads (the meta's `safe` mark) and acked: nothing anyone has
//! seen can be lost by a failover.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::{Script, ScriptInvocation, Value};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::append_groups::{Groups, Waiting};
use crate::error::{Error, ErrorCode};
use crate::feed::Signal;
use crate::fields::{Room, User};
use crate::log::{
    now_millis, Append, Change, End, Epoch, Event, Fold, Log, Marked, Outcome, Page, Read, Record,
    Seen, StoreError, Stored,
};
use crate::protocol;
use crate::redis::{Failure, Redis};
use crate::redis_keys::ref_field;
use crate::redis_writers::Writer;
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
const MARK: &str = concat!(include_str!("lua/room.lua"), include_str!("lua/mark.lua"));

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
    /// How long a ref is remembered (`--ref-memory`).
    pub ref_memory: Duration,
}

pub struct RedisLog {
    /// This log, for the task that stores a room's groups.
    me: Weak<RedisLog>,
    groups: Groups,
    redis: Arc<Redis>,
    history: usize,
    retry: Duration,
    replicas: usize,
    retention: Duration,
    ref_memory: Duration,
    append: Script,
    read: Script,
    announce: Script,
    mark: Script,
}

/// One event as the append script answered: epoch, id, ts, repeat, nonce,
/// refusal.
type Answer = (
    String,
    Option<u64>,
    u64,
    Value,
    Option<String>,
    Option<String>,
);

impl RedisLog {
    pub fn new(redis: Arc<Redis>, options: LogOptions) -> Arc<RedisLog> {
        let retry = options.retry.unwrap_or(if redis.cluster {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        });
        Arc::new_cyclic(|me| RedisLog {
            me: me.clone(),
            groups: Groups::default(),
            redis,
            history: options.history,
            retry,
            replicas: options.replicas,
            retention: options.retention,
            ref_memory: options.ref_memory,
            append: Script::new(APPEND),
            read: Script::new(READ),
            announce: Script::new(ANNOUNCE),
            mark: Script::new(MARK),
        })
    }

    /// Stores a batch with the room's next group: the first append of an
    /// idle room starts a task that stores its groups until none waits.
    async fn append_grouped(
        &self,
        room: &Room,
        batch: &[Append],
        known: &[Seen],
    ) -> Result<Vec<Outcome>, StoreError> {
        let (answer, answered) = async_channel::bounded(1);
        let waiting = Waiting {
            batch: batch.to_vec(),
            known: known.to_vec(),
            answer,
        };
        if self.groups.push(room, waiting) {
            let log = self.me.upgrade().expect("a log in use is held by its Arc");
            let room = room.clone();
            async_std::task::spawn(async move {
                while let Some(group) = log.groups.next(&room) {
                    let result = log.append_retrying(&room, &group.batch, &group.known).await;
                    group.answer(result);
                }
            });
        }
        answered
            .recv()
            .await
            .unwrap_or_else(|_| Err(StoreError(format!("room {room}: the store stopped"))))
    }

    /// A script invocation with the room's six keys.
    fn invocation<'a>(&self, script: &'a Script, room: &Room) -> ScriptInvocation<'a> {
        let keys = &self.redis.keys;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.meta(room))
            .key(keys.stream(room))
            .key(keys.fold(room))
            .key(keys.reads(room))
            .key(keys.refs(room))
            .key(keys.ref_order(room));
        invocation
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
                    if failure.nothing_written {
                        // The slot may have moved: ask where it is now.
                        let asked = self.redis.commands.topology();
                        if let Ok(Ok(topology)) =
                            async_std::future::timeout(self.redis.timeout, asked).await
                        {
                            self.redis.health.set_topology(topology);
                        }
                    }
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
        let topology = self.redis.health.topology();
        let replicas = topology
            .owner(slot)
            .map_or(0, |shard| shard.replicas.min(self.replicas));
        let mut invocation = self.invocation(&self.append, room);
        invocation
            .arg(self.history)
            .arg(self.ref_memory.as_millis() as u64)
            .arg(&channel)
            .arg(Epoch::random().as_str())
            .arg(if replicas == 0 { "now" } else { "later" })
            .arg(self.retention.as_millis() as u64);
        // An append checks only the head: reusing ids below it is what
        // reads and the feed find out; an append could only add one.
        add_known(&mut invocation, known, false);
        let ts = now_millis();
        let mut frames = Vec::with_capacity(batch.len());
        for append in batch {
            let record = Record::of(&append.user, &append.change);
            let (prefix, suffix) = protocol::event_parts(room, &record, ts);
            add_event(&mut invocation, append, ts, &prefix, &suffix);
            frames.push((prefix, suffix));
        }
        let Some(addr) = topology.owner(slot).map(|shard| shard.addr.clone()) else {
            return Err(Failure {
                error: StoreError(format!("no Redis master owns room {room}'s slot right now")),
                nothing_written: true,
            });
        };
        let writers = &self.redis.writers;
        let stored = async {
            let mut writer = self.redis.attempt("connect", writers.to(&addr)).await?;
            let answers: Vec<Answer> = self
                .redis
                .attempt("append", invocation.invoke_async(&mut writer.conn))
                .await?;
            let ticket = writer.commits.wrote();
            if replicas > 0 {
                self.replicate(room, &frames, &answers, replicas, (&mut writer, ticket))
                    .await?;
            }
            Ok(answers)
        };
        let answers: Vec<Answer> = stored
            .await
            .inspect_err(|_| writers.drop_connection(&addr))?;
        Ok(answers
            .into_iter()
            .zip(batch)
            .map(|(answer, append)| outcome(answer, append))
            .collect())
    }

    /// After a store that did not publish: `WAIT` for the replicas, then
    /// publish the new events, and the repeats still in history (members
    /// drop what they already have).
    async fn replicate(
        &self,
        room: &Room,
        frames: &[(String, String)],
        answers: &[Answer],
        replicas: usize,
        (writer, ticket): (&mut Writer, u64),
    ) -> Result<(), Failure> {
        let mut payloads = Vec::new();
        for ((prefix, suffix), (epoch, id, _, repeat, nonce, _)) in frames.iter().zip(answers) {
            let (Some(id), Some(nonce)) = (id, nonce) else {
                continue;
            };
            let frame = match repeat {
                Value::Nil => format!("{prefix}{id}{suffix}"),
                Value::Array(fields) => match decode_entry(room, *id, fields) {
                    Ok((record, ts, _)) => {
                        protocol::event(room, *id, &record, ts).as_str().to_owned()
                    }
                    Err(_) => continue,
                },
                _ => continue,
            };
            payloads.push((epoch.clone(), *id, format!("{epoch} {id} {nonce} {frame}")));
        }
        let Some(epoch) = payloads.first().map(|(epoch, _, _)| epoch.clone()) else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas)
            .arg(self.redis.timeout.as_millis() as u64 / 2);
        let mut conn = writer.conn.clone();
        let reached: usize = writer
            .commits
            .replicas(ticket, replicas, || {
                self.redis
                    .attempt("wait for replicas", wait.query_async(&mut conn))
            })
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
        let mut announce = self.invocation(&self.announce, room);
        announce.arg(&epoch).arg(self.redis.keys.channel(room));
        for (_, id, payload) in &payloads {
            announce.arg(id).arg(payload);
        }
        self.redis
            .attempt("publish", announce.invoke_async::<i64>(&mut writer.conn))
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
        let mut invocation = self.invocation(&self.read, room);
        invocation
            .arg(slice.after)
            .arg(before)
            .arg(slice.limit)
            .arg(match slice.from {
                End::Oldest => "oldest",
                End::Newest => "newest",
            })
            .arg(Epoch::random().as_str())
            .arg(if read.create { "1" } else { "0" })
            .arg(self.retention.as_millis() as u64)
            .arg(if read.fold { "1" } else { "0" })
            .arg(read.marker_of.as_ref().map_or("", User::as_str));
        add_known(&mut invocation, &read.known, true);
        let mut conn = self.redis.commands.clone();
        let (epoch, head, first, entries, head_nonce, marker): (
            String,
            u64,
            u64,
            String,
            Option<String>,
            u64,
        ) = self
            .redis
            .bounded("read", invocation.invoke_async(&mut conn))
            .await?;
        let events = events_of_entries(room, &entries)?;
        Ok(Page {
            epoch: Epoch::from(epoch),
            head,
            first,
            events,
            head_nonce: head_nonce.and_then(|n| n.parse().ok()),
            marker,
        })
    }

    async fn mark_read(
        &self,
        room: &Room,
        user: &User,
        id: u64,
        signal: Signal,
    ) -> Result<Marked, StoreError> {
        let mut invocation = self.invocation(&self.mark, room);
        invocation
            .arg(user.as_str())
            .arg(id)
            .arg(self.redis.keys.channel(room))
            .arg(format!("~{} {}", signal.origin, signal.frame.as_str()))
            .arg(self.retention.as_millis() as u64);
        let mut conn = self.redis.commands.clone();
        let answer: String = self
            .redis
            .bounded("read marker", invocation.invoke_async(&mut conn))
            .await?;
        Ok(match answer.as_str() {
            "moved" => Marked::Moved,
            "beyond" => Marked::Beyond,
            _ => Marked::Unchanged,
        })
    }

    async fn all_markers(&self, room: &Room) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut conn = self.redis.commands.clone();
        let mut query = redis::cmd("HGETALL");
        query.arg(self.redis.keys.reads(room));
        self.redis
            .bounded("read markers", query.query_async(&mut conn))
            .await
    }
}

impl Log for RedisLog {
    fn append<'a>(
        &'a self,
        room: &'a Room,
        batch: &'a [Append],
        known: &'a [Seen],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        self.append_grouped(room, batch, known).boxed()
    }

    fn read<'a>(&'a self, room: &'a Room, read: Read) -> BoxFuture<'a, Result<Page, StoreError>> {
        self.read_page(room, read).boxed()
    }

    fn mark<'a>(
        &'a self,
        room: &'a Room,
        user: &'a User,
        id: u64,
        signal: Signal,
    ) -> BoxFuture<'a, Result<Marked, StoreError>> {
        self.mark_read(room, user, id, signal).boxed()
    }

    fn markers<'a>(
        &'a self,
        room: &'a Room,
    ) -> BoxFuture<'a, Result<BTreeMap<String, u64>, StoreError>> {
        self.all_markers(room).boxed()
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
fn add_known(invocation: &mut ScriptInvocation<'_>, known: &[Seen], nonces: bool) {
    invocation.arg(known.len());
    for seen in known {
        let nonce = seen.nonce.filter(|_| nonces);
        invocation
            .arg(seen.epoch.as_str())
            .arg(seen.id)
            .arg(nonce.map_or(String::new(), |n| n.to_string()));
    }
}

/// One event's eleven values for append.lua.
fn add_event(
    invocation: &mut ScriptInvocation<'_>,
    append: &Append,
    ts: u64,
    prefix: &str,
    suffix: &str,
) {
    let (kind, text, target, emoji) = match &append.change {
        Change::Message(text) => ("m", text.as_str(), 0, ""),
        Change::Edit { target, text } => ("e", text.as_str(), *target, ""),
        Change::Delete { target } => ("d", "", *target, ""),
        Change::React { target, emoji, on } => {
            (if *on { "r" } else { "u" }, "", *target, emoji.as_str())
        }
    };
    invocation
        .arg(kind)
        .arg(append.user.as_str())
        .arg(text)
        .arg(target)
        .arg(emoji)
        .arg(if append.moderator { "1" } else { "0" })
        .arg(ts)
        .arg(crate::log::nonce())
        .arg(prefix)
        .arg(suffix)
        .arg(
            append
                .reference
                .as_ref()
                .map_or(String::new(), |reference| {
                    ref_field(&append.user, reference)
                }),
        );
}

fn outcome((epoch, id, ts, _, _, refusal): Answer, append: &Append) -> Outcome {
    let target = match &append.change {
        Change::Message(_) => 0,
        Change::Edit { target, .. } | Change::Delete { target } | Change::React { target, .. } => {
            *target
        }
    };
    match refusal.as_deref() {
        Some("not_found") => Err(Error::new(
            ErrorCode::NotFound,
            format!("there is no message {target} in this room's history (or it was deleted)"),
        )),
        Some(_) => Err(Error::new(
            ErrorCode::Forbidden,
            match append.change {
                Change::Edit { .. } => format!("only its author may edit message {target}"),
                _ => format!("only its author or a moderator may delete message {target}"),
            },
        )),
        None => Ok(Stored {
            epoch: Epoch::from(epoch),
            id,
            ts,
        }),
    }
}

/// The record, ts and nonce of a stream entry, from its fields by name.
fn record_of<'a>(
    room: &Room,
    id: u64,
    field: impl Fn(&str) -> Option<&'a str>,
) -> Result<(Record, u64, u32), StoreError> {
    let bad = || StoreError(format!("room {room}: unexpected stream entry {id}"));
    let need = |name: &str| field(name).ok_or_else(bad);
    let number = |name: &str| need(name)?.parse::<u64>().map_err(|_| bad());
    let user = need("user")?.to_owned();
    let record = match field("k").unwrap_or("m") {
        "m" => Record::Message {
            user,
            text: need("text")?.to_owned(),
        },
        "e" => Record::Edit {
            user,
            target: number("target")?,
            text: need("text")?.to_owned(),
        },
        "d" => Record::Delete {
            user,
            target: number("target")?,
        },
        "r" => Record::Reaction {
            user,
            target: number("target")?,
            emoji: need("emoji")?.to_owned(),
            on: field("on") == Some("1"),
        },
        _ => return Err(bad()),
    };
    let nonce = need("n")?.parse::<u32>().map_err(|_| bad())?;
    Ok((record, number("ts")?, nonce))
}

/// The record, ts and nonce of a stream entry's fields as Redis gave them.
fn decode_entry(room: &Room, id: u64, fields: &[Value]) -> Result<(Record, u64, u32), StoreError> {
    record_of(room, id, |name| {
        fields
            .chunks(2)
            .find(|pair| text_of(&pair[0]) == Some(name))
            .and_then(|pair| pair.get(1))
            .and_then(text_of)
    })
}

/// A bulk or simple string reply as text.
fn text_of(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text.as_str()),
        _ => None,
    }
}

/// A string of read.lua's JSON, borrowed unless it had escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A stream entry as read.lua's JSON gives it: `[stream id, [field, value,
/// …], fold]`.
#[derive(Deserialize)]
struct StoredEntry<'a>(
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Vec<Text<'a>>,
    StoredFold,
);

/// What read.lua gives of a message's later events: '' when nothing changed
/// it, else `[latest text, edited ts, deleted, [emoji, user, …]]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredFold {
    Changed(String, String, String, Pairs),
    Unchanged(IgnoredAny),
}

/// A list of values taken two at a time; cjson writes an empty one as `{}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Pairs {
    List(Vec<String>),
    Empty {},
}

impl StoredFold {
    fn fold(self) -> Fold {
        let StoredFold::Changed(text, edited, deleted, reactions) = self else {
            return Fold::default();
        };
        let mut out = Fold {
            edited: edited.parse().ok().map(|at| (text, at)),
            deleted: !deleted.is_empty(),
            ..Fold::default()
        };
        if let Pairs::List(pairs) = reactions {
            for pair in pairs.chunks(2) {
                if let [emoji, user] = pair {
                    out.reactions
                        .entry(emoji.clone())
                        .or_default()
                        .insert(user.clone());
                }
            }
        }
        out
    }
}

/// The events of read.lua's entries, each folded when a fold came with it.
fn events_of_entries(room: &Room, entries: &str) -> Result<Vec<Event>, StoreError> {
    let bad = |what: String| StoreError(format!("room {room}: unexpected read entries: {what}"));
    let entries: Vec<StoredEntry> =
        serde_json::from_str(entries).map_err(|error| bad(error.to_string()))?;
    entries
        .into_iter()
        .map(|StoredEntry(stream_id, fields, fold)| {
            let id: u64 = stream_id
                .0
                .split('-')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad(format!("stream id {}", stream_id.0)))?;
            let (record, ts, nonce) = record_of(room, id, |name| {
                fields
                    .chunks(2)
                    .find(|pair| pair[0].0 == name)
                    .and_then(|pair| pair.get(1))
                    .map(|value| value.0.as_ref())
            })?;
            Ok(Event {
                id,
                frame: protocol::folded(room, id, &record, ts, &fold.fold()),
                nonce,
            })
        })
        .collect()
}
