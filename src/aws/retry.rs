//! Which AWS failures are worth another attempt, and the retry loop itself.
//!
//! The SDK's own retries are switched off (see `client.rs`): they are silent,
//! and an upload that spends minutes retrying must say so. Here every retry
//! is logged with the error that caused it. Retried: throttling, 5xx,
//! timeouts and broken connections. Never retried: everything else, in
//! particular AccessDenied and Validation errors, which no retry can fix.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use aws_sdk_ebs::config::http::HttpResponse;
use aws_sdk_ebs::error::{ProvideErrorMetadata, SdkError};

use crate::sys::interrupt::{self, Interrupted};

/// Error codes AWS uses for throttling (EBS direct APIs and EC2).
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "RequestThrottledException",
    "Throttling",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
];

/// Error codes of transient server-side failures.
const TRANSIENT_CODES: &[&str] = &[
    "InternalServerException",
    "InternalServerError",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// The backoff before the first retry; doubles each time.
    pub base_delay: Duration,
    /// The backoff never exceeds this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// "Full jitter" backoff: uniform in [0, min(cap, base * 2^retry)], so
    /// that 64 workers throttled at once do not come back at once.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        let millis = exp.as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=millis))
    }
}

/// A failed AWS call, reduced to what a person needs: which call, the AWS
/// error code and message (from the SDK's error metadata, never its Debug
/// form), what to do about it, and whether it was worth retrying.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed: {code}: {message}{}", hint(code).map(|h| format!("\n  {h}")).unwrap_or_default())]
pub struct ApiError {
    pub operation: String,
    pub code: String,
    pub message: String,
    pub retryable: bool,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
}

impl ApiError {
    pub fn from_sdk<E>(operation: &str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, message) = code_and_message(err);
        let status = match err {
            SdkError::ServiceError(service) => Some(service.raw().status().as_u16()),
            SdkError::ResponseError(response) => Some(response.raw().status().as_u16()),
            _ => None,
        };
        Self {
            operation: operation.to_string(),
            code,
            message,
            retryable: is_retryable(err),
            status,
        }
    }

    /// True for "this thing does not exist" answers (which callers may
    /// expect, e.g. a snapshot that was deleted meanwhile).
    pub fn is_not_found(&self) -> bool {
        self.code.contains("NotFound") || self.status == Some(404)
    }
}

/// What to do about an error code, when something can be said beyond
/// AWS's own message.
pub fn hint(code: &str) -> Option<&'static str> {
    let has = |part: &str| code.contains(part);
    Some(
        if has("AccessDenied") || has("UnauthorizedOperation") || has("Forbidden") {
            "these credentials lack the permission for this call: allow it in their IAM policy, \
or pass --profile for other credentials"
        } else if has("AuthFailure")
            || has("InvalidClientTokenId")
            || has("ExpiredToken")
            || has("SignatureDoesNotMatch")
            || has("UnrecognizedClient")
            || has("InvalidAccessKeyId")
        {
            "the credentials are not valid (expired or mistyped): refresh them (`aws sso login` \
for SSO) or pass --profile"
        } else if has("OptInRequired") {
            "the account is not subscribed to this service in this region: enable the region \
or pick another with --region"
        } else if code == "ConnectionError" || code == "DispatchFailure" {
            "no connection to AWS: check the network, --region and --endpoint-url"
        } else if code == "Timeout" {
            "no answer in time: check the network, or raise --attempt-timeout"
        } else if THROTTLING_CODES.contains(&code) {
            "AWS kept throttling: retry later, lower --workers or raise --max-attempts"
        } else if TRANSIENT_CODES.contains(&code) || code.starts_with("HTTP 5") {
            "AWS failed on its side: rerun the same command (it resumes)"
        } else if has("NotFound") || has("Malformed") {
            "check the ID and --region (IDs are regional)"
        } else {
            return None;
        },
    )
}

/// The AWS error code and message, or a stand-in naming the kind of
/// failure when no answer arrived.
pub fn code_and_message<E>(err: &SdkError<E, HttpResponse>) -> (String, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let status = service.raw().status().as_u16();
            let code = e
                .code()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            let message = e
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| format!("the server answered HTTP {status} without a message"));
            (code, message)
        }
        SdkError::TimeoutError(_) => (
            "Timeout".into(),
            "no answer within the attempt timeout (--attempt-timeout)".into(),
        ),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "Timeout"
            } else if failure.is_io() {
                "ConnectionError"
            } else {
                "DispatchFailure"
            };
            (kind.into(), innermost_cause(err))
        }
        SdkError::ResponseError(_) => ("ResponseError".into(), source_chain(err)),
        SdkError::ConstructionFailure(_) => ("ConstructionFailure".into(), source_chain(err)),
        _ => ("Unknown".into(), source_chain(err)),
    }
}

/// The most specific cause of a failure to reach AWS ("Connection refused
/// (os error 111)"), without the layers of the HTTP stack above it.
fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// An error and its causes on one line (the SDK's Display shows only the top).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Throttling, 5xx, timeouts and broken connections: yes. All else: no.
pub fn is_retryable<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::TimeoutError(_) => true,
        // A connection refused, reset or timed out before an answer. A
        // "user" failure (bad request construction) would fail again.
        SdkError::DispatchFailure(failure) => !failure.is_user(),
        // An answer that could not be used. Retried when the body never
        // arrived whole (a connection dropped halfway through it) or the
        // status says the server failed; a complete 2xx body the SDK cannot
        // parse would be unparseable again.
        SdkError::ResponseError(response) => {
            let raw = response.raw();
            let status = raw.status().as_u16();
            raw.body().bytes().is_none() || status == 429 || status >= 500
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            is_retryable_code(service.err().code(), status)
        }
        _ => false,
    }
}

/// The decision for an answer that arrived: its code first, then its status.
pub fn is_retryable_code(code: Option<&str>, status: u16) -> bool {
    if let Some(code) = code {
        if THROTTLING_CODES.contains(&code) || TRANSIENT_CODES.contains(&code) {
            return true;
        }
        if code.contains("AccessDenied")
            || code.contains("Validation")
            || code.contains("NotFound")
            || code.contains("Unauthorized")
            || code.contains("Invalid")
        {
            return false;
        }
    }
    status == 429 || status >= 500
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// Runs `call` until it succeeds, fails for good, or runs out of attempts.
/// `what` names the call in the log ("PutSnapshotBlock 12").
pub async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    operation: &str,
    what: impl Display,
    mut call: F,
) -> Result<T, RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut attempt = 1;
    loop {
        if interrupt::requested() {
            return Err(RetryError::Interrupted(Interrupted));
        }
        match call().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                let api = ApiError::from_sdk(operation, &err);
                if !api.retryable || attempt >= policy.max_attempts {
                    if api.retryable {
                        log::warn!(
                            "{what}: {}: {} (giving up after {attempt} attempts)",
                            api.code,
                            api.message
                        );
                    }
                    return Err(api.into());
                }
                let delay = policy.backoff(attempt - 1);
                log::warn!(
                    "{what}: {}: {}; retry {attempt}/{} in {} ms",
                    api.code,
                    api.message,
                    policy.max_attempts - 1,
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ebs::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockError;
    use aws_smithy_types::body::SdkBody;

    fn service_error(code: &str, status: u16) -> SdkError<PutSnapshotBlockError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(PutSnapshotBlockError::generic(meta), raw)
    }

    #[test]
    fn retries_throttling_5xx_and_broken_connections() {
        assert!(is_retryable(&service_error("ThrottlingException", 429)));
        assert!(is_retryable(&service_error(
            "RequestThrottledException",
            400
        )));
        assert!(is_retryable(&service_error("InternalServerException", 500)));
        assert!(is_retryable(&service_error("Whatever", 503)));
        let timeout: SdkError<PutSnapshotBlockError, HttpResponse> =
            SdkError::timeout_error("slow");
        assert!(is_retryable(&timeout));
        let reset: SdkError<PutSnapshotBlockError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection reset".into()));
        assert!(is_retryable(&reset));
    }

    #[test]
    fn never_retries_access_or_validation_errors() {
        assert!(!is_retryable(&service_error("AccessDeniedException", 403)));
        assert!(!is_retryable(&service_error("ValidationException", 400)));
        assert!(!is_retryable(&service_error(
            "ResourceNotFoundException",
            404
        )));
        // A validation code wins even on a 5xx status.
        assert!(!is_retryable(&service_error("ValidationException", 500)));
        let user: SdkError<PutSnapshotBlockError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::user("bad uri".into()));
        assert!(!is_retryable(&user));
    }

    #[test]
    fn api_error_carries_code_and_message() {
        let api = ApiError::from_sdk(
            "PutSnapshotBlock",
            &service_error("AccessDeniedException", 403),
        );
        let text = api.to_string();
        assert!(
            text.starts_with("PutSnapshotBlock failed: AccessDeniedException: m\n  "),
            "{text}"
        );
        assert!(text.contains("IAM policy"), "{text}");
        assert_eq!(text.lines().count(), 2);
        let other = ApiError::from_sdk("PutSnapshotBlock", &service_error("SomethingElse", 400));
        assert_eq!(
            other.to_string(),
            "PutSnapshotBlock failed: SomethingElse: m"
        );
        assert!(!api.retryable);
        assert_eq!(api.status, Some(403));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let policy = RetryPolicy::default();
        for retry in 0..30 {
            let delay = policy.backoff(retry);
            assert!(delay <= policy.max_delay);
            assert!(delay <= policy.base_delay * 2u32.pow(retry.min(16)));
        }
    }

    #[tokio::test]
    async fn with_retries_stops_on_non_retryable_and_counts_attempts() {
        let policy = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut calls = 0;
        let result: Result<(), _> = with_retries(&policy, "PutSnapshotBlock", "t", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(service_error("ThrottlingException", 429))
                } else {
                    Err(service_error("ValidationException", 400))
                }
            }
        })
        .await;
        assert!(matches!(result, Err(RetryError::Api(ref e)) if e.code == "ValidationException"));
        assert_eq!(calls, 3);

        let mut calls = 0;
        let result: Result<(), _> = with_retries(&policy, "PutSnapshotBlock", "t", || {
            calls += 1;
            async { Err(service_error("InternalServerException", 500)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 4);
    }
}
