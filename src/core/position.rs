//! Source positions. A position names its part (partition) of the source: a change stream has
//! one part, a Kafka topic has one per partition, DynamoDB Streams and Kinesis one per shard.
//! Each part has its own ack window, and positions of one part are committed in order.

use std::fmt;
use std::sync::Arc;

use bson::{RawDocumentBuf, Timestamp};

/// One part of a source, by name (`stream` for a change stream, `topic[3]` for a Kafka
/// partition).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartId(Arc<str>);

impl PartId {
    /// A part by name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in one part of a source: the source's own token (a resume token, a Kafka offset
/// document, a shard sequence number) and, when known, the time of the change there.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// The part this position is in.
    pub part: PartId,
    /// The source's token, opaque to everything but the source.
    pub token: RawDocumentBuf,
    /// Cluster time of the change (or the record's time), when known.
    pub time: Option<Timestamp>,
}
