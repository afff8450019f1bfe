//! Kafka: a sink publishing change events to topics, a source applying topics (a consumer-group
//! member), the dead-letter topic, and the record formats both sides share.

pub(crate) mod client;
pub mod config;
pub(crate) mod dead_letter;
pub(crate) mod sink;
pub(crate) mod source;

pub(crate) use client::KafkaError;
pub(crate) use client::{
    check_producer, check_reachable, client_config, is_auth_code, DURABLE_PRODUCER,
};
