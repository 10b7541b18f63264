//! One accept loop for both OTLP receivers, with the defences a port open to a
//! network needs:
//!
//! - at most `max_connections` open connections; more are closed at once;
//! - TLS (optional) with a handshake deadline;
//! - a deadline for the first bytes of a connection and for HTTP/1 request headers
//!   (`header_read_timeout`), and for each request's whole body
//!   (`body_read_timeout`): a slow-loris client is disconnected, not waited for;
//! - HTTP/1 and HTTP/2 (detected, or chosen by ALPN), at most
//!   `max_concurrent_streams` requests at once per HTTP/2 connection;
//! - at shutdown, no new connections; open ones finish their requests in flight
//!   (HTTP/2 GOAWAY, HTTP/1 close after the response).
//!
//! Each request carries the peer address (`ConnectInfo` for axum handlers,
//! `TcpConnectInfo` for tonic ones).

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt;

use super::tls::TlsServer;
use crate::metrics::Metrics;
use crate::throttle::Throttle;

/// The limits of one receiver.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// What a receiver serves, and how.
pub struct Receiver {
    /// "grpc" or "http", for metrics and logs.
    pub name: &'static str,
    pub router: Router,
    pub tls: Option<Arc<TlsServer>>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

/// Accepts connections on `listener` until `stop`, then waits for the open ones to
/// finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    rx: Receiver,
    stop: CancellationToken,
) -> Result<(), String> {
    let rx = Arc::new(rx);
    let slots = Arc::new(Semaphore::new(rx.limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let accept_errors = Throttle::new(Duration::from_secs(10));
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    if accept_errors.allow() {
                        tracing::error!(receiver = rx.name, error = %e, "cannot accept connections");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            rx.metrics.connection(rx.name, "over_limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let rx = rx.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            rx.metrics.open_connections(rx.name, 1);
            serve_connection(&rx, stream, peer, local, stop).await;
            rx.metrics.open_connections(rx.name, -1);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(
    rx: &Receiver,
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    stop: CancellationToken,
) {
    let deadline = rx.limits.header_read_timeout;
    match &rx.tls {
        Some(tls) => {
            let acceptor = tls.acceptor();
            match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    rx.metrics.connection(rx.name, "accepted");
                    serve_http(rx, tls_stream, peer, local, stop).await
                }
                Ok(Err(e)) => {
                    rx.metrics.connection(rx.name, "tls_failed");
                    tracing::debug!(receiver = rx.name, %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    rx.metrics.connection(rx.name, "timed_out");
                    tracing::debug!(receiver = rx.name, %peer, "TLS handshake not done in time; disconnected");
                }
            }
        }
        None => {
            // A connection that sends nothing is not worth a slot.
            let mut first = [0u8; 1];
            match tokio::time::timeout(deadline, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {
                    rx.metrics.connection(rx.name, "accepted");
                    serve_http(rx, stream, peer, local, stop).await
                }
                Ok(_) => {}
                Err(_) => {
                    rx.metrics.connection(rx.name, "timed_out");
                    tracing::debug!(receiver = rx.name, %peer, "connection sent nothing in time; disconnected");
                }
            }
        }
    }
}

async fn serve_http<I>(
    rx: &Receiver,
    io: I,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = rx.router.clone();
    let body_timeout = rx.limits.body_read_timeout;
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(TcpConnectInfo {
            local_addr: local,
            remote_addr: Some(peer),
        });
        let req = req.map(|b| axum::body::Body::new(TimedBody::new(b, body_timeout)));
        router.clone().oneshot(req)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(rx.limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // OTLP requests are often larger than HTTP/2's 64 KiB default window; a
        // small window costs a round trip per 64 KiB of every request.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_streams(rx.limits.max_concurrent_streams)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(receiver = rx.name, %peer, error = %e, "connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A request body that fails if it is not complete within its deadline.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl TimedBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

/// The body was not received within `receivers.otlp.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?} (receivers.otlp.body_read_timeout)")]
pub struct BodyTimeout(Duration);

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
