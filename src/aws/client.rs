//! The AWS SDK configuration: region, profile, endpoint, credentials,
//! timeouts. One place, so that upload and download behave the same.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ebs::config::ProvideCredentials;

use super::retry::RetryPolicy;

/// Where and how to reach AWS: plain values (the command line fills them
/// in); shared by `upload`, `download` and `ami`.
#[derive(Debug, Clone)]
pub struct Connection {
    /// None: the SDK chain (AWS_REGION, then the profile's `region`).
    pub region: Option<String>,
    /// The named profile; None: AWS_PROFILE, then `default`.
    pub profile: Option<String>,
    /// Every request to this URL instead of the regional endpoints.
    pub endpoint_url: Option<String>,
    pub connect_timeout: Duration,
    /// One attempt of one request (connect, send, answer).
    pub attempt_timeout: Duration,
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
}

impl Default for Connection {
    fn default() -> Self {
        Self {
            region: None,
            profile: None,
            endpoint_url: None,
            connect_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(60),
            max_attempts: 8,
        }
    }
}

impl Connection {
    /// The same connection in `region`.
    pub fn in_region(&self, region: Option<String>) -> Self {
        Self {
            region,
            ..self.clone()
        }
    }

    /// The checks that need no network: the endpoint's scheme, the timeouts.
    pub fn check(&self) -> Result<(), ClientError> {
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ClientError::BadEndpoint { url: url.clone() });
        }
        if self.connect_timeout < Duration::from_secs(1) {
            return Err(ClientError::BadTimeout {
                flag: "connect-timeout",
            });
        }
        if self.attempt_timeout < Duration::from_secs(1) {
            return Err(ClientError::BadTimeout {
                flag: "attempt-timeout",
            });
        }
        if self.max_attempts == 0 {
            return Err(ClientError::NoAttempts);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no AWS region: pass --region, set AWS_REGION, or put `region = ...` in the profile in ~/.aws/config"
    )]
    NoRegion,
    #[error(
        "no AWS credentials ({reason})\n  set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure \
a profile in ~/.aws/credentials or ~/.aws/config (SSO: `aws configure sso`, then `aws sso login`) \
and pass --profile or set AWS_PROFILE"
    )]
    NoCredentials { reason: String },
    #[error("--endpoint-url {url:?} is not an http:// or https:// URL")]
    BadEndpoint { url: String },
    #[error("--{flag} must be at least 1 second (e.g. 10s, 2m)")]
    BadTimeout { flag: &'static str },
    #[error("--max-attempts must be at least 1")]
    NoAttempts,
}

/// Configured clients for the services imgforge talks to, in one region.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ebs: aws_sdk_ebs::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub kms: aws_sdk_kms::Client,
    pub region: String,
    pub retry: RetryPolicy,
    config: aws_config::SdkConfig,
}

impl Clients {
    fn new(config: aws_config::SdkConfig, region: String, retry: RetryPolicy) -> Self {
        let region_value = aws_config::Region::new(region.clone());
        let ebs = aws_sdk_ebs::config::Builder::from(&config)
            .region(region_value.clone())
            .build();
        let ec2 = aws_sdk_ec2::config::Builder::from(&config)
            .region(region_value.clone())
            .build();
        let ssm = aws_sdk_ssm::config::Builder::from(&config)
            .region(region_value.clone())
            .build();
        let kms = aws_sdk_kms::config::Builder::from(&config)
            .region(region_value)
            .build();
        Self {
            ebs: aws_sdk_ebs::Client::from_conf(ebs),
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            ssm: aws_sdk_ssm::Client::from_conf(ssm),
            kms: aws_sdk_kms::Client::from_conf(kms),
            region,
            retry,
            config,
        }
    }

    /// The same configuration (credentials, endpoint, timeouts) in another region.
    pub fn for_region(&self, region: &str) -> Self {
        Self::new(self.config.clone(), region.to_string(), self.retry)
    }
}

/// Builds the SDK configuration from the standard chain plus the flags, and
/// checks up front that a region and credentials exist, so that a missing
/// one is reported as such instead of as a failed request.
pub async fn connect(connection: &Connection) -> Result<Clients, ClientError> {
    connection.check()?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // A request that never gets an answer must fail in bounded time
        // (coldsnap hung outside EC2 for lack of these).
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(connection.connect_timeout)
                .read_timeout(connection.attempt_timeout)
                .operation_attempt_timeout(connection.attempt_timeout)
                .build(),
        )
        // Retries are ours (retry.rs), visible in the log.
        .retry_config(RetryConfig::disabled());
    if let Some(region) = &connection.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &connection.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &connection.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;

    let region = config
        .region()
        .map(|r| r.to_string())
        .ok_or(ClientError::NoRegion)?;
    let provider = config
        .credentials_provider()
        .ok_or_else(|| ClientError::NoCredentials {
            reason: "no credentials provider".into(),
        })?;
    provider
        .provide_credentials()
        .await
        .map_err(|err| ClientError::NoCredentials {
            reason: credentials_reason(&err),
        })?;

    let retry = RetryPolicy {
        max_attempts: connection.max_attempts,
        ..RetryPolicy::default()
    };
    Ok(Clients::new(config, region, retry))
}

/// Why the credential chain came back empty, in a few words: the innermost
/// cause's message (the SDK's Debug form of it is a page of internals).
fn credentials_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = innermost.to_string();
    // The chain's message continues with one line per provider it tried.
    let first_line = text.lines().next().unwrap_or_default();
    let text = first_line
        .split(". Attempted")
        .next()
        .unwrap_or_default()
        .trim()
        .trim_end_matches(['.', ':']);
    if text.chars().count() > 120 {
        let short: String = text.chars().take(117).collect();
        format!("{short}...")
    } else {
        text.to_string()
    }
}

/// The tokio runtime the AWS subcommands run on: enough worker threads for
/// the HTTP I/O; block reads go to the blocking pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
