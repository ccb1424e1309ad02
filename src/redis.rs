//! The Redis deployment parlor runs on: one node, or a Redis Cluster through
//! its seed nodes. Connecting checks what it is (mode, version, slots served),
//! and the resulting `Redis` is what the Redis log, feed and presence share:
//! the command connection, the key names, the topology and the health that
//! `/readyz` reports.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClientBuilder;
use redis::io::tcp::TcpSettings;
use redis::{Client, ConnectionAddr, RedisError};

use crate::config::RedisMode;
use crate::lock::lock;
use crate::log::StoreError;
use crate::metrics::Metrics;
use crate::redis_commands::{Commands, Connect, Connection};
use crate::redis_keys::Keys;
use crate::redis_writers::Writers;
use crate::resp::Login;
use crate::topology::Topology;

/// What connecting needs to know.
pub struct RedisOptions<'a> {
    /// One URL, or several seed nodes of a cluster separated by commas.
    pub url: &'a str,
    pub mode: RedisMode,
    pub prefix: &'a str,
    pub timeout: Duration,
    /// How often every connection is probed.
    pub probe: Duration,
    pub metrics: Metrics,
}

pub struct Redis {
    pub commands: Commands,
    /// The connections appends go over, one per master.
    pub writers: Writers,
    pub keys: Keys,
    /// How long any Redis call may take.
    pub timeout: Duration,
    /// How often every connection is probed.
    pub probe: Duration,
    pub cluster: bool,
    pub health: Arc<Health>,
    /// The URL without its password, for logs.
    pub url: String,
    /// The URL's user, password and database, for parlor's own
    /// connections (the live feed's and the appends').
    pub login: Login,
}

/// What the Redis parts and their background tasks share: readiness for
/// `/readyz`, the metrics, and the topology the feed keeps current.
pub struct Health {
    commands: AtomicBool,
    feed: AtomicBool,
    pub metrics: Metrics,
    topology: Mutex<Arc<Topology>>,
}

impl Health {
    pub fn topology(&self) -> Arc<Topology> {
        lock(&self.topology).clone()
    }

    pub fn set_topology(&self, topology: Topology) {
        *lock(&self.topology) = Arc::new(topology);
    }

    pub fn set_feed(&self, ready: bool) {
        self.feed.store(ready, Ordering::Release);
    }

    pub fn feed_ready(&self) -> bool {
        self.feed.load(Ordering::Acquire)
    }

    pub fn commands_ready(&self) -> bool {
        self.commands.load(Ordering::Acquire)
    }
}

impl Redis {
    /// Connects, checks that the server answers, is Redis 7 or later and
    /// (for a cluster) serves every slot, and starts the health check.
    pub async fn connect(options: RedisOptions<'_>) -> Result<Redis, String> {
        let RedisOptions {
            url,
            mode,
            prefix,
            timeout,
            probe,
            metrics,
        } = options;
        let shown = redact(url);
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let clients = clients(&urls)?;
        let cluster = is_cluster(mode, &clients, &shown).await?;
        let commands = command_connection(cluster, &urls, &clients[0], timeout, &shown).await?;
        let version = version(&commands, cluster, &shown).await?;
        let topology = commands
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
        let login = Login::of(clients[0].get_connection_info().redis_settings());
        let health = Arc::new(Health {
            commands: AtomicBool::new(true),
            feed: AtomicBool::new(true),
            metrics,
            topology: Mutex::new(Arc::new(topology)),
        });
        async_std::task::spawn(watch_commands(
            commands.clone(),
            probe,
            timeout,
            health.clone(),
        ));
        Ok(Redis {
            commands,
            writers: Writers::new(login.clone()),
            keys: Keys::new(prefix),
            timeout,
            probe,
            cluster,
            health,
            url: shown,
            login,
        })
    }

    /// Whether commands are answered and the live feed is connected.
    pub fn is_ready(&self) -> bool {
        self.health.commands_ready() && self.health.feed_ready()
    }

    /// Runs a Redis call with the time limit, telling apart the failures
    /// after which nothing was written: the request never reached a master
    /// that could take it.
    pub async fn attempt<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failure> {
        let result = async_std::future::timeout(self.timeout, call).await;
        if !matches!(result, Ok(Ok(_))) {
            self.health.metrics.redis_error();
        }
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                log::warn!("Redis {what} failed: {e}");
                Err(Failure {
                    nothing_written: nothing_written(&e),
                    error: StoreError(format!("Redis {what} failed: {e}")),
                })
            }
            Err(_) => {
                log::warn!("Redis {what} timed out after {:?}", self.timeout);
                Err(Failure {
                    error: StoreError(format!("Redis {what} timed out after {:?}", self.timeout)),
                    nothing_written: false,
                })
            }
        }
    }

    /// `attempt`, when it does not matter whether something was written.
    pub async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.attempt(what, call)
            .await
            .map_err(|failure| failure.error)
    }
}

/// A failed attempt, and whether it may be repeated without a ref.
pub struct Failure {
    pub error: StoreError,
    pub nothing_written: bool,
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
                    | "NOSCRIPT"
            )
        )
}

/// A client per URL; only `redis://host:port` URLs are taken (the feed
/// connects over TCP itself).
fn clients(urls: &[&str]) -> Result<Vec<Client>, String> {
    urls.iter().map(|one| client(one)).collect()
}

/// One `--redis` URL as a client, or what a valid one looks like. Checked
/// with the other flags at start, and again here. Its connections (and the
/// append connections made from its settings) send each request at once:
/// with Nagle's algorithm, a request written while an earlier one is still
/// unacknowledged waits for that ACK, which Redis may delay, so pipelined
/// appends stalled by tens of milliseconds.
pub fn client(url: &str) -> Result<Client, String> {
    const HINT: &str = "write redis://host:port, with redis://user:password@host:port/db for a password and a database, or several such URLs separated by commas for the seed nodes of a Redis Cluster";
    let shown = redact(url);
    let info = Client::open(url)
        .map_err(|_| format!("--redis {shown}: not a Redis URL; {HINT}"))?
        .get_connection_info()
        .clone()
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    if !matches!(info.addr(), ConnectionAddr::Tcp(..)) {
        return Err(format!(
            "--redis {shown}: only redis:// URLs over TCP are supported; {HINT}"
        ));
    }
    Client::open(info).map_err(|e| format!("--redis {shown}: {e}"))
}

/// Whether to speak to a cluster: as `--redis-mode` says, or by asking.
async fn is_cluster(mode: RedisMode, clients: &[Client], shown: &str) -> Result<bool, String> {
    match mode {
        RedisMode::Cluster => Ok(true),
        RedisMode::Standalone if clients.len() > 1 => Err(format!(
            "--redis {shown}: several URLs are seed nodes of a Redis Cluster, but --redis-mode is standalone"
        )),
        RedisMode::Standalone => Ok(false),
        RedisMode::Auto if clients.len() > 1 => Ok(true),
        RedisMode::Auto => {
            let mut conn = clients[0]
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| {
                    format!("cannot reach Redis at {shown}: {e}; is it running? (--redis, REDIS_URL)")
                })?;
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("Redis at {shown} does not answer INFO: {e}"))?;
            Ok(info.contains("cluster_enabled:1"))
        }
    }
}

/// The command connection: the crate's cluster connection, or a
/// connection manager to the one node; the same `connect` opens its
/// replacements.
async fn command_connection(
    cluster: bool,
    urls: &[&str],
    first: &Client,
    timeout: Duration,
    shown: &str,
) -> Result<Commands, String> {
    let connect: Connect = if cluster {
        let client = ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
            .map_err(|e| format!("--redis {shown}: {e}"))?;
        let shown = shown.to_owned();
        Arc::new(move || {
            let (client, shown) = (client.clone(), shown.clone());
            Box::pin(async move {
                let conn = client.get_async_connection().await.map_err(|e| {
                    format!("cannot reach the Redis Cluster at {shown}: {e}; are its nodes running? (--redis, REDIS_URL)")
                })?;
                Ok(Connection::Cluster(conn))
            })
        })
    } else {
        let addr = node_addr(first);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let (first, shown) = (first.clone(), shown.to_owned());
        Arc::new(move || {
            let (first, config) = (first.clone(), config.clone());
            let (shown, addr) = (shown.clone(), addr.clone());
            Box::pin(async move {
                let conn = first
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| {
                        format!("cannot reach Redis at {shown}: {e}; is it running? (--redis, REDIS_URL)")
                    })?;
                Ok(Connection::Standalone { conn, addr })
            })
        })
    };
    Commands::open(connect).await
}

/// `host:port` of the node a client connects to.
pub fn node_addr(client: &Client) -> String {
    let ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr().clone() else {
        unreachable!("checked by clients()");
    };
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The server's version, refused below 7 (sharded Pub/Sub, script flags).
async fn version(commands: &Commands, cluster: bool, shown: &str) -> Result<String, String> {
    // Asked of one node: on a cluster, INFO would go to every master.
    let info: String = commands
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
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|major| major < 7) {
        return Err(format!(
            "Redis at {shown} is version {version}; parlor needs Redis 7 or later (sharded Pub/Sub, script flags)"
        ));
    }
    Ok(version)
}

/// Keeps the command connection's health current for `/readyz`, and
/// replaces a connection that does not answer a `PING` in time: one that
/// went silent without closing would otherwise hold every command until
/// the kernel gives up on it, a quarter of an hour later.
async fn watch_commands(
    commands: Commands,
    probe: Duration,
    timeout: Duration,
    health: Arc<Health>,
) {
    loop {
        async_std::task::sleep(probe).await;
        let ok = matches!(
            async_std::future::timeout(timeout, commands.ping()).await,
            Ok(Ok(()))
        );
        if !ok {
            health.metrics.redis_silent();
            match async_std::future::timeout(timeout, commands.replace()).await {
                Ok(Ok(())) => log::info!(
                    "Redis did not answer a PING within {timeout:?}: opened a new command connection"
                ),
                Ok(Err(e)) => log::debug!("no new Redis command connection yet: {e}"),
                Err(_) => log::debug!("no new Redis command connection within {timeout:?}"),
            }
        }
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

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
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
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
