//! The DynamoDB connector's settings: `[source]` with `type = "dynamodb"` (a table's stream and,
//! for the full sync, the table itself) and `[sink]` with `type = "dynamodb"` (a table).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connectors::aws::client::AwsAccess;
use crate::connectors::kafka::config::KafkaDeadLetterConfig;
use crate::connectors::InvalidSetting;

/// A DynamoDB table read through DynamoDB Streams (its full sync reads the table with `Scan`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoSourceConfig {
    /// `"dynamodb"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The table. Its stream must be on with `NEW_AND_OLD_IMAGES`.
    pub table: String,
    /// AWS region, e.g. `"cn-north-1"`; else the AWS default chain (`AWS_REGION`, the profile).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL instead of the region's (a local server, a VPC endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A profile of `~/.aws/config` / `~/.aws/credentials`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Access key id; with `secret_access_key`. Else the AWS default chain (environment,
    /// profile, instance or task role).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key, with `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Session token of temporary keys.
    #[serde(default)]
    pub session_token: Option<String>,
    /// How long to wait for a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Wait between reads of a shard that had nothing new (a shard takes 5 reads a second).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the stream's shard list is read for new shards (after splits).
    #[serde(default = "default_shard_refresh", with = "humantime_serde")]
    pub shard_refresh: Duration,
    /// The name the table has in strait's namespaces (`<database>.<table>`), for `scope`,
    /// `rename` and other sinks.
    #[serde(default = "default_database")]
    pub database: String,
    /// Two-way sync: inserts and updates whose new image has `origin_attribute` equal to this
    /// value were written by the other direction (its sink's `stamp_origin`) and are not sent
    /// back. Deletes always pass (deleting an absent item writes nothing, so they do not loop).
    #[serde(default)]
    pub ignore_origin: Option<String>,
    /// The attribute naming where an item's last change was made (two-way sync).
    #[serde(default = "default_origin_attribute")]
    pub origin_attribute: String,
    /// A file where changes the sink refuses for good (an item DynamoDB does not take) and
    /// records that cannot be read are appended, one JSON line each with the reason, before the
    /// pipeline goes past them. Unset: such a change stops the pipeline with the reason (nothing
    /// is lost; the checkpoint stays before it).
    #[serde(default)]
    pub dead_letter_file: Option<std::path::PathBuf>,
    /// An SQS queue (its name, or its URL) that takes what `dead_letter_file` would, one
    /// message each, reached with this table's region and keys. A letter over SQS's 256 KiB message
    /// limit keeps the item's keys and leaves out its images. At most one `dead_letter_*` key.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// A Kafka topic that takes them instead (`brokers`, `topic`, `security`, `options`).
    #[serde(default)]
    pub dead_letter_kafka: Option<KafkaDeadLetterConfig>,
}

/// A DynamoDB table written item by item.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoSinkConfig {
    /// `"dynamodb"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The table written; default: the source table's name (after `rename`).
    #[serde(default)]
    pub table: Option<String>,
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
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Last writer wins on this number attribute (e.g. `"last_update_timestamp"`): an item is
    /// put only when the target lacks it or holds an older value, and deleted only when the
    /// target's value is not newer than the deleted item's; a change that loses is dropped and
    /// counted as stale. Unset: every change is written as it comes.
    #[serde(default)]
    pub timestamp_attribute: Option<String>,
    /// Items written at once by one lane when there is no `timestamp_attribute`
    /// (`BatchWriteItem`, at most 25).
    #[serde(default = "default_batch_items")]
    pub batch_items: usize,
    /// Two-way sync: every item written gets `origin_attribute` set to this value (the name of
    /// the source side, e.g. its region), so the other direction's source, with
    /// `ignore_origin` set to it, does not send the change back. Needs `timestamp_attribute`.
    #[serde(default)]
    pub stamp_origin: Option<String>,
    /// The attribute naming where an item's last change was made (two-way sync). Applications
    /// writing to either table set it to their own side's name, as they set the timestamp.
    #[serde(default = "default_origin_attribute")]
    pub origin_attribute: String,
}

pub(crate) fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_poll_interval() -> Duration {
    Duration::from_millis(200)
}
pub(crate) fn default_shard_refresh() -> Duration {
    Duration::from_secs(5)
}
pub(crate) fn default_database() -> String {
    "dynamodb".into()
}
fn default_batch_items() -> usize {
    25
}
pub(crate) fn default_origin_attribute() -> String {
    "last_updater_region".into()
}

pub(crate) fn access(
    region: &Option<String>,
    endpoint: &Option<String>,
    profile: &Option<String>,
    keys: (&Option<String>, &Option<String>, &Option<String>),
    connect_timeout: Duration,
) -> AwsAccess {
    AwsAccess {
        region: region.clone(),
        endpoint: endpoint.clone(),
        profile: profile.clone(),
        keys: match keys {
            (Some(id), Some(secret), token) => Some((id.clone(), secret.clone(), token.clone())),
            _ => None,
        },
        connect_timeout,
    }
}

pub(crate) fn validate_access(
    endpoint: &Option<String>,
    keys: (&Option<String>, &Option<String>),
) -> Result<(), InvalidSetting> {
    if let Some(e) = endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(InvalidSetting::new(
                "endpoint",
                "must be a URL starting with http:// or https://",
            ));
        }
    }
    match keys {
        (Some(_), None) => Err(InvalidSetting::new(
            "secret_access_key",
            "required with access_key_id",
        )),
        (None, Some(_)) => Err(InvalidSetting::new(
            "access_key_id",
            "required with secret_access_key",
        )),
        _ => Ok(()),
    }
}

/// The checks of a stream source's two-way and namespace keys (DynamoDB and Kinesis).
pub(crate) fn validate_naming(
    ignore_origin: &Option<String>,
    origin_attribute: &str,
    database: &str,
) -> Result<(), InvalidSetting> {
    if ignore_origin.as_deref() == Some("") || origin_attribute.is_empty() {
        return Err(InvalidSetting::new(
            "ignore_origin",
            "ignore_origin and origin_attribute must not be empty",
        ));
    }
    if database.is_empty() || database.contains('.') {
        return Err(InvalidSetting::new(
            "database",
            "must be a non-empty name without dots",
        ));
    }
    Ok(())
}

/// A source keeps its dead letters in one place.
pub(crate) fn validate_dead_letters(
    file: &Option<std::path::PathBuf>,
    queue: &Option<String>,
    kafka: &Option<KafkaDeadLetterConfig>,
) -> Result<(), InvalidSetting> {
    let set = [file.is_some(), queue.is_some(), kafka.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        let key = if kafka.is_some() {
            "dead_letter_kafka"
        } else {
            "dead_letter_queue"
        };
        return Err(InvalidSetting::new(
            key,
            "set one of dead_letter_file, dead_letter_queue and dead_letter_kafka, not both",
        ));
    }
    if let Some(k) = kafka {
        k.validate()?;
    }
    if queue.as_deref() == Some("") {
        return Err(InvalidSetting::new(
            "dead_letter_queue",
            "must be a queue name or URL",
        ));
    }
    Ok(())
}

pub(crate) fn redact(secret: &mut Option<String>) {
    if secret.is_some() {
        *secret = Some("***".into());
    }
}

impl DynamoSourceConfig {
    /// Where and as whom to reach AWS.
    pub(crate) fn access(&self) -> AwsAccess {
        access(
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

    /// Checks the settings that depend on nothing outside this table.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.table.is_empty() {
            return Err(InvalidSetting::new("table", "must not be empty"));
        }
        validate_naming(&self.ignore_origin, &self.origin_attribute, &self.database)?;
        validate_dead_letters(
            &self.dead_letter_file,
            &self.dead_letter_queue,
            &self.dead_letter_kafka,
        )?;
        validate_access(
            &self.endpoint,
            (&self.access_key_id, &self.secret_access_key),
        )
    }

    /// Hides the secret key, for printing.
    pub(crate) fn redact(&mut self) {
        redact(&mut self.secret_access_key);
        redact(&mut self.session_token);
        if let Some(k) = &mut self.dead_letter_kafka {
            k.security = k.security.redacted();
        }
    }
}

impl DynamoSinkConfig {
    /// Where and as whom to reach AWS.
    pub(crate) fn access(&self) -> AwsAccess {
        access(
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

    /// Checks the settings that depend on nothing outside this table.
    pub(crate) fn validate(&self) -> Result<(), InvalidSetting> {
        if self.table.as_deref() == Some("") {
            return Err(InvalidSetting::new("table", "must not be empty"));
        }
        if self.timestamp_attribute.as_deref() == Some("") {
            return Err(InvalidSetting::new(
                "timestamp_attribute",
                "must not be empty",
            ));
        }
        if self.stamp_origin.is_some() && self.timestamp_attribute.is_none() {
            return Err(InvalidSetting::new(
                "stamp_origin",
                "two-way sync needs timestamp_attribute (last writer wins): without it an echoed delete could remove a newer item",
            ));
        }
        if self.stamp_origin.as_deref() == Some("") || self.origin_attribute.is_empty() {
            return Err(InvalidSetting::new(
                "stamp_origin",
                "stamp_origin and origin_attribute must not be empty",
            ));
        }
        if !(1..=25).contains(&self.batch_items) {
            return Err(InvalidSetting::new(
                "batch_items",
                "must be between 1 and 25 (BatchWriteItem's limit)",
            ));
        }
        validate_access(
            &self.endpoint,
            (&self.access_key_id, &self.secret_access_key),
        )
    }

    /// Hides the secret key, for printing.
    pub(crate) fn redact(&mut self) {
        redact(&mut self.secret_access_key);
        redact(&mut self.session_token);
    }
}
