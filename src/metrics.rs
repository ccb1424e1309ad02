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
    publish_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("parlor");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let joins = Counter::default();
        registry.register("joins", "Room joins completed", joins.clone());
        let accepted = Counter::default();
        registry.register(
            "messages_accepted",
            "Messages stored and acked, over WebSocket and HTTP",
            accepted.clone(),
        );
        let refused = Family::<CodeLabel, Counter>::default();
        registry.register(
            "requests_refused",
            "Requests answered with an error, by error code",
            refused.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "deliveries",
            "Live messages queued to local connections",
            deliveries.clone(),
        );
        let replays = Counter::default();
        registry.register("replays", "Join replays completed", replays.clone());
        let replayed_messages = Counter::default();
        registry.register(
            "replayed_messages",
            "Messages sent in join replays",
            replayed_messages.clone(),
        );
        let truncated_replays = Counter::default();
        registry.register(
            "truncated_replays",
            "Join replays that could not cover everything the client missed",
            truncated_replays.clone(),
        );
        let gap_repairs = Counter::default();
        registry.register(
            "gap_repairs",
            "Times a room's live feed skipped ids and was repaired from history",
            gap_repairs.clone(),
        );
        let slow_closes = Counter::default();
        registry.register(
            "slow_reader_closes",
            "Connections closed with 1013 because they fell too far behind",
            slow_closes.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "redis_errors",
            "Redis calls that failed or timed out",
            redis_errors.clone(),
        );
        let redis_reconnects = Counter::default();
        registry.register(
            "redis_feed_reconnects",
            "Times the Redis live feed connected again after losing its connection",
            redis_reconnects.clone(),
        );
        let publish_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "publish_seconds",
            "Time to store a message, from request to ack",
            publish_seconds.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            connections,
            joins,
            accepted,
            refused,
            deliveries,
            replays,
            replayed_messages,
            truncated_replays,
            gap_repairs,
            slow_closes,
            redis_errors,
            redis_reconnects,
            publish_seconds,
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
