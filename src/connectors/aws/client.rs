//! AWS access shared by the DynamoDB source and sink: the SDK configuration from strait's
//! keys (region, endpoint, credentials) and the classification of SDK failures.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::AwsError;
use crate::error::Role;

/// Where and as whom to reach AWS: the keys every DynamoDB / Kinesis table of a config shares.
#[derive(Debug, Clone)]
pub(crate) struct AwsAccess {
    /// Region (else the AWS default chain: `AWS_REGION`, the profile).
    pub(crate) region: Option<String>,
    /// Endpoint URL (a local server, a VPC endpoint); else the region's.
    pub(crate) endpoint: Option<String>,
    /// A profile of `~/.aws/config` and `~/.aws/credentials`.
    pub(crate) profile: Option<String>,
    /// Static keys, when given (else the default chain).
    pub(crate) keys: Option<(String, String, Option<String>)>,
    /// Connect timeout.
    pub(crate) connect_timeout: Duration,
}

impl AwsAccess {
    /// The SDK configuration.
    pub(crate) async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.connect_timeout)
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
        if let Some(r) = &self.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &self.endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p.clone());
        }
        if let Some((id, secret, token)) = &self.keys {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                token.clone(),
                None,
                "strait-config",
            ));
        }
        loader.load().await
    }

    /// Where requests go, for messages.
    pub(crate) fn describe(&self, region: Option<&Region>) -> String {
        let region = region
            .map(|r| r.to_string())
            .or_else(|| self.region.clone())
            .unwrap_or_else(|| "(no region)".into());
        match &self.endpoint {
            Some(e) => format!("{e} (region {region})"),
            None => format!("region {region}"),
        }
    }
}

/// What a failed call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The service could not be reached or answered with a server error: try again.
    Transient,
    /// Throttled (provisioned throughput, request rate): back off and try again.
    Throttled,
    /// The credentials were refused.
    Auth,
    /// The table, stream or shard does not exist.
    NotFound,
    /// A conditional write's condition did not hold.
    ConditionFailed,
    /// The stream position is older than the stream's retention.
    Trimmed,
    /// The shard iterator expired (15 minutes): take a new one.
    IteratorExpired,
    /// The request itself is refused (a value DynamoDB does not take, an item too large).
    Invalid,
}

/// Classifies an SDK failure and turns it into strait's error.
pub(crate) fn classify<E>(
    e: aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    role: Role,
    context: impl Into<String>,
    target: &str,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::SdkError;
    let context = context.into();
    let (failure, code, message) = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => (
            Failure::Transient,
            String::new(),
            format!("cannot reach {target}: {}", source_chain(&e)),
        ),
        SdkError::ResponseError(_) => (Failure::Transient, String::new(), source_chain(&e)),
        SdkError::ServiceError(s) => {
            let err = s.err();
            let mut code = err.code().unwrap_or("").to_string();
            let mut message = err.message().unwrap_or("").to_string();
            let status = s.raw().status();
            if code.is_empty() {
                // A body the SDK did not parse (an XML error from a proxy or a local server).
                let body = String::from_utf8_lossy(s.raw().body().bytes().unwrap_or_default());
                code = between(&body, "<Code>", "</Code>").unwrap_or_default();
                message = between(&body, "<Message>", "</Message>")
                    .unwrap_or_else(|| format!("HTTP status {}", status.as_u16()));
            }
            let failure = match failure_of(&code, status.is_server_error()) {
                Failure::Invalid if matches!(status.as_u16(), 401 | 403) => Failure::Auth,
                f => f,
            };
            (failure, code, message)
        }
        _ => (Failure::Invalid, String::new(), source_chain(&e)),
    };
    AwsError::Call {
        role,
        context,
        failure,
        code,
        message,
    }
}

fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(text[start..start + len].to_string())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The failure an error code stands for.
pub(crate) fn failure_of(code: &str, server_error: bool) -> Failure {
    match code {
        "ProvisionedThroughputExceededException"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "LimitExceededException"
        | "TransactionInProgressException" => Failure::Throttled,
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "AccessDeniedException"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "IncompleteSignature"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch" => Failure::Auth,
        "ResourceNotFoundException"
        | "QueueDoesNotExist"
        | "AWS.SimpleQueueService.NonExistentQueue" => Failure::NotFound,
        "ConditionalCheckFailedException" => Failure::ConditionFailed,
        "TrimmedDataAccessException" => Failure::Trimmed,
        "ExpiredIteratorException" => Failure::IteratorExpired,
        "InternalServerError" | "InternalFailure" | "ServiceUnavailable" => Failure::Transient,
        _ if server_error => Failure::Transient,
        _ => Failure::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(
            failure_of("ProvisionedThroughputExceededException", false),
            Failure::Throttled
        );
        assert_eq!(
            failure_of("UnrecognizedClientException", false),
            Failure::Auth
        );
        assert_eq!(
            failure_of("TrimmedDataAccessException", false),
            Failure::Trimmed
        );
        assert_eq!(failure_of("ValidationException", false), Failure::Invalid);
        // moto answers an unknown iterator with a bare 500.
        assert_eq!(failure_of("", true), Failure::Transient);
    }
}
