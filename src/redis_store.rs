//! The Redis store: history in a Stream per room, ids and epochs in a small
//! hash, the live feed over Pub/Sub, so that any number of instances share
//! rooms through one Redis.
//!
//! Key layout (ARCHITECTURE.md has the table): every key and the channel of a
//! room carry the room in a hash tag, `{room}`, so they live in one slot and
//! a Redis Cluster can come later without moving data.
//!
//! Two connections: commands go over a multiplexed connection that the redis
//! crate reconnects by itself; the live feed has a connection of its own,
//! owned by a subscriber task here. The set of rooms this instance wants is
//! kept by that task, not by the crate, so that after any disconnection it
//! subscribes them all again itself and tells the rooms to repair from the
//! streams (`FeedEvent::Resync`): nothing published while the feed was down
//! is skipped.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{Client, Script, Value};

use crate::config::RedisMode;
use crate::fields::{Ref, Room, User};
use crate::metrics::Metrics;
use crate::protocol;
use crate::store::{
    Delivery, Draft, End, Epoch, FeedEvent, Message, Page, Signal, Slice, StoreError, Stored,
    REF_MEMORY,
};

/// How often the command connection is checked for readiness.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Wait between attempts to bring the live feed back.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// What the Redis store needs to know.
pub struct RedisOptions<'a> {
    pub url: &'a str,
    pub mode: RedisMode,
    pub prefix: &'a str,
    pub history: usize,
    pub timeout: Duration,
    pub instance: &'a str,
    /// How long a presence entry lives without a heartbeat.
    pub presence_ttl: Duration,
    pub metrics: Metrics,
}

pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    history: usize,
    timeout: Duration,
    publish: Script,
    read: Script,
    presence: Script,
    /// This instance's name, in its presence entries.
    instance: String,
    presence_ttl: Duration,
    metrics: Metrics,
    subscriber: async_channel::Sender<Command>,
    health: Arc<Health>,
    url: String,
}

/// What `/readyz` reports (both connections must work), and the metrics
/// the connections' tasks keep.
struct Health {
    commands: AtomicBool,
    feed: AtomicBool,
    metrics: Metrics,
}

enum Command {
    Subscribe(Room, async_channel::Sender<Result<(), StoreError>>),
    Unsubscribe(Room),
}

impl RedisStore {
    /// Connects to Redis at `url`, checks that it answers, and starts the
    /// subscriber and health tasks. Returns the store and its live feed.
    pub async fn connect(
        options: RedisOptions<'_>,
    ) -> Result<(RedisStore, async_channel::Receiver<FeedEvent>), String> {
        let RedisOptions {
            url,
            mode,
            prefix,
            history,
            timeout,
            instance,
            presence_ttl,
            metrics,
        } = options;
        let shown = redact(url);
        if url.contains(',') || mode == RedisMode::Cluster {
            return Err(format!(
                "--redis {shown}: a Redis Cluster (several seed URLs, or --redis-mode cluster) is not supported yet; give one standalone Redis"
            ));
        }
        let client = Client::open(url).map_err(|e| format!("--redis {shown}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(RECONNECT_MAX);
        let mut conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| {
                format!("cannot reach Redis at {shown}: {e}; is it running? (--redis, REDIS_URL)")
            })?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| format!("Redis at {shown} does not answer PING: {e}"))?;
        if mode == RedisMode::Auto {
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("Redis at {shown} does not answer INFO: {e}"))?;
            if info.contains("cluster_enabled:1") {
                return Err(format!(
                    "the Redis at {shown} is a cluster node, and a Redis Cluster is not supported yet; give one standalone Redis"
                ));
            }
        }

        let keys = Keys {
            prefix: prefix.to_owned(),
        };
        // The live feed is connected before the store is used, so the first
        // joins find it ready.
        let first = connect_feed(&client, &keys, &HashSet::new(), timeout)
            .await
            .map_err(|e| format!("cannot open the Redis live feed at {shown}: {e}"))?;
        let (feed_tx, feed) = async_channel::bounded(1024);
        let (subscriber, commands) = async_channel::unbounded();
        let health = Arc::new(Health {
            commands: AtomicBool::new(false),
            feed: AtomicBool::new(false),
            metrics: metrics.clone(),
        });
        health.commands.store(true, Ordering::Release);
        health.feed.store(true, Ordering::Release);
        async_std::task::spawn(run_subscriber(
            client,
            keys.clone(),
            timeout,
            first,
            commands,
            feed_tx,
            health.clone(),
        ));
        async_std::task::spawn(watch_commands(conn.clone(), timeout, health.clone()));
        let store = RedisStore {
            conn,
            keys,
            history,
            timeout,
            publish: Script::new(include_str!("publish.lua")),
            read: Script::new(include_str!("read.lua")),
            presence: Script::new(include_str!("presence.lua")),
            instance: instance.to_owned(),
            presence_ttl,
            metrics: metrics.clone(),
            subscriber,
            health,
            url: shown,
        };
        Ok((store, feed))
    }

    pub async fn publish(&self, draft: Draft) -> Result<Stored, StoreError> {
        let room = &draft.room;
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
            .arg(self.keys.channel(room))
            .arg(Epoch::random().as_str())
            .arg(prefix)
            .arg(suffix);
        let mut conn = self.conn.clone();
        let (epoch, id, ts): (String, u64, u64) = self
            .bounded("publish", invocation.invoke_async(&mut conn))
            .await?;
        Ok(Stored {
            epoch: Epoch::from(epoch),
            id,
            ts,
        })
    }

    /// Publishes a signal on the room's channel as `~origin frame`; the `~`
    /// sets it apart from messages, whose payload starts with their epoch.
    pub async fn signal(&self, signal: Signal) -> Result<(), StoreError> {
        let payload = format!("~{} {}", signal.origin, signal.frame.as_str());
        let mut conn = self.conn.clone();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.keys.channel(&signal.room)).arg(payload);
        self.bounded("signal", publish.query_async::<i64>(&mut conn))
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
        self.health.commands.load(Ordering::Acquire) && self.health.feed.load(Ordering::Acquire)
    }

    pub fn describe(&self) -> String {
        format!(
            "Redis store (standalone) at {}, key prefix {:?}: rooms are shared with every instance on it",
            self.url, self.keys.prefix
        )
    }

    /// Runs a Redis call with the store's time limit.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = async_std::future::timeout(self.timeout, call).await;
        if !matches!(result, Ok(Ok(_))) {
            self.metrics.redis_error();
        }
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError(format!("Redis {what} failed: {e}"))),
            Err(_) => Err(StoreError(format!(
                "Redis {what} timed out after {:?}",
                self.timeout
            ))),
        }
    }
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
struct Keys {
    prefix: String,
}

impl Keys {
    fn meta(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:meta", self.prefix)
    }

    fn stream(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:stream", self.prefix)
    }

    fn presence(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:presence", self.prefix)
    }

    fn channel(&self, room: &Room) -> String {
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

    fn room_of_channel(&self, channel: &str) -> Option<Room> {
        let inner = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:live")?;
        Room::parse(inner).ok()
    }
}

/// Keeps the command connection's health current for `/readyz`.
async fn watch_commands(mut conn: ConnectionManager, timeout: Duration, health: Arc<Health>) {
    loop {
        async_std::task::sleep(HEALTH_INTERVAL).await;
        let ping = redis::cmd("PING");
        let ok = bounded(timeout, ping.query_async::<String>(&mut conn))
            .await
            .is_ok();
        if health.commands.swap(ok, Ordering::AcqRel) != ok {
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

/// Owns the live feed's connection: subscribes the rooms this instance wants,
/// forwards what Redis publishes to the rooms, and after any disconnection
/// connects again, subscribes everything again and asks for a resync.
async fn run_subscriber(
    client: Client,
    keys: Keys,
    timeout: Duration,
    first: FeedConnection,
    commands: async_channel::Receiver<Command>,
    feed: async_channel::Sender<FeedEvent>,
    health: Arc<Health>,
) {
    let mut wanted: HashSet<Room> = HashSet::new();
    let mut backoff = RECONNECT_MIN;
    let mut first = Some(first);
    loop {
        let reconnecting = first.is_none();
        let session = match first.take() {
            Some(connection) => Ok(connection),
            None => connect_feed(&client, &keys, &wanted, timeout).await,
        };
        let Ok((mut sink, mut stream)) = session else {
            if let Err(e) = session {
                // Said once per outage; the retries after it are debug lines.
                if backoff == RECONNECT_MIN {
                    log::warn!("Redis live feed unavailable ({e}); retrying until it is back");
                } else {
                    log::debug!("Redis live feed still unavailable ({e}); retrying in {backoff:?}");
                }
            }
            // Requests that came meanwhile are answered rather than left waiting.
            let wait = async_std::task::sleep(backoff);
            let until = async {
                wait.await;
                None
            };
            let mut until = std::pin::pin!(until);
            loop {
                let next = async { Some(commands.recv().await) }
                    .or(until.as_mut())
                    .await;
                match next {
                    None => break,
                    Some(Err(_)) => return,
                    Some(Ok(command)) => refuse_while_down(command, &mut wanted),
                }
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
            continue;
        };
        backoff = RECONNECT_MIN;
        health.feed.store(true, Ordering::Release);
        if reconnecting {
            health.metrics.redis_reconnect();
            log::info!(
                "Redis live feed is back: {} room(s) subscribed again and being repaired",
                wanted.len()
            );
            // Anything published while the feed was down is read from the streams.
            if feed.send(FeedEvent::Resync).await.is_err() {
                return;
            }
        }

        loop {
            let next = async { Event::Published(stream.next().await) }
                .or(async { Event::Command(commands.recv().await.ok()) })
                .await;
            match next {
                Event::Published(Some(msg)) => {
                    if let Some(event) =
                        event_of(&keys, msg.get_channel_name(), msg.get_payload_bytes())
                    {
                        if feed.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                Event::Published(None) => break,
                Event::Command(None) => return,
                Event::Command(Some(Command::Subscribe(room, reply))) => {
                    let result = bounded(timeout, sink.subscribe(keys.channel(&room))).await;
                    let failed = result.is_err();
                    wanted.insert(room);
                    let _ = reply.try_send(result);
                    if failed {
                        break;
                    }
                }
                Event::Command(Some(Command::Unsubscribe(room))) => {
                    wanted.remove(&room);
                    if bounded(timeout, sink.unsubscribe(keys.channel(&room)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        health.feed.store(false, Ordering::Release);
        log::warn!("Redis live feed disconnected; reconnecting");
    }
}

enum Event {
    Published(Option<redis::Msg>),
    Command(Option<Command>),
}

type FeedConnection = (PubSubSink, PubSubStream);

/// Opens the feed connection and subscribes every wanted room on it.
async fn connect_feed(
    client: &Client,
    keys: &Keys,
    wanted: &HashSet<Room>,
    timeout: Duration,
) -> Result<FeedConnection, StoreError> {
    let pubsub = bounded(timeout, client.get_async_pubsub()).await?;
    let (mut sink, stream) = pubsub.split();
    let channels: Vec<String> = wanted.iter().map(|room| keys.channel(room)).collect();
    for chunk in channels.chunks(500) {
        bounded(timeout, sink.subscribe(chunk)).await?;
    }
    Ok((sink, stream))
}

/// While the feed is down, a subscribe cannot be confirmed: the join that
/// asked fails with `unavailable` (the client retries), and the room is still
/// remembered, since its member will leave it and unsubscribe in turn.
fn refuse_while_down(command: Command, wanted: &mut HashSet<Room>) {
    match command {
        Command::Subscribe(room, reply) => {
            wanted.insert(room);
            let _ = reply.try_send(Err(StoreError(
                "the Redis live feed is reconnecting".into(),
            )));
        }
        Command::Unsubscribe(room) => {
            wanted.remove(&room);
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match async_std::future::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(StoreError(e.to_string())),
        Err(_) => Err(StoreError(format!(
            "Redis did not answer within {timeout:?}"
        ))),
    }
}

/// Decodes a published payload: `epoch id frame` for a message, `~origin
/// frame` for a signal.
fn event_of(keys: &Keys, channel: &str, payload: &[u8]) -> Option<FeedEvent> {
    let room = keys.room_of_channel(channel)?;
    let payload = std::str::from_utf8(payload).ok()?;
    if let Some(signal) = payload.strip_prefix('~') {
        let (origin, frame) = signal.split_once(' ')?;
        return Some(FeedEvent::Signal(Signal {
            room,
            origin: origin.to_owned(),
            frame: frame.to_owned().into(),
        }));
    }
    let mut parts = payload.splitn(3, ' ');
    let epoch = parts.next()?;
    let id: u64 = parts.next()?.parse().ok()?;
    let frame = parts.next()?;
    Some(FeedEvent::Delivery(Delivery {
        room,
        epoch: Epoch::from(epoch.to_owned()),
        message: Message {
            id,
            frame: frame.to_owned().into(),
        },
    }))
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
        let keys = Keys {
            prefix: "parlor".into(),
        };
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
    fn payloads_decode_into_deliveries_and_signals() {
        let keys = Keys { prefix: "p".into() };
        let payload = br#"k3j2xq0a 42 {"type":"message","id":42}"#;
        let Some(FeedEvent::Delivery(d)) = event_of(&keys, "p:{r}:live", payload) else {
            panic!("a message payload decodes into a delivery");
        };
        assert_eq!(
            (d.room.as_str(), d.epoch.as_str(), d.message.id),
            ("r", "k3j2xq0a", 42)
        );
        assert_eq!(d.message.frame.as_str(), r#"{"type":"message","id":42}"#);
        let payload = br#"~inst/7 {"type":"typing","room":"r","user":"bob"}"#;
        let Some(FeedEvent::Signal(signal)) = event_of(&keys, "p:{r}:live", payload) else {
            panic!("a ~ payload decodes into a signal");
        };
        assert_eq!(signal.origin, "inst/7");
        assert_eq!(
            signal.frame.as_str(),
            r#"{"type":"typing","room":"r","user":"bob"}"#
        );
        assert!(event_of(&keys, "p:{r}:live", b"garbage").is_none());
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
