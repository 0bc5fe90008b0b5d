//! The AWS connection flags that `upload`, `download` and `ami` share:
//! `--region`, `--profile` (the AWS named profile), `--endpoint-url`, the
//! timeouts and `--max-attempts`. Converted into the engine's plain
//! [`Connection`].

use std::time::Duration;

use clap::Args;
use imgforge::aws::client::Connection;
use imgforge::units::parse_duration;

use super::BadInput;

/// Where and how to reach AWS, in one region (`upload`, `download`).
#[derive(Debug, Clone, Args)]
pub struct AwsOptions {
    /// AWS region (default: the SDK chain: AWS_REGION, then the profile's `region`).
    /// Packer: region.
    #[arg(long)]
    pub region: Option<String>,
    #[command(flatten)]
    pub service: ServiceOptions,
}

/// How to reach AWS, whatever the region: the part of [`AwsOptions`] that
/// commands working in several regions (`imgforge ami`) share.
#[derive(Debug, Clone, Args)]
pub struct ServiceOptions {
    /// AWS named profile from ~/.aws/config and ~/.aws/credentials (SSO profiles work;
    /// run `aws sso login --profile P` first). Default: AWS_PROFILE, then `default`.
    /// Packer: profile.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Send every AWS request (EBS direct APIs, EC2, SSM) to this URL instead of
    /// the regional endpoints, e.g. a local moto server: http://127.0.0.1:5000.
    /// Packer: custom_endpoint_ec2.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// How long to wait for a TCP/TLS connection before the attempt fails
    /// (e.g. 10s; a bare number is seconds). Packer: none.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How long one attempt of one request may take (connect, send, answer)
    /// before it is abandoned and retried (e.g. 60s, 2m). Packer: none.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub attempt_timeout: Duration,
    /// Attempts per request, the first one included, for throttling, 5xx,
    /// timeouts and dropped connections (other errors are never retried).
    /// Packer: none (the AWS_MAX_ATTEMPTS environment variable).
    #[arg(long, default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
}

impl AwsOptions {
    /// The engine's connection, checked (endpoint scheme, timeouts).
    pub fn to_connection(&self) -> Result<Connection, BadInput> {
        self.service.to_connection(self.region.clone())
    }
}

impl ServiceOptions {
    /// The engine's connection in `region`, checked.
    pub fn to_connection(&self, region: Option<String>) -> Result<Connection, BadInput> {
        let connection = Connection {
            region,
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
            connect_timeout: self.connect_timeout,
            attempt_timeout: self.attempt_timeout,
            max_attempts: self.max_attempts,
        };
        connection.check().map_err(BadInput::from_error)?;
        Ok(connection)
    }
}

/// The region as far as it is known without asking AWS or reading the
/// profile: the flag, AWS_REGION, AWS_DEFAULT_REGION, else `*` (for
/// `--print-iam-policy`, which makes no AWS call).
pub fn offline_region(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "*".to_string())
}
