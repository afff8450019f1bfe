//! The dead-letter topic of a Kafka source: records that cannot be decoded or applied, with
//! Kafka Connect's `__connect.errors.*` headers saying why.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::warn;

use super::config::KafkaSourceConfig;
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
        let producer = client_config(
            &cfg.brokers,
            &cfg.security,
            &cfg.options,
            &[("message.timeout.ms", "0".into())],
            DURABLE_PRODUCER,
        )
        .create()
        .map_err(|e| KafkaError::Invalid {
            what: "kafka source",
            name: pipeline.to_string(),
            detail: format!("dead-letter producer: {e}"),
        })?;
        Ok(Self {
            topic: cfg.dlq_topic(pipeline),
            producer,
            telemetry: telemetry.clone(),
        })
    }

    /// Sends a record with the reason, and waits until the broker has it.
    async fn send(&self, rec: &ConsumedRecord, reason: &str) -> Result<()> {
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
