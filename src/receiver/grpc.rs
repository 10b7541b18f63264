//! The OTLP/gRPC receiver: `TraceService/Export` served by tonic with the
//! pass-through codec, so the request bytes go to the log as the client encoded them.
//! gzip request compression is accepted; the decompressed size is bounded.

use std::sync::Arc;

use bytes::Bytes;

use std::time::Instant;

use super::{Accepted, Batch, Ingest, Rejection, RequestInfo, Source};
use crate::otlp::codec::{ExportFuture, ExportHandler, ExportService};
use crate::otlp::wire::inspect_trace_request;

/// The OTLP/gRPC trace service of the receiver.
pub type TraceService = ExportService<Receive>;

pub fn trace_service(
    ingest: Arc<Ingest>,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
) -> TraceService {
    ExportService::new(
        Receive {
            ingest,
            max_encoded: max_request_bytes,
        },
        max_decompressed_bytes,
    )
}

/// Checks and stores one Export request.
#[derive(Clone)]
pub struct Receive {
    ingest: Arc<Ingest>,
    max_encoded: usize,
}

impl ExportHandler for Receive {
    fn export(&self, request: tonic::Request<Bytes>) -> ExportFuture {
        let ingest = self.ingest.clone();
        let max_encoded = self.max_encoded;
        Box::pin(async move {
            let started = Instant::now();
            let peer = request.remote_addr();
            let raw_key = request
                .metadata()
                .get("idempotency-key")
                .map(|v| v.as_bytes().to_vec());
            let authorization = request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes().to_vec());
            let compressed = request
                .metadata()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes() != b"identity");
            let body = request.into_inner();
            let bytes = body.len() as u64;
            let mut spans = 0;
            let mut key = None;
            let mut tenant = None;
            let result = async {
                tenant = ingest.authenticate(authorization.as_deref())?;
                // Uncompressed requests are bounded by the wire limit; compressed
                // ones by the decompressed limit tonic enforced while inflating.
                if !compressed && body.len() > max_encoded {
                    return Err(Rejection::TooLarge(format!(
                        "request of {} bytes exceeds receivers.otlp.max_request_bytes ({max_encoded})",
                        body.len()
                    )));
                }
                key = Ingest::check_key(raw_key.as_deref().unwrap_or_default(), tenant.as_deref())?;
                spans = inspect_trace_request(&body)
                    .map_err(|e| Rejection::Invalid(e.to_string()))?
                    .spans;
                ingest
                    .store(Batch {
                        protobuf: body,
                        spans,
                        key: key.clone(),
                        source: Source::Grpc,
                        peer,
                        started,
                        tenant: tenant.clone(),
                    })
                    .await
            }
            .await;
            let info = RequestInfo {
                source: Source::Grpc,
                peer,
                spans,
                bytes,
                key: key.as_ref(),
                tenant: tenant.as_deref(),
            };
            ingest.outcome(info, &result);
            match result {
                // An empty ExportTraceServiceResponse: everything accepted.
                Ok(Accepted::Stored { .. } | Accepted::Duplicate { .. } | Accepted::Discarded) => {
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

/// The service as a router for [`super::server::serve`].
pub fn router(service: TraceService) -> axum::Router {
    tonic::service::Routes::new(service)
        .prepare()
        .into_axum_router()
}
