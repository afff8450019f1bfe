//! `strait verify`: compares source and target collection by collection: counts, then every
//! document byte for byte (same values, same types, same field order), then indexes.

use std::collections::HashMap;

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;
use serde::Serialize;

use crate::connectors::mongo::snapshot::{list_collections, list_indexes};
use crate::core::event::Namespace;
use crate::error::{Error, Result, Role};
use crate::transform::Transforms;

/// Differences found in one collection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectionReport {
    /// Source namespace.
    pub source_ns: String,
    /// Target namespace.
    pub target_ns: String,
    /// Documents on the source.
    pub source_count: u64,
    /// Documents on the target.
    pub target_count: u64,
    /// `_id`s on the source but not on the target (Extended JSON, at most `limit`).
    pub missing: Vec<String>,
    /// `_id`s on the target but not on the source.
    pub extra: Vec<String>,
    /// `_id`s whose documents differ.
    pub different: Vec<String>,
    /// Totals, beyond the listed ids.
    pub missing_total: u64,
    /// Extra documents in all.
    pub extra_total: u64,
    /// Differing documents in all.
    pub different_total: u64,
    /// Index differences, described.
    pub index_differences: Vec<String>,
    /// Extra target documents are expected: deletes are not applied to this sink (an
    /// append-only copy), so they do not count as a difference.
    pub extra_expected: bool,
}

impl CollectionReport {
    /// Whether source and target match.
    pub fn is_equal(&self) -> bool {
        self.missing_total == 0
            && (self.extra_total == 0 || self.extra_expected)
            && self.different_total == 0
            && self.index_differences.is_empty()
    }
}

fn id_string(b: &Bson) -> String {
    b.clone().into_relaxed_extjson().to_string()
}

fn id_of(d: &RawDocumentBuf) -> Result<(Vec<u8>, Bson)> {
    let id = d
        .get("_id")
        .map_err(|e| Error::Internal(e.to_string()))?
        .ok_or_else(|| Error::Internal("document without _id".into()))?;
    let mut key = RawDocumentBuf::new();
    key.append(bson::raw::cstr!("_id"), id);
    let bson = Bson::try_from(id).map_err(|e| Error::Internal(e.to_string()))?;
    Ok((key.into_bytes(), bson))
}

async fn fetch(
    client: &Client,
    ns: &Namespace,
    ids: &[Bson],
    role: Role,
) -> Result<HashMap<Vec<u8>, RawDocumentBuf>> {
    let coll = client
        .database(&ns.db)
        .collection::<RawDocumentBuf>(ns.coll_name());
    let mut cur = coll
        .find(doc! { "_id": { "$in": ids } })
        .await
        .map_err(|e| Error::mongo(role, format!("reading {ns}"), e))?;
    let mut out = HashMap::with_capacity(ids.len());
    while let Some(d) = cur
        .try_next()
        .await
        .map_err(|e| Error::mongo(role, format!("reading {ns}"), e))?
    {
        out.insert(id_of(&d)?.0, d);
    }
    Ok(out)
}

fn normalize_index(mut spec: Document) -> Document {
    spec.remove("v");
    spec.remove("ns");
    spec
}

/// Compares one collection. Lists at most `limit` ids per kind of difference.
pub async fn verify_collection(
    source: &Client,
    target: &Client,
    src: &Namespace,
    dst: &Namespace,
    limit: usize,
) -> Result<CollectionReport> {
    let mut r = CollectionReport {
        source_ns: src.to_string(),
        target_ns: dst.to_string(),
        ..Default::default()
    };
    let s_coll = source
        .database(&src.db)
        .collection::<RawDocumentBuf>(src.coll_name());
    let t_coll = target
        .database(&dst.db)
        .collection::<Document>(dst.coll_name());
    r.target_count = t_coll
        .count_documents(doc! {})
        .await
        .map_err(|e| Error::mongo(Role::Sink, format!("counting {dst}"), e))?;

    let mut cur = s_coll
        .find(doc! {})
        .batch_size(1000)
        .await
        .map_err(|e| Error::mongo(Role::Source, format!("reading {src}"), e))?;
    let mut batch: Vec<RawDocumentBuf> = Vec::with_capacity(1000);
    let mut matched = 0u64;
    loop {
        let next = cur
            .try_next()
            .await
            .map_err(|e| Error::mongo(Role::Source, format!("reading {src}"), e))?;
        let end = next.is_none();
        if let Some(d) = next {
            batch.push(d);
        }
        if batch.len() >= 1000 || (end && !batch.is_empty()) {
            r.source_count += batch.len() as u64;
            let ids: Vec<(Vec<u8>, Bson)> = batch.iter().map(id_of).collect::<Result<_>>()?;
            let id_values: Vec<Bson> = ids.iter().map(|(_, b)| b.clone()).collect();
            let found = fetch(target, dst, &id_values, Role::Sink).await?;
            for (doc, (key, id)) in batch.iter().zip(&ids) {
                match found.get(key) {
                    None => {
                        r.missing_total += 1;
                        if r.missing.len() < limit {
                            r.missing.push(id_string(id));
                        }
                    }
                    Some(t) => {
                        matched += 1;
                        if t.as_bytes() != doc.as_bytes() {
                            r.different_total += 1;
                            if r.different.len() < limit {
                                r.different.push(id_string(id));
                            }
                        }
                    }
                }
            }
            batch.clear();
        }
        if end {
            break;
        }
    }
    if r.target_count > matched {
        // Some target documents have no source twin: find them.
        let raw_t = target
            .database(&dst.db)
            .collection::<RawDocumentBuf>(dst.coll_name());
        let mut cur = raw_t
            .find(doc! {})
            .projection(doc! { "_id": 1 })
            .batch_size(1000)
            .await
            .map_err(|e| Error::mongo(Role::Sink, format!("reading {dst}"), e))?;
        let mut ids = Vec::new();
        loop {
            let next = cur
                .try_next()
                .await
                .map_err(|e| Error::mongo(Role::Sink, format!("reading {dst}"), e))?;
            let end = next.is_none();
            if let Some(d) = next {
                ids.push(id_of(&d)?);
            }
            if ids.len() >= 1000 || (end && !ids.is_empty()) {
                let values: Vec<Bson> = ids.iter().map(|(_, b)| b.clone()).collect();
                let found = fetch(source, src, &values, Role::Source).await?;
                for (key, id) in &ids {
                    if !found.contains_key(key) {
                        r.extra_total += 1;
                        if r.extra.len() < limit {
                            r.extra.push(id_string(id));
                        }
                    }
                }
                ids.clear();
            }
            if end {
                break;
            }
        }
    }
    let s_idx: HashMap<String, Document> = list_indexes(source, src)
        .await?
        .into_iter()
        .map(|d| {
            (
                d.get_str("name").unwrap_or("").to_string(),
                normalize_index(d),
            )
        })
        .collect();
    let t_idx: HashMap<String, Document> = list_indexes(target, dst)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            (
                d.get_str("name").unwrap_or("").to_string(),
                normalize_index(d),
            )
        })
        .collect();
    let mut names: Vec<&String> = s_idx.keys().chain(t_idx.keys()).collect();
    names.sort();
    names.dedup();
    for n in names {
        match (s_idx.get(n), t_idx.get(n)) {
            (Some(_), None) => r
                .index_differences
                .push(format!("index {n} missing on target")),
            (None, Some(_)) => r
                .index_differences
                .push(format!("index {n} only on target")),
            (Some(a), Some(b)) if a != b => r
                .index_differences
                .push(format!("index {n} differs: source {a}, target {b}")),
            _ => {}
        }
    }
    Ok(r)
}

/// Compares every collection in scope.
/// Compares every collection in scope. With `append_only` (deletes are not applied to the
/// sink), documents only on the target are reported but are not a difference.
pub async fn verify(
    source: &Client,
    target: &Client,
    transforms: &Transforms,
    limit: usize,
    append_only: bool,
) -> Result<Vec<CollectionReport>> {
    let mut out = Vec::new();
    for c in list_collections(source, &transforms.scope).await? {
        let dst = transforms.target_ns(&c.ns);
        let mut r = verify_collection(source, target, &c.ns, &dst, limit).await?;
        r.extra_expected = append_only;
        out.push(r);
    }
    Ok(out)
}
