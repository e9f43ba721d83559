//! How alitx's S3 requests meet the network. An attempt that makes no
//! progress for [`STALL_LIMIT`] — no byte of the request sent, no answer
//! received — ends with a timeout, which the SDK retries: for a HEAD, a link
//! PUT or a journal read that is a first-byte limit of seconds; for a part
//! upload it ends only an attempt that stopped moving, however long the part
//! takes to send. With `-v` every retry is logged as it happens.
//!
//! A connection costs a TCP and a TLS handshake (a round trip each, and a
//! signature on the server). A one-shot command opens connections as its
//! requests need them, up to as many as it keeps requests in flight
//! ([`Connections::AtMost`]; an upload [`FEW_CONNECTIONS`]); beyond that
//! its requests wait for a kept-alive one, and their attempts start (for
//! the stall limit) once it is theirs.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext};
use aws_smithy_http_client::{pool, Connector};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, Metadata};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use aws_smithy_types::retry::RetryConfig;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::proxy::matcher::Matcher;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::info;

use super::s3::answer;
use super::s3_net;
use super::s3_tls::Trust;
use crate::error::{source_chain, Error, Result};

/// How long an attempt may go without progress before it ends and is retried.
pub const STALL_LIMIT: Duration = Duration::from_secs(20);

/// How long opening a connection (TCP and TLS) may take.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Attempts per request, the first included.
pub const ATTEMPTS: u32 = 4;

/// How many connections a process opens to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// A one-shot command, which ends with its connections: at most this
    /// many, each carrying request after request. An upload opens
    /// [`FEW_CONNECTIONS`]; a scan of the store as many as it keeps reads in
    /// flight, since each small read waits on the store, not on the
    /// connection.
    AtMost(usize),
    /// A process that serves upload after upload (`serve-uploads`): one
    /// connection per request in flight, kept for the next uploads.
    OnePerRequest,
}

/// The connections a one-shot command opens at most: enough to keep the
/// store busy with small writes at a round trip of 20 ms (a W2 package's
/// 150 links go through them in about ten rounds).
pub const FEW_CONNECTIONS: usize = 16;

/// Whether requests to `endpoint` go over TLS: unless it is a plain
/// `http://` URL and no HTTPS proxy is configured for it (loading the
/// system's root certificates costs each process about 5 ms of CPU, so a
/// plain endpoint skips it).
pub fn uses_tls(endpoint: &str) -> bool {
    let https_proxy = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .any(|proxy| proxy.to_ascii_lowercase().starts_with("https://"));
    !endpoint.starts_with("http://") || https_proxy
}

/// An HTTP client with every attempt under a [`StallGuard`], its
/// connections as `connections` says, TLS trusting `trust` when given (see
/// [`uses_tls`]). Requests go through alitx's own connections
/// ([`super::s3_net`]), or through the SDK's where an HTTP proxy from the
/// environment applies to `endpoint`. rustls resumes the sessions of the
/// process's earlier connections (session tickets, in memory): only the
/// first handshakes sign.
pub fn client(
    endpoint: &str,
    trust: Option<&Trust>,
    connections: Connections,
) -> Result<SharedHttpClient> {
    let limit = match connections {
        Connections::AtMost(limit) => Some(limit.max(1)),
        Connections::OnePerRequest => None,
    };
    let inner = if proxied(endpoint) {
        let tls = trust.map(Trust::tls_context).transpose()?;
        match limit {
            Some(limit) => bounded(tls, limit)?,
            None => one_per_request(tls),
        }
    } else {
        let tls = trust.map(Trust::rustls_config).transpose()?;
        s3_net::client(tls, limit)
    };
    let in_flight = limit.map(|limit| Arc::new(Semaphore::new(limit)));
    Ok(SharedHttpClient::new(GuardedClient { inner, in_flight }))
}

/// Whether an HTTP proxy from the environment (`HTTPS_PROXY`, `NO_PROXY`,
/// ...) applies to `endpoint`.
fn proxied(endpoint: &str) -> bool {
    endpoint
        .parse()
        .is_ok_and(|uri| Matcher::from_env().intercept(&uri).is_some())
}

/// The SDK's connection pool, at most `limit` connections to the store.
fn bounded(tls: Option<TlsContext>, limit: usize) -> Result<SharedHttpClient> {
    let builder = pool::ConnectionPool::builder()
        .proxy_config(ProxyConfig::from_env())
        .max_connections_per_host(limit);
    let pool = match tls {
        Some(tls) => builder
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(tls)
            .build_https(),
        None => builder.build_http(),
    }
    .map_err(|err| Error::input(format!("cannot set up the HTTP client: {err}")))?;
    let client = pool::Client::new(&pool)
        .map_err(|err| Error::input(format!("cannot set up the HTTP client: {err}")))?;
    Ok(SharedHttpClient::new(client))
}

/// The SDK's default client (hyper 1), which opens a connection for each
/// request that finds none idle.
fn one_per_request(tls: Option<TlsContext>) -> SharedHttpClient {
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut builder = Connector::builder().proxy_config(ProxyConfig::from_env());
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        match &tls {
            Some(tls) => builder
                .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(tls.clone())
                .build(),
            None => builder.build_http(),
        }
    })
}

#[derive(Debug)]
struct GuardedClient {
    inner: SharedHttpClient,
    /// A permit per request in flight, as many as the pool's connections,
    /// if their number is bounded.
    in_flight: Option<Arc<Semaphore>>,
}

impl HttpClient for GuardedClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(StallGuard {
            inner: self.inner.http_connector(settings, components),
            in_flight: self.in_flight.clone(),
        })
    }
}

/// Ends an attempt that has sent nothing and received no answer for
/// [`STALL_LIMIT`]; with `in_flight`, first waits for a permit, held until
/// the answer's body ends (the store's reads take their bodies whole, so a
/// permit is never held by a body nobody reads).
#[derive(Debug)]
struct StallGuard {
    inner: SharedHttpConnector,
    in_flight: Option<Arc<Semaphore>>,
}

impl HttpConnector for StallGuard {
    fn call(&self, mut request: HttpRequest) -> HttpConnectorFuture {
        let (inner, in_flight) = (self.inner.clone(), self.in_flight.clone());
        HttpConnectorFuture::new(async move {
            let permit = match in_flight {
                Some(in_flight) => Some(in_flight.acquire_owned().await.expect("never closed")),
                None => None,
            };
            // The wait for a permit is no stall: the attempt starts now.
            let progress = Arc::new(Progress::new());
            let body = std::mem::replace(request.body_mut(), SdkBody::taken());
            *request.body_mut() = SdkBody::from_body_1_x(ProgressBody {
                inner: body,
                pending: Bytes::new(),
                progress: progress.clone(),
            });
            let response = inner.call(request);
            tokio::pin!(response);
            let mut answer = loop {
                tokio::select! {
                    answer = &mut response => break answer?,
                    _ = tokio::time::sleep_until(progress.last() + STALL_LIMIT) => {
                        if progress.last() + STALL_LIMIT <= Instant::now() {
                            return Err(ConnectorError::timeout(
                                format!(
                                    "no progress for {}s (nothing sent, no answer)",
                                    STALL_LIMIT.as_secs()
                                )
                                .into(),
                            ));
                        }
                    }
                }
            };
            if let Some(permit) = permit {
                let body = answer.take_body();
                *answer.body_mut() = SdkBody::from_body_1_x(PermitBody {
                    inner: body,
                    permit: Some(permit),
                });
            }
            Ok(answer)
        })
    }
}

/// When the request last moved: its start, or the last body chunk the
/// connection took.
struct Progress {
    start: Instant,
    millis: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = self.start.elapsed().as_millis() as u64;
        self.millis.store(elapsed, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// The request body, handed to the connection in chunks of at most
/// [`CHUNK`] bytes: the connection takes the next one only when its buffers
/// have room, so each chunk taken is progress on the wire.
struct ProgressBody {
    inner: SdkBody,
    pending: Bytes,
    progress: Arc<Progress>,
}

const CHUNK: usize = 64 << 10;

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return other,
            }
        }
        let n = self.pending.len().min(CHUNK);
        let chunk = self.pending.split_to(n);
        self.progress.touch();
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// An answer's body, holding its request's permit until it ends or is
/// dropped.
struct PermitBody {
    inner: SdkBody,
    permit: Option<OwnedSemaphorePermit>,
}

impl Body for PermitBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.permit.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Logs (at `-v`) each retry as it starts, with why the attempt before it
/// failed.
#[derive(Debug)]
pub struct RetryLog;

/// The last failed attempt's URL and why it failed, for the next one's log
/// line (the next request's URL is resolved only after it is logged).
#[derive(Debug, Clone)]
struct LastFailure {
    url: String,
    why: String,
}

impl Storable for LastFailure {
    type Storer = StoreReplace<Self>;
}

impl Intercept for RetryLog {
    fn name(&self) -> &'static str {
        "RetryLog"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Err(err)) = context.output_or_error() {
            let why = match context.response() {
                // An error answer that is not S3's (not one the SDK failed to parse).
                Some(response)
                    if !response.status().is_success() && !answer::sent_by_s3(response) =>
                {
                    answer::Uncoded::of(response).describe()
                }
                Some(response) => {
                    format!("HTTP {}: {}", response.status().as_u16(), source_chain(err))
                }
                None => source_chain(err),
            };
            let url = context
                .request()
                .map(|r| r.uri().to_string())
                .unwrap_or_default();
            cfg.interceptor_state().store_put(LastFailure { url, why });
        }
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        if let (true, Some(last)) = (attempt > 1, cfg.load::<LastFailure>()) {
            let operation = cfg.load::<Metadata>().map_or("request", |m| m.name());
            let attempts = cfg
                .load::<RetryConfig>()
                .map_or(ATTEMPTS, |r| r.max_attempts());
            info!(
                "retrying S3 {operation} {} (attempt {attempt} of {attempts}): the last one failed: {}",
                last.url, last.why
            );
        }
        Ok(())
    }
}
