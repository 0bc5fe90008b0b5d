//! The AWS SDK configuration: region, profile, endpoint, credentials,
//! timeouts. One place, so that upload and download behave the same.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ebs::config::ProvideCredentials;

use super::retry::RetryPolicy;

/// Where and how to reach AWS; shared by `upload` and `download`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// AWS region (default: the SDK chain: AWS_REGION, then the profile's `region`).
    /// Packer: region.
    #[arg(long)]
    pub region: Option<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// How to reach AWS, whatever the region: the part of [`ConnectionArgs`] that
/// commands working in several regions (`imgforge ami`) share.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Named profile from ~/.aws/config and ~/.aws/credentials (SSO profiles work;
    /// run `aws sso login --profile P` first). Default: AWS_PROFILE, then `default`.
    /// Packer: profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// Send every AWS request (EBS direct APIs and EC2) to this URL instead of
    /// the regional endpoints, e.g. a local moto server: http://127.0.0.1:5000.
    /// Packer: custom_endpoint_ec2.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Seconds to wait for a TCP/TLS connection before the attempt fails.
    /// Packer: none.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub connect_timeout: u64,
    /// Seconds one attempt of one request may take (connect, send, answer)
    /// before it is abandoned and retried.
    /// Packer: none.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub attempt_timeout: u64,
    /// Attempts per request, the first one included, for throttling, 5xx,
    /// timeouts and dropped connections (other errors are never retried).
    /// Packer: none (the AWS_MAX_ATTEMPTS environment variable).
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
}

impl Default for ServiceArgs {
    fn default() -> Self {
        Self {
            profile: None,
            endpoint_url: None,
            connect_timeout: 10,
            attempt_timeout: 60,
            max_attempts: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no AWS region: pass --region, set AWS_REGION, or put `region = ...` in the profile in ~/.aws/config"
    )]
    NoRegion,
    #[error(
        "no AWS credentials ({reason}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure a \
profile in ~/.aws/credentials or ~/.aws/config (for SSO: `aws configure sso` then `aws sso login`) \
and pass --profile or set AWS_PROFILE"
    )]
    NoCredentials { reason: String },
    #[error("--endpoint-url {url:?} is not an http:// or https:// URL")]
    BadEndpoint { url: String },
    #[error("--{flag} must be at least 1 second")]
    BadTimeout { flag: &'static str },
}

/// Configured clients for the services imgforge talks to, in one region.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ebs: aws_sdk_ebs::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
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
            .region(region_value)
            .build();
        Self {
            ebs: aws_sdk_ebs::Client::from_conf(ebs),
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            ssm: aws_sdk_ssm::Client::from_conf(ssm),
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
pub async fn connect(connection: &ConnectionArgs) -> Result<Clients, ClientError> {
    let args = &connection.service;
    if args.connect_timeout == 0 {
        return Err(ClientError::BadTimeout {
            flag: "connect-timeout",
        });
    }
    if args.attempt_timeout == 0 {
        return Err(ClientError::BadTimeout {
            flag: "attempt-timeout",
        });
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        // A request that never gets an answer must fail in bounded time
        // (coldsnap hung outside EC2 for lack of these).
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(args.connect_timeout))
                .read_timeout(Duration::from_secs(args.attempt_timeout))
                .operation_attempt_timeout(Duration::from_secs(args.attempt_timeout))
                .build(),
        )
        // Retries are ours (retry.rs), visible in the log.
        .retry_config(RetryConfig::disabled());
    if let Some(region) = &connection.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &args.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &args.endpoint_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ClientError::BadEndpoint { url: url.clone() });
        }
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
            reason: aws_sdk_ebs::error::DisplayErrorContext(&err)
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        })?;

    let retry = RetryPolicy {
        max_attempts: args.max_attempts,
        ..RetryPolicy::default()
    };
    Ok(Clients::new(config, region, retry))
}

/// [`connect`] for an owned configuration.
pub async fn connect_owned(connection: ConnectionArgs) -> Result<Clients, ClientError> {
    connect(&connection).await
}

/// The tokio runtime the AWS subcommands run on: enough worker threads for
/// the HTTP I/O; block reads go to the blocking pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
