//! Loop prevention: the logical sessions strait writes with.
//!
//! Every write strait makes to a cluster in two-way mode runs in a transaction on a session
//! whose id is first stored in `<meta>.sessions` on that cluster (and in memory). A change
//! event of a transaction carries its `lsid`, so the reader of that cluster drops every event
//! whose `lsid.id` is in this set: strait's own writes are never shipped back.
//!
//! Why it holds:
//! - *Restarts and replays*: an id is stored (majority) before the session's first write, and
//!   ids are never removed, so whatever position a reader resumes from, every strait write it
//!   can meet belongs to an id that is already stored; a reader loads the stored set before
//!   it reads.
//! - *Driver session pooling*: the driver reuses server sessions across `ClientSession`s of
//!   one client; strait checks the id of every session it starts against the set, and the
//!   clients that write in transactions are strait's own, so a pooled id is either stored
//!   already or stored before use. User sessions come from other clients and have random ids.

use std::collections::HashSet;
use std::sync::RwLock;

use bson::{doc, Document, RawDocument};
use mongodb::{Client, ClientSession, Collection};

use crate::error::{Error, Result, Role};

/// The session ids strait writes with on one cluster.
pub(crate) struct SessionRegistry {
    ids: RwLock<HashSet<Vec<u8>>>,
    coll: Collection<Document>,
}

impl SessionRegistry {
    /// Loads the ids stored on `client`'s cluster in `<meta_db>.sessions`.
    pub(crate) async fn load(client: &Client, meta_db: &str) -> Result<Self> {
        let coll = client.database(meta_db).collection::<Document>("sessions");
        let mut ids = HashSet::new();
        let mut cursor = coll
            .find(doc! {})
            .await
            .map_err(|e| Error::mongo(Role::Sink, "reading strait's session ids", e))?;
        while cursor
            .advance()
            .await
            .map_err(|e| Error::mongo(Role::Sink, "reading strait's session ids", e))?
        {
            if let Ok(Some(bson::RawBsonRef::Binary(b))) = cursor.current().get("_id") {
                ids.insert(b.bytes.to_vec());
            }
        }
        Ok(Self {
            ids: RwLock::new(ids),
            coll,
        })
    }

    /// Aborts whatever transactions strait's sessions still have open on the cluster (a
    /// process killed mid-batch leaves one, whose locks block users' writes to its documents
    /// until the server reaps it: 60 s on mongod, never on some compatible servers). Only one
    /// process runs a two-way pair, so none of these sessions is in use by another.
    pub(crate) async fn end_abandoned(&self, client: &Client) {
        let ids: Vec<Document> = self
            .ids
            .read()
            .unwrap()
            .iter()
            .map(|id| {
                doc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: id.clone() } }
            })
            .collect();
        for chunk in ids.chunks(1000) {
            if let Err(e) = client
                .database("admin")
                .run_command(doc! { "killSessions": chunk.to_vec() })
                .await
            {
                tracing::warn!(error = %e, "Could not end strait's earlier sessions (killSessions); a transaction left by a killed process may block writes until the server ends it.");
                return;
            }
        }
    }

    /// How many ids are known.
    pub(crate) fn len(&self) -> usize {
        self.ids.read().unwrap().len()
    }

    /// Makes sure `session`'s id is stored before it writes anything.
    pub(crate) async fn register(&self, session: &ClientSession) -> Result<()> {
        let Some(id) = lsid_bytes(session.id()) else {
            return Err(Error::Internal("a session without an id".into()));
        };
        if self.ids.read().unwrap().contains(&id) {
            return Ok(());
        }
        let bin = bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: id.clone(),
        };
        match self
            .coll
            .insert_one(doc! { "_id": bin, "at": bson::DateTime::now() })
            .write_concern(mongodb::options::WriteConcern::majority())
            .await
        {
            Ok(_) => {}
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w)) if w.code == 11000) =>
                {}
            Err(e) => return Err(Error::mongo(Role::Sink, "storing a session id", e)),
        }
        self.ids.write().unwrap().insert(id);
        Ok(())
    }

    /// Whether a change event was written by strait (its transaction's `lsid` is one of ours).
    pub(crate) fn wrote(&self, event: &RawDocument) -> bool {
        match event.get_document("lsid").ok().and_then(raw_lsid_bytes) {
            Some(id) => self.ids.read().unwrap().contains(id),
            None => false,
        }
    }
}

/// The `id` bytes of a session id document.
fn lsid_bytes(lsid: &Document) -> Option<Vec<u8>> {
    match lsid.get("id") {
        Some(bson::Bson::Binary(b)) => Some(b.bytes.clone()),
        _ => None,
    }
}

/// The `id` bytes of an event's `lsid`.
fn raw_lsid_bytes(lsid: &RawDocument) -> Option<&[u8]> {
    match lsid.get("id") {
        Ok(Some(bson::RawBsonRef::Binary(b))) => Some(b.bytes),
        _ => None,
    }
}
