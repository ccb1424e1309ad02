//! The state every connection and request of one instance shares, and the
//! operations that WebSocket and HTTP have in common.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;

use crate::auth::Access;
use crate::config::Config;
use crate::error::{Error, ErrorCode};
use crate::fields::Room;
use crate::flag::Flag;
use crate::lock::lock;
use crate::log::{Append, Outcome, Page, Read, Slice};
use crate::metrics::Metrics;
use crate::order::{self, ConnId};
use crate::origin::Origins;
use crate::outbox::Outbox;
use crate::presence::Presence;
use crate::protocol::Limits;
use crate::read_budget::ReadBudget;
use crate::rooms::{Rooms, RoomsSetup};
use crate::store::Store;

pub struct App {
    pub config: Config,
    /// Open, or by token when `--secret` is set.
    pub access: Access,
    /// Which pages may connect and change rooms.
    pub origins: Origins,
    /// HTTP reads left to each client address.
    pub reads: ReadBudget,
    pub limits: Limits,
    pub store: Store,
    pub rooms: Rooms,
    pub metrics: Metrics,
    pub presence: Presence,
    /// Set on SIGTERM or SIGINT: stop accepting, close connections with 1001.
    pub shutdown: Flag,
    pub connections: Connections,
}

impl App {
    pub fn new(config: Config, store: Store, metrics: Metrics) -> App {
        let presence = Presence::start(
            store.presence.clone(),
            Duration::from_millis(config.presence_ttl_ms),
            Duration::from_millis(config.leave_grace_ms),
        );
        let rooms = Rooms::new(RoomsSetup {
            log: store.log.clone(),
            feed: store.feed.clone(),
            instance: config.instance.clone(),
            presence: presence.clone(),
            limits: order::Limits {
                // A quarter of the outbox, so that a join's replay and what
                // is held back meanwhile fit in it.
                pending: (config.outbox / 4).max(1),
                replay_cap: config.replay_cap,
                page: REPAIR_PAGE,
            },
            metrics: metrics.clone(),
            timeout: Duration::from_millis(config.redis_timeout_ms),
        });
        App {
            access: Access::new(config.secret.as_deref(), config.expect()),
            origins: config.origins().expect("checked with the configuration"),
            reads: ReadBudget::new(config.http_read_rate, config.trusted_proxies.clone()),
            limits: Limits {
                max_text_bytes: config.max_text,
                max_page: config.max_page,
                default_page: 50.min(config.max_page),
            },
            config,
            store,
            rooms,
            metrics,
            presence,
            shutdown: Flag::default(),
            connections: Connections::default(),
        }
    }

    /// Whether this instance takes one more WebSocket or event stream: not
    /// while it drains (a proxy retries the 503 elsewhere), nor beyond
    /// `--max-connections`. The one rule for both.
    pub fn room_for_one_more(&self) -> Result<(), Error> {
        if self.shutdown.is_set() {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "this instance is shutting down; connect to another, or retry",
            ));
        }
        if self.connections.len() >= self.config.max_connections {
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "this instance holds {} connections, its limit; connect to another instance or retry later",
                    self.config.max_connections
                ),
            ));
        }
        Ok(())
    }

    /// Counts an upgrade until its connection is served (`Upgrading`).
    pub fn upgrading(self: &Arc<App>) -> Upgrading {
        self.connections.upgrading.fetch_add(1, Ordering::AcqRel);
        Upgrading(self.clone())
    }

    /// Starts the drain (SIGTERM, SIGINT): no new connections, and every
    /// WebSocket finishes the request in hand and closes with 1001.
    pub fn drain(&self) {
        self.shutdown.set();
        self.connections.stop_all();
    }

    /// Stores events in a room, in order: the one path of WebSocket sends
    /// and HTTP posts. The store hears what this instance saw of the room.
    pub async fn append(&self, room: &Room, batch: &[Append]) -> Result<Vec<Outcome>, Error> {
        let started = Instant::now();
        let seen = self.rooms.seen(room);
        match self.store.log.append(room, batch, &seen).await {
            Ok(outcomes) => {
                let took = started.elapsed();
                for _ in outcomes.iter().filter(|o| o.is_ok()) {
                    self.metrics.accepted(took);
                }
                Ok(outcomes)
            }
            Err(e) => {
                log::warn!("storing in room {room} failed: {e}");
                Err(e.into())
            }
        }
    }

    /// Reads history for `history` frames and HTTP reads.
    /// A client's read (`history`, `GET …/messages`), cut to what one frame
    /// of a connection's outbox may hold.
    pub async fn read(&self, room: &Room, slice: Slice) -> Result<Page, Error> {
        let from = slice.from;
        let mut page = self
            .store
            .log
            .read(room, Read::client(slice))
            .await
            .map_err(|e| {
                log::warn!("reading room {room} failed: {e}");
                Error::from(e)
            })?;
        page.fit(self.config.page_bytes(), from);
        Ok(page)
    }
}

/// How many ids one catch-up or repair read asks for.
const REPAIR_PAGE: usize = 1000;

/// The open WebSocket connections: counted for `--max-connections`, and
/// each reachable so that a drain can ask every reader to stop, and wait for
/// them to finish.
#[derive(Default)]
pub struct Connections {
    next_id: AtomicU64,
    outboxes: Mutex<Outboxes>,
    /// Notified whenever a connection goes away.
    gone: Event,
    /// Upgrades answered whose connection is not added yet: counted, so
    /// that neither the limit nor a drain misses them.
    upgrading: AtomicUsize,
}

/// An upgrade answered but not yet served; counted among the connections
/// until dropped.
pub struct Upgrading(Arc<App>);

impl Drop for Upgrading {
    fn drop(&mut self) {
        self.0.connections.upgrading.fetch_sub(1, Ordering::AcqRel);
        self.0.connections.gone.notify(usize::MAX);
    }
}

#[derive(Default)]
struct Outboxes {
    by_id: HashMap<ConnId, Outbox>,
    /// Set by `stop_all`: later connections are stopped as they arrive.
    stopping: bool,
}

impl Connections {
    pub fn add(&self, outbox: &Outbox) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut outboxes = lock(&self.outboxes);
        if outboxes.stopping {
            outbox.stop();
        }
        outboxes.by_id.insert(id, outbox.clone());
        id
    }

    pub fn remove(&self, id: ConnId) {
        lock(&self.outboxes).by_id.remove(&id);
        self.gone.notify(usize::MAX);
    }

    /// Asks every connection's reader to finish the request in hand and
    /// close (the server is draining).
    pub fn stop_all(&self) {
        let mut outboxes = lock(&self.outboxes);
        outboxes.stopping = true;
        for outbox in outboxes.by_id.values() {
            outbox.stop();
        }
    }

    /// Connections served, and upgrades on their way to being served.
    pub fn len(&self) -> usize {
        lock(&self.outboxes).by_id.len() + self.upgrading.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when no connection is left.
    pub async fn drained(&self) {
        loop {
            if self.is_empty() {
                return;
            }
            let listener = self.gone.listen();
            if self.is_empty() {
                return;
            }
            listener.await;
        }
    }
}
