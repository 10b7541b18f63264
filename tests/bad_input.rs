//! Bad input gets a clear error with the status the OTLP specification gives it,
//! nothing of it is stored, and the process keeps serving.

mod support;

use std::io::Write;
use std::time::Duration;

use prost::Message;
use support::backend::{Backend, Kind};
use support::raw;
use support::spool::{Dest, Spool};
use tracespool::otlp::RpcStatus;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn message(body: &[u8]) -> String {
    RpcStatus::decode(body)
        .map(|s| s.message)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__MAX_REQUEST_BYTES".into(),
        "64KiB".into(),
    ));
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__MAX_DECOMPRESSED_BYTES".into(),
        "256KiB".into(),
    ));
    spool.start();
    let url = spool.http_endpoint();
    let pb = [("content-type", "application/x-protobuf")];
    let (good, _) = raw::request("good", 1, 3);

    // Malformed protobuf.
    let a = raw::http_post(&url, &pb, b"\x0a\xff\xff\xff\x0f garbage".to_vec()).await;
    assert_eq!(a.status, 400);
    assert!(
        message(&a.body).contains("malformed OTLP protobuf at byte"),
        "{:?}",
        message(&a.body)
    );
    // Truncated protobuf.
    let a = raw::http_post(&url, &pb, good[..good.len() - 7].to_vec()).await;
    assert_eq!(a.status, 400);
    // Malformed JSON: the error comes back as JSON.
    let a = raw::http_post(
        &url,
        &[("content-type", "application/json")],
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!(a.status, 400);
    let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(body["code"], 3);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("invalid OTLP JSON"),
        "{body}"
    );
    // JSON with a trace id of the wrong length.
    let a = raw::http_post(
        &url,
        &[("content-type", "application/json")],
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"abcd","spanId":"0102030405060708"}]}]}]}"#.to_vec(),
    )
    .await;
    assert_eq!(a.status, 400);
    // Wrong content type.
    let a = raw::http_post(&url, &[("content-type", "text/plain")], good.clone()).await;
    assert_eq!(a.status, 415);
    assert!(
        message(&a.body).contains("Content-Type"),
        "{}",
        message(&a.body)
    );
    // Unsupported content encoding.
    let a = raw::http_post(
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "br"),
        ],
        good.clone(),
    )
    .await;
    assert_eq!(a.status, 415);
    // Oversized body.
    let a = raw::http_post(&url, &pb, vec![0u8; 100 * 1024]).await;
    assert_eq!(a.status, 413);
    // A body that inflates past the decompressed limit (a small gzip bomb).
    let bomb = gzip(&vec![0u8; 4 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let a = raw::http_post(
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        bomb,
    )
    .await;
    assert_eq!(a.status, 413);
    // Truncated gzip.
    let z = gzip(&good);
    let a = raw::http_post(
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        z[..z.len() / 2].to_vec(),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(
        message(&a.body).contains("invalid gzip body"),
        "{}",
        message(&a.body)
    );
    // An idempotency key longer than a record can carry.
    let long = "k".repeat(2000);
    let a = raw::http_post(
        &url,
        &[
            ("content-type", "application/x-protobuf"),
            ("idempotency-key", &long),
        ],
        good.clone(),
    )
    .await;
    assert_eq!(a.status, 400);

    // gRPC: malformed, oversized, bad key.
    let g = spool.grpc_endpoint();
    let e = raw::grpc_export(&g, b"\x0a\x05abc".to_vec(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("malformed OTLP protobuf"),
        "{}",
        e.message()
    );
    let (big, _) = raw::request("big", 9, 800);
    assert!(big.len() > 64 * 1024);
    let e = raw::grpc_export(&g, big, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(
        tracespool::otlp::retry_delay(&e).is_none(),
        "too large must not invite a retry"
    );
    let e = raw::grpc_export(&g, good.clone(), Some(&long))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Still serving; the first stored record is seq 1: nothing above was appended.
    raw::grpc_export(&g, good.clone(), None).await.unwrap();
    let a = raw::http_post(&url, &pb, raw::request("good", 2, 2).0).await;
    assert_eq!(a.status, 200, "{:?}", a);
    assert_eq!(a.headers["content-type"], "application/x-protobuf");
    let a = raw::http_post(
        &url,
        &[("content-type", "application/json")],
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/otlp/trace.json"
        ))
        .unwrap(),
    )
    .await;
    assert_eq!((a.status, &a.body[..]), (200, &b"{}"[..]));
    assert!(support::eventually(Duration::from_secs(20), || backend.received().len() >= 3).await);
    let instance = spool.instance_id();
    let mut keys: Vec<String> = backend
        .received()
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{instance}-1"),
            format!("{instance}-2"),
            format!("{instance}-3")
        ]
    );
    assert!(spool.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_and_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::new(dir.path(), "", &[]);
    spool.start();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let get = client
        .request(
            http::Request::get(spool.http_endpoint())
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let other = raw::http_post(
        &format!("http://{}/v1/metrics", spool.http),
        &[("content-type", "application/x-protobuf")],
        vec![],
    )
    .await;
    assert_eq!(other.status, 404);
    assert!(spool.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_requests_are_answered_success_counted_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::started_to(dir.path(), &backend);
    let url = format!("http://{}/v1/traces", spool.http);
    let json = [("content-type", "application/json")];
    let pb = [("content-type", "application/x-protobuf")];
    for body in [
        &br#"{"resourceSpans":[]}"#[..],
        br#"{}"#,
        br#"{"resourceSpans":[{"resource":{},"scopeSpans":[{"spans":[]}]}]}"#,
    ] {
        let a = raw::http_post(&url, &json, body.to_vec()).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(body));
    }
    let a = raw::http_post(&url, &pb, Vec::new()).await;
    assert_eq!(a.status, 200);
    raw::grpc_export(&spool.grpc_endpoint(), Vec::new(), None)
        .await
        .unwrap();
    // Counted as empty, nothing stored, nothing exported.
    let empty = |p: &'static str| {
        let spool = &spool;
        async move {
            spool
                .metric(&format!(
                    "tracespool_receiver_requests_total{{protocol=\"{p}\",outcome=\"empty\"}}"
                ))
                .await
        }
    };
    assert_eq!(empty("http/json").await, 3.0);
    assert_eq!(empty("http/protobuf").await, 1.0);
    assert_eq!(empty("grpc").await, 1.0);
    let (_, st) = spool.tool_json(&["status"]).await;
    assert_eq!(st["wal"]["last_seq"], 0, "{st:#}");
    // A real request after them is the first record.
    let (body, ids) = raw::request("after-empty", 1, 2);
    raw::grpc_export(&spool.grpc_endpoint(), body, None)
        .await
        .unwrap();
    let want: std::collections::BTreeSet<String> = ids.into_iter().collect();
    support::assert_delivered(&backend, &want, "the real request").await;
    assert_eq!(backend.received().len(), 1, "no empty export downstream");
    // Refusals are logged at warn with client, protocol and reason, a line per
    // kind per 10 s however many come.
    for _ in 0..5 {
        let a = raw::http_post(&url, &json, b"{\"resourceSpans\": [".to_vec()).await;
        assert_eq!(a.status, 400);
    }
    let refused: Vec<serde_json::Value> = spool
        .log_lines()
        .into_iter()
        .filter(|l| l["message"] == "request refused" && l["level"] == "WARN")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "invalid");
    assert_eq!(refused[0]["protocol"], "http/json");
    assert!(refused[0]["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    spool.terminate();
}
