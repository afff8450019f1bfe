//! The Kinesis sink: each DynamoDB change as a record in the shape of Kinesis Data Streams for
//! DynamoDB, the item's key as partition key, written with `PutRecords`.
//!
//! One item's records keep their order: an item's key always hashes to the same shard, a lane
//! holds every change of its items, and a `PutRecords` call holds at most one record per item
//! (Kinesis does not promise order inside one call when part of it fails); the next record of
//! an item goes in a later call. Records a call did not take (throttled shards) are sent again
//! before anything after them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::config::KinesisSinkConfig;
use crate::backoff::Backoff;
use crate::config::PipelineConfig;
use crate::connectors::aws::client::{classify, failure_of, Failure};
use crate::connectors::aws::AwsError;
use crate::connectors::dynamodb::record::{item_to_json, StreamChange};
use crate::connectors::{BatchPolicy, Ordering, Refusal, Sink, Written};
use crate::core::{ChangeEvent, OpType};
use crate::error::{Error, Result, Role};

/// Most bytes in one `PutRecords` call (data and partition keys).
const MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
/// Most bytes in one record (data and partition key).
const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Longest partition key.
const MAX_PARTITION_KEY: usize = 256;

/// A Kinesis data stream as a sink.
pub(crate) struct KinesisSink {
    name: String,
    cfg: KinesisSinkConfig,
    client: aws_sdk_kinesis::Client,
    stream_arn: String,
    target: String,
    lanes: usize,
    cancel: CancellationToken,
}

/// One record to put.
struct Entry {
    key: String,
    data: Vec<u8>,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

/// The partition key of an item: its key attributes as DynamoDB JSON, or, when longer than
/// Kinesis takes, a stable hash of them (FNV-1a: the same key maps to the same shard in every
/// version of strait, so restarts keep an item on one shard).
pub(crate) fn partition_key(keys_json: &str) -> String {
    if keys_json.len() <= MAX_PARTITION_KEY {
        return keys_json.to_string();
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for b in keys_json.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("fnv1a:{h:016x}")
}

/// Splits records into calls: at most one record per key in a call (its first record goes in
/// the first call, its second in the second...), each call under the count and size limits.
fn rounds(entries: Vec<Entry>, per_call: usize) -> Vec<Vec<Entry>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut by_round: Vec<Vec<Entry>> = Vec::new();
    for e in entries {
        let n = seen.entry(e.key.clone()).or_insert(0);
        if by_round.len() <= *n {
            by_round.push(Vec::new());
        }
        by_round[*n].push(e);
        *n += 1;
    }
    let mut calls = Vec::new();
    for round in by_round {
        let mut call: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for e in round {
            if !call.is_empty() && (call.len() >= per_call || bytes + e.bytes() > MAX_CALL_BYTES) {
                calls.push(std::mem::take(&mut call));
                bytes = 0;
            }
            bytes += e.bytes();
            call.push(e);
        }
        if !call.is_empty() {
            calls.push(call);
        }
    }
    calls
}

impl KinesisSink {
    /// Connects and checks that the stream exists.
    pub(crate) async fn open_checked(
        name: &str,
        cfg: &KinesisSinkConfig,
        pipeline: &PipelineConfig,
        cancel: &CancellationToken,
    ) -> Result<Arc<Self>> {
        let access = cfg.access();
        let sdk = access.sdk_config().await;
        let target = access.describe(sdk.region());
        let client = aws_sdk_kinesis::Client::new(&sdk);
        let stream_arn = super::stream_arn(&client, &cfg.stream, Role::Sink, &target).await?;
        Ok(Arc::new(Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            client,
            stream_arn,
            target,
            lanes: pipeline.apply.lanes,
            cancel: cancel.clone(),
        }))
    }

    /// Puts one call's records until Kinesis has taken them all, sending again those it did
    /// not take (at most one per key, so their order is kept).
    async fn put(&self, mut call: Vec<Entry>) -> Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !call.is_empty() {
            let records = call
                .iter()
                .map(|e| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&e.key)
                        .data(Blob::new(e.data.clone()))
                        .build()
                        .map_err(|e| Error::Internal(format!("PutRecords entry: {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let resp = self
                .client
                .put_records()
                .stream_arn(&self.stream_arn)
                .set_records(Some(records))
                .send()
                .await
                .map_err(|e| {
                    classify(
                        e,
                        Role::Sink,
                        format!("putting records into {}", self.cfg.stream),
                        &self.target,
                    )
                });
            match resp {
                Ok(r) if r.failed_record_count.unwrap_or(0) == 0 => return Ok(()),
                Ok(r) => {
                    let mut first: Option<(String, String)> = None;
                    let mut left = Vec::new();
                    for (e, res) in call.into_iter().zip(r.records) {
                        if let Some(code) = res.error_code {
                            let failure = failure_of(&code, false);
                            if !matches!(failure, Failure::Throttled | Failure::Transient) {
                                return Err(Error::Aws(AwsError::Call {
                                    role: Role::Sink,
                                    context: format!("putting records into {}", self.cfg.stream),
                                    failure,
                                    code,
                                    message: res.error_message.unwrap_or_default(),
                                }));
                            }
                            first.get_or_insert((code, res.error_message.unwrap_or_default()));
                            left.push(e);
                        }
                    }
                    if let Some((code, message)) = first {
                        warn!(sink = %self.name, failed = left.len(), %code, %message, "Kinesis did not take every record; sending those again.");
                    }
                    call = left;
                }
                Err(e) if e.is_retryable() => {
                    warn!(sink = %self.name, error = %e, "PutRecords failed; retrying.");
                }
                Err(e) => return Err(Error::Aws(e)),
            }
            if !backoff.wait(Some(&self.cancel)).await {
                return Err(Error::Stopped);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for KinesisSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "kinesis"
    }

    fn describe(&self) -> String {
        format!("Kinesis stream {} at {}", self.cfg.stream, self.target)
    }

    fn takes(&self, op: &OpType) -> bool {
        matches!(
            op,
            OpType::Insert | OpType::Update | OpType::Replace | OpType::Delete
        )
    }

    fn ordering(&self) -> Ordering {
        Ordering::ByKey { lanes: self.lanes }
    }

    fn batching(&self) -> BatchPolicy {
        BatchPolicy {
            max_events: 2_000,
            max_bytes: 16 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }

    async fn write(&self, batch: &[Arc<ChangeEvent>]) -> Result<Written> {
        let mut written = Written::default();
        let mut entries = Vec::with_capacity(batch.len());
        for (index, ev) in batch.iter().enumerate() {
            if !self.takes(&ev.op) {
                continue;
            }
            let change = match StreamChange::from_event(ev) {
                Ok(c) => c,
                Err(reason) => {
                    written.refused.push(Refusal {
                        index,
                        error: Error::User(format!("{}: {reason}", self.name)),
                    });
                    continue;
                }
            };
            let key = partition_key(&item_to_json(&change.keys).to_string());
            let data = serde_json::to_vec(&change.to_json())
                .map_err(|e| Error::Internal(format!("Kinesis record: {e}")))?;
            let e = Entry { key, data };
            if e.bytes() > MAX_RECORD_BYTES {
                written.refused.push(Refusal {
                    index,
                    error: Error::User(format!(
                        "{}: the record is {} bytes; Kinesis takes at most {MAX_RECORD_BYTES}",
                        self.name,
                        e.bytes()
                    )),
                });
                continue;
            }
            entries.push(e);
        }
        for call in rounds(entries, self.cfg.batch_records) {
            self.put(call).await?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose data is its index (padded to `size` bytes).
    fn entry(index: usize, key: &str, size: usize) -> Entry {
        let mut data = index.to_string().into_bytes();
        data.resize(size.max(data.len()), b' ');
        Entry {
            key: key.into(),
            data,
        }
    }

    fn index(e: &Entry) -> usize {
        String::from_utf8_lossy(&e.data).trim().parse().unwrap()
    }

    #[test]
    fn a_call_holds_one_record_per_key_in_order() {
        let entries = vec![
            entry(0, "a", 1),
            entry(1, "b", 1),
            entry(2, "a", 1),
            entry(3, "c", 1),
            entry(4, "a", 1),
            entry(5, "b", 1),
        ];
        let calls: Vec<Vec<usize>> = rounds(entries, 500)
            .into_iter()
            .map(|c| c.iter().map(index).collect())
            .collect();
        assert_eq!(calls, vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }

    #[test]
    fn calls_stay_under_the_count_and_size_limits() {
        let entries: Vec<Entry> = (0..1200).map(|i| entry(i, &i.to_string(), 10)).collect();
        let sizes: Vec<usize> = rounds(entries, 500).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![500, 500, 200]);
        let entries: Vec<Entry> = (0..12)
            .map(|i| entry(i, &i.to_string(), 1_000_000))
            .collect();
        for call in rounds(entries, 500) {
            assert!(call.iter().map(Entry::bytes).sum::<usize>() <= MAX_CALL_BYTES);
        }
    }

    #[test]
    fn long_keys_hash_to_a_stable_partition_key() {
        assert_eq!(
            partition_key("{\"pk\":{\"S\":\"a\"}}"),
            "{\"pk\":{\"S\":\"a\"}}"
        );
        let long = "k".repeat(300);
        let p = partition_key(&long);
        assert!(p.len() <= MAX_PARTITION_KEY);
        assert_eq!(p, partition_key(&long));
        // Fixed forever: the same item must reach the same shard after an upgrade.
        assert_eq!(p, "fnv1a:1f2d4d02dcfcfcf1");
        assert_ne!(p, partition_key(&"k".repeat(301)));
    }
}
