//! The pipeline's error type and its classification.
//!
//! Every error says who must act (the user, an external system, or us) and whether retrying
//! can help. Retry loops key off [`Error::is_retryable`], never off message text.

use crate::connectors::mongo::driver_error::is_transient;

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;

/// Which side of a pipeline an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The source deployment.
    Source,
    /// The sink deployment.
    Sink,
    /// The checkpoint store.
    Checkpoint,
    /// The control database of `strait serve` (pipeline configs, workers, leases).
    Control,
    /// Where refused changes are kept (a DynamoDB or Kinesis source's SQS queue).
    DeadLetters,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Sink => "sink",
            Role::Checkpoint => "checkpoint store",
            Role::Control => "control database",
            Role::DeadLetters => "dead-letter queue",
        })
    }
}

pub use crate::core::ErrorClass;

/// Everything that can stop a pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No server answered within the connect timeout.
    #[error("cannot reach the {role} at {target}: {detail}")]
    Unreachable {
        /// Which side.
        role: Role,
        /// Redacted URI.
        target: String,
        /// Driver's explanation.
        detail: String,
    },
    /// The server rejected the credentials.
    #[error("authentication to the {role} at {target} failed: {detail}")]
    Auth {
        /// Which side.
        role: Role,
        /// Redacted URI.
        target: String,
        /// Server's explanation.
        detail: String,
    },
    /// A driver operation failed.
    #[error("{role}: {context}: {source}")]
    Mongo {
        /// Which side.
        role: Role,
        /// What strait was doing.
        context: String,
        /// The driver error.
        source: mongodb::error::Error,
    },
    /// The checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An archive sink failed.
    #[error(transparent)]
    Archive(#[from] crate::connectors::archive::ArchiveError),
    /// A Kafka sink or source failed.
    #[error(transparent)]
    Kafka(#[from] crate::connectors::kafka::KafkaError),
    /// A DynamoDB, DynamoDB Streams or Kinesis call failed.
    #[error(transparent)]
    Aws(#[from] crate::connectors::aws::AwsError),
    /// The saved position is older than the source's change log.
    #[error("the saved position ({position}) is no longer in the source's change log ({detail}); run with stream.on_history_lost = \"resync\" to copy the data again, or `strait checkpoint reset` to start over")]
    HistoryLost {
        /// The position that could not be resumed.
        position: String,
        /// Server's explanation.
        detail: String,
    },
    /// A change event that cannot be understood.
    #[error(transparent)]
    Event(#[from] crate::core::EventError),
    /// Something the user asked for does not exist or cannot be done.
    #[error("{0}")]
    User(String),
    /// The target refused a write for good (a validator, an `_id` change, a type the server
    /// does not take); retrying cannot help.
    #[error("the target refused a write to {ns} (code {code}): {message}")]
    Rejected {
        /// The namespace written.
        ns: String,
        /// The server's error code.
        code: i32,
        /// The server's explanation.
        message: String,
    },
    /// Shutdown was requested while a write kept failing; the unwritten changes stay after the
    /// checkpoint and are applied on the next run.
    #[error("stopped while writes were failing; the checkpoint stays before the unwritten changes, which the next run applies")]
    Stopped,
    /// Another process took the lease; this one stopped applying.
    #[error("lost the lease to another process; stopped applying (run again to stand by)")]
    LeaseLost,
    /// A broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Convenient result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a driver error with what strait was doing.
    pub fn mongo(role: Role, context: impl Into<String>, source: mongodb::error::Error) -> Self {
        Error::Mongo {
            role,
            context: context.into(),
            source,
        }
    }

    /// Wraps a driver error of a sink write.
    pub fn from_sink(source: mongodb::error::Error) -> Self {
        Error::mongo(Role::Sink, "writing", source)
    }

    /// Who has to act.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config(_)
            | Error::Auth { .. }
            | Error::User(_)
            | Error::Rejected { .. }
            | Error::HistoryLost { .. } => ErrorClass::User,
            Error::Unreachable { .. } | Error::Mongo { .. } | Error::Checkpoint(_) => {
                ErrorClass::External
            }
            Error::Archive(e) if e.is_user() => ErrorClass::User,
            Error::Archive(_) => ErrorClass::External,
            Error::Kafka(e) if e.is_user() => ErrorClass::User,
            Error::Kafka(_) => ErrorClass::External,
            Error::Aws(e) if e.is_user() => ErrorClass::User,
            Error::Aws(_) => ErrorClass::External,
            Error::Internal(_) | Error::Event(_) => ErrorClass::Internal,
            Error::Stopped | Error::LeaseLost => ErrorClass::External,
        }
    }

    /// Whether trying the same thing again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Mongo { source, .. } => is_transient(source),
            Error::Checkpoint(e) => e.is_retryable(),
            Error::Unreachable { .. } => true,
            Error::Archive(e) => !e.is_user(),
            Error::Kafka(e) => !e.is_user(),
            Error::Aws(e) => e.is_retryable(),
            _ => false,
        }
    }
}
