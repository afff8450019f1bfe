//! Two-way (active-active) sync between two MongoDB clusters: two engines in one process, one
//! per direction, sharing what tells strait's own writes apart.
//!
//! - Loop prevention: every write runs in a transaction on a session whose id is stored on
//!   the cluster first ([`sessions`]); each direction's reader drops the events of those
//!   sessions.
//! - Conflicts: the sink ([`sink::LwwSink`]) keeps a version per document in strait's database
//!   on each cluster and applies a change only if it is later than the document's version
//!   (last writer wins by `wallTime`, ties to the first cluster); a change that lost is
//!   recorded in `strait.conflicts` on the cluster where it lost.
//! - Initial sync: one cluster is copied to the other, while the other direction follows from a
//!   position taken on its cluster before the copy began.

pub mod config;
mod conflict_topic;
pub mod conflicts;
pub(crate) mod echo;
pub(crate) mod sessions;
pub(crate) mod sink;
pub(crate) mod version;
mod writes;

use std::sync::Arc;

use bson::doc;
use futures::StreamExt;
use mongodb::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use crate::checkpoint::Checkpointer;
use crate::config::{MongoEndpoint, PipelineConfig, SinkEndpoint, SourceEndpoint, SyncMode};
use crate::connectors::mongo::connect::connect;
use crate::connectors::mongo::stream::head_position;
use crate::control::Control;
use crate::engine::start::{check_source, checkpoint_store, MongoPipeline};
use crate::engine::Engine;
use crate::error::{Error, Result, Role};
use crate::telemetry::Telemetry;
use crate::transform::{EchoFilter, Transforms};
use config::LoopPrevention;
use echo::{Echoes, OriginEchoes};
use sessions::SessionRegistry;
use sink::{LwwSettings, LwwSink};

/// The two directions' configs: `[source]` -> `[sink]` first. Each is a one-way pipeline
/// config (id `<id>.<from>-<to>`) with the other direction's only-namespaces excluded, no DDL,
/// no API (the two-way pipeline serves one for both), and a copy only in the direction that
/// copies.
pub fn directions(cfg: &PipelineConfig) -> [Arc<PipelineConfig>; 2] {
    let t = cfg.two_way.as_ref().expect("a two-way config");
    let (SourceEndpoint::Mongodb(a), SinkEndpoint::Mongodb(b)) = (&cfg.source, &cfg.sink) else {
        panic!("validated: two MongoDB clusters");
    };
    let one = |from: usize, src: &MongoEndpoint, dst: &MongoEndpoint, only_other: &[String]| {
        let mut c = cfg.clone();
        c.id = format!("{}.{}-{}", cfg.id, t.names[from], t.names[1 - from]);
        c.source = SourceEndpoint::Mongodb(src.clone());
        let mut dst = dst.clone();
        dst.ops = None;
        c.sink = SinkEndpoint::Mongodb(dst);
        c.scope.exclude.extend(only_other.iter().cloned());
        c.stream.ddl = false;
        c.api = None;
        c.two_way = None;
        c.mode = if cfg.mode.copies() && t.copy_from == t.names[from] {
            SyncMode::FullAndIncremental
        } else {
            SyncMode::Incremental
        };
        Arc::new(c)
    };
    [
        one(0, a, b, &t.only_backward),
        one(1, b, a, &t.only_forward),
    ]
}

/// One cluster: a client to read its change stream and one for strait's writes.
struct Cluster {
    name: String,
    reader: Client,
    writer: Client,
    sessions: Arc<SessionRegistry>,
    /// Recognises strait's writes in this cluster's change log.
    echoes: Arc<Echoes>,
}

/// Connects to a cluster and checks that loop prevention works there: transactions run, and
/// (for `sessions`) their change events carry `lsid`.
async fn open_cluster(
    name: &str,
    other: &str,
    ep: &MongoEndpoint,
    meta_db: &str,
    t: &config::TwoWayConfig,
) -> Result<Cluster> {
    let (reader, writer) = tokio::join!(connect(ep, Role::Source), connect(ep, Role::Sink));
    let (reader, writer) = (reader?, writer?);
    probe(name, &writer, meta_db, t.loop_prevention).await?;
    let sessions = Arc::new(SessionRegistry::load(&writer, meta_db).await?);
    sessions.end_abandoned(&writer).await;
    let echoes = Arc::new(match t.loop_prevention {
        LoopPrevention::Sessions => Echoes::Sessions(sessions.clone()),
        LoopPrevention::OriginField => Echoes::Origin(OriginEchoes::new(&t.origin_field, other)),
    });
    Ok(Cluster {
        name: name.to_string(),
        reader,
        writer,
        sessions,
        echoes,
    })
}

/// Writes one document in a transaction to `<meta>.probe` and reads its change event back.
async fn probe(name: &str, client: &Client, meta_db: &str, how: LoopPrevention) -> Result<()> {
    let coll = client
        .database(meta_db)
        .collection::<bson::Document>("probe");
    let id = bson::oid::ObjectId::new();
    let ctx = format!("cluster {name}: checking transactions and change streams");
    let mut stream = coll
        .watch()
        .pipeline([doc! { "$match": { "documentKey._id": id } }])
        .await
        .map_err(|e| Error::mongo(Role::Sink, ctx.clone(), e))?
        .with_type::<bson::RawDocumentBuf>();
    let mut s = client
        .start_session()
        .await
        .map_err(|e| Error::mongo(Role::Sink, ctx.clone(), e))?;
    let txn = async {
        s.start_transaction().await?;
        coll.insert_one(doc! { "_id": id }).session(&mut s).await?;
        s.commit_transaction().await
    }
    .await;
    if let Err(e) = txn {
        return Err(Error::User(format!(
            "cluster {name} cannot run a transaction ({e}): two-way sync writes each batch in one, to recognise its own writes; use a replica set or a sharded cluster"
        )));
    }
    let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| {
            Error::User(format!(
                "cluster {name}: the change stream did not show a write within 10 s"
            ))
        })?
        .transpose()
        .map_err(|e| Error::mongo(Role::Sink, ctx.clone(), e))?;
    let _ = coll.delete_one(doc! { "_id": id }).await;
    match ev {
        Some(ev) if how == LoopPrevention::OriginField || ev.get_document("lsid").is_ok() => {
            Ok(())
        }
        Some(_) => Err(Error::User(format!(
            "cluster {name}: change events of transactions carry no lsid, so strait cannot tell its own writes from users' and the two directions would loop; set [two_way] loop_prevention = \"origin_field\" (as Amazon DocumentDB and Cosmos DB for MongoDB need)"
        ))),
        None => Err(Error::User(format!(
            "cluster {name}: the change stream ended before showing a write"
        ))),
    }
}

/// Runs both directions until `cancel` or until one fails (which stops the other).
pub(crate) async fn run(
    cfg: &Arc<PipelineConfig>,
    telemetry: [Arc<Telemetry>; 2],
    control: Arc<Control>,
    cancel: CancellationToken,
) -> Result<()> {
    let t = cfg.two_way.as_ref().expect("a two-way config");
    let meta = cfg.checkpoint.database.clone();
    let (a, b) = (
        cfg.mongo_source().expect("validated"),
        cfg.mongo_sink().expect("validated"),
    );
    let (ca, cb) = tokio::join!(
        open_cluster(&t.names[0], &t.names[1], a, &meta, t),
        open_cluster(&t.names[1], &t.names[0], b, &meta, t)
    );
    let clusters = [Arc::new(ca?), Arc::new(cb?)];
    let dirs = directions(cfg);
    let mut pipelines = Vec::new();
    for (i, dcfg) in dirs.iter().enumerate() {
        let (src, dst) = (&clusters[i], &clusters[1 - i]);
        let mut transforms = Transforms::from_config(dcfg);
        transforms.echoes = Some(EchoFilter {
            echoes: src.echoes.clone(),
            telemetry: telemetry[i].clone(),
        });
        let transforms = Arc::new(transforms);
        check_source(dcfg, &src.reader, &transforms).await?;
        let sink = Arc::new(LwwSink::new(
            dst.writer.clone(),
            dst.sessions.clone(),
            dst.echoes.clone(),
            LwwSettings {
                target: crate::connectors::mongo::config::redact_uri(
                    &dcfg.mongo_sink().expect("validated").uri,
                ),
                meta_db: meta.clone(),
                incoming: src.name.clone(),
                local: dst.name.clone(),
                first: t.names[0].clone(),
                skew: t.max_clock_skew,
                lanes: dcfg.apply.lanes,
                batch_docs: dcfg.apply.batch_docs,
                origin_field: (t.loop_prevention == LoopPrevention::OriginField)
                    .then(|| t.origin_field.clone()),
                version_field: t.version_field.clone(),
            },
            telemetry[i].clone(),
            cancel.clone(),
        ));
        let store = checkpoint_store(dcfg, &dst.writer).await?;
        if let Echoes::Origin(o) = &*src.echoes {
            // A reader resuming inside one of strait's transactions must know it is one: the
            // rest of its deletes carry nothing else that says so.
            if let Some(at) = store.load(&dcfg.id).await?.and_then(|c| c.cluster_time) {
                echo::recall(&src.writer, &meta, at, o).await?;
            }
        }
        let pipeline = MongoPipeline {
            engine: Engine {
                cfg: dcfg.clone(),
                transforms,
                sinks: vec![sink.clone()],
                telemetry: telemetry[i].clone(),
                control: control.clone(),
                cancel: cancel.clone(),
            },
            source: src.reader.clone(),
            repairs: None,
            checkpoint: Arc::new(Checkpointer::new(store, &dcfg.id)),
        };
        pipelines.push((Arc::new(pipeline), sink));
    }
    // The direction that does not copy starts from a position taken before the copy begins,
    // so what its cluster's users write during the copy is applied to the copied side too.
    // That cluster also keeps when the copy began (`<meta>.two_way`), so the copy skips
    // documents its users wrote or deleted since.
    for (i, (p, _)) in pipelines.iter().enumerate() {
        let c = &p.engine.cfg;
        if c.mode != SyncMode::Incremental {
            continue;
        }
        let marks = clusters[i]
            .writer
            .database(&meta)
            .collection::<bson::Document>("two_way");
        let mark = format!("{}.copy_since", cfg.id);
        if p.checkpoint.store.load(&c.id).await?.is_none() {
            marks
                .update_one(
                    doc! { "_id": &mark },
                    doc! { "$setOnInsert": { "at": bson::DateTime::now() } },
                )
                .upsert(true)
                .await
                .map_err(|e| Error::mongo(Role::Sink, "saving when the copy began", e))?;
            let token = head_position(&p.source, &p.settings()).await?;
            p.checkpoint.state.lock().await.resume_token = Some(token);
            p.save_checkpoint().await?;
            info!(direction = %c.id, "Start position saved.");
        }
        let at = marks
            .find_one(doc! { "_id": &mark })
            .await
            .map_err(|e| Error::mongo(Role::Sink, "reading when the copy began", e))?
            .and_then(|d| d.get_datetime("at").ok().map(|t| t.timestamp_millis()))
            .unwrap_or(0);
        // The copying direction writes into this cluster.
        pipelines[1 - i].1.set_copy_since(at);
    }
    // The Kafka copy of each cluster's conflict log, positioned before anything is applied.
    let relays_stop = cancel.child_token();
    let mut relays = tokio::task::JoinSet::new();
    if let Some(k) = &t.conflict_topic {
        for (j, c) in clusters.iter().enumerate() {
            // Direction 1 - j writes into cluster j and records the changes that lost there.
            let relay = conflict_topic::ConflictRelay::open(
                k,
                &cfg.id,
                &c.name,
                &c.writer,
                &meta,
                telemetry[1 - j].clone(),
            )
            .await?;
            let stream = relay.start().await?;
            relays.spawn(relay.run(stream, relays_stop.clone()));
        }
    }
    info!(
        pipeline = %cfg.id,
        forward = %dirs[0].id,
        backward = %dirs[1].id,
        "Two-way sync started."
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (p, sink) in pipelines {
        let (cancel, ttl) = (cancel.clone(), t.tombstone_ttl);
        let expiry_stop = cancel.child_token();
        let expiry = {
            let (sink, stop) = (sink.clone(), expiry_stop.clone());
            tokio::spawn(async move { sink.expire_tombstones_every(ttl, stop).await })
        };
        let span = tracing::info_span!("direction", id = %p.engine.cfg.id);
        tasks.spawn(
            async move {
                let r = p.clone().run().await;
                if r.is_err() {
                    cancel.cancel();
                }
                expiry_stop.cancel();
                let _ = expiry.await;
                r
            }
            .instrument(span),
        );
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap_or_else(|e| Err(Error::Internal(format!("direction panicked: {e}"))));
        if result.is_ok() {
            result = r;
        }
    }
    relays_stop.cancel();
    while relays.join_next().await.is_some() {}
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_swap_the_clusters_and_split_the_namespaces() {
        let text = r#"
id = "p"
mode = "full+incremental"
[source]
uri = "mongodb://a/"
[sink]
uri = "mongodb://b/"
[two_way]
names = ["east", "west"]
copy_from = "west"
only_forward = ["x.*"]
only_backward = ["y.*"]
"#;
        let cfg = PipelineConfig::parse(text, std::path::Path::new("p.toml")).unwrap();
        let [f, b] = directions(&cfg);
        assert_eq!(f.id, "p.east-west");
        assert_eq!(b.id, "p.west-east");
        assert_eq!(f.mongo_source().unwrap().uri, "mongodb://a/");
        assert_eq!(b.mongo_source().unwrap().uri, "mongodb://b/");
        assert_eq!(f.mode, SyncMode::Incremental);
        assert_eq!(b.mode, SyncMode::FullAndIncremental);
        assert_eq!(f.scope.exclude, vec!["y.*".to_string()]);
        assert_eq!(b.scope.exclude, vec!["x.*".to_string()]);
        assert!(!f.stream.ddl && !b.stream.ddl);
    }

    #[test]
    fn two_way_refuses_renames_and_one_sided_endpoints() {
        let base = "[source]\nuri = \"mongodb://a/\"\n[sink]\nuri = \"mongodb://b/\"\n[two_way]\n";
        let err = PipelineConfig::parse(
            &format!("[rename]\n\"a.b\" = \"c.d\"\n{base}"),
            std::path::Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("p.toml:1: rename"), "{err}");
        let err = PipelineConfig::parse(
            &format!("mode = \"full\"\n{base}"),
            std::path::Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(": mode:"), "{err}");
    }
}
