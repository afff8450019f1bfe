//! MongoDB-family deployments: a source (snapshot of existing documents, then the change
//! stream) and a sink (idempotent writes, DDL, the copy's bulk inserts).

pub mod config;
pub mod connect;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod stream;

pub use sink::{ops_for_event, ApplyCounts, MongoSink, WriteOp};
pub use source::MongoSource;
