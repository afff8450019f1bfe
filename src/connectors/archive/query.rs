//! Reading an archive back: `strait archive ls`, `cat` and `restore`.

use std::collections::HashMap;

use bson::{Bson, Document};
use mongodb::Client;
use object_store::path::Path;
use serde_json::Value;

use super::record::parse_object_name;
use super::{ArchiveError, ArchiveSink, DATABASE_SEGMENT};
use crate::core::event::Namespace;
use crate::error::{Error, Result, Role};
use crate::transform::scope::NamespacePattern;

/// What to look at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Namespaces (`db.coll`, `db.*`, `/regex/`); all when `None`.
    pub ns: Option<NamespacePattern>,
    /// Earliest event time, seconds since the epoch (inclusive).
    pub from: Option<u32>,
    /// Latest event time, seconds since the epoch (inclusive).
    pub to: Option<u32>,
    /// Operation types; all when empty.
    pub ops: Vec<String>,
}

impl Filter {
    fn time_overlaps(&self, first: u32, last: u32) -> bool {
        self.from.is_none_or(|f| last >= f) && self.to.is_none_or(|t| first <= t)
    }

    /// Whether one record passes the filter.
    pub fn keeps(&self, r: &Value) -> bool {
        let t = r.get("timestamp").and_then(Value::as_u64).unwrap_or(0) as u32;
        let op = r.get("operation").and_then(Value::as_str).unwrap_or("");
        self.time_overlaps(t, t) && (self.ops.is_empty() || self.ops.iter().any(|o| o == op))
    }
}

/// One archive object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Its key.
    pub path: Path,
    /// Source namespace of its events.
    pub ns: Namespace,
    /// Time of its first event.
    pub first: (u32, u32),
    /// Time of its last event.
    pub last: (u32, u32),
    /// Stored size in bytes.
    pub size: u64,
}

/// The objects holding events of the filter's namespaces and time range, in time order per
/// namespace.
pub async fn objects(sink: &ArchiveSink, f: &Filter) -> Result<Vec<ObjectInfo>, ArchiveError> {
    let base = match &f.ns {
        Some(NamespacePattern::Exact(db, coll)) => sink.ns_path(Some(db), Some(coll)),
        Some(NamespacePattern::Database(db)) => {
            ArchiveSink::child(&sink.ns_path(None, None), &[db])
        }
        _ => sink.ns_path(None, None),
    };
    let root_depth = sink.ns_path(None, None).parts().count();
    let mut out = Vec::new();
    for o in sink.list(&base).await? {
        let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
        // <prefix...>/<db>/<coll...>/YYYY/MM/DD/<name>
        if parts.len() < root_depth + 6 {
            continue;
        }
        let rel = &parts[root_depth..];
        let db = percent_decode(&rel[0]);
        let coll = percent_decode(&rel[1..rel.len() - 4].join("/"));
        let Some((first, last)) = parse_object_name(&rel[rel.len() - 1]) else {
            continue;
        };
        let ns = if coll == DATABASE_SEGMENT {
            Namespace::new(&db, None)
        } else {
            Namespace::new(&db, Some(&coll))
        };
        if let Some(p) = &f.ns {
            if !p.matches(&ns.db, ns.coll_name()) {
                continue;
            }
        }
        if !f.time_overlaps(first.0, last.0) {
            continue;
        }
        out.push(ObjectInfo {
            path: o.location,
            ns,
            first,
            last,
            size: o.size,
        });
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every record the filter keeps, in time order per namespace.
pub async fn records(sink: &ArchiveSink, f: &Filter) -> Result<Vec<Value>, ArchiveError> {
    let mut out = Vec::new();
    for o in objects(sink, f).await? {
        out.extend(sink.read(&o.path).await?.into_iter().filter(|r| f.keeps(r)));
    }
    Ok(out)
}

/// The outcome of a restore.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Documents inserted (or, in a dry run, that would be).
    pub restored: u64,
    /// Documents whose `_id` already exists on the target (left as they are).
    pub already_present: u64,
    /// Delete records without a pre-image (nothing to restore from).
    pub without_pre_image: u64,
    /// `(target namespace, _id)` of each restored document, as relaxed Extended JSON.
    pub ids: Vec<(String, String)>,
}

/// Re-inserts the pre-images of archived deletes. When one document was deleted more than
/// once, its latest pre-image wins. Existing documents are never overwritten.
pub async fn restore(
    sink: &ArchiveSink,
    f: &Filter,
    target: &Client,
    into: Option<&Namespace>,
    dry_run: bool,
) -> Result<RestoreReport> {
    let mut f = f.clone();
    f.ops = vec!["delete".to_string()];
    let mut report = RestoreReport::default();
    // (namespace, _id as canonical JSON) -> pre-image; insertion order kept for the output.
    let mut latest: Vec<(Namespace, String, Document)> = Vec::new();
    let mut index: HashMap<(Namespace, String), usize> = HashMap::new();
    for r in records(sink, &f).await? {
        let Some(pre) = r.get("preImage") else {
            report.without_pre_image += 1;
            continue;
        };
        let doc = match Bson::try_from(pre.clone()) {
            Ok(Bson::Document(d)) => d,
            _ => {
                return Err(Error::User(format!(
                    "archived pre-image is not a document: {pre}"
                )))
            }
        };
        let db = r.get("db").and_then(Value::as_str).unwrap_or_default();
        let coll = r.get("coll").and_then(Value::as_str);
        let ns = match into {
            Some(n) => n.clone(),
            None => Namespace::new(db, coll),
        };
        let id = r.get("_id").cloned().unwrap_or(Value::Null).to_string();
        match index.get(&(ns.clone(), id.clone())) {
            Some(&i) => latest[i].2 = doc,
            None => {
                index.insert((ns.clone(), id.clone()), latest.len());
                latest.push((ns, id, doc));
            }
        }
    }
    for (ns, _, doc) in latest {
        let id = doc
            .get("_id")
            .map(|b| b.clone().into_relaxed_extjson().to_string())
            .unwrap_or_default();
        let coll = target
            .database(&ns.db)
            .collection::<Document>(ns.coll_name());
        if dry_run {
            let exists = coll
                .count_documents(
                    bson::doc! { "_id": doc.get("_id").cloned().unwrap_or(Bson::Null) },
                )
                .await
                .map_err(|e| Error::mongo(Role::Sink, format!("reading {ns}"), e))?
                > 0;
            if exists {
                report.already_present += 1;
            } else {
                report.restored += 1;
                report.ids.push((ns.to_string(), id));
            }
            continue;
        }
        match coll.insert_one(&doc).await {
            Ok(_) => {
                report.restored += 1;
                report.ids.push((ns.to_string(), id));
            }
            Err(e) if crate::connectors::mongo::driver_error::error_code(&e) == Some(11000) => {
                report.already_present += 1
            }
            Err(e) => return Err(Error::mongo(Role::Sink, format!("restoring into {ns}"), e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("%24database"), "$database");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
