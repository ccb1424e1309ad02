//! The Redis store: history in a Stream per room, ids and epochs in a small
//! hash, the live feed over sharded Pub/Sub, so that any number of instances
//! share rooms through one Redis or one Redis Cluster.
//!
//! Key layout (ARCHITECTURE.md has the table): every key and the channel of a
//! room carry the room in a hash tag, `{room}`, so they live in one slot and
//! each script touches one node. Scripts start with `#!lua`, which makes
//! Redis refuse keys or channels of another slot before anything is written.
//!
//! Commands go over one connection (`Commands`: standalone or cluster); the
//! live feed is `feed.rs`. Sharded Pub/Sub (`SPUBLISH`/`SSUBSCRIBE`) is used
//! on a standalone Redis too: one code path for both deployments, tested in
//! both, and on one node it costs the same as plain Pub/Sub. It needs Redis 7,
//! which the `#!lua` flags need anyway.
//!
//! Replication in Redis is asynchronous, so a replica promoted in a failover
//! can lack the newest messages and would give their ids to others. When the
//! room's master has replicas online, a message is therefore stored, then
//! `WAIT`ed for on `--redis-replicas` of them, and only then published,
//! shown to reads (the meta's `safe` mark) and acked: nothing anyone has seen
//! can be lost by a failover.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClientBuilder;
use redis::{Client, ConnectionAddr, RedisError, Script, Value};

use crate::config::RedisMode;
use crate::feed::{self, Command, FeedSetup};
use crate::fields::{Ref, Room, User};
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::protocol;
use crate::redis_commands::Commands;
use crate::store::{
    Draft, End, Epoch, FeedEvent, Message, Page, Signal, Slice, StoreError, Stored, REF_MEMORY,
};
use crate::topology::{slot_of, Topology};

/// How often the command connection is checked for readiness.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Pause between attempts of a send while Redis fails over.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What the Redis store needs to know.
pub struct RedisOptions<'a> {
    /// One URL, or several seed nodes of a cluster separated by commas.
    pub url: &'a str,
    pub mode: RedisMode,
    pub prefix: &'a str,
    pub history: usize,
    pub timeout: Duration,
    /// How long a send keeps retrying while Redis fails over; `None` picks
    /// by mode.
    pub retry: Option<Duration>,
    /// Replicas a message must reach before it is published and acked (up to
    /// as many as the room's master has online).
    pub replicas: usize,
    pub instance: &'a str,
    /// How long a presence entry lives without a heartbeat.
    pub presence_ttl: Duration,
    pub metrics: Metrics,
}

pub struct RedisStore {
    conn: Commands,
    keys: Keys,
    history: usize,
    timeout: Duration,
    retry: Duration,
    replicas: usize,
    publish: Script,
    announce: Script,
    read: Script,
    presence: Script,
    /// This instance's name, in its presence entries.
    instance: String,
    presence_ttl: Duration,
    metrics: Metrics,
    subscriber: async_channel::Sender<Command>,
    shared: Arc<Shared>,
    url: String,
}

/// What the store, its health task and the live feed share: readiness for
/// `/readyz`, the metrics, and the topology the feed keeps current.
pub struct Shared {
    commands: AtomicBool,
    pub feed: AtomicBool,
    pub metrics: Metrics,
    pub topology: Mutex<Arc<Topology>>,
}

impl RedisStore {
    /// Connects to Redis (one node, or a cluster through its seed nodes),
    /// checks that it answers, and starts the live feed and health tasks.
    /// Returns the store and its live feed.
    pub async fn connect(
        options: RedisOptions<'_>,
    ) -> Result<(RedisStore, async_channel::Receiver<FeedEvent>), String> {
        let RedisOptions {
            url,
            mode,
            prefix,
            history,
            timeout,
            retry,
            replicas,
            instance,
            presence_ttl,
            metrics,
        } = options;
        let shown = redact(url);
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let mut clients = Vec::new();
        for one in &urls {
            let client = Client::open(*one).map_err(|e| format!("--redis {}: {e}", redact(one)))?;
            if !matches!(client.get_connection_info().addr(), ConnectionAddr::Tcp(..)) {
                return Err(format!(
                    "--redis {}: only redis://host:port URLs are supported",
                    redact(one)
                ));
            }
            clients.push(client);
        }
        let first = clients[0].clone();
        let settings = first.get_connection_info().redis_settings();
        let (username, password) = (
            settings.username().map(str::to_owned),
            settings.password().map(str::to_owned),
        );

        let cluster = match mode {
            RedisMode::Cluster => true,
            RedisMode::Standalone if urls.len() > 1 => {
                return Err(format!(
                    "--redis {shown}: several URLs are seed nodes of a Redis Cluster, but --redis-mode is standalone"
                ))
            }
            RedisMode::Standalone => false,
            RedisMode::Auto if urls.len() > 1 => true,
            RedisMode::Auto => {
                let mut conn = first.get_multiplexed_async_connection().await.map_err(|e| {
                    format!("cannot reach Redis at {shown}: {e}; is it running? (--redis, REDIS_URL)")
                })?;
                let info: String = redis::cmd("INFO")
                    .arg("cluster")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("Redis at {shown} does not answer INFO: {e}"))?;
                info.contains("cluster_enabled:1")
            }
        };
        let mut conn = if cluster {
            let client = ClusterClientBuilder::new(urls.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(3)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .build()
                .map_err(|e| format!("--redis {shown}: {e}"))?;
            let conn = client.get_async_connection().await.map_err(|e| {
                format!("cannot reach the Redis Cluster at {shown}: {e}; are its nodes running? (--redis, REDIS_URL)")
            })?;
            Commands::Cluster(conn)
        } else {
            let ConnectionAddr::Tcp(host, port) = first.get_connection_info().addr().clone() else {
                unreachable!("checked above");
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            let conn = first
                .get_connection_manager_with_config(config)
                .await
                .map_err(|e| {
                    format!(
                        "cannot reach Redis at {shown}: {e}; is it running? (--redis, REDIS_URL)"
                    )
                })?;
            Commands::Standalone { conn, addr }
        };
        // Asked of one node: on a cluster, INFO would go to every master.
        let info: String = conn
            .on_slot(redis::cmd("INFO").arg("server"), 0)
            .await
            .map_err(|e| {
                if cluster {
                    format!("the Redis Cluster at {shown} does not answer: {e}; does it serve every slot? (redis-cli cluster info: cluster_state:ok)")
                } else {
                    format!("Redis at {shown} does not answer INFO: {e}")
                }
            })?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        if version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .is_none_or(|major| major < 7)
        {
            return Err(format!(
                "Redis at {shown} is version {version}; parlor needs Redis 7 or later (sharded Pub/Sub, script flags)"
            ));
        }
        let topology = conn
            .topology()
            .await
            .map_err(|e| format!("cannot read the Redis topology at {shown}: {e}"))?;
        if !topology.covers_all() {
            return Err(format!(
                "the Redis Cluster at {shown} does not serve every slot yet (cluster_state is not ok); try again when it does"
            ));
        }
        log::info!(
            "Redis {version} at {shown}: {} mode{}, {} shard(s)",
            if cluster { "cluster" } else { "standalone" },
            if mode == RedisMode::Auto {
                " (asked the server)"
            } else {
                ""
            },
            topology.shards().len()
        );

        let keys = Keys::new(prefix);
        let (events, feed) = async_channel::bounded(1024);
        let (subscriber, commands) = async_channel::unbounded();
        let shared = Arc::new(Shared {
            commands: AtomicBool::new(true),
            feed: AtomicBool::new(true),
            metrics: metrics.clone(),
            topology: Mutex::new(Arc::new(topology)),
        });
        async_std::task::spawn(feed::run(
            FeedSetup {
                commands: conn.clone(),
                keys: keys.clone(),
                timeout,
                username,
                password,
                shared: shared.clone(),
                events,
            },
            commands,
        ));
        async_std::task::spawn(watch_commands(conn.clone(), timeout, shared.clone()));
        let retry = retry.unwrap_or(if cluster {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        });
        let store = RedisStore {
            conn,
            keys,
            history,
            timeout,
            retry,
            replicas,
            publish: Script::new(include_str!("publish.lua")),
            announce: Script::new(include_str!("announce.lua")),
            read: Script::new(include_str!("read.lua")),
            presence: Script::new(include_str!("presence.lua")),
            instance: instance.to_owned(),
            presence_ttl,
            metrics: metrics.clone(),
            subscriber,
            shared,
            url: shown,
        };
        Ok((store, feed))
    }

    /// Stores a message and publishes it. While Redis fails over, the
    /// attempt is repeated for up to `--redis-retry-ms`: always for a draft
    /// with a ref (the script answers a repeat with the first outcome), and
    /// without one only after errors that say nothing was written.
    pub async fn publish(&self, draft: Draft) -> Result<Stored, StoreError> {
        let deadline = Instant::now() + self.retry;
        loop {
            match self.publish_once(&draft).await {
                Ok(stored) => return Ok(stored),
                Err(failure) => {
                    let again = draft.reference.is_some() || failure.nothing_written;
                    if !again || Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(failure.error);
                    }
                    log::debug!(
                        "retrying a send to room {}: {}",
                        draft.room,
                        failure.error.0
                    );
                    async_std::task::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// One attempt: the script stores (and, with no replica to wait for,
    /// publishes) in one round trip; otherwise `WAIT`, then announce.lua
    /// publishes and lets reads show the message.
    async fn publish_once(&self, draft: &Draft) -> Result<Stored, Failure> {
        let room = &draft.room;
        let channel = self.keys.channel(room);
        let slot = slot_of(&channel);
        let replicas = {
            let topology = lock(&self.shared.topology).clone();
            topology
                .owner(slot)
                .map_or(0, |shard| shard.replicas.min(self.replicas))
        };
        let ts = crate::store::now_millis();
        let (prefix, suffix) =
            protocol::message_parts(room, draft.user.as_str(), draft.text.as_str(), ts);
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(self.keys.meta(room))
            .key(self.keys.stream(room));
        if let Some(reference) = &draft.reference {
            invocation.key(self.keys.reference(room, &draft.user, reference));
        }
        invocation
            .arg(draft.user.as_str())
            .arg(draft.text.as_str())
            .arg(ts)
            .arg(self.history)
            .arg(REF_MEMORY.as_secs())
            .arg(&channel)
            .arg(Epoch::random().as_str())
            .arg(&prefix)
            .arg(&suffix)
            .arg(if replicas == 0 { "now" } else { "later" });
        let mut conn = self.conn.clone();
        let (epoch, id, ts, outcome): (String, u64, u64, Value) = self
            .attempt("publish", invocation.invoke_async(&mut conn))
            .await?;
        let stored = Stored {
            epoch: Epoch::from(epoch),
            id,
            ts,
        };
        if replicas == 0 {
            return Ok(stored);
        }
        // `outcome` is nil for a new message, the stored text for a repeat
        // of one still in history (published again: members drop what they
        // already have), and `gone` for one trimmed away since.
        let frame = match outcome {
            Value::Nil => format!("{prefix}{id}{suffix}"),
            Value::BulkString(text) if text != b"gone" => {
                let text = String::from_utf8_lossy(&text);
                protocol::message(room, id, draft.user.as_str(), &text, ts)
                    .as_str()
                    .to_owned()
            }
            _ => return Ok(stored),
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(self.timeout.as_millis() as u64 / 2);
        let reached: usize = self
            .attempt("wait for replicas", conn.on_slot(&wait, slot))
            .await?;
        if reached < replicas {
            self.metrics.redis_error();
            return Err(Failure {
                error: StoreError(format!(
                    "room {room}: message {id} reached {reached} of {replicas} replica(s) in time"
                )),
                nothing_written: false,
            });
        }
        let mut announce = self.announce.prepare_invoke();
        announce
            .key(self.keys.meta(room))
            .arg(stored.epoch.as_str())
            .arg(id)
            .arg(&channel)
            .arg(format!("{} {id} {frame}", stored.epoch.as_str()));
        self.attempt("publish", announce.invoke_async::<i64>(&mut conn))
            .await?;
        Ok(stored)
    }

    /// Publishes a signal on the room's channel as `~origin frame`; the `~`
    /// sets it apart from messages, whose payload starts with their epoch.
    pub async fn signal(&self, signal: Signal) -> Result<(), StoreError> {
        let payload = format!("~{} {}", signal.origin, signal.frame.as_str());
        let channel = self.keys.channel(&signal.room);
        let mut publish = redis::cmd("SPUBLISH");
        publish.arg(&channel).arg(payload);
        let mut conn = self.conn.clone();
        self.bounded("signal", conn.on_slot::<i64>(&publish, slot_of(&channel)))
            .await
            .map(|_| ())
    }

    /// Runs `presence.lua`: `join` and `leave` for `user` on this instance,
    /// or `sweep` of expired entries.
    pub async fn presence_op(
        &self,
        op: &str,
        room: &Room,
        user: Option<&User>,
    ) -> Result<(), StoreError> {
        let now = crate::store::now_millis();
        let ttl = self.presence_ttl.as_millis() as u64;
        let mut invocation = self.presence.prepare_invoke();
        invocation
            .key(self.keys.presence(room))
            .arg(op)
            .arg(now)
            .arg(now + ttl)
            .arg(2 * ttl)
            .arg(self.keys.channel(room))
            .arg(protocol::member_prefix(room));
        if let Some(user) = user {
            invocation.arg(user.as_str()).arg(&self.instance);
        }
        let mut conn = self.conn.clone();
        self.bounded("presence", invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    /// The users with a live presence entry in `room`, each once, sorted.
    pub async fn presence(&self, room: &Room) -> Result<Vec<String>, StoreError> {
        let now = crate::store::now_millis();
        let mut conn = self.conn.clone();
        let mut query = redis::cmd("ZRANGEBYSCORE");
        query
            .arg(self.keys.presence(room))
            .arg(format!("({now}"))
            .arg("+inf");
        let entries: Vec<String> = self
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

    pub async fn read(&self, room: &Room, slice: Slice) -> Result<Page, StoreError> {
        let before = if slice.before == u64::MAX {
            "+".to_owned()
        } else {
            slice.before.to_string()
        };
        let mut invocation = self.read.prepare_invoke();
        invocation
            .key(self.keys.meta(room))
            .key(self.keys.stream(room))
            .arg(slice.after)
            .arg(before)
            .arg(slice.limit)
            .arg(match slice.from {
                End::Oldest => "oldest",
                End::Newest => "newest",
            })
            .arg(Epoch::random().as_str());
        let mut conn = self.conn.clone();
        let (epoch, head, first, entries): (String, u64, u64, Vec<Value>) = self
            .bounded("read", invocation.invoke_async(&mut conn))
            .await?;
        let messages = entries
            .iter()
            .map(|entry| message_of_entry(room, entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            epoch: Epoch::from(epoch),
            head,
            first,
            messages,
        })
    }

    pub async fn subscribe(&self, room: &Room) -> Result<(), StoreError> {
        let (reply, answer) = async_channel::bounded(1);
        self.subscriber
            .send(Command::Subscribe(room.clone(), reply))
            .await
            .map_err(|_| StoreError("the subscriber task has stopped".into()))?;
        match async_std::future::timeout(self.timeout, answer.recv()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError("the subscriber task has stopped".into())),
            Err(_) => Err(StoreError(format!("subscribing to room {room} timed out"))),
        }
    }

    pub fn unsubscribe(&self, room: &Room) {
        let _ = self.subscriber.try_send(Command::Unsubscribe(room.clone()));
    }

    pub fn is_ready(&self) -> bool {
        self.shared.commands.load(Ordering::Acquire) && self.shared.feed.load(Ordering::Acquire)
    }

    pub fn describe(&self) -> String {
        let mode = if self.conn.is_cluster() {
            "cluster"
        } else {
            "standalone"
        };
        format!(
            "Redis store ({mode}) at {}, key prefix {:?}: rooms are shared with every instance on it",
            self.url, self.keys.prefix
        )
    }

    /// Runs a Redis call with the store's time limit.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.attempt(what, call)
            .await
            .map_err(|failure| failure.error)
    }

    /// `bounded`, telling apart the failures after which nothing was
    /// written: the request never reached a master that could take it.
    async fn attempt<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failure> {
        let result = async_std::future::timeout(self.timeout, call).await;
        if !matches!(result, Ok(Ok(_))) {
            self.metrics.redis_error();
        }
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure {
                nothing_written: nothing_written(&e),
                error: StoreError(format!("Redis {what} failed: {e}")),
            }),
            Err(_) => Err(Failure {
                error: StoreError(format!("Redis {what} timed out after {:?}", self.timeout)),
                nothing_written: false,
            }),
        }
    }
}

/// A failed attempt, and whether it may be repeated without a ref.
struct Failure {
    error: StoreError,
    nothing_written: bool,
}

/// Errors that a master gives instead of running a command: the slot is
/// elsewhere or unserved, the node is loading or a replica, or no
/// connection was made at all.
fn nothing_written(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.code(),
            Some(
                "MOVED"
                    | "ASK"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "LOADING"
                    | "MASTERDOWN"
                    | "READONLY"
            )
        )
}

/// Decodes one stream entry, `[id, [field, value, …]]`, into a message.
fn message_of_entry(room: &Room, entry: &Value) -> Result<Message, StoreError> {
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
    Ok(Message {
        id,
        frame: protocol::message(room, id, field("user")?, field("text")?, ts),
    })
}

/// Key and channel names. The room sits in a hash tag, so a room's keys and
/// channel hash to one Redis Cluster slot.
#[derive(Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn meta(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:meta", self.prefix)
    }

    fn stream(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:stream", self.prefix)
    }

    fn presence(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:presence", self.prefix)
    }

    pub fn channel(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:live", self.prefix)
    }

    /// The user's length comes first so that no user and ref pair can spell
    /// the same key as another.
    fn reference(&self, room: &Room, user: &User, reference: &Ref) -> String {
        let user = user.as_str();
        format!(
            "{}:{{{room}}}:ref:{}:{user}:{}",
            self.prefix,
            user.len(),
            reference.as_str()
        )
    }

    pub fn room_of_channel(&self, channel: &str) -> Option<Room> {
        let inner = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:live")?;
        Room::parse(inner).ok()
    }
}

/// Keeps the command connection's health current for `/readyz`.
async fn watch_commands(mut conn: Commands, timeout: Duration, shared: Arc<Shared>) {
    loop {
        async_std::task::sleep(HEALTH_INTERVAL).await;
        let ping = redis::cmd("PING");
        let ok = matches!(
            async_std::future::timeout(timeout, ping.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        );
        if shared.commands.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                log::info!("Redis answers again");
            } else {
                log::warn!(
                    "Redis does not answer: sends are refused with `unavailable` until it does"
                );
            }
        }
    }
}

/// The URL without its password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_room_in_a_hash_tag() {
        let keys = Keys::new("parlor");
        let room = Room::parse("general").unwrap();
        assert_eq!(keys.meta(&room), "parlor:{general}:meta");
        assert_eq!(keys.stream(&room), "parlor:{general}:stream");
        assert_eq!(keys.channel(&room), "parlor:{general}:live");
        let user = User::parse("a:b").unwrap();
        assert_eq!(
            keys.reference(&room, &user, &Ref::parse("c").unwrap()),
            "parlor:{general}:ref:3:a:b:c"
        );
        assert_eq!(keys.room_of_channel("parlor:{general}:live"), Some(room));
        assert_eq!(keys.room_of_channel("other:{general}:live"), None);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
