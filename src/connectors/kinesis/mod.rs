//! Kinesis Data Streams as the hop between two DynamoDB tables (regions or accounts that
//! global tables cannot join): a sink writing each change as a record in the shape of Kinesis
//! Data Streams for DynamoDB, and a source reading such records back, every shard in lineage
//! order.

pub mod config;
pub(crate) mod sink;
pub(crate) mod source;

use crate::connectors::aws::client::{classify, Failure};
use crate::error::{Error, Result, Role};

/// The ARN of a stream given by name or ARN; a missing stream is one clear line.
pub(crate) async fn stream_arn(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    role: Role,
    target: &str,
) -> Result<String> {
    let req = client.describe_stream_summary();
    let req = if stream.starts_with("arn:") {
        req.stream_arn(stream)
    } else {
        req.stream_name(stream)
    };
    let resp = req
        .send()
        .await
        .map_err(|e| classify(e, role, format!("describing Kinesis stream {stream}"), target))
        .map_err(|e| match e.failure() {
            Failure::NotFound => Error::User(format!(
                "{role}: Kinesis stream {stream} does not exist at {target} (create it: aws kinesis create-stream --stream-name {stream} --shard-count 1)"
            )),
            _ => Error::Aws(e),
        })?;
    resp.stream_description_summary
        .map(|d| d.stream_arn)
        .ok_or_else(|| Error::Internal("DescribeStreamSummary without a summary".into()))
}
