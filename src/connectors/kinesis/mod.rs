//! Kinesis Data Streams as the hop between two DynamoDB tables (regions or accounts that
//! global tables cannot join): a sink writing each change as a record in the shape of Kinesis
//! Data Streams for DynamoDB, and a source reading such records back, every shard in lineage
//! order.

pub mod config;
pub(crate) mod sink;
pub(crate) mod source;
