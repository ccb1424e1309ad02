//! The command line: flags, their environment variables, defaults and checks.
//!
//! argh parses the flags; every flag may also come from an environment
//! variable (a flag given on the command line wins), which argh does not do by
//! itself, so each one is an `Option` here and `Config::from_flags` fills in
//! the environment and the defaults, refusing bad values with one clear line.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use argh::FromArgs;

use crate::origin::Origins;
use crate::token::Expect;

/// parlor: a chat server over WebSocket, HTTP and server-sent events. Each
/// flag can also be set by the environment variable named in its
/// description; the flag wins.
#[derive(FromArgs, Debug, Default)]
pub struct Flags {
    /// port of HTTP, WebSocket and event streams; 0 picks a free one [PORT,
    /// default 8080]
    #[argh(option)]
    pub port: Option<u16>,

    /// address to listen on [BIND, default 0.0.0.0]
    #[argh(option)]
    pub bind: Option<IpAddr>,

    /// address and port of a second listener for /readyz and /metrics,
    /// such as 127.0.0.1:9090, which then leave the public one
    /// [PARLOR_ADMIN_BIND, default: none, all on --port]
    #[argh(option)]
    pub admin_bind: Option<SocketAddr>,

    /// the Redis to share rooms and history with other instances, such as
    /// redis://127.0.0.1:6379, or seed nodes of a Redis Cluster separated by
    /// commas [REDIS_URL, default: none, the embedded in-memory store, one
    /// instance alone]
    #[argh(option)]
    pub redis: Option<String>,

    /// auto (ask the server; several URLs mean a cluster), standalone or
    /// cluster [REDIS_MODE, default auto]
    #[argh(option)]
    pub redis_mode: Option<String>,

    /// prefix of every Redis key and channel, so that several deployments can
    /// share one Redis [REDIS_PREFIX, default parlor]
    #[argh(option)]
    pub redis_prefix: Option<String>,

    /// milliseconds a Redis call may take before the request is answered
    /// `unavailable`, and a probe before its connection is replaced
    /// [REDIS_TIMEOUT_MS, default 2000]
    #[argh(option)]
    pub redis_timeout_ms: Option<u64>,

    /// milliseconds between probes (PING) of every Redis connection, so that
    /// one gone silent without closing is found [REDIS_PROBE_MS, default
    /// 1000]
    #[argh(option)]
    pub redis_probe_ms: Option<u64>,

    /// replicas a message must reach (WAIT) before it is delivered and
    /// acked, so that a failover cannot lose it; at most as many as the
    /// room's master has online, 0 to not wait [REDIS_REPLICAS, default 1]
    #[argh(option)]
    pub redis_replicas: Option<usize>,

    /// milliseconds a send keeps retrying while Redis fails over, before it
    /// is answered `unavailable` [REDIS_RETRY_MS, default 10000 on a
    /// cluster, 0 on a standalone Redis]
    #[argh(option)]
    pub redis_retry_ms: Option<u64>,

    /// messages kept per room [HISTORY, default 10000]
    #[argh(option)]
    pub history: Option<usize>,

    /// how long a room's history and state are kept after its last event
    /// (in Redis, or in memory without it), such as 30d, 12h or 90m
    /// [PARLOR_RETENTION, default 30d]
    #[argh(option)]
    pub retention: Option<String>,

    /// how long a send's `ref` is remembered, so that a retry within it is
    /// stored once, such as 5m or 30s [PARLOR_REF_MEMORY, default 5m]
    #[argh(option)]
    pub ref_memory: Option<String>,

    /// this instance's name in `welcome` frames and logs: 1 to 64 of A-Z
    /// a-z 0-9 _ - . [PARLOR_INSTANCE, default: six random hex digits]
    #[argh(option)]
    pub instance: Option<String>,

    /// largest message text in bytes [PARLOR_MAX_TEXT, default 4096]
    #[argh(option)]
    pub max_text: Option<usize>,

    /// largest WebSocket message in bytes; larger ones close the connection
    /// with 1009 [PARLOR_MAX_FRAME, default 65536]
    #[argh(option)]
    pub max_frame: Option<usize>,

    /// largest HTTP request body in bytes [PARLOR_MAX_BODY, default 65536]
    #[argh(option)]
    pub max_body: Option<usize>,

    /// most WebSocket connections and event streams this instance holds;
    /// beyond it they are refused with 503 [PARLOR_MAX_CONNECTIONS, default
    /// 20000]
    #[argh(option)]
    pub max_connections: Option<usize>,

    /// rooms one connection may join [PARLOR_MAX_ROOMS, default 100]
    #[argh(option)]
    pub max_rooms: Option<usize>,

    /// threads that run connections; where several instances share a
    /// machine, give each its share of the cores (--threads 1 for two on two
    /// cores) [PARLOR_THREADS, default: one per core]
    #[argh(option)]
    pub threads: Option<usize>,

    /// largest `limit` of a history read and `history` of a join
    /// [PARLOR_MAX_PAGE, default 1000]
    #[argh(option)]
    pub max_page: Option<usize>,

    /// most messages a join with `since` replays; where more were missed, the
    /// newest, with `truncated` [PARLOR_REPLAY_CAP, default 1000]
    #[argh(option)]
    pub replay_cap: Option<usize>,

    /// messages per second one WebSocket connection may send
    /// [PARLOR_RATE, default 100]
    #[argh(option)]
    pub rate: Option<u32>,

    /// messages one WebSocket connection may send in a burst
    /// [PARLOR_BURST, default 200]
    #[argh(option)]
    pub burst: Option<u32>,

    /// frames queued for one connection before it is closed as a slow reader
    /// with 1013 [PARLOR_OUTBOX, default 4096]
    #[argh(option)]
    pub outbox: Option<usize>,

    /// bytes of frames queued for one connection before it is closed as a
    /// slow reader with 1013; a history page is cut to a quarter of it
    /// [PARLOR_OUTBOX_BYTES, default 4194304]
    #[argh(option)]
    pub outbox_bytes: Option<usize>,

    /// milliseconds of silence from a client after which it is pinged; a
    /// client silent for two of them, or that takes no byte of what it is
    /// sent for two of them, is taken for gone and dropped
    /// [PARLOR_PING_INTERVAL_MS, default 25000]
    #[argh(option)]
    pub ping_interval_ms: Option<u64>,

    /// milliseconds after which the users of an instance that died without a
    /// goodbye leave presence [PARLOR_PRESENCE_TTL_MS, default 30000]
    #[argh(option)]
    pub presence_ttl_ms: Option<u64>,

    /// milliseconds a user whose connection ended without a goodbye (a close
    /// frame or a leave) stays in its rooms' presence before it leaves; back
    /// by then, on any instance, it never left; 0 leaves at once
    /// [PARLOR_LEAVE_GRACE_MS, default 1500]
    #[argh(option)]
    pub leave_grace_ms: Option<u64>,

    /// milliseconds a client may take to send its request headers before the
    /// connection is closed [PARLOR_HEADER_TIMEOUT_MS, default 10000]
    #[argh(option)]
    pub header_timeout_ms: Option<u64>,

    /// seconds to let connections drain on SIGTERM or SIGINT before exiting
    /// [PARLOR_DRAIN_SECONDS, default 10]
    #[argh(option)]
    pub drain_seconds: Option<u64>,

    /// log level: error, warn, info, debug or trace [PARLOR_LOG or RUST_LOG,
    /// default info]
    #[argh(option)]
    pub log_level: Option<String>,

    /// log format: text (readable), json (one object a line) or auto (text on
    /// a terminal, json otherwise) [PARLOR_LOG_FORMAT, default auto]
    #[argh(option)]
    pub log_format: Option<String>,

    /// HS256 secret: turns auth on, so every connection and request needs a
    /// token signed with it; 32 bytes or more, such as from openssl rand
    /// -base64 32 [PARLOR_SECRET, default: none, open to anyone]
    #[argh(option)]
    pub secret: Option<String>,

    /// a file that holds the secret, kept out of ps and shell history
    /// [PARLOR_SECRET_FILE]
    #[argh(option)]
    pub secret_file: Option<String>,

    /// the iss a token must carry [PARLOR_ISSUER, default: any]
    #[argh(option)]
    pub issuer: Option<String>,

    /// a name the token's aud must hold [PARLOR_AUDIENCE, default: any]
    #[argh(option)]
    pub audience: Option<String>,

    /// the URLs people open parlor at, comma-separated, such as
    /// https://chat.example.com: their pages may connect and change rooms,
    /// and requests for other host names are refused [PARLOR_PUBLIC_URL,
    /// default: none, the loopback addresses on --port]
    #[argh(option)]
    pub public_url: Option<String>,

    /// other origins whose pages may connect and change rooms,
    /// comma-separated, or *; with this or --public-url, other origins are
    /// refused [PARLOR_ALLOWED_ORIGINS, default: any origin]
    #[argh(option)]
    pub allowed_origins: Option<String>,

    /// HTTP reads of rooms (history, read markers, presence, event streams)
    /// a client address may make per second, in bursts of four times that;
    /// beyond, 429 [PARLOR_HTTP_READ_RATE, default 1000]
    #[argh(option)]
    pub http_read_rate: Option<u32>,

    /// proxies whose X-Forwarded-For names the client, comma-separated
    /// addresses [PARLOR_TRUSTED_PROXIES, default 127.0.0.1,::1]
    #[argh(option)]
    pub trusted_proxies: Option<String>,

    /// print parlor's version and exit
    #[argh(switch)]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

/// The command line did not ask to serve: what to print, and the exit code.
#[derive(Debug, PartialEq)]
pub struct Exit {
    pub output: String,
    /// 0 after `--help` (printed to stdout), 2 after a bad flag (stderr).
    pub code: u8,
}

/// Width of the usage line once wrapped.
const USAGE_WIDTH: usize = 80;

/// Most `--threads`: far beyond any machine's cores, short of a typo's.
const MAX_THREADS: usize = 1024;

impl Flags {
    /// Parses the arguments after the program's name. argh alone would exit
    /// 1 on a bad flag, where parlor promises 2, and print its usage as one
    /// line of every flag.
    pub fn parse(args: &[&str]) -> Result<Flags, Exit> {
        Flags::from_args(&["parlor"], args).map_err(|early| match early.status {
            Ok(()) => Exit {
                output: wrap_usage(&early.output),
                code: 0,
            },
            Err(()) => Exit {
                output: format!("{}\nRun parlor --help for more information.", early.output),
                code: 2,
            },
        })
    }
}

/// The help text with its `Usage:` line wrapped at `USAGE_WIDTH`, each
/// `[--flag <value>]` kept whole and later lines indented under the first
/// flag.
fn wrap_usage(help: &str) -> String {
    let mut out = String::with_capacity(help.len() + 64);
    for line in help.lines() {
        if !line.starts_with("Usage: ") || line.len() <= USAGE_WIDTH {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let words = usage_words(line);
        let command = words
            .iter()
            .take_while(|w| !w.starts_with(['[', '-', '<']))
            .count();
        let head = words[..command].join(" ");
        let indent = " ".repeat(head.len() + 1);
        let mut current = head;
        for word in &words[command..] {
            if current.len() + 1 + word.len() > USAGE_WIDTH && !current.trim().is_empty() {
                out.push_str(&current);
                out.push('\n');
                current = indent.clone();
            } else {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push_str(&current);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// A usage line's words, where `[--port <port>]` is one word.
fn usage_words(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in line.char_indices() {
        match c {
            '[' | '<' => depth += 1,
            ']' | '>' => depth -= 1,
            ' ' if depth == 0 => {
                if i > start {
                    words.push(&line[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < line.len() {
        words.push(&line[start..]);
    }
    words
}

/// What to do instead of serving.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Token(TokenFlags),
}

/// Print a token for a user, signed with the server's secret, to try auth
/// without writing code.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token")]
pub struct TokenFlags {
    /// the server's HS256 secret [PARLOR_SECRET]
    #[argh(option)]
    pub secret: Option<String>,

    /// a file that holds the server's secret [PARLOR_SECRET_FILE]
    #[argh(option)]
    pub secret_file: Option<String>,

    /// the iss claim, for a server started with --issuer [PARLOR_ISSUER]
    #[argh(option)]
    pub issuer: Option<String>,

    /// the aud claim, for a server started with --audience [PARLOR_AUDIENCE]
    #[argh(option)]
    pub audience: Option<String>,

    /// the user the token speaks for
    #[argh(option)]
    pub sub: String,

    /// rooms the user may use, comma-separated; a name ending in * is a
    /// prefix, such as team-* [default: every room]
    #[argh(option)]
    pub rooms: Option<String>,

    /// how long the token is good for: 90s, 30m, 1h, 7d [default 1h]
    #[argh(option, default = "String::from(\"1h\")")]
    pub ttl: String,

    /// make the user a moderator, who may delete anyone's messages
    #[argh(switch, long = "mod")]
    pub moderator: bool,
}

/// Which kind of Redis deployment `--redis` points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    Auto,
    Standalone,
    Cluster,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    Auto,
}

/// The resolved configuration of one instance.
#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub bind: IpAddr,
    pub admin_bind: Option<SocketAddr>,
    pub redis: Option<String>,
    pub redis_mode: RedisMode,
    pub redis_prefix: String,
    pub redis_timeout_ms: u64,
    pub redis_probe_ms: u64,
    pub redis_replicas: usize,
    /// `None`: by mode.
    pub redis_retry_ms: Option<u64>,
    pub history: usize,
    /// How long a room's keys live after its last event.
    pub retention: std::time::Duration,
    /// How long a send's `ref` is remembered.
    pub ref_memory: std::time::Duration,
    pub instance: String,
    pub max_text: usize,
    pub max_frame: usize,
    pub max_body: usize,
    pub max_connections: usize,
    pub max_rooms: usize,
    pub threads: usize,
    pub max_page: usize,
    pub replay_cap: usize,
    pub rate: u32,
    pub burst: u32,
    pub outbox: usize,
    pub outbox_bytes: usize,
    pub header_timeout_ms: u64,
    pub presence_ttl_ms: u64,
    pub leave_grace_ms: u64,
    pub ping_interval_ms: u64,
    pub drain_seconds: u64,
    pub log_level: log::LevelFilter,
    pub log_format: LogFormat,
    pub secret: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub http_read_rate: u32,
    pub trusted_proxies: Vec<IpAddr>,
    /// `--public-url`s, as given.
    pub public_urls: Vec<String>,
    /// `None`: not given.
    pub allowed_origins: Option<Vec<String>>,
}

impl Config {
    /// Fills in environment variables and defaults, and checks every value.
    /// The error is one line that names the flag and says what it takes.
    /// Long, but one field per flag in the order of `Flags`: read at once
    /// as a table, which splitting it would scatter.
    pub fn from_flags(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let config = Config {
            port: pick(flags.port, &env, "PORT", 8080)?,
            bind: pick(flags.bind, &env, "BIND", IpAddr::from([0, 0, 0, 0]))?,
            admin_bind: match flags.admin_bind {
                Some(address) => Some(address),
                None => from_env(&env, "PARLOR_ADMIN_BIND")?,
            },
            redis: flags
                .redis
                .or_else(|| env("REDIS_URL"))
                .filter(|url| !url.trim().is_empty()),
            redis_mode: match flags.redis_mode.or_else(|| env("REDIS_MODE")).as_deref() {
                None | Some("auto") => RedisMode::Auto,
                Some("standalone") => RedisMode::Standalone,
                Some("cluster") => RedisMode::Cluster,
                Some(other) => {
                    return Err(format!(
                        "--redis-mode: `{other}` is not one of auto, standalone, cluster"
                    ))
                }
            },
            redis_prefix: pick(
                flags.redis_prefix,
                &env,
                "REDIS_PREFIX",
                "parlor".to_owned(),
            )?,
            redis_timeout_ms: pick(flags.redis_timeout_ms, &env, "REDIS_TIMEOUT_MS", 2000)?,
            redis_probe_ms: pick(flags.redis_probe_ms, &env, "REDIS_PROBE_MS", 1000)?,
            redis_replicas: pick(flags.redis_replicas, &env, "REDIS_REPLICAS", 1)?,
            redis_retry_ms: match flags.redis_retry_ms {
                Some(ms) => Some(ms),
                None => from_env(&env, "REDIS_RETRY_MS")?,
            },
            history: pick(flags.history, &env, "HISTORY", 10_000)?,
            retention: crate::auth::parse_ttl(&pick(
                flags.retention,
                &env,
                "PARLOR_RETENTION",
                "30d".to_owned(),
            )?)
            .map_err(|e| e.replace("--ttl", "--retention"))?,
            ref_memory: crate::auth::parse_ttl(&pick(
                flags.ref_memory,
                &env,
                "PARLOR_REF_MEMORY",
                "5m".to_owned(),
            )?)
            .map_err(|e| e.replace("--ttl", "--ref-memory"))?,
            instance: pick(
                flags.instance,
                &env,
                "PARLOR_INSTANCE",
                format!("{:06x}", fastrand::u32(..0x100_0000)),
            )?,
            max_text: pick(flags.max_text, &env, "PARLOR_MAX_TEXT", 4096)?,
            max_frame: pick(flags.max_frame, &env, "PARLOR_MAX_FRAME", 64 * 1024)?,
            max_body: pick(flags.max_body, &env, "PARLOR_MAX_BODY", 64 * 1024)?,
            max_connections: pick(
                flags.max_connections,
                &env,
                "PARLOR_MAX_CONNECTIONS",
                20_000,
            )?,
            max_rooms: pick(flags.max_rooms, &env, "PARLOR_MAX_ROOMS", 100)?,
            threads: pick(
                flags.threads,
                &env,
                "PARLOR_THREADS",
                std::thread::available_parallelism().map_or(1, usize::from),
            )?,
            max_page: pick(flags.max_page, &env, "PARLOR_MAX_PAGE", 1000)?,
            replay_cap: pick(flags.replay_cap, &env, "PARLOR_REPLAY_CAP", 1000)?,
            rate: pick(flags.rate, &env, "PARLOR_RATE", 100)?,
            burst: pick(flags.burst, &env, "PARLOR_BURST", 200)?,
            outbox: pick(flags.outbox, &env, "PARLOR_OUTBOX", 4096)?,
            outbox_bytes: pick(flags.outbox_bytes, &env, "PARLOR_OUTBOX_BYTES", 4 << 20)?,
            ping_interval_ms: pick(
                flags.ping_interval_ms,
                &env,
                "PARLOR_PING_INTERVAL_MS",
                25_000,
            )?,
            presence_ttl_ms: pick(
                flags.presence_ttl_ms,
                &env,
                "PARLOR_PRESENCE_TTL_MS",
                30_000,
            )?,
            leave_grace_ms: pick(flags.leave_grace_ms, &env, "PARLOR_LEAVE_GRACE_MS", 1_500)?,
            header_timeout_ms: pick(
                flags.header_timeout_ms,
                &env,
                "PARLOR_HEADER_TIMEOUT_MS",
                10_000,
            )?,
            drain_seconds: pick(flags.drain_seconds, &env, "PARLOR_DRAIN_SECONDS", 10)?,
            log_level: match flags
                .log_level
                .or_else(|| env("PARLOR_LOG"))
                .or_else(|| env("RUST_LOG"))
            {
                None => log::LevelFilter::Info,
                Some(level) => level.parse().map_err(|_| {
                    format!(
                        "--log-level: `{level}` is not one of error, warn, info, debug, trace, off"
                    )
                })?,
            },
            log_format: match flags
                .log_format
                .or_else(|| env("PARLOR_LOG_FORMAT"))
                .as_deref()
            {
                None | Some("auto") => LogFormat::Auto,
                Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(format!(
                        "--log-format: `{other}` is not one of text, json, auto"
                    ))
                }
            },
            secret: Config::secret(flags.secret, flags.secret_file, &env)?,
            issuer: flags.issuer.or_else(|| env("PARLOR_ISSUER")),
            audience: flags.audience.or_else(|| env("PARLOR_AUDIENCE")),
            http_read_rate: pick(flags.http_read_rate, &env, "PARLOR_HTTP_READ_RATE", 1000)?,
            trusted_proxies: flags
                .trusted_proxies
                .or_else(|| env("PARLOR_TRUSTED_PROXIES"))
                .map_or_else(
                    || {
                        Ok(vec![
                            IpAddr::from([127, 0, 0, 1]),
                            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                        ])
                    },
                    |list| {
                        comma_list(&list)
                            .iter()
                            .map(|a| {
                                a.parse().map_err(|_| {
                                    format!("--trusted-proxies: `{a}` is not an IP address")
                                })
                            })
                            .collect()
                    },
                )?,
            public_urls: flags
                .public_url
                .or_else(|| env("PARLOR_PUBLIC_URL"))
                .map(|list| comma_list(&list))
                .unwrap_or_default(),
            allowed_origins: flags
                .allowed_origins
                .or_else(|| env("PARLOR_ALLOWED_ORIGINS"))
                .map(|list| comma_list(&list)),
        };
        config.check()?;
        Ok(config)
    }

    /// Largest page of history a client's read answers, in bytes of frames:
    /// a quarter of the outbox, so that a connection's own answers can wait
    /// at half of it and still fit.
    pub fn page_bytes(&self) -> usize {
        self.outbox_bytes / 4
    }

    /// How long a peer may take to show it is there, read what it was sent
    /// or take a byte of a write: two ping intervals.
    pub fn patience(&self) -> std::time::Duration {
        std::time::Duration::from_millis(2 * self.ping_interval_ms)
    }

    /// The secret of `--secret` or `--secret-file` (or their environment
    /// variables), shared with `parlor token`: `None` when neither is set.
    /// A file's one trailing line break is not part of the secret.
    pub fn secret(
        flag: Option<String>,
        file: Option<String>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, String> {
        let given = flag
            .or_else(|| env("PARLOR_SECRET"))
            .filter(|s| !s.is_empty());
        let file = file
            .or_else(|| env("PARLOR_SECRET_FILE"))
            .filter(|f| !f.is_empty());
        match (given, file) {
            (Some(_), Some(_)) => Err("give --secret or --secret-file, not both".into()),
            (given, None) => Ok(given),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--secret-file: cannot read {path}: {e}"))?;
                let secret = text.strip_suffix('\n').unwrap_or(&text);
                let secret = secret.strip_suffix('\r').unwrap_or(secret);
                if secret.is_empty() {
                    return Err(format!("--secret-file: {path} is empty"));
                }
                Ok(Some(secret.to_owned()))
            }
        }
    }

    /// What tokens must say beyond their signature: `--issuer`, `--audience`.
    pub fn expect(&self) -> Expect {
        Expect {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
        }
    }

    /// The origin policy of `--public-url` and `--allowed-origins`, for the
    /// instance listening on `port` (the real one once bound).
    pub fn origins(&self) -> Result<Origins, String> {
        Origins::new(
            &self.public_urls,
            self.allowed_origins.as_deref(),
            self.port,
        )
    }

    fn check(&self) -> Result<(), String> {
        self.origins()?;
        let positive = [
            ("--history", self.history),
            ("--max-text", self.max_text),
            ("--max-frame", self.max_frame),
            ("--max-body", self.max_body),
            ("--max-connections", self.max_connections),
            ("--max-rooms", self.max_rooms),
            ("--threads", self.threads),
            ("--max-page", self.max_page),
            ("--replay-cap", self.replay_cap),
            ("--rate", self.rate as usize),
            ("--burst", self.burst as usize),
            ("--header-timeout-ms", self.header_timeout_ms as usize),
            ("--presence-ttl-ms", self.presence_ttl_ms as usize),
            ("--ping-interval-ms", self.ping_interval_ms as usize),
            ("--redis-probe-ms", self.redis_probe_ms as usize),
            ("--http-read-rate", self.http_read_rate as usize),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.redis_timeout_ms == 0 {
            return Err("--redis-timeout-ms must be at least 1".into());
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.contains(['{', '}'])
            || self.redis_prefix.contains(char::is_whitespace)
        {
            return Err("--redis-prefix must be non-empty, without braces or spaces".into());
        }
        if self.threads > MAX_THREADS {
            return Err(format!("--threads must be 1 to {MAX_THREADS}"));
        }
        if self.outbox < 16 {
            return Err("--outbox must be at least 16 frames".into());
        }
        if self.outbox_bytes < 64 * 1024 {
            return Err("--outbox-bytes must be at least 65536".into());
        }
        if self.max_frame < self.max_text + 1024 {
            return Err(format!(
                "--max-frame ({}) must leave room for --max-text ({}) and the JSON around it: at least {}",
                self.max_frame,
                self.max_text,
                self.max_text + 1024
            ));
        }
        let name = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        if self.instance.is_empty() || self.instance.len() > 64 || !self.instance.bytes().all(name)
        {
            return Err(format!(
                "--instance {:?}: a name is 1 to 64 characters of A-Z a-z 0-9 _ - .",
                self.instance
            ));
        }
        if let Some(urls) = &self.redis {
            for url in urls.split(',').map(str::trim) {
                crate::redis::client(url)?;
            }
        }
        if self.retention.is_zero() {
            return Err("--retention must be at least 1s".into());
        }
        if self.ref_memory.is_zero() {
            return Err("--ref-memory must be at least 1s".into());
        }
        Ok(())
    }
}

/// The flag if given, else the environment variable if set, else the default.
/// The non-empty items of a comma-separated flag, trimmed.
fn comma_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

fn pick<T: FromStr>(
    flag: Option<T>,
    env: &impl Fn(&str) -> Option<String>,
    var: &str,
    default: T,
) -> Result<T, String> {
    match flag {
        Some(value) => Ok(value),
        None => Ok(from_env(env, var)?.unwrap_or(default)),
    }
}

/// The value of environment variable `var`, if it is set.
fn from_env<T: FromStr>(
    env: &impl Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<T>, String> {
    env(var)
        .map(|raw| {
            raw.trim()
                .parse()
                .map_err(|_| format!("{var}={raw:?} is not a valid value; see --help"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let flags = Flags::from_args(&["parlor"], args).map_err(|e| e.output)?;
        Config::from_flags(flags, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_follow_the_protocol() {
        let c = config(&[], &[]).unwrap();
        assert_eq!(
            (c.port, c.bind.to_string(), c.history),
            (8080, "0.0.0.0".into(), 10_000)
        );
        assert_eq!((c.max_text, c.max_frame, c.max_rooms), (4096, 65536, 100));
        assert_eq!(
            (c.rate, c.burst, c.max_page, c.replay_cap),
            (100, 200, 1000, 1000)
        );
        assert_eq!(c.instance.len(), 6);
    }

    #[test]
    fn flags_win_over_environment() {
        let c = config(&["--port", "8082"], &[("PORT", "9000"), ("HISTORY", "5")]).unwrap();
        assert_eq!((c.port, c.history), (8082, 5));
        let c = config(&["--threads", "2"], &[("PARLOR_THREADS", "7")]).unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(config(&[], &[("PARLOR_THREADS", "7")]).unwrap().threads, 7);
    }

    #[test]
    fn bad_values_are_one_clear_line() {
        assert_eq!(
            config(&[], &[("PORT", "eighty")]).unwrap_err(),
            "PORT=\"eighty\" is not a valid value; see --help"
        );
        assert!(config(&["--history", "0"], &[])
            .unwrap_err()
            .contains("--history"));
        assert!(config(&["--log-format", "xml"], &[])
            .unwrap_err()
            .contains("--log-format"));
        assert!(config(&["--port", "70000"], &[]).is_err());
        for threads in ["0", "1025"] {
            assert!(config(&["--threads", threads], &[])
                .unwrap_err()
                .contains("--threads"));
        }
        assert!(config(&["--max-text", "65536"], &[])
            .unwrap_err()
            .contains("--max-frame"));
        assert!(config(&["--instance", "eu west"], &[])
            .unwrap_err()
            .contains("--instance"));
        assert!(config(&["--retention", "soon"], &[])
            .unwrap_err()
            .contains("--retention"));
        assert_eq!(
            config(&[], &[("PARLOR_REF_MEMORY", "30s")])
                .unwrap()
                .ref_memory,
            std::time::Duration::from_secs(30)
        );
        assert!(config(&["--ref-memory", "0s"], &[])
            .unwrap_err()
            .contains("--ref-memory"));
        assert_eq!(
            config(&["--instance", "eu-west.1"], &[]).unwrap().instance,
            "eu-west.1"
        );
    }

    #[test]
    fn rust_log_sets_the_level() {
        assert_eq!(
            config(&[], &[("RUST_LOG", "debug")]).unwrap().log_level,
            log::LevelFilter::Debug
        );
    }

    #[test]
    fn a_bad_flag_exits_2_and_help_exits_0_with_a_readable_usage() {
        let bad = Flags::parse(&["--port", "abc"]).unwrap_err();
        assert_eq!(bad.code, 2);
        assert!(bad.output.contains("--port"), "{}", bad.output);
        assert!(bad
            .output
            .ends_with("Run parlor --help for more information."));
        let help = Flags::parse(&["--help"]).unwrap_err();
        assert_eq!(help.code, 0);
        let usage: Vec<&str> = help.output.lines().take_while(|l| !l.is_empty()).collect();
        assert!(usage.len() > 3, "wrapped: {usage:?}");
        assert!(usage.iter().all(|l| l.len() <= USAGE_WIDTH), "{usage:?}");
        assert!(usage[0].starts_with("Usage: parlor [--port <port>]"));
        assert!(usage[1].starts_with("              [--"), "{usage:?}");
        // Every flag is still there, each whole.
        let flat: Vec<&str> = usage.iter().flat_map(|l| usage_words(l.trim())).collect();
        assert!(
            flat.contains(&"[--redis <redis>]") && flat.contains(&"[--version]"),
            "{flat:?}"
        );
        assert!(Flags::parse(&["--version"]).unwrap().version);
    }
}
