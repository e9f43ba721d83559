//! Where the S3 store is and how to talk to it: the bucket, endpoint,
//! region and CA bundle from the command line and the environment, and the
//! SDK client built from them (credentials, retries, time limits).

use std::path::PathBuf;

use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{
    RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use crate::error::{Error, Result};
use crate::storage::s3_http::{self, Connections};

/// What aliBuild's `b3://` stores use when no endpoint is given.
pub const DEFAULT_ENDPOINT: &str = "https://s3.cern.ch";

#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: String,
    pub region: String,
    /// The PEM bundle of certificate authorities an `https://` endpoint is
    /// checked against instead of the system's (`AWS_CA_BUNDLE`).
    pub ca_bundle: Option<PathBuf>,
    /// How many connections the client opens (a one-shot command's few,
    /// unless set otherwise).
    pub connections: Connections,
}

impl S3Config {
    /// Endpoint: the flag, else `AWS_ENDPOINT_URL`, else CERN S3; CA bundle:
    /// `AWS_CA_BUNDLE`.
    pub fn from_env(bucket: String, endpoint: Option<&str>) -> Result<Self> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::input(format!(
                "invalid S3 endpoint {endpoint:?}: it must start with http:// or https:// (e.g. https://s3.cern.ch)"
            )));
        }
        Ok(S3Config {
            bucket,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            ca_bundle: env("AWS_CA_BUNDLE").map(PathBuf::from),
            connections: Connections::AtMost(s3_http::FEW_CONNECTIONS),
        })
    }

    /// `s3://BUCKET at ENDPOINT`.
    pub fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket, self.endpoint)
    }

    /// The SDK client for this store, its requests sent through `http`.
    pub(super) async fn client(&self, http: SharedHttpClient) -> Client {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials())
            .endpoint_url(&self.endpoint)
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(s3_http::ATTEMPTS))
            // No attempt timeout: the stall limit ends an attempt that stopped
            // moving, however long a large part legitimately takes.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(s3_http::CONNECT_LIMIT)
                    .build(),
            )
            // A response body that stops arriving (a journal, a listing page).
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .upload_enabled(false)
                    .grace_period(s3_http::STALL_LIMIT)
                    .build(),
            )
            .load()
            .await;
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .interceptor(s3_http::RetryLog)
            // Ceph RGW predates the SDK's default flexible checksums; we send
            // Content-MD5 on every write instead.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Client::from_conf(s3)
    }
}

/// Credentials from the environment first, then ~/.aws/credentials; no
/// instance metadata or other network lookups.
pub(super) fn credentials() -> CredentialsProviderChain {
    CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else("Profile", ProfileFileCredentialsProvider::builder().build())
}
