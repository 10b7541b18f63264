//! A tonic codec that moves message bytes through untouched: the receiver stores the
//! request exactly as the client encoded it, and the exporter sends a stored record
//! exactly as it was stored. Neither side decodes or re-encodes spans.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::Status;

/// The gRPC method every OTLP trace receiver serves.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The service name, as gRPC reflection and health checks know it.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// The answer to one Export call.
pub type ExportFuture =
    Pin<Box<dyn Future<Output = Result<tonic::Response<Bytes>, Status>> + Send>>;

/// What an OTLP trace server does with one `Export` request, given its raw bytes.
pub trait ExportHandler: Clone + Send + Sync + 'static {
    fn export(&self, request: tonic::Request<Bytes>) -> ExportFuture;
}

/// `TraceService` as a tower service around an [`ExportHandler`]: tonic's unary
/// machinery with the pass-through codec, gzip requests accepted, the decoded
/// (decompressed) size bounded; any other method is UNIMPLEMENTED.
#[derive(Clone)]
pub struct ExportService<H> {
    handler: H,
    max_decoded: usize,
}

impl<H: ExportHandler> ExportService<H> {
    pub fn new(handler: H, max_decoded: usize) -> Self {
        Self {
            handler,
            max_decoded,
        }
    }
}

impl<H> NamedService for ExportService<H> {
    const NAME: &'static str = SERVICE_NAME;
}

struct Unary<H>(H);

impl<H: ExportHandler> UnaryService<Bytes> for Unary<H> {
    type Response = Bytes;
    type Future = ExportFuture;

    fn call(&mut self, request: tonic::Request<Bytes>) -> ExportFuture {
        self.0.export(request)
    }
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl<H: ExportHandler> tonic::codegen::Service<http::Request<tonic::body::Body>>
    for ExportService<H>
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ServiceFuture {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let unary = Unary(self.handler.clone());
        let max_decoded = self.max_decoded;
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max_decoded);
            Ok(grpc.unary(unary, req).await)
        })
    }
}
