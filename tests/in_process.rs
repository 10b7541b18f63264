//! A forwarder started in-process (`app::start`) on port 0: no free-port race, no
//! child process. It stores what the receivers answered success for, forwards it,
//! reports the addresses the system chose, stops on `Running::shutdown`, and starts
//! again on the same directory without sending anything twice. (The kill -9 tests
//! stay real processes: `tests/sigkill.rs`, the chaos suite.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::backend::{Backend, Kind};
use support::{eventually, raw};
use tracespool::app::{self, Control};
use tracespool::config::Config;

fn config(dir: &std::path::Path, sink: &Backend) -> Config {
    let file = dir.join("tracespool.toml");
    std::fs::write(
        &file,
        format!(
            "[storage]\ndir = {:?}\n\n[receivers.otlp]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[service]\nshutdown_timeout = \"3s\"\n\n\
             [[destinations]]\nname = \"sink\"\nendpoint = {:?}\nprotocol = {:?}\n",
            dir.join("data"),
            sink.endpoint(),
            sink.protocol()
        ),
    )
    .unwrap();
    Config::load(Some(&file), &BTreeMap::new()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_started_in_process_on_port_0_forwards_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Backend::start(Kind::Grpc).await;
    let running = app::start(config(dir.path(), &sink), Control::default())
        .await
        .expect("start");
    let addrs = running.addrs;
    let (grpc, http, admin) = (
        addrs.grpc.expect("gRPC bound"),
        addrs.http.expect("HTTP bound"),
        addrs.admin.expect("admin bound"),
    );
    for a in [grpc, http, admin] {
        assert!(a.ip().is_loopback() && a.port() != 0, "{a}");
    }

    let mut sent = BTreeSet::new();
    let (body, ids) = raw::request("in-process-http", 1, 7);
    let answer = raw::http_post(
        &format!("http://{http}/v1/traces"),
        &[("content-type", "application/x-protobuf")],
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    sent.extend(ids);
    let (body, ids) = raw::request("in-process-grpc", 2, 5);
    raw::grpc_export(&format!("http://{grpc}"), body, None)
        .await
        .expect("gRPC export");
    sent.extend(ids);

    assert!(
        eventually(Duration::from_secs(20), || sink.span_id_counts().len()
            == sent.len())
        .await,
        "delivered {} of {} spans",
        sink.span_id_counts().len(),
        sent.len()
    );
    let (code, body) = support::spool::get(&format!("http://{admin}/readyz")).await;
    assert_eq!(code, 200, "{body}");

    running.shutdown().await.expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "the HTTP receiver still listens after shutdown"
    );

    // Same directory, again: a clean stop left nothing to send twice.
    let running = app::start(config(dir.path(), &sink), Control::default())
        .await
        .expect("restart");
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.shutdown().await.expect("clean shutdown");
    let counts = sink.span_id_counts();
    assert_eq!(counts.keys().cloned().collect::<BTreeSet<_>>(), sent);
    assert!(counts.values().all(|&n| n == 1), "redelivered: {counts:?}");
}
