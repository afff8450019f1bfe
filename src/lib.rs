//! strait: change-data-capture and replication for MongoDB-family databases.
//!
//! A [`connectors::Source`] yields [`core::ChangeEvent`]s per part, [`transform`]s filter and
//! rename them, the [`engine`] routes them to every [`connectors::Sink`] that takes them
//! through ordered lanes, and tells the source which positions every sink has made durable,
//! so it can commit them.

#![warn(missing_docs)]

pub mod api;
pub mod backoff;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod connectors;
pub mod control;
pub mod core;
pub mod engine;
pub mod error;
pub mod report;
pub mod telemetry;
pub mod transform;
pub mod verify;
