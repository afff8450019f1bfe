//! Telling strait's own writes apart in a cluster's change log, so they are never shipped back.
//!
//! Two ways, chosen by `[two_way] loop_prevention`:
//! - `sessions`: every strait write runs in a transaction on a registered session, and change
//!   events of transactions carry the session's `lsid` ([`super::sessions`]).
//! - `origin_field`: for servers whose change events carry no `lsid` (Amazon DocumentDB,
//!   Cosmos DB for MongoDB). Strait stamps every document it writes with the name of the
//!   cluster the change came from (`last_updater_region = "east"`), and deletes a document
//!   only in a transaction that first stamps it (`{_id, last_updater_region: "east"}`). An
//!   insert or replace whose document carries the other cluster's name is strait's; a delete
//!   is strait's when it shares its cluster time (its transaction) with such a stamp, which
//!   comes first in the same transaction. Updates are never strait's: it writes whole
//!   documents. Applications must not write the other cluster's name into the field.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bson::{RawBsonRef, RawDocument, Timestamp};

use super::sessions::SessionRegistry;

/// How many cluster times of strait's transactions the origin check remembers: a delete
/// arrives right after its transaction's stamp, so a few suffice; many guard against
/// interleaved events of concurrent transactions.
const REMEMBERED_TXNS: usize = 4096;

/// Recognises strait's writes in one cluster's change log.
pub(crate) enum Echoes {
    /// By the session ids strait writes to this cluster with.
    Sessions(Arc<SessionRegistry>),
    /// By the origin field strait stamps on what it writes here.
    Origin(OriginEchoes),
}

impl std::fmt::Debug for Echoes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Echoes::Sessions(s) => write!(f, "Echoes::Sessions({} sessions)", s.len()),
            Echoes::Origin(o) => write!(f, "Echoes::Origin({} = {:?})", o.field, o.foreign),
        }
    }
}

impl Echoes {
    /// Whether a change event (as read from the change stream) is one of strait's writes.
    /// Events must be passed in the order the cluster's change log has them.
    pub(crate) fn is_echo(&self, ev: &RawDocument) -> bool {
        match self {
            Echoes::Sessions(s) => s.wrote(ev),
            Echoes::Origin(o) => o.is_echo(ev),
        }
    }
}

/// The `origin_field` check of one cluster.
pub(crate) struct OriginEchoes {
    /// The field strait stamps.
    pub(crate) field: String,
    /// The name strait stamps on writes into this cluster: the other cluster's.
    pub(crate) foreign: String,
    /// Cluster times of strait's transactions seen lately.
    txns: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    order: VecDeque<(u32, u32)>,
    set: HashSet<(u32, u32)>,
}

impl OriginEchoes {
    pub(crate) fn new(field: &str, foreign: &str) -> Self {
        Self {
            field: field.to_string(),
            foreign: foreign.to_string(),
            txns: Mutex::new(Remembered::default()),
        }
    }

    /// Remembers that strait's transaction committed at `t` (found again after a restart,
    /// when the reader resumes in the middle of one).
    pub(crate) fn remember(&self, t: Timestamp) {
        let mut r = self.txns.lock().unwrap();
        if r.set.insert((t.time, t.increment)) {
            r.order.push_back((t.time, t.increment));
            if r.order.len() > REMEMBERED_TXNS {
                if let Some(old) = r.order.pop_front() {
                    r.set.remove(&old);
                }
            }
        }
    }

    /// Whether a document as strait writes it into this cluster.
    pub(crate) fn stamped(&self, doc: &RawDocument) -> bool {
        matches!(doc.get(&self.field), Ok(Some(RawBsonRef::String(s))) if s == self.foreign)
    }

    fn is_echo(&self, ev: &RawDocument) -> bool {
        let time = ev.get_timestamp("clusterTime").ok();
        match ev.get_str("operationType").unwrap_or("") {
            "insert" | "replace" => {
                let ours = ev
                    .get_document("fullDocument")
                    .map(|d| self.stamped(d))
                    .unwrap_or(false);
                if ours {
                    if let Some(t) = time {
                        self.remember(t);
                    }
                }
                ours
            }
            "delete" => time.is_some_and(|t| {
                self.txns
                    .lock()
                    .unwrap()
                    .set
                    .contains(&(t.time, t.increment))
            }),
            _ => false,
        }
    }
}

/// Reads the events of `client`'s change log at cluster time `at` (the transaction a reader
/// resumes in) through `echoes`, so that it remembers whether that was one of strait's.
pub(crate) async fn recall(
    client: &mongodb::Client,
    meta_db: &str,
    at: Timestamp,
    echoes: &OriginEchoes,
) -> crate::error::Result<()> {
    use crate::error::{Error, Role};
    use futures::StreamExt;
    let ctx = "reading the change log where the reader resumes";
    let err = |e| Error::mongo(Role::Source, ctx, e);
    let mut stream = client
        .watch()
        .start_at_operation_time(at)
        .max_await_time(std::time::Duration::from_millis(200))
        .await
        .map_err(err)?
        .with_type::<bson::RawDocumentBuf>();
    // A later event to stop at, should nothing else happen after `at`.
    let fence = client
        .database(meta_db)
        .collection::<bson::Document>("fence");
    let id = bson::oid::ObjectId::new();
    fence
        .insert_one(bson::doc! { "_id": id })
        .await
        .map_err(err)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Some(ev) = stream.next().await.transpose().map_err(err)? else {
            break;
        };
        match ev.get_timestamp("clusterTime") {
            Ok(t) if t == at => {
                echoes.is_echo(&ev);
            }
            _ => break,
        }
    }
    let _ = fence.delete_one(bson::doc! { "_id": id }).await;
    Ok(())
}

/// `doc` with `field` set to `value`: in place where the document has it, else appended.
pub(crate) fn stamp(doc: &RawDocument, field: &str, value: &str) -> bson::RawDocumentBuf {
    let mut out = bson::RawDocumentBuf::new();
    let mut done = false;
    for el in doc.iter().flatten() {
        let (k, v) = el;
        if k.as_str() == field {
            out.append(k, value);
            done = true;
        } else {
            out.append(k, bson::RawBson::from(v));
        }
    }
    if !done {
        out.append(cstr(field), value);
    }
    out
}

fn cstr(s: &str) -> &bson::raw::CStr {
    // Keys read from a document and validated field names contain no NUL.
    <&bson::raw::CStr>::try_from(s).expect("a key without NUL")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn ev(op: &str, t: u32, doc: Option<bson::RawDocumentBuf>) -> bson::RawDocumentBuf {
        let mut e =
            rawdoc! { "operationType": op, "clusterTime": Timestamp { time: t, increment: 1 } };
        if let Some(d) = doc {
            e.append(cstr("fullDocument"), d);
        }
        e
    }

    #[test]
    fn origin_stamps_mark_writes_and_their_transactions_deletes() {
        let o = Echoes::Origin(OriginEchoes::new("region", "east"));
        // A user's insert (own name or none) and update are not strait's.
        assert!(!o.is_echo(&ev(
            "insert",
            1,
            Some(rawdoc! { "_id": 1, "region": "west" })
        )));
        assert!(!o.is_echo(&ev("insert", 2, Some(rawdoc! { "_id": 2 }))));
        assert!(!o.is_echo(&ev(
            "update",
            3,
            Some(rawdoc! { "_id": 2, "region": "east" })
        )));
        // A user's delete is not; strait's stamp and the delete of its transaction are.
        assert!(!o.is_echo(&ev("delete", 4, None)));
        assert!(o.is_echo(&ev(
            "replace",
            5,
            Some(rawdoc! { "_id": 1, "region": "east" })
        )));
        assert!(o.is_echo(&ev("delete", 5, None)));
        assert!(!o.is_echo(&ev("delete", 6, None)));
    }

    #[test]
    fn stamp_sets_in_place_or_appends() {
        let d = rawdoc! { "_id": 1, "region": "west", "x": 2 };
        assert_eq!(
            stamp(&d, "region", "east"),
            rawdoc! { "_id": 1, "region": "east", "x": 2 }
        );
        let d = rawdoc! { "_id": 1, "x": 2 };
        assert_eq!(
            stamp(&d, "region", "east"),
            rawdoc! { "_id": 1, "x": 2, "region": "east" }
        );
    }
}
