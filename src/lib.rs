//! strait: change-data-capture and replication for MongoDB-family databases.
//!
//! A source produces [`event::ChangeEvent`]s, [`transform`]s filter and rename them, the
//! [`pipeline`] spreads them over ordered lanes, a [`sink`] writes them, and the
//! [`checkpoint`] follows what the sink has made durable.

#![warn(missing_docs)]

pub mod api;
pub mod backoff;
pub mod checkpoint;
pub mod config;
pub mod connect;
pub mod control;
pub mod error;
pub mod event;
pub mod format;
pub mod kafka;
pub mod pipeline;
pub mod report;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod transform;
pub mod verify;
