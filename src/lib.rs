//! strait: change-data-capture and replication for MongoDB-family databases.
//!
//! A [`connectors::Source`] yields [`core::ChangeEvent`]s per part, [`transform`]s filter and
//! rename them, the [`engine`] routes them to every [`connectors::Sink`] that takes them
//! through ordered lanes, and tells the source which positions every sink has made durable,
//! so it can commit them.

#![warn(missing_docs)]

pub mod api;
pub(crate) mod backoff;
pub(crate) mod checkpoint;
pub(crate) mod codec;
pub mod config;
pub mod connectors;
pub(crate) mod control;
pub mod core;
pub mod engine;
pub mod error;
pub mod load;
pub(crate) mod metrics;
pub(crate) mod report;
pub mod serve;
pub(crate) mod telemetry;
pub mod transform;
pub mod two_way;
pub mod verify;
