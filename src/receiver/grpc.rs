//! The OTLP/gRPC receiver: `TraceService/Export` served by tonic with the
//! pass-through codec, so the request bytes go to the log as the client encoded them.
//! gzip request compression is accepted (inflated by the codec, the decompressed
//! size bounded there); everything else is [`Ingest::receive`]'s.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Compression, Ingest, Rejection, Request, Source};
use crate::otlp::codec::{ExportFuture, ExportHandler, ExportService};

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

/// Translates one Export call into a [`Request`].
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
            let meta = |name: &str| {
                request
                    .metadata()
                    .get(name)
                    .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            };
            let authorization = meta("authorization");
            let idempotency_key = meta("idempotency-key");
            let compressed = request
                .metadata()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes() != b"identity");
            let peer = request.remote_addr();
            let body = request.into_inner();
            let length = Some(body.len() as u64);
            // Uncompressed requests are bounded by the wire limit; compressed ones
            // by the decompressed limit the codec enforced while inflating.
            let body = if !compressed && body.len() > max_encoded {
                Err(Rejection::TooLarge(format!(
                    "request of {} bytes exceeds receivers.otlp.max_request_bytes ({max_encoded})",
                    body.len()
                )))
            } else {
                Ok(body)
            };
            let result = ingest
                .receive(Request {
                    source: Source::Grpc,
                    peer,
                    started,
                    authorization,
                    idempotency_key,
                    tenant: None,
                    compression: Compression::None,
                    length,
                    body: Request::ready(body),
                })
                .await;
            match result {
                // An empty ExportTraceServiceResponse: everything accepted.
                Ok(_) => Ok(tonic::Response::new(Bytes::new())),
                Err(r) => Err(r.grpc_status()),
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
