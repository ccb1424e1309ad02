//! The `parlor` binary: reads the command line, starts logging, the store, the
//! feed and the listener, and turns SIGTERM and SIGINT into a drain and exit 0.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_signal::{Signal, Signals};
use futures_lite::StreamExt;

use parlor::app::App;
use parlor::config::{Command, Config, Exit, Flags, TokenFlags};
use parlor::metrics::Metrics;
use parlor::redis::RedisOptions;
use parlor::redis_log::LogOptions;
use parlor::store::Store;
use parlor::{auth, logging, server};

/// mimalloc rather than glibc's malloc, which took a fifth of parlor's CPU
/// under ingest and slows as frames of every size come and go: 3 to 7% less
/// CPU per delivery over Redis, for 0.25 KiB more per idle connection
/// (ARCHITECTURE.md, "Where the time goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for the process. mimalloc asks for them
/// on its regions, and the first touch of each then zeroes 2 MiB at once
/// (and, on a virtual machine whose memory is backed lazily, faults all of
/// it in): the first replay of 1,000 messages on an instance took 25 to
/// 42 ms for that, against 5 to 8 ms without (ARCHITECTURE.md, "Where the
/// time goes"). Small pages cost nothing measurable at steady rates.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        log::warn!("transparent huge pages stay on ({e}): a first large replay may be slower");
    }
}

/// Bytes of secret under which an HS256 secret can be guessed offline from
/// any token (RFC 7518 asks for at least the hash's 32 bytes).
const STRONG_SECRET: usize = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut flags = match Flags::parse(&args) {
        Ok(flags) => flags,
        Err(Exit { output, code: 0 }) => {
            println!("{output}");
            return ExitCode::SUCCESS;
        }
        Err(Exit { output, code }) => {
            eprintln!("{output}");
            return ExitCode::from(code);
        }
    };
    if flags.version {
        println!("parlor {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Token(token)) = flags.command.take() {
        return print_token(token);
    }
    let config = match Config::from_flags(flags, |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("parlor: {e}");
            return ExitCode::from(2);
        }
    };
    logging::start(config.log_level, config.log_format);
    no_huge_pages();
    // async-std reads its thread count once, when its runtime starts: here,
    // before any other thread exists.
    std::env::set_var("ASYNC_STD_THREAD_COUNT", config.threads.to_string());
    match async_std::task::block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once for a person at a terminal; also as a log line where the
            // log goes elsewhere (a file, a collector).
            if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
                log::error!("{e}");
            }
            eprintln!("parlor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `parlor token`: prints a signed token for an operator to try auth with.
fn print_token(flags: TokenFlags) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let secret = match Config::secret(flags.secret, flags.secret_file, &env) {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            eprintln!("parlor token: give the server's secret with --secret, --secret-file or PARLOR_SECRET");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("parlor token: {e}");
            return ExitCode::from(2);
        }
    };
    let rooms = flags.rooms.map(|list| {
        list.split(',')
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect()
    });
    let grant = |ttl| auth::Grant {
        sub: flags.sub.clone(),
        rooms: rooms.clone(),
        moderator: flags.moderator,
        ttl,
        issuer: flags.issuer.clone().or_else(|| env("PARLOR_ISSUER")),
        audience: flags.audience.clone().or_else(|| env("PARLOR_AUDIENCE")),
    };
    match auth::parse_ttl(&flags.ttl).and_then(|ttl| auth::issue(&secret, grant(ttl))) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("parlor token: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(mut config: Config) -> Result<(), String> {
    // Signals are caught before anything listens, so none is missed.
    let mut signals = Signals::new([Signal::Term, Signal::Int])
        .map_err(|e| format!("cannot catch SIGTERM and SIGINT: {e}"))?;
    let address = SocketAddr::new(config.bind, config.port);
    let listener = parlor::server::listen(address).map_err(|e| {
        format!(
            "cannot listen on {address}: {e}; is another process using the port? (--port, PORT)"
        )
    })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // --port 0 picked one: the page's own origin is on the real port.
    config.port = local.port();
    let admin = match config.admin_bind {
        Some(address) => Some(
            parlor::server::listen(address)
                .map_err(|e| format!("cannot listen on {address} (--admin-bind): {e}"))?,
        ),
        None => None,
    };

    let metrics = Metrics::default();
    let store = match &config.redis {
        None => Store::memory(config.history, config.retention, config.ref_memory),
        Some(url) => {
            let connect = RedisOptions {
                url,
                mode: config.redis_mode,
                prefix: &config.redis_prefix,
                timeout: Duration::from_millis(config.redis_timeout_ms),
                probe: Duration::from_millis(config.redis_probe_ms),
                metrics: metrics.clone(),
            };
            let log = LogOptions {
                history: config.history,
                retry: config.redis_retry_ms.map(Duration::from_millis),
                replicas: config.redis_replicas,
                retention: config.retention,
                ref_memory: config.ref_memory,
            };
            let presence_ttl = Duration::from_millis(config.presence_ttl_ms);
            Store::redis(connect, log, &config.instance, presence_ttl).await?
        }
    };
    log::info!("{}", store.log.describe());
    match config.secret.as_deref().map(str::len) {
        None => log::warn!("no --secret: parlor is open, anyone can connect as any user (set PARLOR_SECRET to require tokens)"),
        Some(n) if n < STRONG_SECRET => log::warn!(
            "the secret is {n} bytes: anyone who holds a token can guess a secret under {STRONG_SECRET} bytes offline and sign their own; make one with openssl rand -base64 32"
        ),
        Some(_) => {}
    }
    let events = store.events.clone();
    let app = Arc::new(App::new(config, store, metrics));
    let rooms = app.rooms.clone();
    events.set(move |event| rooms.on_feed(event));

    let draining = app.clone();
    async_std::task::spawn(async move {
        if let Some(Ok(signal)) = signals.next().await {
            log::info!("received {signal:?}: draining");
            draining.drain();
        }
    });

    log::info!(
        "parlor instance {} listening on http://{local} (WebSocket at ws://{local}/ws), {} thread(s)",
        app.config.instance,
        app.config.threads
    );
    if let Some(admin) = &admin {
        let address = admin.local_addr().map_err(|e| e.to_string())?;
        log::info!("/healthz, /readyz and /metrics on http://{address} (--admin-bind)");
    }
    server::run(app.clone(), listener, admin).await;
    // Departures of the connections that just closed, recorded before exit;
    // those without a goodbye after the grace, so that users who resumed
    // on another instance meanwhile never leave.
    let grace = Duration::from_millis(app.config.leave_grace_ms);
    let _ = async_std::future::timeout(grace + Duration::from_secs(2), app.presence.flush()).await;
    log::info!("stopped");
    Ok(())
}
