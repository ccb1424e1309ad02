//! The instance's counters, exported at `/metrics` in the Prometheus text format.
//!
//! One cheap-clone handle is passed to every part that counts something; the
//! counters are atomics, so counting never takes a lock on the delivery path.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::ErrorCode;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    connections: Gauge,
    joins: Counter,
    accepted: Counter,
    refused: Family<CodeLabel, Counter>,
    deliveries: Counter,
    replays: Counter,
    replayed_messages: Counter,
    truncated_replays: Counter,
    gap_repairs: Counter,
    slow_closes: Counter,
    redis_errors: Counter,
    redis_reconnects: Counter,
    redis_silent: Counter,
    publish_seconds: Histogram,
}

/// Registers a metric and hands it back.
fn add<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut r = Registry::with_prefix("parlor");
        let counter = Counter::default;
        let publish_buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Metrics(Arc::new(Inner {
            connections: add(
                &mut r,
                "connections",
                "Open WebSocket connections and event streams",
                Gauge::default(),
            ),
            joins: add(&mut r, "joins", "Room joins completed", counter()),
            accepted: add(
                &mut r,
                "messages_accepted",
                "Messages stored and acked, over WebSocket and HTTP",
                counter(),
            ),
            refused: add(
                &mut r,
                "requests_refused",
                "Requests answered with an error, by error code",
                Family::default(),
            ),
            deliveries: add(
                &mut r,
                "deliveries",
                "Live messages queued to local connections",
                counter(),
            ),
            replays: add(&mut r, "replays", "Join replays completed", counter()),
            replayed_messages: add(
                &mut r,
                "replayed_messages",
                "Messages sent in join replays",
                counter(),
            ),
            truncated_replays: add(
                &mut r,
                "truncated_replays",
                "Join replays that could not cover everything the client missed",
                counter(),
            ),
            gap_repairs: add(
                &mut r,
                "gap_repairs",
                "Times a room's live feed skipped ids and was repaired from history",
                counter(),
            ),
            slow_closes: add(
                &mut r,
                "slow_reader_closes",
                "Connections closed with 1013 because they fell too far behind",
                counter(),
            ),
            redis_errors: add(
                &mut r,
                "redis_errors",
                "Redis calls that failed or timed out",
                counter(),
            ),
            redis_reconnects: add(
                &mut r,
                "redis_feed_reconnects",
                "Times the Redis live feed connected again after losing its connection",
                counter(),
            ),
            redis_silent: add(
                &mut r,
                "redis_silent_connections",
                "Redis connections that left a probe or request unanswered in time and were replaced",
                counter(),
            ),
            publish_seconds: add(
                &mut r,
                "publish_seconds",
                "Time to store a message, from request to ack",
                Histogram::new(publish_buckets),
            ),
            registry: r,
        }))
    }
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.0.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.0.connections.dec();
    }

    pub fn accepted(&self, took: Duration) {
        self.0.accepted.inc();
        self.0.publish_seconds.observe(took.as_secs_f64());
    }

    pub fn refused(&self, code: ErrorCode) {
        self.0
            .refused
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn delivered(&self, count: u64) {
        self.0.deliveries.inc_by(count);
    }

    pub fn replayed(&self, messages: usize, truncated: bool) {
        self.0.joins.inc();
        self.0.replays.inc();
        self.0.replayed_messages.inc_by(messages as u64);
        if truncated {
            self.0.truncated_replays.inc();
        }
    }

    pub fn gap(&self) {
        self.0.gap_repairs.inc();
    }

    pub fn slow_close(&self) {
        self.0.slow_closes.inc();
    }

    pub fn redis_error(&self) {
        self.0.redis_errors.inc();
    }

    /// A Redis connection went silent and was replaced.
    pub fn redis_silent(&self) {
        self.0.redis_silent.inc();
    }

    pub fn redis_reconnect(&self) {
        self.0.redis_reconnects.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.0.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
