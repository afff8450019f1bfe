//! The DynamoDB sink: puts each changed item's new image and deletes removed items, one item's
//! changes in order (lanes by key). Without `timestamp_attribute`, a batch keeps each item's last
//! change and writes them with `BatchWriteItem` (retrying `UnprocessedItems`); with it, every
//! change is a conditional write (last writer wins) and a change that loses is counted stale.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, PutRequest, ReturnValuesOnConditionCheckFailure, WriteRequest,
};
use bson::{RawDocument, RawDocumentBuf};
use futures::stream::{self, StreamExt};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::config::DynamoSinkConfig;
use super::item::{item_from_bson, item_to_bson, key_names, Item};
use super::mapping::document_to_item;
use crate::backoff::Backoff;
use crate::config::{PipelineConfig, SourceEndpoint};
use crate::connectors::aws::client::{classify, Failure};
use crate::connectors::aws::AwsError;
use crate::connectors::{BatchPolicy, Ordering, Refusal, Sink, Written};
use crate::core::{ChangeEvent, Namespace, OpType};
use crate::error::{Error, Result, Role};
use crate::telemetry::Telemetry;

/// Writes at once per lane (keys differ, so their order does not matter).
const CONCURRENT_WRITES: usize = 8;

/// A DynamoDB table (or the table of each event's namespace) as a sink.
pub(crate) struct DynamoSink {
    name: String,
    cfg: DynamoSinkConfig,
    client: aws_sdk_dynamodb::Client,
    target: String,
    lanes: usize,
    /// Key attribute names per table, looked up once.
    keys: Mutex<HashMap<String, Arc<Vec<String>>>>,
    cancel: CancellationToken,
    telemetry: Arc<Telemetry>,
    /// The changes are MongoDB documents (a MongoDB source), mapped to items
    /// ([`mapping`](super::mapping)); else DynamoDB JSON from a DynamoDB or Kinesis source.
    documents: bool,
}

/// What one change does to the target.
#[derive(Debug, Clone)]
enum Action {
    /// Write the whole item.
    Put(Item),
    /// Delete the item with this key; the deleted image, when known.
    Delete { key: Item, old: Option<Item> },
}

/// What a write did.
enum Outcome {
    Written,
    /// Its condition failed: the target holds a newer change (its item, when returned).
    Stale(Option<Item>),
}

impl DynamoSink {
    /// Connects and, when a table is named, checks that it exists.
    pub(crate) async fn open_checked(
        name: &str,
        cfg: &DynamoSinkConfig,
        pipeline: &PipelineConfig,
        telemetry: &Arc<Telemetry>,
        cancel: &CancellationToken,
    ) -> Result<Arc<Self>> {
        let access = cfg.access();
        let sdk = access.sdk_config().await;
        let sink = Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            client: aws_sdk_dynamodb::Client::new(&sdk),
            target: access.describe(sdk.region()),
            lanes: pipeline.apply.lanes,
            keys: Mutex::new(HashMap::new()),
            cancel: cancel.clone(),
            telemetry: telemetry.clone(),
            documents: matches!(pipeline.source, SourceEndpoint::Mongodb(_)),
        };
        if let Some(t) = &cfg.table {
            let keys = sink.key_names(t).await?;
            if sink.documents && keys.as_slice() != ["_id"] {
                return Err(Error::User(format!(
                    "{name}: DynamoDB table {t} is keyed by {keys:?}; MongoDB documents need a table whose only key is the hash key \"_id\" (type S for ObjectId and string ids, N for numbers)"
                )));
            }
        }
        Ok(Arc::new(sink))
    }

    fn table_of<'a>(&'a self, ev: &'a ChangeEvent) -> &'a str {
        self.cfg
            .table
            .as_deref()
            .unwrap_or_else(|| ev.ns.coll_name())
    }

    /// The key attribute names of `table` (hash key first).
    async fn key_names(&self, table: &str) -> Result<Arc<Vec<String>>> {
        if let Some(k) = self.keys.lock().await.get(table) {
            return Ok(k.clone());
        }
        let desc = self
            .client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| classify(e, Role::Sink, format!("describing table {table}"), &self.target))
            .map_err(|e| match e.failure() {
                Failure::NotFound => Error::User(format!(
                    "{}: DynamoDB table {table} does not exist at {} (create it with the source table's key schema)",
                    self.name, self.target
                )),
                _ => Error::Aws(e),
            })?;
        let names = Arc::new(
            desc.table
                .as_ref()
                .map(|t| key_names(t.key_schema()))
                .unwrap_or_default(),
        );
        self.keys
            .lock()
            .await
            .insert(table.to_string(), names.clone());
        Ok(names)
    }

    /// What a MongoDB source's change does to the target: `None` for an update whose document
    /// was not looked up (deleted since: its delete follows).
    fn document_action(ev: &ChangeEvent) -> std::result::Result<Option<Action>, String> {
        match ev.op {
            OpType::Insert | OpType::Update | OpType::Replace => match ev.full_document() {
                Some(d) => Ok(Some(Action::Put(document_to_item(d)?))),
                None if ev.op == OpType::Update => Ok(None),
                None => Err("the change has no full document".into()),
            },
            OpType::Delete => {
                let id = ev
                    .document_key()
                    .and_then(|k| k.get("_id").ok().flatten())
                    .ok_or("the delete has no _id")?;
                let key = document_to_item(&bson::rawdoc! { "_id": bson::RawBson::from(id) })?;
                Ok(Some(Action::Delete { key, old: None }))
            }
            ref other => Err(format!(
                "{} is not a change of one document",
                other.as_str()
            )),
        }
    }

    fn action(&self, ev: &ChangeEvent) -> std::result::Result<Option<Action>, String> {
        if self.documents {
            return Self::document_action(ev);
        }
        Self::item_action(ev).map(Some)
    }

    fn item_action(ev: &ChangeEvent) -> std::result::Result<Action, String> {
        let doc = |d: Option<&RawDocument>, what: &str| -> std::result::Result<Item, String> {
            let d = d.ok_or_else(|| format!("the change has no {what}"))?;
            item_from_bson(d)
                .map_err(|e| format!("{e} (a DynamoDB sink takes items from a DynamoDB source)"))
        };
        match ev.op {
            OpType::Insert | OpType::Update | OpType::Replace => Ok(Action::Put(doc(
                ev.full_document(),
                "full document (new image)",
            )?)),
            OpType::Delete => {
                let old = ev
                    .raw
                    .get_document("fullDocumentBeforeChange")
                    .ok()
                    .map(|d| doc(Some(d), "old image"))
                    .transpose()?;
                Ok(Action::Delete {
                    key: doc(ev.document_key(), "key")?,
                    old,
                })
            }
            ref other => Err(format!("{} is not a change of one item", other.as_str())),
        }
    }

    /// Runs `call` until it succeeds, fails for good, or the pipeline stops.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        mut call: F,
    ) -> Result<std::result::Result<T, AwsError>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, AwsError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut tries = 0u32;
        loop {
            match call().await {
                Err(e) if e.is_retryable() => {
                    tries += 1;
                    if tries % 10 == 1 {
                        warn!(sink = %self.name, error = %e, tries, "{what} failed; retrying.");
                    }
                    if !backoff.wait(Some(&self.cancel)).await {
                        return Err(Error::Stopped);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// One change as a conditional (last writer wins) or plain single-item write.
    async fn write_one(
        &self,
        table: &str,
        action: &Action,
    ) -> Result<std::result::Result<Outcome, AwsError>> {
        let keys = self.key_names(table).await?;
        let ts = self.cfg.timestamp_attribute.as_deref();
        // The condition of last writer wins, when the change carries the timestamp. In two-way
        // sync a tie goes to the greater origin name on both sides, so the tables agree.
        let tie = match &self.cfg.stamp_origin {
            Some(_) => " OR (#ts = :ts AND (attribute_not_exists(#o) OR #o < :o))",
            None => "",
        };
        let cond = |item: Option<&Item>, op: &str| {
            let ts = ts?;
            let v = item?.get(ts)?.clone();
            let tie = if op == "<" { tie } else { "" };
            Some((
                format!("attribute_not_exists(#k) OR #ts {op} :ts{tie}"),
                v,
                ts.to_string(),
                !tie.is_empty(),
            ))
        };
        let all_old = ReturnValuesOnConditionCheckFailure::AllOld;
        self.retrying("writing an item", || async {
            match action {
                Action::Put(item) => {
                    let mut req = self
                        .client
                        .put_item()
                        .table_name(table)
                        .set_item(Some(self.stamped(item)));
                    if let Some((expr, v, ts, tie)) = cond(Some(item), "<") {
                        req = req
                            .condition_expression(expr)
                            .expression_attribute_names("#k", &keys[0])
                            .expression_attribute_names("#ts", ts)
                            .expression_attribute_values(":ts", v)
                            .return_values_on_condition_check_failure(all_old.clone());
                        if let (true, Some(o)) = (tie, &self.cfg.stamp_origin) {
                            req = req
                                .expression_attribute_names("#o", &self.cfg.origin_attribute)
                                .expression_attribute_values(":o", AttributeValue::S(o.clone()));
                        }
                    }
                    match req.send().await {
                        Ok(_) => Ok(Outcome::Written),
                        Err(e) => match e.as_service_error() {
                            Some(PutItemError::ConditionalCheckFailedException(c)) => {
                                Ok(Outcome::Stale(c.item.clone()))
                            }
                            _ => Err(classify(
                                e,
                                Role::Sink,
                                format!("putting an item into {table}"),
                                &self.target,
                            )),
                        },
                    }
                }
                Action::Delete { key, old } => {
                    let mut req = self
                        .client
                        .delete_item()
                        .table_name(table)
                        .set_key(Some(key.clone()));
                    if let Some((expr, v, ts, _)) = cond(old.as_ref(), "<=") {
                        req = req
                            .condition_expression(expr)
                            .expression_attribute_names("#k", &keys[0])
                            .expression_attribute_names("#ts", ts)
                            .expression_attribute_values(":ts", v)
                            .return_values_on_condition_check_failure(all_old.clone());
                    }
                    match req.send().await {
                        Ok(_) => Ok(Outcome::Written),
                        Err(e) => match e.as_service_error() {
                            Some(DeleteItemError::ConditionalCheckFailedException(c)) => {
                                Ok(Outcome::Stale(c.item.clone()))
                            }
                            _ => Err(classify(
                                e,
                                Role::Sink,
                                format!("deleting an item from {table}"),
                                &self.target,
                            )),
                        },
                    }
                }
            }
        })
        .await
    }

    /// Writes with `BatchWriteItem` (distinct keys), retrying unprocessed items; a request
    /// DynamoDB refuses is written item by item to find the item it refuses.
    async fn write_batch(&self, table: &str, entries: &[(usize, Action)]) -> Result<Vec<Refusal>> {
        let requests: Vec<WriteRequest> = entries
            .iter()
            .map(|(_, a)| match a {
                Action::Put(item) => WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(self.stamped(item)))
                            .build()
                            .expect("item set"),
                    )
                    .build(),
                Action::Delete { key, .. } => WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(key.clone()))
                            .build()
                            .expect("key set"),
                    )
                    .build(),
            })
            .collect();
        let mut pending = requests;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        while !pending.is_empty() {
            let sent = pending.clone();
            let r = self
                .retrying("a batch write", || {
                    let sent = sent.clone();
                    async move {
                        self.client
                            .batch_write_item()
                            .request_items(table, sent)
                            .send()
                            .await
                            .map_err(|e| {
                                classify(
                                    e,
                                    Role::Sink,
                                    format!("writing a batch into {table}"),
                                    &self.target,
                                )
                            })
                    }
                })
                .await?;
            match r {
                Ok(out) => {
                    pending = out
                        .unprocessed_items
                        .and_then(|mut m| m.remove(table))
                        .unwrap_or_default();
                    if !pending.is_empty() && !backoff.wait(Some(&self.cancel)).await {
                        return Err(Error::Stopped);
                    }
                }
                Err(e) if e.failure() == Failure::Invalid => {
                    return self.write_singly(table, entries).await;
                }
                Err(e) => return Err(Error::Aws(e)),
            }
        }
        Ok(Vec::new())
    }

    /// Writes each table's puts and deletes (one per item) in `BatchWriteItem` calls of
    /// `batch_items`, `CONCURRENT_WRITES` at once; returns the changes DynamoDB refused.
    async fn write_batches(
        &self,
        per_table: impl IntoIterator<Item = (String, Vec<(usize, Action)>)>,
    ) -> Result<Vec<Refusal>> {
        let mut chunks: Vec<(String, Vec<(usize, Action)>)> = Vec::new();
        for (table, entries) in per_table {
            for c in entries.chunks(self.cfg.batch_items) {
                chunks.push((table.clone(), c.to_vec()));
            }
        }
        let results: Vec<Result<Vec<Refusal>>> = stream::iter(chunks)
            .map(|(t, c)| async move { self.write_batch(&t, &c).await })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut refused = Vec::new();
        for r in results {
            refused.extend(r?);
        }
        Ok(refused)
    }

    async fn write_singly(&self, table: &str, entries: &[(usize, Action)]) -> Result<Vec<Refusal>> {
        let mut refused = Vec::new();
        for (i, a) in entries {
            match self.write_one(table, a).await? {
                Ok(_) => {}
                Err(e) if e.is_user() => refused.push(Refusal {
                    index: *i,
                    error: rejected(table, &e),
                }),
                Err(e) => return Err(Error::Aws(e)),
            }
        }
        Ok(refused)
    }
}

impl DynamoSink {
    /// The item as written: with the origin stamp of two-way sync.
    fn stamped(&self, item: &Item) -> Item {
        let mut item = item.clone();
        if let Some(o) = &self.cfg.stamp_origin {
            item.insert(
                self.cfg.origin_attribute.clone(),
                AttributeValue::S(o.clone()),
            );
        }
        item
    }

    /// A change that lost to the target's item: when that item came from the other side (a
    /// concurrent write there, not a replay of this side's own older change), it is a conflict,
    /// logged with both images and counted.
    fn record_conflict(&self, table: &str, lost: &Action, current: Option<&Item>) {
        let Some(stamp) = &self.cfg.stamp_origin else {
            return;
        };
        let origin = |i: Option<&Item>| match i.and_then(|i| i.get(&self.cfg.origin_attribute)) {
            Some(AttributeValue::S(s)) => Some(s.clone()),
            _ => None,
        };
        let kept_origin = origin(current);
        if kept_origin.as_deref() == Some(stamp.as_str()) {
            return;
        }
        let (op, image) = match lost {
            Action::Put(i) => ("put", i),
            Action::Delete { key, old } => ("delete", old.as_ref().unwrap_or(key)),
        };
        let json = |i: &Item| {
            bson::Bson::Document(
                bson::Document::try_from(item_to_bson(i).as_ref()).unwrap_or_default(),
            )
            .into_relaxed_extjson()
            .to_string()
        };
        self.telemetry.two_way.conflicts.fetch_add(1, Relaxed);
        warn!(
            sink = %self.name,
            table,
            op,
            from = %stamp,
            kept_from = kept_origin.as_deref().unwrap_or("?"),
            lost = %json(image),
            kept = %current.map(json).unwrap_or_else(|| "null".into()),
            "Conflict: a change from {stamp} lost to a later change made on this side; kept the later one."
        );
    }
}

fn rejected(table: &str, e: &AwsError) -> Error {
    Error::Rejected {
        ns: table.to_string(),
        code: 0,
        message: e.to_string(),
    }
}

#[async_trait]
impl Sink for DynamoSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "dynamodb"
    }

    fn describe(&self) -> String {
        match &self.cfg.table {
            Some(t) => format!("DynamoDB table {t} at {}", self.target),
            None => format!("DynamoDB at {}", self.target),
        }
    }

    fn takes(&self, op: &OpType) -> bool {
        op.is_data()
    }

    fn takes_copy(&self) -> bool {
        // A MongoDB source's full sync hands its documents over here; a DynamoDB source's
        // scan travels as events.
        self.documents
    }

    /// Empties the table before the source is scanned again (a lost stream position with
    /// `on_history_lost = "resync"`): items deleted at the source during the gap would stay
    /// otherwise. DynamoDB tables cannot be dropped and made again like collections, so each
    /// item is deleted (a scan of the keys, `BatchWriteItem`s).
    async fn drop_for_resync(&self, ns: &Namespace) -> Result<()> {
        let table = self
            .cfg
            .table
            .clone()
            .unwrap_or_else(|| ns.coll_name().to_string());
        if self.cfg.stamp_origin.is_some() {
            // Two-way: the table takes writes of its own, which emptying it would lose.
            tracing::warn!(%table, "Two-way: the target table is not emptied before the new scan; items deleted at the source during the gap stay in it.");
            return Ok(());
        }
        let keys = self.key_names(&table).await?;
        let projection = (0..keys.len())
            .map(|i| format!("#k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut start: Option<Item> = None;
        let mut deleted = 0usize;
        loop {
            let mut req = self
                .client
                .scan()
                .table_name(&table)
                .projection_expression(&projection)
                .set_exclusive_start_key(start.take());
            for (i, k) in keys.iter().enumerate() {
                req = req.expression_attribute_names(format!("#k{i}"), k);
            }
            let page = req.send().await.map_err(|e| {
                classify(
                    e,
                    Role::Sink,
                    format!("scanning {table} to empty it"),
                    &self.target,
                )
            })?;
            let actions: Vec<(usize, Action)> = page
                .items()
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    (
                        i,
                        Action::Delete {
                            key: key.clone(),
                            old: None,
                        },
                    )
                })
                .collect();
            deleted += actions.len();
            if let Some(r) = self
                .write_batches([(table.clone(), actions)])
                .await?
                .into_iter()
                .next()
            {
                return Err(r.error);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        tracing::warn!(%table, deleted, "Emptied the target table before scanning the source again.");
        Ok(())
    }

    async fn copy(&self, ns: &Namespace, docs: Vec<RawDocumentBuf>) -> Result<u64> {
        let table = self
            .cfg
            .table
            .clone()
            .unwrap_or_else(|| ns.coll_name().to_string());
        let mut actions = Vec::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let item = document_to_item(d).map_err(|message| Error::Rejected {
                ns: ns.to_string(),
                code: 0,
                message,
            })?;
            actions.push((i, Action::Put(item)));
        }
        if let Some(refused) = self
            .write_batches([(table, actions)])
            .await?
            .into_iter()
            .next()
        {
            return Err(refused.error);
        }
        Ok(docs.len() as u64)
    }

    fn ordering(&self) -> Ordering {
        Ordering::ByKey { lanes: self.lanes }
    }

    fn batching(&self) -> BatchPolicy {
        BatchPolicy {
            max_events: 200,
            max_bytes: 16 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }

    async fn write(&self, batch: &[Arc<ChangeEvent>]) -> Result<Written> {
        let mut written = Written::default();
        // Each change as an action, grouped by table and item (in order).
        let mut groups: Vec<(String, Vec<(usize, Action)>)> = Vec::new();
        let mut index: HashMap<(&str, &[u8]), usize> = HashMap::new();
        for (i, ev) in batch.iter().enumerate() {
            match self.action(ev) {
                Ok(None) => {}
                Ok(Some(a)) => {
                    let table = self.table_of(ev);
                    let g = *index.entry((table, ev.key_bytes())).or_insert_with(|| {
                        groups.push((table.to_string(), Vec::new()));
                        groups.len() - 1
                    });
                    groups[g].1.push((i, a));
                }
                Err(message) => written.refused.push(Refusal {
                    index: i,
                    error: Error::Rejected {
                        ns: ev.ns.to_string(),
                        code: 0,
                        message,
                    },
                }),
            }
        }
        if self.cfg.timestamp_attribute.is_none() {
            // Full images: an item's last change in the batch is its state after all of them.
            let mut per_table: HashMap<String, Vec<(usize, Action)>> = HashMap::new();
            for (table, mut changes) in groups {
                if let Some(last) = changes.pop() {
                    per_table.entry(table).or_default().push(last);
                }
            }
            written.refused = self.write_batches(per_table).await?;
            return Ok(written);
        }
        // Last writer wins: each change conditional, one item's changes in order.
        let results: Vec<Result<(u64, Vec<Refusal>)>> = stream::iter(groups)
            .map(|(table, changes)| async move {
                let mut stale = 0;
                let mut refused = Vec::new();
                for (i, a) in &changes {
                    match self.write_one(&table, a).await? {
                        Ok(Outcome::Written) => {
                            if self.cfg.stamp_origin.is_some() {
                                self.telemetry.two_way.applied.fetch_add(1, Relaxed);
                            }
                        }
                        Ok(Outcome::Stale(current)) => {
                            stale += 1;
                            self.telemetry.two_way.stale.fetch_add(1, Relaxed);
                            self.record_conflict(&table, a, current.as_ref());
                        }
                        Err(e) if e.is_user() => refused.push(Refusal {
                            index: *i,
                            error: rejected(&table, &e),
                        }),
                        Err(e) => return Err(Error::Aws(e)),
                    }
                }
                Ok((stale, refused))
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for r in results {
            let (stale, refused) = r?;
            written.skipped += stale;
            written.refused.extend(refused);
        }
        Ok(written)
    }
}
