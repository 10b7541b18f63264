//! Why a request was refused, and how each reason is told to OTLP clients — the one
//! place where storage and validation outcomes become gRPC and HTTP statuses.
//!
//! | rejection          | gRPC                                  | HTTP                         |
//! |--------------------|---------------------------------------|------------------------------|
//! | `Invalid`          | `INVALID_ARGUMENT`                    | 400                          |
//! | `TooLarge`         | `RESOURCE_EXHAUSTED` (no retry info)  | 413                          |
//! | `UnsupportedMedia` | `INVALID_ARGUMENT`                    | 415                          |
//! | `Full`             | `RESOURCE_EXHAUSTED` + `RetryInfo`    | 429 + `Retry-After`          |
//! | `InFlight`         | `ABORTED` + `RetryInfo`               | 503 + `Retry-After`          |
//! | `Unavailable`      | `UNAVAILABLE`                         | 503 + `Retry-After`          |
//! | `Unauthenticated`  | `UNAUTHENTICATED`                     | 401 + `WWW-Authenticate`     |
//! | `TimedOut`         | `DEADLINE_EXCEEDED`                   | 408                          |
//!
//! The retry delay goes into `grpc-status-details-bin` as a `google.rpc.RetryInfo`
//! (where the Go and Java SDKs read it) and into the `google.rpc.retryinfo-bin`
//! trailer (where the Python SDK reads it).

use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};

use crate::otlp::{PbAny, RetryInfo, RpcStatus, RETRY_INFO_TYPE};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The body is not a valid OTLP trace request; the message says what is wrong.
    Invalid(String),
    /// The request, or its decompressed form, is over the size limit.
    TooLarge(String),
    /// HTTP only: a content type or content encoding this receiver does not take.
    UnsupportedMedia(String),
    /// The disk budget is full (`when_full = backpressure`) or the filesystem is.
    Full {
        retry_after: Duration,
        detail: String,
    },
    /// Another request with the same idempotency key is being stored right now.
    InFlight,
    /// The log cannot store anything (it failed, or is shutting down).
    Unavailable(String),
    /// No token, or not one of the configured tokens.
    Unauthenticated,
    /// The client did not send its request body in time.
    TimedOut(String),
}

const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);

impl Rejection {
    pub fn message(&self) -> String {
        match self {
            Self::Invalid(m)
            | Self::TooLarge(m)
            | Self::UnsupportedMedia(m)
            | Self::Unavailable(m)
            | Self::TimedOut(m) => m.clone(),
            Self::Unauthenticated => {
                "missing or unknown bearer token (send \"authorization: Bearer <token>\")".into()
            }
            Self::Full { detail, .. } => detail.clone(),
            Self::InFlight => {
                "a request with the same idempotency-key is being stored right now; retry".into()
            }
        }
    }

    /// Every [`Rejection::kind`], for metrics that must have a series per refusal.
    pub const KINDS: [&'static str; 8] = [
        "invalid",
        "too_large",
        "unsupported_media",
        "full",
        "in_flight",
        "unavailable",
        "unauthenticated",
        "timed_out",
    ];

    /// Short name for logs and the `outcome` label of refused requests.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::TooLarge(_) => "too_large",
            Self::UnsupportedMedia(_) => "unsupported_media",
            Self::Full { .. } => "full",
            Self::InFlight => "in_flight",
            Self::Unavailable(_) => "unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::TimedOut(_) => "timed_out",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Full { retry_after, .. } => Some(*retry_after),
            Self::InFlight => Some(IN_FLIGHT_RETRY),
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY),
            _ => None,
        }
    }

    pub fn grpc_status(&self) -> Status {
        let code = match self {
            Self::Invalid(_) | Self::UnsupportedMedia(_) => Code::InvalidArgument,
            Self::TooLarge(_) | Self::Full { .. } => Code::ResourceExhausted,
            Self::InFlight => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::TimedOut(_) => Code::DeadlineExceeded,
        };
        let message = self.message();
        let Some(delay) = self.retry_after() else {
            return Status::new(code, message);
        };
        let retry = RetryInfo::new(delay).encode_to_vec();
        let details = RpcStatus {
            code: code as i32,
            message: message.clone(),
            details: vec![PbAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: retry.clone(),
            }],
        }
        .encode_to_vec();
        let mut status = Status::with_details(code, message, details.into());
        status.metadata_mut().insert_bin(
            "google.rpc.retryinfo-bin",
            tonic::metadata::MetadataValue::from_bytes(&retry),
        );
        status
    }

    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::Invalid(_) => S::BAD_REQUEST,
            Self::TooLarge(_) => S::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMedia(_) => S::UNSUPPORTED_MEDIA_TYPE,
            Self::Full { .. } => S::TOO_MANY_REQUESTS,
            Self::InFlight | Self::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            Self::Unauthenticated => S::UNAUTHORIZED,
            Self::TimedOut(_) => S::REQUEST_TIMEOUT,
        }
    }

    /// The `Retry-After` value, whole seconds (at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after()
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .map(|s| s.max(1))
    }

    /// The whole OTLP/HTTP error response: status, a `google.rpc.Status` body in the
    /// request's encoding, `Retry-After` when a retry makes sense, and
    /// `WWW-Authenticate: Bearer` with a 401 (RFC 9110 requires the challenge).
    pub fn http_response(&self, json: bool) -> http::Response<Vec<u8>> {
        use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
        let mut response = http::Response::new(self.http_body(json));
        *response.status_mut() = self.http_status();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(if json {
                "application/json"
            } else {
                "application/x-protobuf"
            }),
        );
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::Unauthenticated = self {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tracespool\""),
            );
        }
        response
    }

    /// The OTLP/HTTP error body: a `google.rpc.Status`, in protobuf or JSON.
    pub fn http_body(&self, json: bool) -> Vec<u8> {
        let code = self.grpc_status().code() as i32;
        if json {
            serde_json::json!({ "code": code, "message": self.message() })
                .to_string()
                .into_bytes()
        } else {
            RpcStatus {
                code,
                message: self.message(),
                details: vec![],
            }
            .encode_to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once() {
        let all = [
            Rejection::Invalid(String::new()),
            Rejection::TooLarge(String::new()),
            Rejection::UnsupportedMedia(String::new()),
            Rejection::Full {
                retry_after: Duration::ZERO,
                detail: String::new(),
            },
            Rejection::InFlight,
            Rejection::Unavailable(String::new()),
            Rejection::Unauthenticated,
            Rejection::TimedOut(String::new()),
        ];
        let kinds: Vec<&str> = all.iter().map(Rejection::kind).collect();
        assert_eq!(kinds, Rejection::KINDS);
    }

    #[test]
    fn full_carries_retry_info_both_ways() {
        let r = Rejection::Full {
            retry_after: Duration::from_millis(2500),
            detail: "full".into(),
        };
        let s = r.grpc_status();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            crate::otlp::retry_delay(&s),
            Some(Duration::from_millis(2500))
        );
        let bin = s
            .metadata()
            .get_bin("google.rpc.retryinfo-bin")
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(
            RetryInfo::decode(&bin[..]).unwrap().delay(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(r.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.retry_after_secs(), Some(3));
    }

    #[test]
    fn too_large_is_not_retryable_for_clients() {
        let r = Rejection::TooLarge("big".into());
        let s = r.grpc_status();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(crate::otlp::retry_delay(&s), None);
        assert_eq!(r.http_status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.retry_after_secs(), None);
    }

    #[test]
    fn http_responses_carry_their_headers() {
        let r = Rejection::Unauthenticated.http_response(true);
        assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"tracespool\""
        );
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(r.headers().get("retry-after").is_none());
        let r = Rejection::Full {
            retry_after: Duration::from_secs(2),
            detail: "full".into(),
        }
        .http_response(false);
        assert_eq!(r.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
        assert!(r.headers().get("www-authenticate").is_none());
        assert_eq!(RpcStatus::decode(&r.body()[..]).unwrap().message, "full");
    }

    #[test]
    fn http_error_bodies_are_google_rpc_status() {
        let r = Rejection::Invalid("bad thing".into());
        let pb = RpcStatus::decode(&r.http_body(false)[..]).unwrap();
        assert_eq!((pb.code, pb.message.as_str()), (3, "bad thing"));
        let js: serde_json::Value = serde_json::from_slice(&r.http_body(true)).unwrap();
        assert_eq!(js["code"], 3);
        assert_eq!(js["message"], "bad thing");
    }
}
