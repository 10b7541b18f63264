//! The OTLP/gRPC receiver: `TraceService/Export` served by tonic with the
//! pass-through codec, so the request bytes go to the log as the client encoded them.
//! gzip request compression is accepted; the decompressed size is bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService, UnaryService};

use super::{Accepted, Batch, Ingest, Rejection, Source};
use crate::otlp::codec::{RawCodec, EXPORT_PATH, SERVICE_NAME};
use crate::otlp::wire::inspect_trace_request;

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The TraceService as a tower service.
#[derive(Clone)]
pub struct TraceService {
    ingest: Arc<Ingest>,
    max_decoded: usize,
    max_encoded: usize,
}

impl NamedService for TraceService {
    const NAME: &'static str = SERVICE_NAME;
}

impl TraceService {
    pub fn new(
        ingest: Arc<Ingest>,
        max_request_bytes: usize,
        max_decompressed_bytes: usize,
    ) -> Self {
        Self {
            ingest,
            max_decoded: max_decompressed_bytes,
            max_encoded: max_request_bytes,
        }
    }
}

struct Export {
    ingest: Arc<Ingest>,
    max_encoded: usize,
}

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        let max_encoded = self.max_encoded;
        Box::pin(async move {
            let peer = request.remote_addr();
            let key = request
                .metadata()
                .get("idempotency-key")
                .map(|v| v.as_bytes().to_vec());
            let compressed = request
                .metadata()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes() != b"identity");
            let body = request.into_inner();
            let result = async {
                // Uncompressed requests are bounded by the wire limit; compressed
                // ones by the decompressed limit tonic enforced while inflating.
                if !compressed && body.len() > max_encoded {
                    return Err(Rejection::TooLarge(format!(
                        "request of {} bytes exceeds receivers.otlp.max_request_bytes ({max_encoded})",
                        body.len()
                    )));
                }
                let key = Ingest::check_key(key.as_deref().unwrap_or_default())?;
                let summary = inspect_trace_request(&body).map_err(|e| Rejection::Invalid(e.to_string()))?;
                ingest
                    .store(Batch {
                        protobuf: body,
                        spans: summary.spans,
                        key,
                        source: Source::Grpc,
                        peer,
                    })
                    .await
            }
            .await;
            match result {
                // An empty ExportTraceServiceResponse: everything accepted.
                Ok(Accepted::Stored { .. } | Accepted::Duplicate { .. }) => {
                    Ok(tonic::Response::new(Bytes::new()))
                }
                Err(r) => {
                    tracing::debug!(reason = r.kind(), detail = %r.message(), peer = ?peer, "grpc request refused");
                    Err(r.grpc_status())
                }
            }
        })
    }
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for TraceService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let export = Export {
            ingest: self.ingest.clone(),
            max_encoded: self.max_encoded,
        };
        let max_decoded = self.max_decoded;
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max_decoded);
            Ok(grpc.unary(export, req).await)
        })
    }
}

/// Serves OTLP/gRPC on `listener` until `stop` is cancelled, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    service: TraceService,
    stop: CancellationToken,
) -> Result<(), String> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        // OTLP requests are often larger than HTTP/2's 64 KiB default window; a
        // small window costs a round trip per 64 KiB of every request.
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .map_err(|e| format!("OTLP/gRPC receiver on {addr:?}: {e}"))
}
