//! parlor: a chat server that many instances can run side by side.
//!
//! Clients speak WebSocket and HTTP (PROTOCOL.md) to any instance; a message
//! is stored under the next id of its room and fanned out to the room's
//! members. ARCHITECTURE.md has the map of the modules below.

pub mod app;
pub mod append_groups;
pub mod auth;
pub mod bucket;
pub mod config;
pub mod connection;
pub mod error;
pub mod feed;
pub mod fields;
pub mod flag;
pub mod lock;
pub mod log;
pub mod logging;
pub mod memory_feed;
pub mod memory_log;
pub mod memory_presence;
pub mod metrics;
pub mod order;
pub mod origin;
pub mod outbox;
pub mod page;
pub mod patient_io;
pub mod presence;
pub mod presence_queue;
pub mod presence_store;
pub mod protocol;
pub mod query;
pub mod read_budget;
pub mod redis;
pub mod redis_commands;
pub mod redis_feed;
pub mod redis_keys;
pub mod redis_log;
pub mod redis_pipe;
pub mod redis_presence;
pub mod redis_writers;
pub mod resp;
pub mod room_api;
pub mod rooms;
pub mod routes;
pub mod sends;
pub mod server;
pub mod sse;
pub mod store;
pub mod token;
pub mod topology;
pub mod wire;
pub mod writer;
pub mod ws_frame;
