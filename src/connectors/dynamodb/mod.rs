//! DynamoDB: a source reading a table's DynamoDB Streams shards (after a parallel `Scan` for the
//! full sync) and a sink writing items, with last-writer-wins conditions when asked.
//!
//! Items travel in strait's events in their DynamoDB JSON shape ([`item`]), so a table copied
//! to another table is exact for every attribute type.

pub(crate) mod client;
pub mod config;
pub(crate) mod item;
pub(crate) mod shards;
pub(crate) mod sink;
pub(crate) mod source;

use crate::error::Role;
pub use client::Failure;

/// A failed DynamoDB or DynamoDB Streams call.
#[derive(Debug, thiserror::Error)]
pub enum DynamoError {
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

impl DynamoError {
    /// What the failure means.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            DynamoError::Call { failure, .. } => *failure,
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
