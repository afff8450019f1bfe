//! DynamoDB: a source reading a table's DynamoDB Streams shards (after a parallel `Scan` for the
//! full sync) and a sink writing items, with last-writer-wins conditions when asked.
//!
//! Items travel in strait's events in their DynamoDB JSON shape ([`item`]), so a table copied
//! to another table is exact for every attribute type.

pub mod config;
pub(crate) mod item;
pub(crate) mod mapping;
pub(crate) mod record;
pub(crate) mod sink;
pub(crate) mod source;
