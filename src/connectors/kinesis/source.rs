//! The Kinesis source: every shard of a data stream carrying DynamoDB changes (in the shape of
//! Kinesis Data Streams for DynamoDB), a parent before its children after splits and merges,
//! each shard's position saved in the checkpoint.
//!
//! The stream is the copy: with `mode` copying (the default), a first start reads every shard
//! from its oldest record; with `mode = "incremental"` it reads what arrives from
//! `stream.start_at` on.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kinesis::types::ShardIteratorType;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::config::KinesisSourceConfig;
use super::stream_arn;
use crate::checkpoint::Checkpointer;
use crate::config::{PipelineConfig, SinkEndpoint, StartAt};
use crate::connectors::aws::client::classify;
use crate::connectors::aws::dead_letter;
use crate::connectors::aws::follow::{
    load_state, no_iterator, save_state, FollowSettings, Follower, PlannedSource, ShardRead,
    ShardRecord, ShardedStream,
};
use crate::connectors::aws::shards::{self, ListedShard, ShardProgress};
use crate::connectors::aws::AwsError;
use crate::connectors::dynamodb::record::{Shape, StreamChange};
use crate::connectors::{DeadLetters, Source, SourceItem};
use crate::core::{Namespace, Position};
use crate::error::{Error, Result, Role};
use crate::telemetry::{PipelineState, Telemetry};

/// The source's part of the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct KinesisState {
    /// The stream the positions belong to (a stream deleted and created again is a new one).
    pub(crate) stream_arn: String,
    /// Each shard's position.
    #[serde(default)]
    pub(crate) shards: BTreeMap<String, ShardProgress>,
}

/// Kinesis' calls, for the follower.
pub(crate) struct KinesisApi {
    client: aws_sdk_kinesis::Client,
    stream_arn: String,
    target: String,
    database: String,
    origin_attribute: String,
}

/// A Kinesis data stream as a source.
pub(crate) struct KinesisSource {
    cfg: Arc<PipelineConfig>,
    checkpoint: Arc<Checkpointer>,
    follower: Arc<Follower<KinesisApi>>,
    telemetry: Arc<Telemetry>,
    /// Where refused changes and unreadable records go, when configured.
    dead_letters: Option<Arc<dyn DeadLetters>>,
}

impl KinesisSource {
    /// Connects and checks that the stream exists.
    pub(crate) async fn open(
        src: &KinesisSourceConfig,
        cfg: &Arc<PipelineConfig>,
        checkpoint: Arc<Checkpointer>,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self> {
        let access = src.access();
        let sdk = access.sdk_config().await;
        let target = access.describe(sdk.region());
        let client = aws_sdk_kinesis::Client::new(&sdk);
        let stream_arn = stream_arn(&client, &src.stream, Role::Source, &target).await?;
        let api = KinesisApi {
            client,
            stream_arn,
            target,
            database: src.database.clone(),
            origin_attribute: src.origin_attribute.clone(),
        };
        let settings = FollowSettings {
            poll_interval: src.poll_interval,
            shard_refresh: src.shard_refresh,
            ignore_origin: src.ignore_origin.clone(),
        };
        // The queue lives with the table the records are written to.
        let queue_access = match &cfg.sink {
            SinkEndpoint::Dynamodb(d) => d.access(),
            _ => access,
        };
        let keys = dead_letter::DeadLetterKeys {
            file: src.dead_letter_file.as_deref(),
            queue: src.dead_letter_queue.as_deref(),
            kafka: src.dead_letter_kafka.as_ref(),
        };
        let dead_letters = dead_letter::open(keys, &queue_access, &cfg.id, telemetry).await?;
        Ok(Self {
            cfg: cfg.clone(),
            checkpoint,
            follower: Arc::new(Follower::new(api, settings, BTreeMap::new(), telemetry)),
            telemetry: telemetry.clone(),
            dead_letters,
        })
    }

    fn stream_arn(&self) -> &str {
        &self.follower.stream.stream_arn
    }

    async fn plan(&self) -> Result<KinesisState> {
        let listed = self.follower.stream.list_shards().await?;
        let shards = if self.cfg.mode.copies() {
            shards::initial(&listed, None, false)
        } else {
            match self.cfg.stream.start_at {
                StartAt::Now => shards::initial(
                    &listed,
                    Some(bson::DateTime::now().timestamp_millis()),
                    true,
                ),
                StartAt::Timestamp(t) => shards::initial(&listed, Some(i64::from(t) * 1000), false),
            }
        };
        info!(shards = listed.len(), "Planned the stream positions.");
        Ok(KinesisState {
            stream_arn: self.stream_arn().to_string(),
            shards,
        })
    }

    async fn save(&self) -> Result<()> {
        let state = KinesisState {
            stream_arn: self.stream_arn().to_string(),
            shards: self.follower.shards.lock().await.clone(),
        };
        save_state(&self.checkpoint, &state).await
    }
}

#[async_trait]
impl ShardedStream for KinesisApi {
    async fn list_shards(&self) -> Result<Vec<ListedShard>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            // With a next token the stream must not be named again.
            let req = self.client.list_shards();
            let req = match &next {
                Some(t) => req.next_token(t),
                None => req.stream_arn(&self.stream_arn),
            };
            let resp = req
                .send()
                .await
                .map_err(|e| classify(e, Role::Source, "listing the stream's shards", &self.target))
                .map_err(Error::Aws)?;
            for s in resp.shards() {
                out.push(ListedShard {
                    id: s.shard_id.clone(),
                    parents: s
                        .parent_shard_id
                        .iter()
                        .chain(s.adjacent_parent_shard_id.iter())
                        .cloned()
                        .collect(),
                    closed: s
                        .sequence_number_range
                        .as_ref()
                        .and_then(|r| r.ending_sequence_number.as_ref())
                        .is_some(),
                });
            }
            match resp.next_token {
                Some(t) => next = Some(t),
                None => break,
            }
        }
        Ok(out)
    }

    async fn iterator(
        &self,
        shard: &str,
        after: Option<&str>,
    ) -> std::result::Result<String, AwsError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard);
        let req = match after {
            Some(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let resp = req.send().await.map_err(|e| {
            classify(
                e,
                Role::Source,
                format!("opening shard {shard}"),
                &self.target,
            )
        })?;
        resp.shard_iterator.ok_or_else(|| no_iterator(shard))
    }

    async fn read(&self, shard: &str, iterator: &str) -> std::result::Result<ShardRead, AwsError> {
        let resp = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(1000)
            .send()
            .await
            .map_err(|e| {
                classify(
                    e,
                    Role::Source,
                    format!("reading shard {shard}"),
                    &self.target,
                )
            })?;
        let records = resp
            .records
            .into_iter()
            .map(|rec| {
                let arrived_ms = rec
                    .approximate_arrival_timestamp
                    .and_then(|t| t.to_millis().ok());
                let data = rec.data.into_inner();
                let decoded = StreamChange::from_json(&data);
                ShardRecord::new(
                    shard,
                    rec.sequence_number,
                    decoded,
                    arrived_ms,
                    &self.origin_attribute,
                    Some(data),
                    |c, token| {
                        let table = c.table.as_deref().unwrap_or("items");
                        c.to_event(token, &self.database, table, Shape::DynamoJson)
                    },
                )
            })
            .collect();
        Ok(ShardRead {
            records,
            next: resp.next_shard_iterator,
            behind_ms: resp.millis_behind_latest,
        })
    }
}

#[async_trait]
impl PlannedSource for KinesisSource {
    /// Loads the saved positions, or plans them when there are none.
    async fn prepare(&self) -> Result<bool> {
        let state = match load_state::<KinesisState>(&self.checkpoint, &self.cfg.id).await? {
            Some(s) if s.stream_arn != self.stream_arn() => {
                return Err(Error::HistoryLost {
                    position: format!("stream {}", s.stream_arn),
                    detail: format!(
                        "the stream is now {} (it was deleted and created again)",
                        self.stream_arn()
                    ),
                })
            }
            Some(s) => s,
            None => self.plan().await?,
        };
        *self.follower.shards.lock().await = state.shards;
        self.save().await?;
        Ok(true)
    }

    /// Starts over from the plan (a lost position with `on_history_lost = "resync"`).
    async fn replan(&self) -> Result<()> {
        let s = self.plan().await?;
        *self.follower.shards.lock().await = s.shards;
        self.save().await
    }

    fn copied(&self) -> Vec<Namespace> {
        // The stream from its trim horizon is the copy: the target keeps what it has.
        Vec::new()
    }
}

#[async_trait]
impl Source for Arc<KinesisSource> {
    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        self.dead_letters.clone()
    }

    async fn run(&self, tx: mpsc::Sender<SourceItem>, stop: CancellationToken) -> Result<()> {
        self.telemetry.set_state(PipelineState::Streaming);
        self.follower.run(&tx, &stop).await
    }

    async fn commit(&self, durable: &[Position], _last: bool) -> Result<()> {
        for p in durable {
            self.follower.commit(&p.token).await;
        }
        self.save().await
    }
}
