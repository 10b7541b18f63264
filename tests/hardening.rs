//! Hostile clients: slow-loris connections and bodies, more connections than the
//! limit, a gzip bomb over both protocols. Each is cut off or refused, and the
//! process keeps serving everyone else normally.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::backend::{Backend, Kind};
use support::raw;
use support::spool::{Dest, Spool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Reads until the server closes the connection (or `limit` passes); returns how
/// long that took and what was received.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_everyone_else_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__HEADER_READ_TIMEOUT".into(),
        "1s".into(),
    ));
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__BODY_READ_TIMEOUT".into(),
        "2s".into(),
    ));
    spool.start();
    let http = spool.http;

    let mut attackers = tokio::task::JoinSet::new();
    // Headers a byte at a time, forever.
    for _ in 0..20 {
        attackers.spawn(async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            let line = b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let started = Instant::now();
            for b in line.iter().chain(std::iter::repeat(&b'a')) {
                if s.write_all(&[*b]).await.is_err() || started.elapsed() > Duration::from_secs(8) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ("slow headers", started.elapsed(), Vec::new())
        });
    }
    // Connections that send nothing.
    for _ in 0..10 {
        attackers.spawn(async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            let (took, got) = until_closed(&mut s, Duration::from_secs(8)).await;
            ("silent", took, got)
        });
    }
    // A complete head, then a body that never comes.
    for _ in 0..5 {
        attackers.spawn(async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            s.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 10000\r\n\r\n0123456789")
                .await
                .unwrap();
            let (took, got) = until_closed(&mut s, Duration::from_secs(8)).await;
            ("slow body", took, got)
        });
    }

    // Meanwhile, normal clients are served promptly.
    let mut acked = std::collections::BTreeSet::new();
    for b in 0..20u64 {
        let started = Instant::now();
        let (body, ids) = raw::request("normal", b, 5);
        if b % 2 == 0 {
            raw::grpc_export(&spool.grpc_endpoint(), body, None)
                .await
                .unwrap();
        } else {
            let a = raw::http_post(
                &spool.http_endpoint(),
                &[("content-type", "application/x-protobuf")],
                body,
            )
            .await;
            assert_eq!(a.status, 200);
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a normal export waited"
        );
        acked.extend(ids);
    }

    while let Some(r) = attackers.join_next().await {
        let (kind, took, got) = r.unwrap();
        match kind {
            // The writer notices the close on its next write.
            "slow headers" => assert!(took < Duration::from_secs(4), "{kind}: {took:?}"),
            "silent" => assert!(took < Duration::from_secs(4), "{kind}: {took:?}"),
            _ => {
                let text = String::from_utf8_lossy(&got);
                assert!(took < Duration::from_secs(5), "{kind}: {took:?}");
                assert!(text.starts_with("HTTP/1.1 408"), "{kind}: {text}");
            }
        }
    }
    support::assert_delivered(&backend, &acked, "normal clients").await;
    let text = spool.metrics().await;
    let v = |s: &str| support::spool::metric_value(&text, s);
    assert!(
        v(r#"tracespool_receiver_connections_total{receiver="http",outcome="timed_out"}"#) >= 10.0
    );
    assert_eq!(
        v(r#"tracespool_receiver_requests_total{protocol="http/protobuf",outcome="timed_out"}"#),
        5.0
    );
    assert_eq!(
        v(r#"tracespool_receiver_open_connections{receiver="http"}"#),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once_until_slots_free_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::new(dir.path(), "", &[]);
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__MAX_CONNECTIONS".into(),
        "8".into(),
    ));
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__HEADER_READ_TIMEOUT".into(),
        "2s".into(),
    ));
    spool.start();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(spool.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(spool.http).await.unwrap();
    let (took, _) = until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "the 9th connection was kept: {took:?}"
    );
    assert!(
        spool
            .metric(
                r#"tracespool_receiver_connections_total{receiver="http",outcome="over_limit"}"#
            )
            .await
            >= 1.0
    );
    // The idle eight are dropped at the deadline; then requests get through.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = raw::http_post(
        &spool.http_endpoint(),
        &[("content-type", "application/x-protobuf")],
        raw::request("after", 1, 2).0,
    )
    .await;
    assert_eq!(a.status, 200);
    drop(held);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bombs_are_refused_without_a_memory_spike_over_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::new(dir.path(), "", &[]);
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__MAX_REQUEST_BYTES".into(),
        "2MiB".into(),
    ));
    spool.env.push((
        "TRACESPOOL__RECEIVERS__OTLP__MAX_DECOMPRESSED_BYTES".into(),
        "4MiB".into(),
    ));
    spool.start();
    // Warm both paths up, so the baseline includes their normal buffers.
    let (good, _) = raw::request("warm", 1, 50);
    raw::grpc_export(&spool.grpc_endpoint(), good.clone(), None)
        .await
        .unwrap();
    let pb_gz = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "gzip"),
    ];
    assert_eq!(
        raw::http_post(&spool.http_endpoint(), &pb_gz, gzip(&good))
            .await
            .status,
        200
    );
    let before = vm_hwm_kib(spool.pid());

    // 256 MiB of zeros in ~250 KiB.
    let zeros = vec![0u8; 256 << 20];
    let bomb = gzip(&zeros);
    assert!(bomb.len() < 2 << 20);
    let a = raw::http_post(&spool.http_endpoint(), &pb_gz, bomb).await;
    assert_eq!(a.status, 413);
    let status = raw::grpc_export_gzip(&spool.grpc_endpoint(), zeros)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    let after = vm_hwm_kib(spool.pid());
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // Still serving.
    raw::grpc_export(&spool.grpc_endpoint(), good, None)
        .await
        .unwrap();
    let text = spool.metrics().await;
    assert_eq!(
        support::spool::metric_value(
            &text,
            r#"tracespool_receiver_requests_total{protocol="http/protobuf",outcome="too_large"}"#
        ),
        1.0
    );
}
