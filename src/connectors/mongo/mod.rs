//! MongoDB-family deployments: a source (snapshot of existing documents, then the change
//! stream) and a sink (idempotent writes, DDL, the copy's bulk inserts).

pub mod config;
pub mod connect;
pub(crate) mod driver_error;
pub(crate) mod sink;
pub(crate) mod snapshot;
pub(crate) mod source;
pub(crate) mod stream;

pub(crate) use sink::MongoSink;
pub(crate) use source::MongoSource;
