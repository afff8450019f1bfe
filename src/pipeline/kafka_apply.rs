//! The Kafka-to-MongoDB pipeline: consumed records are decoded into change events, filtered
//! and renamed like streamed ones, and written by the same ordered lanes. Each partition has
//! its own ack window, and its offset is committed to the consumer group only past records
//! whose writes are all durable. Records that cannot be decoded or applied go to the
//! dead-letter topic, which also counts as done.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bson::{RawDocumentBuf, Timestamp};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ack::{AckWindow, Position};
use super::lanes::{lane_of, run_lane, DeadLetters, LaneItem};
use crate::config::kafka::{DocumentWrite, KafkaSourceConfig};
use crate::config::{PipelineConfig, SourceEndpoint};
use crate::connect::connect;
use crate::error::{Error, Result, Role};
use crate::event::Namespace;
use crate::format::{decode, Decoded, DocumentOptions, RecordMeta};
use crate::kafka::{client_config, KafkaError};
use crate::sink::mongo::{ops_for_event, MongoSink, WriteOp};
use crate::source::kafka::{ConsumedRecord, ConsumerItem, GroupConsumer};
use crate::telemetry::{PipelineState, Telemetry};
use crate::transform::{Transforms, Verdict};

/// Writes records that cannot be applied to the dead-letter topic, with Kafka Connect's
/// header names.
pub struct DeadLetterTopic {
    topic: String,
    producer: FutureProducer,
    telemetry: Arc<Telemetry>,
}

impl DeadLetterTopic {
    /// Sends a record with the reason, and waits until the broker has it.
    pub async fn send(&self, rec: &ConsumedRecord, reason: &str) -> Result<()> {
        warn!(topic = %rec.topic, partition = rec.partition, offset = rec.offset, %reason, dlq = %self.topic, "Record sent to the dead-letter topic.");
        let mut headers = OwnedHeaders::new();
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let (partition, offset) = (rec.partition.to_string(), rec.offset.to_string());
        for (k, v) in [
            ("__connect.errors.topic", rec.topic.as_str()),
            ("__connect.errors.partition", &partition),
            ("__connect.errors.offset", &offset),
            ("__connect.errors.exception.class.name", "strait"),
            ("__connect.errors.exception.message", reason),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut r: FutureRecord<'_, Vec<u8>, Vec<u8>> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &rec.key {
            r = r.key(k);
        }
        if let Some(v) = &rec.value {
            r = r.payload(v);
        }
        match self.producer.send(r, Duration::from_secs(60)).await {
            Ok(_) => {
                self.telemetry.kafka.dead_lettered.fetch_add(1, Relaxed);
                Ok(())
            }
            Err((e, _)) => Err(KafkaError::Delivery {
                sink: "dead-letter".into(),
                topic: self.topic.clone(),
                detail: e.to_string(),
                retryable: true,
            }
            .into()),
        }
    }
}

/// A partition's ack window and the offset last committed for it.
struct Partition {
    window: Arc<AckWindow>,
    committed: Option<i64>,
}

fn offset_pos(offset: i64, ts_ms: Option<i64>) -> Position {
    let mut token = RawDocumentBuf::new();
    token.append(bson::raw::cstr!("o"), offset);
    Position {
        token,
        time: ts_ms.map(|ms| Timestamp {
            time: (ms / 1000).max(0) as u32,
            increment: 0,
        }),
    }
}

/// Runs a pipeline whose source is Kafka until cancelled or failed.
pub async fn run(
    cfg: Arc<PipelineConfig>,
    telemetry: Arc<Telemetry>,
    control: Arc<crate::control::Control>,
    cancel: CancellationToken,
) -> Result<()> {
    let SourceEndpoint::Kafka(kcfg) = &cfg.source else {
        return Err(Error::Internal("not a Kafka source".into()));
    };
    let sink_cfg = cfg
        .mongo_sink()
        .ok_or_else(|| Error::Internal("a Kafka source needs a MongoDB sink".into()))?;
    let sink = MongoSink::new(connect(sink_cfg, Role::Sink).await?)
        .with_telemetry(telemetry.clone())
        .with_cancel(cancel.clone());
    let dlq = Arc::new(DeadLetterTopic {
        topic: kcfg.dlq_topic(&cfg.id),
        producer: client_config(
            &kcfg.brokers,
            &kcfg.security,
            &kcfg.options,
            &[("message.timeout.ms", "0".into())],
            &[("enable.idempotence", "true"), ("acks", "all")],
        )
        .create()
        .map_err(|e| KafkaError::Invalid {
            what: "kafka source",
            name: cfg.id.clone(),
            detail: format!("dead-letter producer: {e}"),
        })?,
        telemetry: telemetry.clone(),
    });
    let (tx, mut rx) = mpsc::channel::<ConsumerItem>(1024);
    let consumer =
        crate::source::kafka::open(kcfg, &cfg.id, tx.clone(), sink_cfg.connect_timeout).await?;
    let stop = cancel.child_token();
    let poller = {
        let (consumer, telemetry, stop) = (consumer.clone(), telemetry.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || crate::source::kafka::poll_loop(consumer, tx, telemetry, stop))
            .map_err(|e| Error::Internal(format!("consumer thread: {e}")))?
    };
    telemetry.set_state(PipelineState::Streaming);

    let mut lanes = JoinSet::new();
    let mut senders = Vec::with_capacity(cfg.apply.lanes);
    let default_window = Arc::new(AckWindow::new(None));
    for _ in 0..cfg.apply.lanes {
        let (ltx, lrx) = mpsc::channel::<LaneItem>(cfg.apply.queue_depth);
        senders.push(ltx);
        let (sink, window, telemetry, stop, dlq) = (
            sink.clone(),
            default_window.clone(),
            telemetry.clone(),
            stop.clone(),
            dlq.clone(),
        );
        let batch = cfg.apply.batch_docs;
        lanes.spawn(async move {
            let r = run_lane(
                lrx,
                sink,
                window,
                telemetry,
                batch,
                Some(dlq as Arc<dyn DeadLetters>),
            )
            .await;
            if r.is_err() {
                stop.cancel();
            }
            r
        });
    }
    let transforms = Transforms::from_config(&cfg);
    // In-flight bytes (KiB permits) between the consumer and durable writes, as for streams.
    let budget = Arc::new(tokio::sync::Semaphore::new(
        cfg.apply.max_inflight_mib as usize * 1024,
    ));
    let doc_opts = DocumentOptions {
        namespace: kcfg.namespace.as_deref().map(Namespace::parse),
        topic_prefix: kcfg.topic_prefix.clone(),
        insert: kcfg.write == DocumentWrite::Insert,
        key_fields: kcfg.key_fields.clone(),
    };
    let mut parts: HashMap<(String, i32), Partition> = HashMap::new();
    let mut tick = tokio::time::interval(cfg.checkpoint.interval);
    let mut result = Ok(());
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => commit(&consumer, &mut parts, CommitMode::Async, &telemetry),
            item = rx.recv() => match item {
                None => break,
                Some(ConsumerItem::Revoke(reply)) => {
                    let offsets = drain(&mut parts, &stop).await;
                    parts.clear();
                    let _ = reply.send(offsets);
                }
                Some(ConsumerItem::Record(rec)) => {
                    let r = apply_record(&cfg, kcfg, &transforms, &doc_opts, &dlq, &senders, &mut parts, &control, &budget, &stop, rec).await;
                    if let Err(e) = r {
                        result = Err(e);
                        stop.cancel();
                        break;
                    }
                }
            },
        }
    }
    drop(senders);
    let mut lane_result = Ok(());
    while let Some(r) = lanes.join_next().await {
        lane_result = lane_result
            .and(r.unwrap_or_else(|e| Err(Error::Internal(format!("lane panicked: {e}")))));
    }
    stop.cancel();
    // Everything the lanes finished is durable: commit it before leaving the group.
    let c = consumer.clone();
    let offsets = committable(&mut parts);
    if offsets.count() > 0 {
        let committed =
            tokio::task::spawn_blocking(move || c.commit(&offsets, CommitMode::Sync)).await;
        match committed {
            Ok(Ok(())) => info!("Offsets committed."),
            Ok(Err(e)) => {
                warn!(error = %e, "Final offset commit failed; the next run re-applies some records (idempotently).")
            }
            Err(e) => warn!(error = %e, "Final offset commit panicked."),
        }
    }
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
    // Closing leaves the group (a blocking call, and the last reference closes it).
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    telemetry.set_state(PipelineState::Stopped);
    result.and(lane_result)
}

/// Waits until every record handed to the lanes is written; returns the offsets to commit.
async fn drain(
    parts: &mut HashMap<(String, i32), Partition>,
    stop: &CancellationToken,
) -> TopicPartitionList {
    for p in parts.values() {
        tokio::select! {
            _ = p.window.wait_drained() => {}
            _ = stop.cancelled() => break,
        }
    }
    committable(parts)
}

/// The offsets past everything durable, for partitions that moved since the last commit.
fn committable(parts: &mut HashMap<(String, i32), Partition>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), p) in parts.iter_mut() {
        let Some(pos) = p.window.committed() else {
            continue;
        };
        let Ok(offset) = pos.token.get_i64("o") else {
            continue;
        };
        if p.committed == Some(offset) {
            continue;
        }
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
            .is_ok()
        {
            p.committed = Some(offset);
        }
    }
    tpl
}

fn commit(
    consumer: &GroupConsumer,
    parts: &mut HashMap<(String, i32), Partition>,
    mode: CommitMode,
    telemetry: &Telemetry,
) {
    let tpl = committable(parts);
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            telemetry.kafka.commits.fetch_add(1, Relaxed);
        }
        Err(e) => {
            // Not committed now: forget what was recorded so the next tick tries again.
            for p in parts.values_mut() {
                p.committed = None;
            }
            warn!(error = %e, "Offset commit failed; retrying at the next interval.");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn apply_record(
    cfg: &PipelineConfig,
    kcfg: &KafkaSourceConfig,
    transforms: &Transforms,
    doc_opts: &DocumentOptions,
    dlq: &Arc<DeadLetterTopic>,
    lanes: &[mpsc::Sender<LaneItem>],
    parts: &mut HashMap<(String, i32), Partition>,
    control: &crate::control::Control,
    budget: &Arc<tokio::sync::Semaphore>,
    stop: &CancellationToken,
    rec: ConsumedRecord,
) -> Result<()> {
    let part = parts
        .entry((rec.topic.clone(), rec.partition))
        .or_insert_with(|| Partition {
            window: Arc::new(AckWindow::new(None)),
            committed: None,
        });
    let window = part.window.clone();
    tokio::select! {
        biased;
        _ = window.wait_len_at_most(cfg.apply.lanes * cfg.apply.queue_depth * 2) => {}
        _ = stop.cancelled() => return Ok(()),
    }
    let pos = offset_pos(rec.offset, rec.timestamp_ms);
    let meta = RecordMeta {
        topic: &rec.topic,
        partition: rec.partition,
        offset: rec.offset,
        timestamp_ms: rec.timestamp_ms,
    };
    let size = rec.value.as_ref().map_or(0, Vec::len);
    let decoded = if size > kcfg.max_record_bytes {
        Err(format!(
            "record value is {size} bytes, over source.max_record_bytes ({})",
            kcfg.max_record_bytes
        ))
    } else {
        decode(
            kcfg.format,
            rec.key.as_deref(),
            rec.value.as_deref(),
            meta,
            doc_opts,
        )
        .map_err(|e| e.to_string())
    };
    let (ops, op, lane_key) = match decoded {
        Err(reason) => {
            dlq.send(&rec, &reason).await?;
            window.push_done(pos);
            return Ok(());
        }
        Ok(Decoded::Skip) => {
            window.push_done(pos);
            return Ok(());
        }
        Ok(Decoded::InsertIfAbsent(ns, doc)) => {
            let target = transforms.target_ns(&ns);
            if !transforms.scope.includes(&ns) {
                window.push_done(pos);
                return Ok(());
            }
            let ev = crate::event::ChangeEvent::snapshot(&ns, doc.clone())
                .map_err(|e| Error::Internal(e.to_string()))?;
            let lane = lane_of(&ev, cfg.apply.lane_by, lanes.len());
            (
                vec![WriteOp::InsertIfAbsent { ns: target, doc }],
                Some(crate::event::OpType::Insert),
                lane,
            )
        }
        Ok(Decoded::Event(mut ev)) => {
            if transforms.apply(&mut ev) == Verdict::Skip {
                window.push_done(pos);
                return Ok(());
            }
            if !ev.op.is_data() {
                if !cfg.stream.ddl {
                    window.push_done(pos);
                    return Ok(());
                }
                // DDL is a barrier for this process's partitions: what is before it is written
                // first.
                for p in parts.values() {
                    tokio::select! {
                        _ = p.window.wait_drained() => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                }
                let sink_result = apply_ddl(cfg, &ev).await;
                if let Err(e) = sink_result {
                    if e.is_retryable() {
                        return Err(e);
                    }
                    dlq.send(&rec, &e.to_string()).await?;
                }
                window.push_done(pos);
                return Ok(());
            }
            match data_writes(&ev, cfg.stream.update_mode) {
                Ok(ops) => {
                    let lane = lane_of(&ev, cfg.apply.lane_by, lanes.len());
                    (ops, Some(ev.op.clone()), lane)
                }
                Err(reason) => {
                    dlq.send(&rec, &reason).await?;
                    window.push_done(pos);
                    return Ok(());
                }
            }
        }
    };
    if ops.is_empty() {
        window.push_done(pos);
        return Ok(());
    }
    if !control.admit(1, stop).await {
        return Ok(());
    }
    let max_kib = cfg.apply.max_inflight_mib as usize * 1024;
    let kib = (ops.iter().map(|o| o.size()).sum::<usize>()
        + rec.value.as_ref().map_or(0, Vec::len))
        / 1024
        + 1;
    let permit = tokio::select! {
        biased;
        permit = budget.clone().acquire_many_owned(kib.min(max_kib) as u32) => {
            permit.map_err(|_| Error::Internal("budget closed".into()))?
        }
        _ = stop.cancelled() => return Ok(()),
    };
    let seq = window.push(pos, 1);
    let item = LaneItem {
        seq,
        op,
        ops,
        budget: Some(permit),
        window: Some(window),
        origin: Some(Arc::new(rec)),
    };
    // A closed lane has failed and reports its own error.
    let _ = lanes[lane_key].send(item).await;
    Ok(())
}

/// The writes of a data event. A snapshot insert (the capture's initial copy) is a plain
/// insert, much cheaper than an upsert: if the document exists, it holds this state or a later
/// one whose events follow in this partition, so leaving it is as right as replacing it.
fn data_writes(
    ev: &crate::event::ChangeEvent,
    mode: crate::config::UpdateMode,
) -> std::result::Result<Vec<WriteOp>, String> {
    match &ev.full_document {
        Some(doc) if ev.is_snapshot() && ev.op == crate::event::OpType::Insert => {
            Ok(vec![WriteOp::InsertIfAbsent {
                ns: ev.ns.clone(),
                doc: doc.clone(),
            }])
        }
        _ => ops_for_event(ev, mode).map_err(|e| e.to_string()),
    }
}

async fn apply_ddl(cfg: &PipelineConfig, ev: &crate::event::ChangeEvent) -> Result<()> {
    // DDL is rare: a short-lived client keeps the lanes' pool for data.
    let sink_cfg = cfg.mongo_sink().expect("checked at start");
    let client = connect(sink_cfg, Role::Sink).await?;
    MongoSink::new(client).apply_ddl(ev).await
}

impl DeadLetters for DeadLetterTopic {
    fn dead_letter<'a>(
        &'a self,
        rec: &'a ConsumedRecord,
        reason: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
        Box::pin(self.send(rec, reason))
    }
}
