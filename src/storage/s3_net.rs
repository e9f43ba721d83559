//! The connections alitx opens to the store itself, when no HTTP proxy is
//! in the way: TCP without Nagle's delay, TLS by rustls, and an immediate
//! ACK of whatever arrives (`TCP_QUICKACK`).
//!
//! The ACK is what the SDK's own connections cannot give. A Ceph RGW
//! without `tcp_nodelay` (its default) writes an answer's headers and its
//! body apart; Nagle's algorithm holds the body until the headers are
//! acknowledged, and Linux delays that acknowledgement by 40 ms. So every
//! answer with a body (a GET, a listing, CreateMultipartUpload,
//! CompleteMultipartUpload) took 44 ms however near the store. Asking for a
//! quick ACK after each write and each read lets the body go at once.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connect, Connected, Connection, HttpConnector as Tcp};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::s3_http::CONNECT_LIMIT;
use crate::error::source_chain;

/// How long a connection may stay idle before it is closed (the SDK's).
const IDLE_LIMIT: Duration = Duration::from_secs(90);

/// An HTTP client over connections of our own, TLS with `tls` when given,
/// at most `max_connections` open at once when given.
pub fn client(
    tls: Option<Arc<rustls::ClientConfig>>,
    max_connections: Option<usize>,
) -> SharedHttpClient {
    let tcp = QuickAckConnector::new(max_connections);
    let connector = match tls {
        Some(config) => SharedHttpConnector::new(Adapter::new(
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*config).clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(tcp),
        )),
        None => SharedHttpConnector::new(Adapter::new(tcp)),
    };
    SharedHttpClient::new(OwnClient(connector))
}

#[derive(Debug)]
struct OwnClient(SharedHttpConnector);

impl HttpClient for OwnClient {
    /// Time limits are the caller's (the stall guard) and the connect limit
    /// ours, whatever the settings.
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.clone()
    }
}

/// Requests through hyper's pooled client, answers and errors as the SDK
/// expects them (an I/O error or a closed connection is retried).
struct Adapter<C> {
    client: hyper_util::client::legacy::Client<C, SdkBody>,
}

impl<C: Connect + Clone> Adapter<C> {
    fn new(connector: C) -> Self {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_LIMIT)
            .build(connector);
        Adapter { client }
    }
}

impl<C> std::fmt::Debug for Adapter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Adapter")
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> HttpConnector for Adapter<C> {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(err) => return HttpConnectorFuture::ready(Err(ConnectorError::user(err.into()))),
        };
        let answer = self.client.request(request);
        HttpConnectorFuture::new(async move {
            match answer.await {
                Ok(response) => HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|err| ConnectorError::other(err.into(), None)),
                Err(err) => Err(connector_error(err)),
            }
        })
    }
}

/// Classifies a failed request as the SDK's own client does: what broke the
/// connection (refused, reset, closed, a failed handshake) is I/O and
/// retried; an answer cut short is transient and retried too.
fn connector_error(err: hyper_util::client::legacy::Error) -> ConnectorError {
    let hyper = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<hyper::Error>());
    let incomplete = hyper.is_some_and(hyper::Error::is_incomplete_message);
    let broken = err.is_connect()
        || hyper.is_some_and(|h| h.is_closed() || h.is_canceled())
        || has_io_source(&err);
    // hyper's own words ("client error (Connect)") add nothing to the cause's.
    let cause: BoxError = match err.is_connect() {
        true => source_chain(&err).into(),
        false => err.into(),
    };
    match () {
        _ if incomplete => ConnectorError::other(cause, Some(ErrorKind::TransientError)),
        _ if broken => ConnectorError::io(cause),
        _ => ConnectorError::other(cause, None),
    }
}

fn has_io_source(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.is::<std::io::Error>())
}

/// Opens TCP connections (no Nagle delay, the connect limit), at most as
/// many at once as it has slots.
#[derive(Clone)]
struct QuickAckConnector {
    tcp: Tcp,
    slots: Option<Arc<Semaphore>>,
}

impl QuickAckConnector {
    fn new(max_connections: Option<usize>) -> Self {
        let mut tcp = Tcp::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_LIMIT));
        QuickAckConnector {
            tcp,
            slots: max_connections.map(|n| Arc::new(Semaphore::new(n.max(1)))),
        }
    }
}

impl tower_service::Service<Uri> for QuickAckConnector {
    type Response = QuickAck;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mut tcp, slots) = (self.tcp.clone(), self.slots.clone());
        Box::pin(async move {
            let slot = match slots {
                Some(slots) => Some(slots.acquire_owned().await?),
                None => None,
            };
            let stream = tcp.call(uri).await?;
            Ok(QuickAck {
                stream,
                _slot: slot,
            })
        })
    }
}

/// A TCP connection that acknowledges at once what it receives.
struct QuickAck {
    stream: TokioIo<TcpStream>,
    /// Freed when the connection closes.
    _slot: Option<OwnedSemaphorePermit>,
}

impl QuickAck {
    /// Leaves delayed-ACK mode and sends any ACK it was holding; the kernel
    /// falls back into it after a while, hence once per read and write.
    fn ack_now(&self) {
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option of its size. A failure
        // costs only the delay this avoids.
        unsafe {
            libc::setsockopt(
                self.stream.inner().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl Read for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if read.is_ready() {
            self.ack_now();
        }
        read
    }
}

impl Write for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if written.is_ready() {
            self.ack_now();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if written.is_ready() {
            self.ack_now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
