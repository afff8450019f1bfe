//! What the Kafka sink and the Kafka source share: client settings and errors.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};

use crate::connectors::kafka::config::KafkaSecurity;

/// What went wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The brokers did not answer.
    #[error("{what} {name}: cannot reach the brokers {brokers}: {detail}")]
    Unreachable {
        /// `sink` or `source`.
        what: &'static str,
        /// Sink or pipeline name.
        name: String,
        /// Bootstrap list.
        brokers: String,
        /// Client's explanation.
        detail: String,
    },
    /// Credentials or permissions were refused.
    #[error("{what} {name}: the brokers {brokers} refused access: {detail}")]
    Auth {
        /// `sink` or `source`.
        what: &'static str,
        /// Sink or pipeline name.
        name: String,
        /// Bootstrap list.
        brokers: String,
        /// Client's explanation.
        detail: String,
    },
    /// A setting the client does not accept.
    #[error("{what} {name}: {detail}")]
    Invalid {
        /// `sink` or `source`.
        what: &'static str,
        /// Sink or pipeline name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A record could not be delivered.
    #[error("kafka sink {sink}: delivering to topic {topic} failed: {detail}")]
    Delivery {
        /// Sink name.
        sink: String,
        /// Topic.
        topic: String,
        /// Client's explanation, with a hint when there is one.
        detail: String,
        /// Whether trying again can help.
        retryable: bool,
    },
    /// Any other client error.
    #[error("kafka {context}: {source}")]
    Client {
        /// What strait was doing.
        context: String,
        /// The client error.
        source: RdError,
    },
}

impl KafkaError {
    /// Whether the user must change something (settings, credentials, ACLs).
    pub fn is_user(&self) -> bool {
        match self {
            KafkaError::Auth { .. } | KafkaError::Invalid { .. } => true,
            KafkaError::Delivery { retryable, .. } => !retryable,
            KafkaError::Unreachable { .. } | KafkaError::Client { .. } => false,
        }
    }
}

/// Whether an error code means refused credentials or permissions.
pub fn is_auth_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// Producer settings no user option may weaken: each record is written once and acknowledged
/// by every in-sync replica before it counts as delivered.
pub const DURABLE_PRODUCER: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// [`check_reachable`] for a producer, off the runtime's threads (the metadata call blocks).
pub async fn check_producer(
    producer: &rdkafka::producer::FutureProducer,
    what: &'static str,
    name: &str,
    brokers: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    use rdkafka::producer::Producer;
    let (p, n, b) = (producer.clone(), name.to_string(), brokers.to_string());
    tokio::task::spawn_blocking(move || check_reachable(p.client(), what, &n, &b, timeout))
        .await
        .map_err(|e| KafkaError::Invalid {
            what,
            name: name.to_string(),
            detail: format!("check panicked: {e}"),
        })?
}

/// Client settings: brokers, security, then the user's own properties (which may override
/// anything but what `locked` names).
pub fn client_config(
    brokers: &str,
    security: &KafkaSecurity,
    options: &BTreeMap<String, String>,
    defaults: &[(&str, String)],
    locked: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    // Quiet librdkafka's own stderr logging; errors reach strait through callbacks and
    // results, and are logged there once.
    c.set("log_level", "3");
    for (k, v) in defaults {
        c.set(*k, v);
    }
    for (k, v) in security.properties() {
        c.set(k, v);
    }
    for (k, v) in options {
        c.set(k, v);
    }
    for (k, v) in locked {
        c.set(*k, *v);
    }
    c
}

/// Asks the brokers for cluster metadata, to fail fast with a clear message when they are
/// unreachable or refuse the credentials.
pub fn check_reachable<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    what: &'static str,
    name: &str,
    brokers: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    match client.fetch_metadata(None, timeout) {
        Ok(_) => Ok(()),
        Err(e) => {
            let detail = e.to_string();
            if e.rdkafka_error_code().is_some_and(is_auth_code)
                || detail.contains("uthentication")
                || detail.contains("SASL")
            {
                Err(KafkaError::Auth {
                    what,
                    name: name.to_string(),
                    brokers: brokers.to_string(),
                    detail,
                })
            } else {
                Err(KafkaError::Unreachable {
                    what,
                    name: name.to_string(),
                    brokers: brokers.to_string(),
                    detail: format!("{detail} (no answer within {timeout:?})"),
                })
            }
        }
    }
}
