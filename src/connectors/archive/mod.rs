//! The archive sink: events (by default the deletes) kept as JSON lines in an S3-compatible
//! bucket or a local directory, one object per batch, so they can be audited and undone.
//!
//! Objects are laid out `<prefix>/<db>/<coll>/YYYY/MM/DD/<first>-<last>.jsonl[.zst|.gz]` and
//! written with one atomic PUT (a rename for directories): an object is either all there or
//! absent. See [`writer`] for how a crash never loses or duplicates an event.

pub mod config;
pub mod query;
pub mod record;
pub(crate) mod sink;
pub(crate) mod store;
pub(crate) mod writer;

use std::io::{Read, Write};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;

use crate::config::{ArchiveSinkConfig, Compression};

/// What went wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store refused or failed a request.
    #[error("archive sink {sink} ({target}): {context}: {}", describe(error))]
    Store {
        /// Sink name.
        sink: String,
        /// Bucket or directory.
        target: String,
        /// What strait was doing.
        context: String,
        /// The store's error (boxed: it is large).
        error: Box<object_store::Error>,
    },
    /// The sink's settings cannot work.
    #[error("archive sink {sink}: {message}")]
    Invalid {
        /// Sink name.
        sink: String,
        /// What is wrong.
        message: String,
    },
    /// An object could not be read back.
    #[error("archive object {key}: {message}")]
    Corrupt {
        /// Object key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ArchiveError {
    /// Whether the user must fix something (missing bucket, refused credentials, bad settings)
    /// rather than wait for a server to come back.
    pub fn is_user(&self) -> bool {
        match self {
            ArchiveError::Store { error, .. } => refusal(error).is_some(),
            ArchiveError::Invalid { .. } => true,
            ArchiveError::Corrupt { .. } => false,
        }
    }
}

/// What the user must fix when the store refused a request, or `None` for a failure that may
/// pass. `object_store` types some refusals only by the HTTP status in its message (a `LIST`
/// of a missing bucket is a generic error reading "status code: 404 Not Found").
fn refusal(e: &object_store::Error) -> Option<&'static str> {
    const NOT_FOUND: &str = "not found (does the bucket exist?): ";
    const DENIED: &str = "permission denied (check the credentials and the bucket policy): ";
    const UNAUTHENTICATED: &str = "authentication failed (check the access key and secret): ";
    match e {
        object_store::Error::NotFound { .. } => Some(NOT_FOUND),
        object_store::Error::PermissionDenied { .. } => Some(DENIED),
        object_store::Error::Unauthenticated { .. } => Some(UNAUTHENTICATED),
        _ => {
            let root = root_cause(e);
            let status = root.split_once("status code: ")?.1.get(..3)?;
            match status {
                "404" => Some(NOT_FOUND),
                "403" => Some(DENIED),
                "401" => Some(UNAUTHENTICATED),
                _ => None,
            }
        }
    }
}

/// The innermost error's message (the store's own display repeats every layer of its chain).
fn root_cause(e: &object_store::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    root.to_string()
}

/// A one-line account of a store error: what kind of refusal it is and its root cause (the
/// store's own message repeats every layer of its chain).
fn describe(e: &object_store::Error) -> String {
    let kind = refusal(e).unwrap_or_default();
    let mut msg = root_cause(e).replace('\n', " ");
    if msg.len() > 400 {
        let mut cut = 400;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    format!("{kind}{msg}")
}

/// An opened archive.
#[derive(Debug, Clone)]
pub struct ArchiveSink {
    /// The sink's name (`[sinks.<name>]`).
    pub name: String,
    /// Its settings.
    pub cfg: ArchiveSinkConfig,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    describe: String,
}

/// Path segment of database-level events (`dropDatabase`); `$` cannot start a collection name.
pub const DATABASE_SEGMENT: &str = "$database";

impl ArchiveSink {
    /// Opens the store (no request is made yet).
    pub fn open(name: &str, cfg: &ArchiveSinkConfig) -> Result<Self, ArchiveError> {
        let (store, describe) = store::open(name, cfg)?;
        let prefix =
            Path::parse(cfg.prefix.trim_matches('/')).map_err(|e| ArchiveError::Invalid {
                sink: name.to_string(),
                message: format!("prefix {:?}: {e}", cfg.prefix),
            })?;
        Ok(Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            store,
            prefix,
            describe,
        })
    }

    /// Where the archive is, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn err(&self, context: String, error: object_store::Error) -> ArchiveError {
        ArchiveError::Store {
            sink: self.name.clone(),
            target: self.describe.clone(),
            context,
            error: Box::new(error),
        }
    }

    /// Checks the bucket or directory can be listed: a missing bucket or refused credentials
    /// fail here, at start, instead of at the first delete.
    pub async fn check(&self) -> Result<(), ArchiveError> {
        self.store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.err("listing the archive".into(), e))
    }

    /// The folder of a namespace (`coll = None` for database-level events), or of all
    /// namespaces when `db` is `None`.
    pub fn ns_path(&self, db: Option<&str>, coll: Option<&str>) -> Path {
        let mut parts: Vec<PathPart<'static>> = self
            .prefix
            .parts()
            .map(|p| p.as_ref().to_string().into())
            .collect();
        if let Some(db) = db {
            parts.push(PathPart::from(db.to_string()));
            parts.push(PathPart::from(coll.unwrap_or(DATABASE_SEGMENT).to_string()));
        }
        Path::from_iter(parts)
    }

    /// A child path of `base`.
    pub fn child(base: &Path, segments: &[&str]) -> Path {
        let mut p = base.clone();
        for s in segments {
            p = p.clone().join(PathPart::from(s.to_string()));
        }
        p
    }

    /// The extension objects get.
    pub fn extension(&self) -> &'static str {
        match self.cfg.compression {
            Compression::None => "",
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
        }
    }

    /// Compresses JSON lines as configured.
    pub fn encode(&self, lines: &[u8]) -> Vec<u8> {
        match self.cfg.compression {
            Compression::None => lines.to_vec(),
            Compression::Zstd => zstd::encode_all(lines, 3).expect("in-memory zstd cannot fail"),
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(lines).expect("in-memory gzip cannot fail");
                e.finish().expect("in-memory gzip cannot fail")
            }
        }
    }

    /// Writes one object whole.
    pub async fn put(&self, path: &Path, bytes: bytes::Bytes) -> Result<(), ArchiveError> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.err(format!("writing {path}"), e))
    }

    /// Every object under `prefix`, sorted by key.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, ArchiveError> {
        let mut v: Vec<ObjectMeta> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(format!("listing {prefix}"), e))?;
        v.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(v)
    }

    /// The records of one object.
    pub async fn read(&self, path: &Path) -> Result<Vec<Value>, ArchiveError> {
        let bytes = self
            .store
            .get(path)
            .await
            .map_err(|e| self.err(format!("reading {path}"), e))?
            .bytes()
            .await
            .map_err(|e| self.err(format!("reading {path}"), e))?;
        let corrupt = |m: String| ArchiveError::Corrupt {
            key: path.to_string(),
            message: m,
        };
        let text = match path.extension() {
            Some("zst") => zstd::decode_all(&bytes[..]).map_err(|e| corrupt(e.to_string()))?,
            Some("gz") => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(&bytes[..])
                    .read_to_end(&mut out)
                    .map_err(|e| corrupt(e.to_string()))?;
                out
            }
            _ => bytes.to_vec(),
        };
        text.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(|e| corrupt(e.to_string())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Server returned non-2xx status code: {0}: <Error><Code>X</Code></Error>")]
    struct Status(&'static str);

    fn generic(status: &'static str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Status(status)),
        }
    }

    #[test]
    fn refusals_typed_only_by_their_http_status_are_the_users_to_fix() {
        assert_eq!(
            refusal(&generic("404 Not Found")),
            Some("not found (does the bucket exist?): ")
        );
        assert!(refusal(&generic("403 Forbidden"))
            .unwrap()
            .starts_with("permission denied"));
        assert!(refusal(&generic("401 Unauthorized"))
            .unwrap()
            .starts_with("authentication"));
        assert_eq!(refusal(&generic("503 Service Unavailable")), None);
        let e = ArchiveError::Store {
            sink: "deletes".into(),
            target: "s3://b".into(),
            context: "listing the archive".into(),
            error: Box::new(generic("404 Not Found")),
        };
        assert!(e.is_user());
        assert_eq!(
            e.to_string(),
            "archive sink deletes (s3://b): listing the archive: not found (does the bucket \
             exist?): Server returned non-2xx status code: 404 Not Found: <Error><Code>X</Code></Error>"
        );
    }
}
