//! The Kafka copy of the conflict log (`[two_way.conflict_topic]`): one relay per cluster
//! follows `<meta>.conflicts` with a change stream and publishes each new record. Its position
//! is saved in `<meta>.two_way` only after the brokers have acknowledged every record before
//! it, so a crash repeats records (their `_id` tells repeats apart) and never skips one. The
//! relay runs beside the directions: a broker outage delays the topic, never the replication.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document, RawDocumentBuf};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::Client;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::ConflictTopicConfig;
use crate::backoff::Backoff;
use crate::codec::to_json;
use crate::config::{JsonFlavour, UpdateMode};
use crate::connectors::kafka::{check_producer, client_config, KafkaError, DURABLE_PRODUCER};
use crate::connectors::mongo::stream::{open, token_to_doc, StartPosition, StreamSettings};
use crate::core::Namespace;
use crate::error::{Error, Result, Role};
use crate::telemetry::Telemetry;
use crate::transform::scope::WatchTarget;

/// Records published per round trip at most.
const BATCH: usize = 500;

/// Publishes one cluster's conflict records.
pub(crate) struct ConflictRelay {
    /// The cluster whose `<meta>.conflicts` this relay follows.
    cluster: String,
    client: Client,
    meta_db: String,
    /// `_id` of the relay's position in `<meta>.two_way`.
    mark: String,
    topic: String,
    json: JsonFlavour,
    producer: FutureProducer,
    /// The direction that writes into this cluster (and so records its conflicts).
    telemetry: Arc<Telemetry>,
}

impl ConflictRelay {
    /// A relay for `cluster`'s records; fails with one line when the brokers cannot be reached
    /// or refuse the credentials.
    pub(crate) async fn open(
        cfg: &ConflictTopicConfig,
        pipeline: &str,
        cluster: &str,
        client: &Client,
        meta_db: &str,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        let producer: FutureProducer = client_config(
            &cfg.brokers,
            &cfg.security,
            &cfg.options,
            &[
                ("message.timeout.ms", "30000".into()),
                ("compression.type", "zstd".into()),
            ],
            DURABLE_PRODUCER,
        )
        .create()
        .map_err(|e| KafkaError::Invalid {
            what: "two_way.conflict_topic",
            name: pipeline.to_string(),
            detail: format!("producer: {e}"),
        })?;
        check_producer(
            &producer,
            "two_way.conflict_topic",
            pipeline,
            &cfg.brokers,
            Duration::from_secs(10),
        )
        .await?;
        Ok(Self {
            cluster: cluster.to_string(),
            client: client.clone(),
            meta_db: meta_db.to_string(),
            mark: format!("{pipeline}.conflict_topic.{cluster}"),
            topic: cfg.topic(pipeline),
            json: cfg.json,
            producer,
            telemetry,
        })
    }

    fn marks(&self) -> mongodb::Collection<Document> {
        self.client.database(&self.meta_db).collection("two_way")
    }

    fn settings(&self) -> StreamSettings {
        StreamSettings {
            target: WatchTarget::Collection(Namespace::parse(&format!(
                "{}.conflicts",
                self.meta_db
            ))),
            update_mode: UpdateMode::Delta,
            ddl: false,
            batch_size: BATCH as u32,
            max_await: Duration::from_millis(500),
            pre_images: None,
        }
    }

    /// Opens the change stream after the saved position. Without one (the first start), the
    /// position of now is saved first: records from then on are published.
    pub(crate) async fn start(&self) -> Result<ChangeStream<RawDocumentBuf>> {
        let ctx = "reading the conflict topic's position";
        let saved = self
            .marks()
            .find_one(doc! { "_id": &self.mark })
            .await
            .map_err(|e| Error::mongo(Role::Sink, ctx, e))?
            .and_then(|d| d.get_document("token").ok().cloned());
        let start = match saved {
            Some(t) => StartPosition::After(t),
            None => StartPosition::Now,
        };
        let stream = match open(&self.client, &self.settings(), &start, false).await {
            Err(Error::HistoryLost { detail, .. }) => {
                warn!(cluster = %self.cluster, %detail, "The conflict topic's position is gone from the change log: records written meanwhile are only in strait.conflicts; publishing from now.");
                open(&self.client, &self.settings(), &StartPosition::Now, false).await?
            }
            other => other?,
        };
        if matches!(start, StartPosition::Now) {
            self.save(stream.resume_token()).await?;
        }
        Ok(stream)
    }

    async fn save(&self, token: Option<ResumeToken>) -> Result<()> {
        let Some(token) = token else {
            return Ok(());
        };
        self.marks()
            .update_one(
                doc! { "_id": &self.mark },
                doc! { "$set": { "token": token_to_doc(&token)?, "at": bson::DateTime::now() } },
            )
            .upsert(true)
            .await
            .map_err(|e| Error::mongo(Role::Sink, "saving the conflict topic's position", e))?;
        Ok(())
    }

    /// Publishes records until `cancel`, opening the stream again after errors.
    pub(crate) async fn run(self, first: ChangeStream<RawDocumentBuf>, cancel: CancellationToken) {
        let mut stream = Some(first);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        while !cancel.is_cancelled() {
            let s = match stream.take() {
                Some(s) => s,
                None => match self.start().await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(cluster = %self.cluster, error = %e, "Conflict topic: cannot read strait.conflicts; trying again.");
                        if !backoff.wait(Some(&cancel)).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.follow(s, &cancel).await {
                Ok(()) => return,
                Err(e) => {
                    self.telemetry.errors.fetch_add(1, Relaxed);
                    warn!(cluster = %self.cluster, topic = %self.topic, error = %e, "Conflict topic: publishing failed; trying again from the last published record.");
                    if !backoff.wait(Some(&cancel)).await {
                        return;
                    }
                }
            }
        }
    }

    /// One stream's life: read what is there, publish it, wait for the brokers, save.
    async fn follow(
        &self,
        mut stream: ChangeStream<RawDocumentBuf>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        info!(cluster = %self.cluster, topic = %self.topic, "Publishing conflict records.");
        let mut saved = stream.resume_token();
        while !cancel.is_cancelled() {
            let mut batch = Vec::new();
            // Each call makes at most one round trip (bounded by the stream's await time), so
            // no driver call is ever dropped half-way.
            while batch.len() < BATCH {
                match stream
                    .next_if_any()
                    .await
                    .map_err(|e| Error::mongo(Role::Sink, "reading strait.conflicts", e))?
                {
                    Some(ev) => batch.push(ev),
                    None => break,
                }
            }
            let records: Vec<_> = batch.iter().filter_map(|ev| self.record(ev)).collect();
            let sends: Vec<_> = records
                .iter()
                .map(|(key, value, ns)| {
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "strait.cluster",
                            value: Some(self.cluster.as_str()),
                        })
                        .insert(Header {
                            key: "strait.ns",
                            value: Some(ns.as_str()),
                        });
                    self.producer.send(
                        FutureRecord::to(&self.topic)
                            .key(key)
                            .payload(value)
                            .headers(headers),
                        Duration::from_secs(60),
                    )
                })
                .collect();
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| KafkaError::Delivery {
                    sink: "two_way.conflict_topic".into(),
                    topic: self.topic.clone(),
                    detail: e.to_string(),
                    retryable: true,
                })?;
            }
            self.telemetry
                .two_way
                .conflicts_published
                .fetch_add(records.len() as u64, Relaxed);
            let now = stream.resume_token();
            if now != saved {
                self.save(now.clone()).await?;
                saved = now;
            }
        }
        Ok(())
    }

    /// An inserted conflict record as (key, value, namespace); other events are skipped.
    fn record(&self, ev: &RawDocumentBuf) -> Option<(String, String, String)> {
        if ev.get_str("operationType").ok()? != "insert" {
            return None;
        }
        let rec = ev.get_document("fullDocument").ok()?;
        let ns = rec.get_str("ns").unwrap_or_default().to_string();
        let mut key = RawDocumentBuf::new();
        key.append(bson::raw::cstr!("ns"), ns.as_str());
        if let Ok(k) = rec.get_document("documentKey") {
            key.append(bson::raw::cstr!("documentKey"), k.to_owned());
        }
        Some((
            to_json(&key, self.json).to_string(),
            to_json(rec, self.json).to_string(),
            ns,
        ))
    }
}
