//! What the DynamoDB and Kinesis connectors share: AWS access and failure classes ([`client`]),
//! shard lineage ([`shards`]) and the reader that follows a sharded stream ([`follow`]): the
//! DynamoDB Streams source and the Kinesis source differ only in the calls they make.

pub(crate) mod client;
pub(crate) mod dead_letter;
pub(crate) mod follow;
pub(crate) mod shards;

use crate::error::Role;
pub use client::Failure;

/// A failed DynamoDB, DynamoDB Streams or Kinesis call.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The service answered with an error, or could not be reached.
    #[error("{role}: {context}: {}", describe(.failure, .code, .message))]
    Call {
        /// Which side.
        role: Role,
        /// What strait was doing.
        context: String,
        /// What the failure means.
        failure: Failure,
        /// The service's error code (empty when it did not answer).
        code: String,
        /// The service's explanation.
        message: String,
    },
}

fn describe(failure: &Failure, code: &str, message: &str) -> String {
    let what = if code.is_empty() {
        message.to_string()
    } else {
        format!("{code}: {message}")
    };
    match failure {
        Failure::Auth => format!(
            "AWS refused the credentials ({what}); check access_key_id / secret_access_key, the profile or the AWS_* environment"
        ),
        _ => what,
    }
}

impl AwsError {
    /// What the failure means.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            AwsError::Call { failure, .. } => *failure,
        }
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.failure(), Failure::Transient | Failure::Throttled)
    }

    /// Whether the user must act (credentials, a missing table, a refused value).
    pub fn is_user(&self) -> bool {
        matches!(
            self.failure(),
            Failure::Auth | Failure::NotFound | Failure::Invalid
        )
    }
}
