//! Reading existing data for the full sync: which collections, how to split them into `_id`
//! ranges, and reading one range in batches.

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;
use tokio::sync::mpsc;

use crate::checkpoint::{ChunkPlan, CollectionPlan};
use crate::core::event::Namespace;
use crate::error::{Error, Result, Role};
use crate::transform::scope::Scope;

/// A source collection in scope, with its creation options.
#[derive(Debug, Clone)]
pub struct SourceCollection {
    /// Namespace on the source.
    pub ns: Namespace,
    /// `options` from `listCollections` (capped, validator, collation, ...).
    pub options: Document,
}

fn src_err(ctx: String) -> impl FnOnce(mongodb::error::Error) -> Error {
    move |e| Error::mongo(Role::Source, ctx, e)
}

/// Lists the source collections in scope (views and system collections excluded).
pub async fn list_collections(client: &Client, scope: &Scope) -> Result<Vec<SourceCollection>> {
    let dbs = client
        .list_database_names()
        .await
        .map_err(src_err("listing databases".into()))?;
    let mut out = Vec::new();
    for db in dbs.iter().filter(|d| scope.may_include_db(d)) {
        let mut cursor = client
            .database(db)
            .list_collections()
            .filter(doc! { "type": "collection" })
            .await
            .map_err(src_err(format!("listing collections of {db}")))?;
        while let Some(spec) = cursor
            .try_next()
            .await
            .map_err(src_err(format!("listing collections of {db}")))?
        {
            let ns = Namespace::new(db, Some(&spec.name));
            if scope.includes(&ns) {
                let options = bson::serialize_to_document(&spec.options).unwrap_or_default();
                out.push(SourceCollection {
                    ns,
                    options: strip_nulls(options),
                });
            }
        }
    }
    out.sort_by(|a, b| a.ns.cmp(&b.ns));
    Ok(out)
}

/// `CreateCollectionOptions` serializes unset options as null; the create command wants them absent.
fn strip_nulls(d: Document) -> Document {
    d.into_iter().filter(|(_, v)| *v != Bson::Null).collect()
}

/// Index specs of a source collection, as `listIndexes` returns them.
pub async fn list_indexes(client: &Client, ns: &Namespace) -> Result<Vec<Document>> {
    let db = client.database(&ns.db);
    let reply = db
        .run_command(doc! { "listIndexes": ns.coll_name() })
        .await
        .map_err(src_err(format!("listing indexes of {ns}")))?;
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .map_err(|e| Error::Internal(format!("listIndexes reply: {e}")))?;
    Ok(batch
        .iter()
        .filter_map(|b| b.as_document().cloned())
        .collect())
}

/// BSON comparison class of an `_id`: range queries only match values of the same class.
fn type_class(b: &Bson) -> u8 {
    match b {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 1,
        Bson::String(_) | Bson::Symbol(_) => 2,
        other => 10 + other.element_type() as u8,
    }
}

async fn edge_id(coll: &mongodb::Collection<Document>, dir: i32) -> Result<Option<Bson>> {
    let d = coll
        .find_one(doc! {})
        .sort(doc! { "_id": dir })
        .projection(doc! { "_id": 1 })
        .await
        .map_err(src_err(format!("reading {}", coll.namespace())))?;
    Ok(d.and_then(|d| d.get("_id").cloned()))
}

/// Plans the copy of one collection: `_id` ranges of about `chunk_docs` documents. A small
/// collection, or one whose `_id`s are of mixed types, is one range.
pub async fn plan_collection(
    client: &Client,
    ns: &Namespace,
    chunk_docs: u64,
) -> Result<CollectionPlan> {
    let coll = client
        .database(&ns.db)
        .collection::<Document>(ns.coll_name());
    let estimated = coll
        .estimated_document_count()
        .await
        .map_err(src_err(format!("counting {ns}")))?;
    let whole = vec![ChunkPlan::default()];
    let mut plan = CollectionPlan {
        ns: ns.to_string(),
        estimated,
        chunks: whole,
        created: false,
        indexes_done: false,
    };
    if estimated <= chunk_docs {
        return Ok(plan);
    }
    let (Some(min), Some(max)) = (edge_id(&coll, 1).await?, edge_id(&coll, -1).await?) else {
        return Ok(plan);
    };
    if type_class(&min) != type_class(&max) {
        return Ok(plan);
    }
    // Boundaries from a sorted random sample of `_id`s (the server's random cursor; no scan),
    // every OVERSAMPLE-th one: ranges of about `chunk_docs` documents.
    const OVERSAMPLE: u64 = 20;
    let chunks = estimated.div_ceil(chunk_docs);
    let size = (chunks * OVERSAMPLE).min(estimated) as i64;
    let mut cursor = coll
        .aggregate(vec![
            doc! { "$sample": { "size": size } },
            doc! { "$project": { "_id": 1 } },
            doc! { "$sort": { "_id": 1 } },
        ])
        .await
        .map_err(src_err(format!("sampling {ns}")))?;
    let mut sample = Vec::with_capacity(size as usize);
    while let Some(d) = cursor
        .try_next()
        .await
        .map_err(src_err(format!("sampling {ns}")))?
    {
        if let Some(id) = d.get("_id") {
            sample.push(id.clone());
        }
    }
    let mut bounds: Vec<Bson> = Vec::new();
    for b in sample
        .into_iter()
        .skip(OVERSAMPLE as usize)
        .step_by(OVERSAMPLE as usize)
    {
        if type_class(&b) == type_class(&min) && bounds.last() != Some(&b) && b != min {
            bounds.push(b);
        }
    }
    let mut chunks = Vec::with_capacity(bounds.len() + 1);
    let mut lower = None;
    for b in bounds {
        chunks.push(ChunkPlan {
            lower: lower.take(),
            upper: Some(b.clone()),
            done: false,
            copied_to: None,
        });
        lower = Some(b);
    }
    chunks.push(ChunkPlan {
        lower,
        upper: None,
        done: false,
        copied_to: None,
    });
    plan.chunks = chunks;
    Ok(plan)
}

/// The find filter of a chunk, or of what is left of it after `copied_to`.
pub fn chunk_filter(chunk: &ChunkPlan) -> Document {
    let mut range = Document::new();
    match (&chunk.copied_to, &chunk.lower, &chunk.upper) {
        // A bounded chunk holds one type of `_id`, so `$gt` (which compares within a type)
        // sees all of the rest.
        (Some(after), Some(_), _) | (Some(after), _, Some(_)) => {
            range.insert("$gt", after.clone());
        }
        // The whole collection, maybe with `_id`s of several types: `$expr` compares across
        // types in BSON order, the order the chunk is read in.
        (Some(after), None, None) => {
            return doc! { "$expr": { "$gt": ["$_id", after.clone()] } };
        }
        (None, Some(l), _) => {
            range.insert("$gte", l.clone());
        }
        (None, None, _) => {}
    }
    if let Some(u) = &chunk.upper {
        range.insert("$lt", u.clone());
    }
    if range.is_empty() {
        doc! {}
    } else {
        doc! { "_id": range }
    }
}

/// Reads one chunk in batches of about `batch_docs` documents (at most 8 MB) into `tx`.
/// Documents are passed on as raw BSON, byte for byte.
pub async fn read_chunk(
    client: Client,
    ns: Namespace,
    chunk: ChunkPlan,
    batch_docs: usize,
    tx: mpsc::Sender<Vec<RawDocumentBuf>>,
) -> Result<()> {
    let coll = client
        .database(&ns.db)
        .collection::<RawDocumentBuf>(ns.coll_name());
    // In `_id` order, so the last `_id` written says how far the chunk has been copied.
    let mut cursor = coll
        .find(chunk_filter(&chunk))
        .sort(doc! { "_id": 1 })
        .batch_size(batch_docs as u32)
        .await
        .map_err(src_err(format!("reading {ns}")))?;
    let mut batch = Vec::with_capacity(batch_docs);
    let mut bytes = 0;
    while let Some(doc) = cursor
        .try_next()
        .await
        .map_err(src_err(format!("reading {ns}")))?
    {
        bytes += doc.as_bytes().len();
        batch.push(doc);
        if batch.len() >= batch_docs || bytes >= 8 * 1024 * 1024 {
            bytes = 0;
            if tx
                .send(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(batch_docs),
                ))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_filters() {
        assert_eq!(chunk_filter(&ChunkPlan::default()), doc! {});
        let c = ChunkPlan {
            lower: Some(Bson::Int32(5)),
            upper: Some(Bson::Int32(9)),
            done: false,
            copied_to: None,
        };
        assert_eq!(chunk_filter(&c), doc! { "_id": { "$gte": 5, "$lt": 9 } });
        let c = ChunkPlan {
            lower: None,
            upper: Some(Bson::Int32(9)),
            done: false,
            copied_to: None,
        };
        assert_eq!(chunk_filter(&c), doc! { "_id": { "$lt": 9 } });
        let resumed = ChunkPlan {
            lower: Some(Bson::Int32(5)),
            upper: Some(Bson::Int32(9)),
            done: false,
            copied_to: Some(Bson::Int32(7)),
        };
        assert_eq!(
            chunk_filter(&resumed),
            doc! { "_id": { "$gt": 7, "$lt": 9 } }
        );
        let whole = ChunkPlan {
            copied_to: Some(Bson::String("k".into())),
            ..ChunkPlan::default()
        };
        assert_eq!(
            chunk_filter(&whole),
            doc! { "$expr": { "$gt": ["$_id", "k"] } }
        );
    }

    #[test]
    fn numbers_share_a_type_class() {
        assert_eq!(type_class(&Bson::Int32(1)), type_class(&Bson::Double(2.0)));
        assert_ne!(
            type_class(&Bson::Int32(1)),
            type_class(&Bson::String("a".into()))
        );
    }
}
