//! `strait load dynamodb`: a load generator like the two-region seed's loader. It writes
//! realistic items (nested maps, lists, sets, binary, decimals) to a DynamoDB table at a chosen
//! rate: puts of new and existing items, updates and deletes, each stamped with
//! `last_update_timestamp` (milliseconds, the side's digit last so two sides never tie) and
//! `last_updater_region`, as applications of a two-way pair must. It reports what it wrote.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::Blob;
use serde::Serialize;

use crate::connectors::aws::client::{classify, AwsAccess};
use crate::error::{Error, Result, Role};

/// What to write.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The table (keyed by `pk` (S) and `sk` (N), like the seed's).
    pub table: String,
    /// Region, endpoint and credentials.
    pub region: Option<String>,
    /// Endpoint URL instead of the region's.
    pub endpoint: Option<String>,
    /// A profile of `~/.aws/config`.
    pub profile: Option<String>,
    /// The side's name, written to `last_updater_region`.
    pub side: String,
    /// The digit that ends this side's timestamps (0-9), so two sides never write one value.
    pub side_digit: u64,
    /// Operations per second over all writers; 0 = as fast as the table takes them.
    pub rate: u64,
    /// Operations to write in all.
    pub ops: u64,
    /// Items written: keys `0..keys`.
    pub keys: u64,
    /// Concurrent writers.
    pub writers: usize,
}

/// What was written.
#[derive(Debug, Default, Serialize)]
pub struct LoadReport {
    /// Whole-item puts.
    pub puts: u64,
    /// `UpdateItem` calls.
    pub updates: u64,
    /// `DeleteItem` calls.
    pub deletes: u64,
    /// Seconds from the first write to the last.
    pub seconds: f64,
    /// Operations per second achieved.
    pub ops_per_second: f64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A realistic item: an order with nested customer data, a line-item list, tags and a blob.
pub fn order_item(key: u64, version: u64, side: &str, ts: u64) -> HashMap<String, AttributeValue> {
    let s = |v: String| AttributeValue::S(v);
    let n = |v: String| AttributeValue::N(v);
    let mut customer = HashMap::new();
    customer.insert("name".into(), s(format!("Customer {}", key % 977)));
    customer.insert(
        "city".into(),
        s(["Beijing", "Shanghai", "Seattle", "Dublin"][(key % 4) as usize].into()),
    );
    customer.insert("vip".into(), AttributeValue::Bool(key.is_multiple_of(5)));
    let lines = (0..(1 + key % 4))
        .map(|i| {
            let mut l = HashMap::new();
            l.insert(
                "sku".into(),
                s(format!("SKU-{:05}", (key * 7 + i) % 10_000)),
            );
            l.insert("qty".into(), n(format!("{}", 1 + (i + version) % 5)));
            l.insert(
                "price".into(),
                n(format!(
                    "{}.{:02}",
                    5 + (key + i) % 200,
                    (version * 13) % 100
                )),
            );
            AttributeValue::M(l)
        })
        .collect();
    let mut item = HashMap::new();
    item.insert("pk".into(), s(format!("customer#{}", key % 1000)));
    item.insert("sk".into(), n(key.to_string()));
    item.insert(
        "status".into(),
        s(["NEW", "PAID", "SHIPPED", "DONE"][(version % 4) as usize].into()),
    );
    item.insert(
        "amount".into(),
        n(format!("{}.{:02}", 10 + key % 5000, version % 100)),
    );
    item.insert("customer".into(), AttributeValue::M(customer));
    item.insert("lines".into(), AttributeValue::L(lines));
    item.insert(
        "tags".into(),
        AttributeValue::Ss(vec![format!("v{version}"), format!("k{}", key % 7)]),
    );
    item.insert(
        "payload".into(),
        AttributeValue::B(Blob::new(
            (0..64)
                .map(|i| ((key + i + version) % 251) as u8)
                .collect::<Vec<u8>>(),
        )),
    );
    item.insert("version".into(), n(version.to_string()));
    item.insert("last_update_timestamp".into(), n(ts.to_string()));
    item.insert("last_updater_region".into(), s(side.to_string()));
    item
}

/// Writes `spec.ops` operations and reports them.
pub async fn run(spec: &LoadSpec) -> Result<LoadReport> {
    let access = AwsAccess {
        region: spec.region.clone(),
        endpoint: spec.endpoint.clone(),
        profile: spec.profile.clone(),
        keys: None,
        connect_timeout: Duration::from_secs(10),
    };
    let sdk = access.sdk_config().await;
    let target = access.describe(sdk.region());
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let started = Instant::now();
    let writers = spec.writers.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (client, spec, next, counts, target) = (
            client.clone(),
            spec.clone(),
            next.clone(),
            counts.clone(),
            target.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= spec.ops {
                    return Ok::<_, Error>(());
                }
                if spec.rate > 0 {
                    // Operation i is due at i / rate seconds.
                    let due = started + Duration::from_secs_f64(i as f64 / spec.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                // A deterministic mix: 60 % puts, 30 % updates, 10 % deletes.
                let key = (i.wrapping_mul(2_654_435_761)) % spec.keys.max(1);
                let ts = now_ms() * 10 + spec.side_digit;
                let what = i % 10;
                let res = if what < 6 {
                    client
                        .put_item()
                        .table_name(&spec.table)
                        .set_item(Some(order_item(key, i, &spec.side, ts)))
                        .send()
                        .await
                        .map(|_| 0)
                        .map_err(|e| classify(e, Role::Sink, "putting an item", &target))
                } else if what < 9 {
                    let item = order_item(key, i, &spec.side, ts);
                    client
                        .update_item()
                        .table_name(&spec.table)
                        .key("pk", item["pk"].clone())
                        .key("sk", item["sk"].clone())
                        .update_expression("SET amount = :a, #s = :s, last_update_timestamp = :t, last_updater_region = :r ADD tags :g")
                        .expression_attribute_names("#s", "status")
                        .expression_attribute_values(":a", item["amount"].clone())
                        .expression_attribute_values(":s", item["status"].clone())
                        .expression_attribute_values(":t", item["last_update_timestamp"].clone())
                        .expression_attribute_values(":r", item["last_updater_region"].clone())
                        .expression_attribute_values(":g", AttributeValue::Ss(vec![format!("u{}", i % 5)]))
                        .send()
                        .await
                        .map(|_| 1)
                        .map_err(|e| classify(e, Role::Sink, "updating an item", &target))
                } else {
                    let item = order_item(key, i, &spec.side, ts);
                    client
                        .delete_item()
                        .table_name(&spec.table)
                        .key("pk", item["pk"].clone())
                        .key("sk", item["sk"].clone())
                        .send()
                        .await
                        .map(|_| 2)
                        .map_err(|e| classify(e, Role::Sink, "deleting an item", &target))
                };
                match res {
                    Ok(k) => {
                        counts[k].fetch_add(1, Relaxed);
                    }
                    Err(e) if e.is_retryable() => {
                        // Throttled or busy: the operation is skipped, not retried (a loader
                        // reports what it wrote).
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(Error::Aws(e)),
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Internal(format!("load writer panicked: {e}")))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let [puts, updates, deletes] = [0, 1, 2].map(|k| counts[k].load(Relaxed));
    Ok(LoadReport {
        puts,
        updates,
        deletes,
        seconds,
        ops_per_second: (puts + updates + deletes) as f64 / seconds.max(1e-9),
    })
}
