//! `strait conflicts ls`: the changes that lost, read from `<meta>.conflicts` on both clusters.

use bson::{doc, Document};
use futures::TryStreamExt;

use crate::config::PipelineConfig;
use crate::connectors::mongo::connect::connect;
use crate::error::{Error, Result, Role};

/// One recorded conflict, as Extended JSON (relaxed), with the cluster it is stored on.
#[derive(Debug)]
pub struct ConflictLine {
    /// The cluster where the incoming change lost.
    pub cluster: String,
    /// The record.
    pub record: serde_json::Value,
}

/// The newest `limit` conflicts of each cluster of a two-way pipeline, newest first.
pub async fn list(cfg: &PipelineConfig, limit: i64) -> Result<Vec<ConflictLine>> {
    let t = cfg
        .two_way
        .as_ref()
        .ok_or_else(|| Error::User("this pipeline has no [two_way] table".into()))?;
    let eps = [
        cfg.mongo_source().expect("validated"),
        cfg.mongo_sink().expect("validated"),
    ];
    let mut out = Vec::new();
    for (name, ep) in t.names.iter().zip(eps) {
        let client = connect(ep, Role::Sink).await?;
        let coll = client
            .database(&cfg.checkpoint.database)
            .collection::<Document>("conflicts");
        let docs: Vec<Document> = coll
            .find(doc! {})
            .sort(doc! { "at": -1 })
            .limit(limit)
            .await
            .map_err(|e| Error::mongo(Role::Sink, "reading conflicts", e))?
            .try_collect()
            .await
            .map_err(|e| Error::mongo(Role::Sink, "reading conflicts", e))?;
        for d in docs {
            out.push(ConflictLine {
                cluster: name.clone(),
                record: bson::Bson::Document(d).into_relaxed_extjson(),
            });
        }
    }
    Ok(out)
}
