//! OTLP on the wire: the protobuf check, the JSON conversion, the pass-through gRPC
//! codec, and the small status messages of the protocol.

pub mod codec;
pub mod json;
mod json_reader;
pub mod wire;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

/// `partial_success.rejected_spans` and its message, from an export response body
/// (absent or empty body: everything accepted).
pub fn partial_success(response: &[u8]) -> Option<(i64, String)> {
    let r = ExportTraceServiceResponse::decode(response).ok()?;
    r.partial_success
        .filter(|p| p.rejected_spans != 0 || !p.error_message.is_empty())
        .map(|p| (p.rejected_spans, p.error_message))
}

/// An encoded `ExportTraceServiceResponse` reporting rejected spans (used by tests
/// and the test backend).
pub fn partial_success_response(rejected: i64, message: &str) -> Vec<u8> {
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: message.into(),
        }),
    }
    .encode_to_vec()
}

/// `google.rpc.Status`: the body of an OTLP/HTTP error response, and the
/// `grpc-status-details-bin` trailer of a gRPC one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<PbAny>,
}

impl RpcStatus {
    /// The message of an OTLP/HTTP error body, protobuf or JSON.
    pub fn decode_message(body: &[u8]) -> Option<String> {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            return v
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string);
        }
        Self::decode(body)
            .ok()
            .filter(|s| !s.message.is_empty())
            .map(|s| s.message)
    }
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`: how long a client should wait before retrying.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<PbDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PbDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

impl RetryInfo {
    pub fn new(delay: std::time::Duration) -> Self {
        Self {
            retry_delay: Some(PbDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        }
    }

    pub fn delay(&self) -> Option<std::time::Duration> {
        let d = self.retry_delay.as_ref()?;
        if d.seconds < 0 || d.nanos < 0 {
            return None;
        }
        Some(std::time::Duration::new(d.seconds as u64, d.nanos as u32))
    }
}

/// The retry delay a gRPC status carries, in `grpc-status-details-bin` (the standard
/// place) or in the `google.rpc.retryinfo-bin` trailer some SDKs use.
pub fn retry_delay(status: &tonic::Status) -> Option<std::time::Duration> {
    if let Ok(s) = RpcStatus::decode(status.details()) {
        for d in s.details {
            if d.type_url.ends_with("google.rpc.RetryInfo") {
                if let Some(delay) = RetryInfo::decode(&d.value[..]).ok().and_then(|r| r.delay()) {
                    return Some(delay);
                }
            }
        }
    }
    let raw = status.metadata().get_bin("google.rpc.retryinfo-bin")?;
    let bytes = raw.to_bytes().ok()?;
    RetryInfo::decode(&bytes[..]).ok()?.delay()
}
