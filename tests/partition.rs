//! Partition: while clients keep sending, the backends refuse connections, then
//! answer UNAVAILABLE / 503, then accept connections but never answer; when they
//! come back every acknowledged span is delivered.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::backend::{Backend, Kind, Mode};
use support::python;
use support::spool::{Dest, Spool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_span_is_delivered_after_refused_unavailable_and_silent_backends() {
    let dir = tempfile::tempdir().unwrap();
    let mut grpc_backend = Backend::start(Kind::Grpc).await;
    let mut http_backend = Backend::start(Kind::Http).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[
            Dest::new("grpc-backend", &grpc_backend.endpoint(), "grpc").timeout("1s"),
            Dest::new("http-backend", &http_backend.endpoint(), "http").timeout("1s"),
        ],
    );
    spool.start();
    // Phase 1: connections refused.
    grpc_backend.stop();
    http_backend.stop();
    let (g, h) = (spool.grpc_endpoint(), spool.http_endpoint());
    let clients = [
        python::spawn(
            dir.path(),
            "grpc",
            &[
                "--protocol",
                "grpc",
                "--endpoint",
                &g,
                "--batches",
                "40",
                "--spans",
                "3",
                "--prefix",
                "pg",
                "--pause",
                "0.1",
            ],
        ),
        python::spawn(
            dir.path(),
            "http",
            &[
                "--protocol",
                "http",
                "--endpoint",
                &h,
                "--batches",
                "40",
                "--spans",
                "3",
                "--prefix",
                "ph",
                "--pause",
                "0.1",
            ],
        ),
    ];
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Phase 2: up, but UNAVAILABLE / 503.
    spool.note("phase 2: unavailable");
    for b in [&mut grpc_backend, &mut http_backend] {
        b.set_mode(Mode::Unavailable);
        b.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Phase 3: connections accepted, requests never answered.
    spool.note("phase 3: black hole");
    for b in [&grpc_backend, &http_backend] {
        b.set_mode(Mode::BlackHole);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused_so_far = grpc_backend.attempt_keys().len() + http_backend.attempt_keys().len();
    assert!(
        refused_so_far > 0,
        "the backends never saw a request during the outage"
    );
    assert!(grpc_backend.received().is_empty() && http_backend.received().is_empty());
    // Phase 4: back.
    spool.note("phase 4: accept");
    for b in [&grpc_backend, &http_backend] {
        b.set_mode(Mode::Accept);
    }
    let mut acked = BTreeSet::new();
    for c in clients {
        let r = c.wait();
        assert!(r.success, "client failed: {:?}\n{}", r.summary, r.stderr);
        assert_eq!(r.acked.len(), 40);
        acked.extend(r.span_ids());
    }
    assert_eq!(acked.len(), 240);
    for b in [&grpc_backend, &http_backend] {
        support::assert_delivered(b, &acked, &format!("{:?} backend", b.kind)).await;
    }
    assert!(spool.log_text().contains("export failed; retrying"));
}
