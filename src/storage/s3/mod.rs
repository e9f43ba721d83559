//! The S3 backend (Ceph RADOS Gateway, as CERN S3 runs it; AWS; MinIO):
//! path-style addressing, a custom endpoint, credentials from the
//! environment or the shared credentials file, never from the network.

pub(super) mod answer;
mod config;

use async_trait::async_trait;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::ProvideCredentials;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectCannedAcl};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;

use super::s3_http;
use super::s3_tls::{self, Trust};
use super::{
    md5_hex_off_thread, Created, Listing, Metadata, ObjectInfo, ObjectMeta, PendingUpload, PutMode,
    Segments, Store, UploadedPart,
};
use crate::error::{source_chain, Error, Result};
use crate::layout::Link;

pub use config::S3Config;

#[derive(Debug)]
pub struct S3Store {
    client: Client,
    credentials: CredentialsProviderChain,
    config: S3Config,
    /// What the endpoint's certificate is checked against (`None`: plain HTTP).
    trust: Option<Trust>,
}

impl S3Store {
    pub async fn connect(config: S3Config) -> Result<Self> {
        let trust = match s3_http::uses_tls(&config.endpoint) {
            true => Some(Trust::resolve(config.ca_bundle.as_deref()).await),
            false => None,
        };
        let http = s3_http::client(&config.endpoint, trust.as_ref(), config.connections)?;
        Ok(S3Store {
            client: config.client(http).await,
            credentials: config::credentials(),
            config,
            trust,
        })
    }

    fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// Every attempt of `op` timed out.
    fn no_answer(&self, op: &str, target: &str, err: &dyn std::error::Error) -> Error {
        Error::store(format!(
            "the S3 endpoint {} did not answer {op} {target} ({}; {} attempts); check that the server is up and --endpoint-url / AWS_ENDPOINT_URL",
            self.config.endpoint,
            source_chain(err),
            s3_http::ATTEMPTS
        ))
    }

    /// Turn an SDK error into a message that says what to do.
    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        op: &str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Error {
        let endpoint = &self.config.endpoint;
        let target = format!("s3://{}/{key}", self.bucket());
        match &err {
            SdkError::TimeoutError(_) => self.no_answer(op, &target, &err),
            SdkError::DispatchFailure(failure) if failure.is_timeout() => {
                self.no_answer(op, &target, &err)
            }
            SdkError::DispatchFailure(_) => match (&self.trust, source_chain(&err)) {
                (Some(trust), cause) if s3_tls::is_certificate_error(&cause) => {
                    s3_tls::untrusted(endpoint, trust, &cause)
                }
                (_, cause) => Error::store(format!(
                    "cannot reach the S3 endpoint {endpoint} ({op} {target}: {cause}); check --endpoint-url / AWS_ENDPOINT_URL and that the server is up"
                )),
            },
            _ => {
                let response = err.raw_response();
                let status = response.map(|r| r.status().as_u16());
                let code = err.code().unwrap_or("").to_string();
                let detail = err.message().unwrap_or("").to_string();
                let from_s3 = !code.is_empty() || response.is_some_and(answer::sent_by_s3);
                // An error answer (a success the SDK failed to parse is not).
                let uncoded = response
                    .filter(|r| !r.status().is_success())
                    .map(answer::Uncoded::of);
                match (code.as_str(), status, uncoded) {
                    ("InvalidAccessKeyId" | "SignatureDoesNotMatch", _, _) => Error::store(format!(
                        "{endpoint} refused our credentials ({code}) on {op} {target}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    )),
                    ("AccessDenied", _, _) | (_, Some(403), _) if from_s3 => Error::store(format!(
                        "{endpoint} denied {op} {target} (HTTP 403): the credentials are wrong or lack permission for this bucket; \
                         check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    )),
                    ("NoSuchBucket", _, _) => Error::store(format!(
                        "bucket {} does not exist at {endpoint}: check --remote-store and --endpoint-url",
                        self.bucket()
                    )),
                    // An error answer without an S3 error code (a proxy's
                    // JSON, a gateway's page, a HEAD's empty body): what
                    // answered, and what it said.
                    ("", _, Some(uncoded)) => Error::store(format!(
                        "S3 {op} {target} failed at {endpoint}: {}",
                        uncoded.describe()
                    )),
                    // An answer the SDK could not parse: the cause is in the
                    // error's sources.
                    ("", _, None) => Error::store(format!(
                        "S3 {op} {target} failed at {endpoint}: {}{}",
                        status.map(|s| format!("HTTP {s}: ")).unwrap_or_default(),
                        source_chain(&err)
                    )),
                    _ => Error::store(format!(
                        "S3 {op} {target} failed at {endpoint}: {} {code} {detail}",
                        status.map(|s| format!("HTTP {s}")).unwrap_or_default()
                    )),
                }
            }
        }
    }

    /// PutObject `body` at `key` with its Content-MD5 and `metadata`, in
    /// `mode`; a link's `redirect` comes with a public-read ACL.
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
        redirect: Option<&str>,
    ) -> Result<Created> {
        let md5 = md5_hex_off_thread(body.clone()).await;
        let mut request = self
            .client
            .put_object()
            .bucket(self.bucket())
            .key(key)
            .set_if_none_match((mode == PutMode::Create).then(|| "*".to_string()))
            .content_md5(content_md5(&md5))
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .body(ByteStream::from(body));
        if let Some(redirect) = redirect {
            request = request
                .website_redirect_location(redirect)
                .acl(ObjectCannedAcl::PublicRead);
        }
        match request.send().await {
            Ok(_) => Ok(Created::Yes),
            Err(err) if mode == PutMode::Create && status_of(&err) == Some(412) => {
                Ok(Created::AlreadyExists)
            }
            Err(err) => Err(self.error("PutObject", key, err)),
        }
    }

    /// The answer to `op` on `key`: `None` when the server answered 404
    /// (no such key, or upload), an error for any other failure.
    fn found<T, E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        op: &str,
        key: &str,
        answer: SdkResult<T, E>,
    ) -> Result<Option<T>> {
        match answer {
            Ok(out) => Ok(Some(out)),
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(self.error(op, key, err)),
        }
    }
}

type SdkResult<T, E> = std::result::Result<T, SdkError<E, HttpResponse>>;

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The `Content-MD5` header (base64) of a body whose hex MD5 is `md5_hex`.
fn content_md5(md5_hex: &str) -> String {
    let digest = hex::decode(md5_hex).expect("an MD5 in hex");
    base64::engine::general_purpose::STANDARD.encode(digest)
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.config.describe()
    }

    async fn preflight(&self) -> Result<()> {
        self.credentials.provide_credentials().await.map_err(|_| {
            Error::store(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile in ~/.aws/credentials)",
            )
        })?;
        match self.client.head_bucket().bucket(self.bucket()).send().await {
            Ok(_) => Ok(()),
            // A HEAD's answer has no body: something that is not S3 says
            // why it refused in the answer to a GET.
            Err(err) if err.raw_response().is_some_and(|r| !answer::sent_by_s3(r)) => {
                let listed = self
                    .client
                    .list_objects_v2()
                    .bucket(self.bucket())
                    .max_keys(0)
                    .send()
                    .await;
                Err(match listed {
                    Err(listing) => self.error("ListObjectsV2", "", listing),
                    Ok(_) => self.error("HeadBucket", "", err),
                })
            }
            Err(err) if status_of(&err) == Some(404) => Err(Error::store(format!(
                "bucket {} does not exist at {}: check --remote-store and --endpoint-url",
                self.bucket(),
                self.config.endpoint
            ))),
            Err(err) => Err(self.error("HeadBucket", "", err)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let answer = self
            .client
            .head_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await;
        let found = self.found("HeadObject", key, answer)?;
        Ok(found.map(|out| ObjectInfo {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            metadata: out
                .metadata()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            website_redirect: out.website_redirect_location().map(str::to_string),
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let answer = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await;
        let Some(out) = self.found("GetObject", key, answer)? else {
            return Ok(None);
        };
        let body = out.body.collect().await.map_err(|e| {
            Error::store(format!(
                "reading s3://{}/{key} from {}: {}",
                self.bucket(),
                self.config.endpoint,
                source_chain(&e)
            ))
        })?;
        Ok(Some(body.into_bytes()))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Segments>> {
        if len == 0 {
            return Ok(self.head(key).await?.map(|_| Segments::default()));
        }
        let last = offset.saturating_add(len - 1);
        let answer = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(key)
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await;
        // The range starts at or after the end of the object.
        if matches!(&answer, Err(err) if status_of(err) == Some(416)) {
            return Ok(Some(Segments::default()));
        }
        let Some(out) = self.found("GetObject", key, answer)? else {
            return Ok(None);
        };
        let body = out.body.collect().await.map_err(|e| {
            Error::store(format!(
                "reading bytes {offset}-{last} of s3://{}/{key}: {e}",
                self.bucket()
            ))
        })?;
        Ok(Some(body.into_segments().collect()))
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
    ) -> Result<Created> {
        self.put_object(key, body, metadata, mode, None).await
    }

    async fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created> {
        let body = Bytes::from(link.body.clone());
        let redirect = link.redirect.as_deref();
        self.put_object(&link.key, body, metadata, PutMode::Create, redirect)
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let answer = self
            .client
            .delete_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await;
        self.found("DeleteObject", key, answer).map(drop)
    }

    async fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(prefix)
            .set_delimiter((!recursive).then(|| "/".to_string()))
            .max_keys(1000)
            .into_paginator()
            .send();
        let mut listing = Listing::default();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| self.error("ListObjectsV2", prefix, err))?;
            listing.prefixes.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_string)),
            );
            listing
                .objects
                .extend(page.contents().iter().filter_map(|o| {
                    Some(ObjectMeta {
                        key: o.key()?.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        last_modified: o.last_modified().map(|t| t.secs()),
                        // A multipart ETag ("<hex>-<parts>") is no MD5 of the body.
                        md5: o
                            .e_tag()
                            .map(|e| e.trim_matches('"').to_string())
                            .filter(|e| e.len() == 32 && !e.contains('-')),
                    })
                }));
        }
        listing.prefixes.sort();
        listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    async fn create_upload(&self, key: &str, metadata: &Metadata) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(key)
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|err| self.error("CreateMultipartUpload", key, err))?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            Error::store(format!(
                "CreateMultipartUpload {key}: the server returned no UploadId"
            ))
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<UploadedPart> {
        let size = data.len() as u64;
        let md5 = md5_hex_off_thread(data.clone()).await;
        let out = self
            .client
            .upload_part()
            .bucket(self.bucket())
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_md5(content_md5(&md5))
            .body(ByteStream::from(data))
            // Content-MD5 already protects the bytes; skip hashing them again
            // for the signature.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|err| self.error("UploadPart", key, err))?;
        let etag = out.e_tag().unwrap_or_default().trim_matches('"');
        if etag != md5 {
            return Err(Error::store(format!(
                "part {number} of {key}: the server stored ETag {etag}, expected MD5 {md5}"
            )));
        }
        Ok(UploadedPart {
            number,
            size,
            md5,
            received_at: None,
        })
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = match self
                .client
                .list_parts()
                .bucket(self.bucket())
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
            {
                Ok(out) => out,
                // Only the server's definite word makes an upload gone:
                // NoSuchUpload, or NoSuchKey as Ceph RGW 16 answers.
                Err(err)
                    if status_of(&err) == Some(404)
                        && matches!(err.code(), Some("NoSuchUpload" | "NoSuchKey")) =>
                {
                    return Ok(None)
                }
                Err(err) => return Err(self.error("ListParts", key, err)),
            };
            parts.extend(out.parts().iter().map(|p| UploadedPart {
                number: p.part_number().unwrap_or(0) as u32,
                size: p.size().unwrap_or(0).max(0) as u64,
                md5: p.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                received_at: p.last_modified().map(|t| t.secs()),
            }));
            match (out.is_truncated(), out.next_part_number_marker()) {
                (Some(true), Some(next)) => marker = Some(next.to_string()),
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.number);
        Ok(Some(parts))
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number as i32)
                            .e_tag(format!("\"{}\"", p.md5))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|err| self.error("CompleteMultipartUpload", key, err))?;
        Ok(())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let answer = self
            .client
            .abort_multipart_upload()
            .bucket(self.bucket())
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        self.found("AbortMultipartUpload", key, answer).map(drop)
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|err| self.error("ListMultipartUploads", prefix, err))?;
            uploads.extend(out.uploads().iter().filter_map(|u| {
                Some(PendingUpload {
                    key: u.key()?.to_string(),
                    upload_id: u.upload_id()?.to_string(),
                    initiated: u.initiated().map(|t| t.secs()),
                })
            }));
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(uploads)
    }
}
