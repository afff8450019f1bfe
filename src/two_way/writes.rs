//! The writes of one two-way transaction, sent as few `update` / `delete` / `insert` commands.
//!
//! One command per collection and kind instead of one per document: on a busy target the
//! round trips of a 500-event batch (two per document: the document and its version record)
//! were most of the time a transaction took, and a long transaction meets more write conflicts
//! with local writers.

use std::collections::BTreeMap;

use bson::{rawdoc, RawArrayBuf, RawBson, RawDocumentBuf};
use mongodb::error::{CommandError, ErrorKind};
use mongodb::{Client, ClientSession};

use crate::error::{Error, Result, Role};

/// Above this many bytes of statements, a command is sent and the next one started (a command
/// must stay under the 16 MiB BSON limit).
const COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// The writes of one transaction, by collection; sent in [`Writes::send`]'s order.
#[derive(Default)]
pub(crate) struct Writes {
    /// `(db, coll)` -> `update` statements (replacements, upserts).
    updates: BTreeMap<(String, String), Vec<RawDocumentBuf>>,
    /// `(db, coll)` -> `delete` statements.
    deletes: BTreeMap<(String, String), Vec<RawDocumentBuf>>,
    /// `(db, coll)` -> documents to insert.
    inserts: BTreeMap<(String, String), Vec<RawDocumentBuf>>,
}

impl Writes {
    /// Replaces the document `_id = id` of `db.coll` by `doc` (inserting it when `upsert`).
    pub(crate) fn replace(
        &mut self,
        db: &str,
        coll: &str,
        id: RawBson,
        doc: RawDocumentBuf,
        upsert: bool,
    ) {
        let stmt = rawdoc! { "q": { "_id": id }, "u": doc, "upsert": upsert };
        self.updates
            .entry((db.into(), coll.into()))
            .or_default()
            .push(stmt);
    }

    /// Deletes the document `_id = id` of `db.coll`.
    pub(crate) fn delete(&mut self, db: &str, coll: &str, id: RawBson) {
        let stmt = rawdoc! { "q": { "_id": id }, "limit": 1 };
        self.deletes
            .entry((db.into(), coll.into()))
            .or_default()
            .push(stmt);
    }

    /// Inserts `doc` into `db.coll`.
    pub(crate) fn insert(&mut self, db: &str, coll: &str, doc: RawDocumentBuf) {
        self.inserts
            .entry((db.into(), coll.into()))
            .or_default()
            .push(doc);
    }

    /// Sends every write in the transaction of `s`: all updates, then all deletes (so a
    /// document stamped before its delete is stamped first), then the inserts.
    pub(crate) async fn send(self, client: &Client, s: &mut ClientSession) -> Result<()> {
        for ((db, coll), stmts) in self.updates {
            send(client, s, &db, "update", &coll, "updates", stmts).await?;
        }
        for ((db, coll), stmts) in self.deletes {
            send(client, s, &db, "delete", &coll, "deletes", stmts).await?;
        }
        for ((db, coll), docs) in self.inserts {
            send(client, s, &db, "insert", &coll, "documents", docs).await?;
        }
        Ok(())
    }
}

/// Runs `verb` on `db.coll` with `items` under `field`, in as few commands as fit.
async fn send(
    client: &Client,
    s: &mut ClientSession,
    db: &str,
    verb: &str,
    coll: &str,
    field: &str,
    items: Vec<RawDocumentBuf>,
) -> Result<()> {
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let mut list = RawArrayBuf::new();
        let mut bytes = 0;
        while let Some(d) =
            items.next_if(|d| bytes == 0 || bytes + d.as_bytes().len() < COMMAND_BYTES)
        {
            bytes += d.as_bytes().len();
            list.push(d);
        }
        let mut cmd = RawDocumentBuf::new();
        cmd.append(cstr(verb), coll);
        cmd.append(cstr(field), list);
        cmd.append(bson::raw::cstr!("ordered"), true);
        let context = format!("{verb} on {db}.{coll}");
        let reply = client
            .database(db)
            .run_raw_command(cmd)
            .session(&mut *s)
            .await
            .map_err(|e| Error::mongo(Role::Sink, context.clone(), e))?;
        check_write_errors(&reply, &context)?;
    }
    Ok(())
}

fn cstr(s: &str) -> &bson::raw::CStr {
    match s {
        "update" => bson::raw::cstr!("update"),
        "updates" => bson::raw::cstr!("updates"),
        "delete" => bson::raw::cstr!("delete"),
        "deletes" => bson::raw::cstr!("deletes"),
        "insert" => bson::raw::cstr!("insert"),
        _ => bson::raw::cstr!("documents"),
    }
}

/// A write command answers `ok: 1` with `writeErrors` when a statement failed: the first one
/// becomes an error with its server code (so a write conflict stays retryable).
fn check_write_errors(reply: &bson::Document, context: &str) -> Result<()> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(());
    };
    let Some(first) = errors.first().and_then(|e| e.as_document()) else {
        return Ok(());
    };
    let code = match first.get("code") {
        Some(bson::Bson::Int32(c)) => *c,
        Some(bson::Bson::Int64(c)) => *c as i32,
        Some(bson::Bson::Double(c)) => *c as i32,
        _ => 8,
    };
    let message = first
        .get_str("errmsg")
        .unwrap_or("write failed")
        .to_string();
    let code_name = first.get_str("codeName").unwrap_or("").to_string();
    let command: CommandError = bson::deserialize_from_document(bson::doc! {
        "code": code, "codeName": code_name, "errmsg": message,
    })
    .map_err(|e| Error::Internal(format!("reading a write error: {e}")))?;
    Err(Error::mongo(
        Role::Sink,
        context.to_string(),
        mongodb::error::Error::from(ErrorKind::Command(command)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_error_keeps_its_code_and_class() {
        let reply = bson::doc! { "ok": 1, "n": 0, "writeErrors": [ { "index": 0, "code": 112, "codeName": "WriteConflict", "errmsg": "conflict" } ] };
        let e = check_write_errors(&reply, "update on a.b").unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(super::super::sink::is_write_conflict(&e));
        let reply = bson::doc! { "ok": 1, "n": 0, "writeErrors": [ { "index": 0, "code": 11000, "errmsg": "dup" } ] };
        let e = check_write_errors(&reply, "update on a.b").unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(check_write_errors(&bson::doc! { "ok": 1, "n": 3 }, "x").is_ok());
    }
}
