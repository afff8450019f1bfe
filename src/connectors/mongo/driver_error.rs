//! How MongoDB driver errors are classified: which ones a retry can fix. The crate's error
//! type, the checkpoint store and the MongoDB sink all ask here, so they agree.

use mongodb::error::{ErrorKind, WriteFailure};

/// Server error codes after which the same request may succeed later. Code 1
/// (InternalError) is included because every write strait retries is idempotent, and
/// MongoDB-compatible servers report storage-engine conflicts under concurrent writes with it
/// (seen on SecantusDB during parallel copies); retries are bounded in time.
pub(crate) const TRANSIENT_CODES: &[i32] = &[
    1, 6, 7, 50, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 64, 251, 24,
];

/// Whether a driver error is worth retrying (network trouble, elections, write conflicts).
pub(crate) fn is_transient(e: &mongodb::error::Error) -> bool {
    if e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || e.contains_label("ResumableChangeStreamError")
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Write(WriteFailure::WriteError(w)) => TRANSIENT_CODES.contains(&w.code),
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_some()
                || m.write_errors
                    .iter()
                    .flatten()
                    .any(|w| TRANSIENT_CODES.contains(&w.code))
        }
        _ => false,
    }
}

/// The server error code of a driver error, when there is one.
pub(crate) fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}
