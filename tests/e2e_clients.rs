//! Real clients: the OpenTelemetry Python SDK's official OTLP exporters (gRPC and
//! HTTP/protobuf, plain and gzip) send through a tracespool process to test backends
//! over both export protocols; every span arrives with ids, attributes and resource
//! intact, once.

mod support;

use std::time::Duration;

use support::backend::{Backend, Kind};
use support::python;
use support::spool::{Dest, Spool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_spans_arrive_intact_over_grpc_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_backend = Backend::start(Kind::Grpc).await;
    let http_backend = Backend::start(Kind::Http).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[
            Dest::new("to-grpc", &grpc_backend.endpoint(), "grpc").timeout("60s"),
            Dest::new("to-http", &http_backend.endpoint(), "http")
                .timeout("60s")
                .with("compression = \"gzip\""),
        ],
    );
    spool.start();
    let instance = spool.instance_id();

    let (g, h) = (spool.grpc_endpoint(), spool.http_endpoint());
    let runs = [
        ("grpc", g.as_str(), false),
        ("grpc", g.as_str(), true),
        ("http", h.as_str(), false),
        ("http", h.as_str(), true),
    ];
    let clients: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, (proto, endpoint, gzip))| {
            let prefix = format!("c{i}");
            let mut args = vec![
                "--protocol",
                proto,
                "--endpoint",
                endpoint,
                "--batches",
                "5",
                "--spans",
                "4",
                "--prefix",
                &prefix,
            ];
            if *gzip {
                args.push("--gzip");
            }
            python::spawn(dir.path(), &prefix, &args)
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.wait()).collect();
    let mut sent = Vec::new();
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.success,
            "client {i} failed: {:?}\n{}",
            r.summary, r.stderr
        );
        assert_eq!(r.acked.len(), 5);
        sent.extend(r.spans());
    }
    assert_eq!(sent.len(), 80);

    for backend in [&grpc_backend, &http_backend] {
        assert!(
            support::eventually(Duration::from_secs(30), || backend.span_count() >= 80).await,
            "{:?} backend got {} of 80 spans",
            backend.kind,
            backend.span_count()
        );
        let got = backend.spans();
        assert_eq!(got.len(), 80, "{:?}: duplicates or extras", backend.kind);
        for s in &sent {
            let id = s["span_id"].as_str().unwrap();
            let r = got
                .iter()
                .find(|g| g.span_id == id)
                .unwrap_or_else(|| panic!("span {id} missing"));
            assert_eq!(r.trace_id, s["trace_id"].as_str().unwrap());
            assert_eq!(r.name, s["name"].as_str().unwrap());
            assert_eq!(r.attributes, s["attributes"], "attributes of {id}");
            let prefix = s["attributes"]["prefix"].as_str().unwrap();
            assert_eq!(r.resource["service.name"], "tracespool-test-client");
            assert_eq!(r.resource["test.run"], prefix);
            assert_eq!(r.resource["host.kind"], "edge");
            // Exported with the stable key <instance-id>-<seq>.
            let key = r.key.as_deref().unwrap();
            let seq = key
                .strip_prefix(&format!("{instance}-"))
                .unwrap_or_else(|| panic!("key {key}"));
            assert!(seq.parse::<u64>().unwrap() >= 1);
        }
    }
    let (status, took) = spool.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}
