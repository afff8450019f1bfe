//! The Kinesis connector's settings: `[source]` and `[sink]` with `type = "kinesis"`, a Kinesis
//! data stream carrying DynamoDB changes (the hop between two regions or accounts).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connectors::aws::client::AwsAccess;
use crate::connectors::dynamodb::config as ddb;
use crate::connectors::kafka::config::KafkaDeadLetterConfig;
use crate::connectors::InvalidSetting;

/// A Kinesis data stream read shard by shard.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// `"kinesis"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The stream's name or ARN.
    pub stream: String,
    /// AWS region; else the AWS default chain (`AWS_REGION`, the profile).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL instead of the region's (a local server, a VPC endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A profile of `~/.aws/config` / `~/.aws/credentials`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Access key id; with `secret_access_key`. Else the AWS default chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key, with `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token of temporary keys.
    #[serde(default)]
    pub session_token: Option<String>,
    /// How long to wait for a connection.
    #[serde(default = "ddb::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Wait between reads of a shard that had nothing new (Kinesis allows 5 reads a second per
    /// shard, shared by every consumer).
    #[serde(default = "ddb::default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the shard list is read for new shards (after splits and merges).
    #[serde(default = "ddb::default_shard_refresh", with = "humantime_serde")]
    pub shard_refresh: Duration,
    /// The database name changes get in strait's namespaces (`<database>.<tableName>`, the
    /// table named in each record), for `scope`, `rename` and the sink's default table.
    #[serde(default = "ddb::default_database")]
    pub database: String,
    /// Two-way sync: inserts and updates whose new image has `origin_attribute` equal to this
    /// value are passed over (written by the other direction).
    #[serde(default)]
    pub ignore_origin: Option<String>,
    /// The attribute naming where an item's last change was made (two-way sync).
    #[serde(default = "ddb::default_origin_attribute")]
    pub origin_attribute: String,
    /// A file where changes the sink refuses for good (an item DynamoDB does not take) and
    /// records that cannot be read are appended, one JSON line each with the reason, before the
    /// pipeline goes past them. Unset: such a change stops the pipeline with the reason (nothing
    /// is lost; the checkpoint stays before it).
    #[serde(default)]
    pub dead_letter_file: Option<std::path::PathBuf>,
    /// An SQS queue (its name, or its URL) that takes what `dead_letter_file` would, one
    /// message each, reached with the DynamoDB sink's region and keys. A letter over SQS's 256 KiB message
    /// limit keeps the item's keys and leaves out its images. At most one `dead_letter_*` key.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// A Kafka topic that takes them instead (`brokers`, `topic`, `security`, `options`).
    #[serde(default)]
    pub dead_letter_kafka: Option<KafkaDeadLetterConfig>,
}

/// A Kinesis data stream written with `PutRecords`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisSinkConfig {
    /// `"kinesis"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The stream's name or ARN.
    pub stream: String,
    /// AWS region; else the AWS default chain.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL instead of the region's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A profile of `~/.aws/config` / `~/.aws/credentials`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Access key id; with `secret_access_key`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key, with `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token of temporary keys.
    #[serde(default)]
    pub session_token: Option<String>,
    /// How long to wait for a connection.
    #[serde(default = "ddb::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Records per `PutRecords` call (at most 500; a call also stays under 5 MiB).
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
}

fn default_batch_records() -> usize {
    500
}

impl KinesisSourceConfig {
    /// Where and as whom to reach AWS.
    pub(crate) fn access(&self) -> AwsAccess {
        ddb::access(
            &self.region,
            &self.endpoint,
            &self.profile,
            (
                &self.access_key_id,
                &self.secret_access_key,
                &self.session_token,
            ),
            self.connect_timeout,
        )
    }

    /// Checks the settings that depend on nothing outside this stream.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.stream.is_empty() {
            return Err(InvalidSetting::new("stream", "must not be empty"));
        }
        ddb::validate_naming(&self.ignore_origin, &self.origin_attribute, &self.database)?;
        ddb::validate_dead_letters(
            &self.dead_letter_file,
            &self.dead_letter_queue,
            &self.dead_letter_kafka,
        )?;
        ddb::validate_access(
            &self.endpoint,
            (&self.access_key_id, &self.secret_access_key),
        )
    }

    /// Hides the secret key, for printing.
    pub(crate) fn redact(&mut self) {
        ddb::redact(&mut self.secret_access_key);
        ddb::redact(&mut self.session_token);
        if let Some(k) = &mut self.dead_letter_kafka {
            k.security = k.security.redacted();
        }
    }
}

impl KinesisSinkConfig {
    /// Where and as whom to reach AWS.
    pub(crate) fn access(&self) -> AwsAccess {
        ddb::access(
            &self.region,
            &self.endpoint,
            &self.profile,
            (
                &self.access_key_id,
                &self.secret_access_key,
                &self.session_token,
            ),
            self.connect_timeout,
        )
    }

    /// Checks the settings that depend on nothing outside this stream.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.stream.is_empty() {
            return Err(InvalidSetting::new("stream", "must not be empty"));
        }
        if !(1..=500).contains(&self.batch_records) {
            return Err(InvalidSetting::new(
                "batch_records",
                "must be between 1 and 500 (PutRecords' limit)",
            ));
        }
        ddb::validate_access(
            &self.endpoint,
            (&self.access_key_id, &self.secret_access_key),
        )
    }

    /// Hides the secret key, for printing.
    pub(crate) fn redact(&mut self) {
        ddb::redact(&mut self.secret_access_key);
        ddb::redact(&mut self.session_token);
    }
}
