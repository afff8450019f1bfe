//! `/metrics`: the OpenMetrics exposition of pipelines' [`Telemetry`], encoded by
//! `prometheus-client`. The counters stay in `Telemetry` (the bars, the log lines and `/status`
//! read the same atomics); a collector turns them into samples at scrape time, so nothing is
//! counted twice. Every sample carries the `pipeline` label of its registry, which lets one
//! process expose many pipelines.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::control::Control;
use crate::telemetry::Telemetry;

/// The content type of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry of pipelines' metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Adds a pipeline: its samples are labelled `pipeline = id`.
    pub fn add_pipeline(&mut self, id: &str, telemetry: Arc<Telemetry>, control: Arc<Control>) {
        self.registry
            .sub_registry_with_label((Cow::Borrowed("pipeline"), Cow::Owned(id.to_string())))
            .register_collector(Box::new(PipelineCollector { telemetry, control }));
    }

    /// The OpenMetrics text of every pipeline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One exposition made of several [`Metrics::render`] texts of different pipelines: each
/// family once (its `# HELP` / `# TYPE` / `# UNIT` lines from the first text that has it),
/// followed by the samples of every text, then `# EOF`. No two texts carry the same series,
/// since every sample has its pipeline's label.
pub(crate) fn merge(texts: &[&str]) -> String {
    use std::collections::HashMap;
    let mut order: Vec<&str> = Vec::new();
    // Family name -> (index of the text that described it, descriptor lines, samples).
    let mut families: HashMap<&str, (usize, Vec<&str>, Vec<&str>)> = HashMap::new();
    for (i, text) in texts.iter().enumerate() {
        let mut current: Option<&str> = None;
        for line in text.lines() {
            if line == "# EOF" {
                break;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest.split(' ').nth(1).unwrap_or("");
                let f = families.entry(name).or_insert_with(|| {
                    order.push(name);
                    (i, Vec::new(), Vec::new())
                });
                if f.0 == i {
                    f.1.push(line);
                }
                current = Some(name);
            } else if let Some(f) = current.and_then(|n| families.get_mut(n)) {
                f.2.push(line);
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let (_, descriptors, samples) = &families[name];
        for l in descriptors.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Reads one pipeline's telemetry at each scrape.
#[derive(Debug)]
struct PipelineCollector {
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
}

/// Labels of one sample, beside the registry's `pipeline`.
type Labels = Vec<(&'static str, String)>;

/// Writes one counter family. Names are given without `_total`: OpenMetrics adds it.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family.
fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for PipelineCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let t = &self.telemetry;
        let s = t.snapshot();
        let one = |v: u64| vec![(Labels::new(), v)];
        counters(
            &mut e,
            "strait_events_read",
            "Change events read from the source.",
            &one(s.read),
        )?;
        let sinks = t.sinks();
        let primary = sinks.first().map(|c| c.kind).unwrap_or("mongodb");
        let applied: Vec<_> = [
            ("insert", s.inserts),
            ("update", s.updates),
            ("replace", s.replaces),
            ("delete", s.deletes),
            ("ddl", s.ddl),
        ]
        .into_iter()
        .map(|(op, n)| {
            (
                vec![("op", op.to_string()), ("sink", primary.to_string())],
                n,
            )
        })
        .collect();
        counters(
            &mut e,
            "strait_events_applied",
            "Change events applied by [sink], by operation and the sink's kind.",
            &applied,
        )?;
        let mut written = Vec::new();
        let mut refused = Vec::new();
        for c in &sinks {
            let labels = vec![("sink", c.name.clone()), ("kind", c.kind.to_string())];
            for (op, n) in c.written() {
                let mut l = labels.clone();
                l.push(("op", op.to_string()));
                written.push((l, n));
            }
            refused.push((labels, c.refused.load(Relaxed)));
        }
        counters(
            &mut e,
            "strait_sink_events",
            "Events each sink made durable, by sink name, kind and operation.",
            &written,
        )?;
        counters(
            &mut e,
            "strait_sink_refused",
            "Events a sink refused for good (sent to the dead-letter topic), by sink.",
            &refused,
        )?;
        let a = &t.archive;
        let k = &t.kafka;
        for (name, help, v) in [
            (
                "strait_events_skipped",
                "Updates skipped on replay because the target document had a later shape.",
                s.skipped,
            ),
            (
                "strait_archive_events",
                "Events stored by archive sinks.",
                a.events.load(Relaxed),
            ),
            (
                "strait_archive_objects",
                "Objects written by archive sinks.",
                a.objects.load(Relaxed),
            ),
            (
                "strait_archive_bytes",
                "Bytes written by archive sinks (compressed).",
                a.bytes.load(Relaxed),
            ),
            (
                "strait_archive_duplicates",
                "Replayed events an earlier run had already archived (not written again).",
                a.duplicates.load(Relaxed),
            ),
            (
                "strait_kafka_produced",
                "Records the Kafka brokers confirmed (Kafka sinks).",
                k.produced.load(Relaxed),
            ),
            (
                "strait_kafka_consumed",
                "Records consumed (Kafka source).",
                k.consumed.load(Relaxed),
            ),
            (
                "strait_kafka_dead_lettered",
                "Records sent to the dead-letter topic (Kafka source).",
                k.dead_lettered.load(Relaxed),
            ),
            (
                "strait_kafka_commits",
                "Offset commits to the consumer group (Kafka source).",
                k.commits.load(Relaxed),
            ),
            (
                "strait_errors",
                "Errors seen (retried or fatal).",
                t.errors.load(Relaxed),
            ),
            (
                "strait_stream_restarts",
                "Change stream reopens after errors or invalidations.",
                t.stream_restarts.load(Relaxed),
            ),
            (
                "strait_dead_lettered",
                "Changes and records sent to the dead letters (file, SQS queue, Kafka topic).",
                t.dead_lettered.load(Relaxed),
            ),
            (
                "strait_unique_key_repairs",
                "Writes that collided on a unique secondary index and were repaired from the source's current documents.",
                t.unique_repairs.load(Relaxed),
            ),
            (
                "strait_unique_key_parked",
                "Writes that collided on a unique secondary index with no source to repair from (Kafka, Kinesis, DynamoDB): their documents waited in strait's parking collection until their values were free.",
                t.unique_parked.load(Relaxed),
            ),
            (
                "strait_unique_index_deferred",
                "Unique index builds that met duplicate values on the target (states from different times, e.g. across Kafka partitions) and were built again once later changes removed them.",
                t.unique_indexes_deferred.load(Relaxed),
            ),
            (
                "strait_two_way_applied",
                "Two-way: changes this direction wrote to the other cluster.",
                t.two_way.applied.load(Relaxed),
            ),
            (
                "strait_two_way_stale",
                "Two-way: changes dropped because the other cluster held a later change.",
                t.two_way.stale.load(Relaxed),
            ),
            (
                "strait_two_way_conflicts",
                "Two-way: changes that lost to a concurrent change and were recorded in strait.conflicts.",
                t.two_way.conflicts.load(Relaxed),
            ),
            (
                "strait_two_way_searches",
                "Two-way: batches that searched the target's change log for local changes.",
                t.two_way.searches.load(Relaxed),
            ),
            (
                "strait_two_way_echoes",
                "Two-way: events read that were strait's own writes (not shipped back).",
                t.two_way.echoes.load(Relaxed),
            ),
            (
                "strait_two_way_conflicts_published",
                "Two-way: conflict records of the cluster this direction writes into, published to the conflict topic.",
                t.two_way.conflicts_published.load(Relaxed),
            ),
        ] {
            counters(&mut e, name, help, &one(v))?;
        }
        let g = |v: f64| vec![(Labels::new(), v)];
        for (name, help, v) in [
            (
                "strait_lag_seconds",
                "Seconds between now and the oldest change not yet written to the sink.",
                s.lag_seconds,
            ),
            (
                "strait_pending_events",
                "Events read but not yet written.",
                s.pending as f64,
            ),
            (
                "strait_checkpoint_age_seconds",
                "Seconds since the checkpoint was last saved (-1 before the first save).",
                t.checkpoint_age().unwrap_or(-1.0),
            ),
            (
                "strait_paused",
                "1 when paused.",
                if self.control.is_paused() { 1.0 } else { 0.0 },
            ),
            (
                "strait_rate_limit_ops",
                "Rate limit in operations per second (0 = none).",
                self.control.rate() as f64,
            ),
        ] {
            gauges(&mut e, name, help, &g(v))?;
        }
        let depths: Vec<_> = t
            .lane_depths()
            .iter()
            .enumerate()
            .map(|(i, d)| (vec![("lane", i.to_string())], *d as f64))
            .collect();
        gauges(
            &mut e,
            "strait_lane_queue_depth",
            "Events queued per lane.",
            &depths,
        )?;
        let shards = t.shards();
        let shard_lag: Vec<_> = shards
            .iter()
            .map(|c| {
                (
                    vec![("shard", c.id.clone())],
                    c.behind_ms.load(Relaxed) as f64 / 1000.0,
                )
            })
            .collect();
        gauges(
            &mut e,
            "strait_shard_lag_seconds",
            "DynamoDB / Kinesis: seconds between a shard's newest record read and the read (0: nothing new).",
            &shard_lag,
        )?;
        let shard_records: Vec<_> = shards
            .iter()
            .map(|c| (vec![("shard", c.id.clone())], c.records.load(Relaxed)))
            .collect();
        counters(
            &mut e,
            "strait_shard_records",
            "DynamoDB / Kinesis: records read per shard.",
            &shard_records,
        )?;
        let colls = t.collections();
        for (name, help, read) in [
            (
                "strait_fullsync_documents_copied",
                "Documents copied by the full sync.",
                (|c| c.copied.load(Relaxed)) as fn(&crate::telemetry::CollectionProgress) -> u64,
            ),
            (
                "strait_fullsync_documents_estimated",
                "Documents to copy (estimate).",
                |c| c.estimated.load(Relaxed),
            ),
            (
                "strait_fullsync_bytes_copied",
                "Bytes copied by the full sync.",
                |c| c.bytes.load(Relaxed),
            ),
        ] {
            let samples: Vec<_> = colls
                .iter()
                .map(|c| (vec![("ns", c.ns.clone())], read(c) as f64))
                .collect();
            gauges(&mut e, name, help, &samples)?;
        }
        for (name, help, h) in [
            (
                "strait_apply_batch_size",
                "Writes per sink round trip.",
                &t.batch_size,
            ),
            (
                "strait_apply_latency_seconds",
                "Seconds per sink round trip.",
                &t.apply_latency,
            ),
        ] {
            h.encode(e.encode_descriptor(name, help, None, h.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_counters_end_in_total() {
        let t = Arc::new(Telemetry::default());
        t.sink("a\"b\\c\nd", "kafka")
            .wrote(&crate::core::event::OpType::Insert);
        let mut m = Metrics::default();
        m.add_pipeline("p\"1", t, Arc::new(Control::new(0)));
        let text = m.render();
        assert!(
            text.contains(
                r#"strait_sink_events_total{pipeline="p\"1",sink="a\"b\\c\nd",kind="kafka",op="insert"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn merged_texts_describe_each_family_once() {
        let render = |id: &str| {
            let t = Arc::new(Telemetry::default());
            t.applied(&crate::core::event::OpType::Insert, 3);
            let mut m = Metrics::default();
            m.add_pipeline(id, t, Arc::new(Control::new(0)));
            m.render()
        };
        let (a, b) = (render("a"), render("b"));
        let merged = merge(&[&a, &b]);
        assert_eq!(
            merged
                .matches("# TYPE strait_events_applied counter")
                .count(),
            1
        );
        assert_eq!(merged.matches("# EOF").count(), 1);
        assert!(merged.ends_with("# EOF\n"));
        for id in ["a", "b"] {
            assert!(
                merged.contains(&format!(
                    "strait_events_applied_total{{pipeline=\"{id}\",op=\"insert\",sink=\"mongodb\"}} 3"
                )),
                "{merged}"
            );
        }
        // Every line of both texts is kept (but one of each descriptor and the EOF).
        let lines = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(lines(&merged), lines(&a) + lines(&b));
        assert_eq!(merge(&[&a]), a);
    }
}
