//! The dead-letter topic of a Kafka source: records that cannot be decoded or applied, with
//! Kafka Connect's `__connect.errors.*` headers saying why.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::warn;

use super::config::{KafkaSecurity, KafkaSourceConfig};
use super::source::ConsumedRecord;
use super::{client_config, KafkaError, DURABLE_PRODUCER};
use crate::connectors::{DeadLetters, Origin};
use crate::core::ChangeEvent;
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;

/// Writes records that cannot be applied to the dead-letter topic.
pub(crate) struct DeadLetterTopic {
    topic: String,
    producer: FutureProducer,
    telemetry: Arc<Telemetry>,
}

impl DeadLetterTopic {
    /// The idempotent producer of `source.dlq_topic`.
    pub(crate) fn open(
        cfg: &KafkaSourceConfig,
        pipeline: &str,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self, KafkaError> {
        Self::open_at(
            &cfg.brokers,
            &cfg.security,
            &cfg.options,
            cfg.dlq_topic(pipeline),
            pipeline,
            telemetry,
        )
    }

    /// The idempotent producer of a dead-letter topic on any brokers.
    pub(crate) fn open_at(
        brokers: &str,
        security: &KafkaSecurity,
        options: &BTreeMap<String, String>,
        topic: String,
        pipeline: &str,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self, KafkaError> {
        let producer = client_config(
            brokers,
            security,
            options,
            &[("message.timeout.ms", "0".into())],
            DURABLE_PRODUCER,
        )
        .create()
        .map_err(|e| KafkaError::Invalid {
            // Also the DynamoDB and Kinesis sources' topic: name the topic, not the source.
            what: "dead-letter topic of",
            name: pipeline.to_string(),
            detail: format!("producer for {topic}: {e}"),
        })?;
        Ok(Self {
            topic,
            producer,
            telemetry: telemetry.clone(),
        })
    }

    /// Sends a consumed record with the reason, and waits until the broker has it.
    async fn send(&self, rec: &ConsumedRecord, reason: &str) -> Result<()> {
        warn!(topic = %rec.topic, partition = rec.partition, offset = rec.offset, %reason, dlq = %self.topic, "Record sent to the dead-letter topic.");
        let (partition, offset) = (rec.partition.to_string(), rec.offset.to_string());
        let mut headers: Vec<(&str, Option<&[u8]>)> = rec
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        for (k, v) in [
            ("__connect.errors.topic", rec.topic.as_str()),
            ("__connect.errors.partition", &partition),
            ("__connect.errors.offset", &offset),
        ] {
            headers.push((k, Some(v.as_bytes())));
        }
        self.produce(rec.key.as_deref(), rec.value.as_deref(), headers, reason)
            .await?;
        self.telemetry.kafka.dead_lettered.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Sends one record with the given headers and Kafka Connect's error headers for
    /// `reason`, and waits until the broker has it.
    pub(crate) async fn produce(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        mut headers: Vec<(&str, Option<&[u8]>)>,
        reason: &str,
    ) -> Result<()> {
        headers.push(("__connect.errors.exception.class.name", Some(b"strait")));
        headers.push((
            "__connect.errors.exception.message",
            Some(reason.as_bytes()),
        ));
        let mut owned = OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(Header { key, value });
        }
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(owned);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.payload(v);
        }
        match self.producer.send(r, Duration::from_secs(60)).await {
            Ok(_) => Ok(()),
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

#[async_trait]
impl DeadLetters for DeadLetterTopic {
    async fn dead_letter(
        &self,
        origin: Option<&dyn Origin>,
        _event: Option<&ChangeEvent>,
        reason: &str,
    ) -> Result<()> {
        let rec = origin
            .and_then(|o| o.as_any().downcast_ref::<ConsumedRecord>())
            .ok_or_else(|| Error::Internal("a dead letter that is not a Kafka record".into()))?;
        self.send(rec, reason).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_that_cannot_be_made_names_the_topic_not_a_source() {
        let options = BTreeMap::from([("no.such.property".to_string(), "1".to_string())]);
        let Err(e) = DeadLetterTopic::open_at(
            "127.0.0.1:1",
            &KafkaSecurity::default(),
            &options,
            "dead".into(),
            "orders",
            &Arc::new(Telemetry::default()),
        ) else {
            panic!("an unknown librdkafka property must fail");
        };
        let e = e.to_string();
        assert!(
            e.starts_with("dead-letter topic of orders: producer for dead:"),
            "{e}"
        );
        assert!(!e.contains("kafka source"), "{e}");
    }
}
