//! Transport and identity: TLS and mTLS on the receivers with the Python SDK's
//! exporters, certificate reload without a restart, bearer tokens mapped to
//! tenants, and TLS to destinations with a private CA. Certificates are made at
//! test time.

mod support;

use std::time::Duration;

use support::backend::{Backend, Kind};
use support::pki::{self, Ca};
use support::python;
use support::raw;
use support::spool::{Dest, Spool};

fn py_args<'a>(protocol: &'a str, endpoint: &'a str, prefix: &'a str) -> Vec<&'a str> {
    vec![
        "--protocol",
        protocol,
        "--endpoint",
        endpoint,
        "--batches",
        "2",
        "--spans",
        "3",
        "--prefix",
        prefix,
        "--attempt-timeout",
        "3",
    ]
}

fn tls_config(cert: &pki::Pem, client_ca: Option<&std::path::Path>) -> String {
    let mut s = format!(
        "[receivers.otlp.tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval = \"300ms\"\n",
        cert.cert, cert.key
    );
    if let Some(ca) = client_ca {
        s.push_str(&format!("client_ca_file = {ca:?}\n"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_exports_over_tls_and_plaintext_or_untrusted_clients_fail() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "server");
    let other = Ca::new(dir.path(), "other");
    let cert = ca.server("tracespool", &[]);
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.append_config(&tls_config(&cert, None));
    spool.start();
    let grpc = format!("https://{}", spool.grpc);
    let http = format!("https://{}/v1/traces", spool.http);
    let ca_file = ca.file();
    let ca_file = ca_file.to_str().unwrap();

    // The official exporters, trusting our CA: both protocols succeed.
    let mut ok = Vec::new();
    for (protocol, endpoint, prefix) in [("grpc", &grpc, "tlsg"), ("http", &http, "tlsh")] {
        let mut a = py_args(protocol, endpoint, prefix);
        a.extend(["--ca-file", ca_file, "--deadline", "30"]);
        let r = python::spawn(dir.path(), prefix, &a).wait();
        assert!(
            r.success,
            "{protocol} over TLS: {:?}\n{}",
            r.summary, r.stderr
        );
        ok.extend(r.span_ids());
    }
    assert_eq!(ok.len(), 12);
    support::assert_delivered(&backend, &ok.into_iter().collect(), "over TLS").await;

    // Plaintext to the TLS port, or a client that does not trust the certificate:
    // nothing gets through.
    let plain_grpc = format!("http://{}", spool.grpc);
    let other_ca = other.file();
    let other_ca = other_ca.to_str().unwrap();
    for (name, protocol, endpoint, ca) in [
        ("plain-grpc", "grpc", &plain_grpc, None),
        ("untrusted-grpc", "grpc", &grpc, Some(other_ca)),
        ("untrusted-http", "http", &http, Some(other_ca)),
    ] {
        let mut a = py_args(protocol, endpoint, name);
        a.extend(["--deadline", "2"]);
        if let Some(ca) = ca {
            a.extend(["--ca-file", ca]);
        }
        let r = python::spawn(dir.path(), name, &a).wait();
        assert!(!r.success, "{name} got through: {:?}", r.summary);
        assert!(r.acked.is_empty(), "{name}");
    }
    let plain = raw::grpc_export(&plain_grpc, raw::request("plain", 1, 1).0, None).await;
    assert!(
        plain.is_err(),
        "a plaintext gRPC request was answered over TLS"
    );
    assert_eq!(backend.span_count(), 12, "nothing else arrived");
    assert!(
        spool
            .metric(
                r#"tracespool_receiver_connections_total{receiver="grpc",outcome="tls_failed"}"#
            )
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "server");
    let clients = Ca::new(dir.path(), "clients");
    let strangers = Ca::new(dir.path(), "strangers");
    let cert = ca.server("tracespool", &[]);
    let good = clients.client("shop-12");
    let bad = strangers.client("mallory");
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.append_config(&tls_config(&cert, Some(&clients.file())));
    spool.start();
    let grpc = format!("https://{}", spool.grpc);
    let http = format!("https://{}/v1/traces", spool.http);
    let ca_file = ca.file();
    let ca_file = ca_file.to_str().unwrap();
    let (gc, gk) = (good.cert.to_str().unwrap(), good.key.to_str().unwrap());
    let (bc, bk) = (bad.cert.to_str().unwrap(), bad.key.to_str().unwrap());
    for (protocol, endpoint) in [("grpc", &grpc), ("http", &http)] {
        // Without a certificate, and with one from another CA: refused.
        for (name, client) in [("none", None), ("stranger", Some((bc, bk)))] {
            let tag = format!("{protocol}-{name}");
            let mut a = py_args(protocol, endpoint, &tag);
            a.extend(["--ca-file", ca_file, "--deadline", "2"]);
            if let Some((c, k)) = client {
                a.extend(["--client-cert", c, "--client-key", k]);
            }
            let r = python::spawn(dir.path(), &tag, &a).wait();
            assert!(!r.success && r.acked.is_empty(), "{tag} got through");
        }
        // With one the configured CA signed: accepted.
        let tag = format!("{protocol}-good");
        let mut a = py_args(protocol, endpoint, &tag);
        a.extend([
            "--ca-file",
            ca_file,
            "--client-cert",
            gc,
            "--client-key",
            gk,
            "--deadline",
            "30",
        ]);
        let r = python::spawn(dir.path(), &tag, &a).wait();
        assert!(r.success, "{tag}: {:?}\n{}", r.summary, r.stderr);
        assert_eq!(r.span_ids().len(), 6);
    }
    assert!(support::eventually(Duration::from_secs(20), || backend.span_count() == 12).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_change_and_on_sighup_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "server");
    let first = ca.server("first", &[]);
    let second = ca.server("second", &[]);
    let third = ca.server("third", &[]);
    // The files the spool reads; replaced by rename, as deployment tools do.
    let live = pki::Pem {
        cert: dir.path().join("live.crt"),
        key: dir.path().join("live.key"),
    };
    let install = |p: &pki::Pem| {
        for (from, to) in [(&p.cert, &live.cert), (&p.key, &live.key)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    };
    install(&first);
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.append_config(&tls_config(&live, None));
    spool.start();
    let pid = spool.pid();
    let ca_file = ca.file();
    let served = || pki::served_certificate(spool.grpc, &ca_file);
    assert_eq!(served().await.unwrap(), pki::der(&first.cert));

    // Changed files are picked up within the reload interval.
    install(&second);
    let mut now = Vec::new();
    for _ in 0..50 {
        now = served().await.unwrap();
        if now == pki::der(&second.cert) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        now,
        pki::der(&second.cert),
        "the new certificate was not served"
    );

    // A broken file is refused; the last good certificate stays in service.
    std::fs::write(&live.cert, b"not a certificate").unwrap();
    assert!(
        support::eventually(Duration::from_secs(10), || spool
            .log_text()
            .contains("cannot be loaded; keeping the previous certificate"))
        .await
    );
    assert_eq!(served().await.unwrap(), pki::der(&second.cert));

    // SIGHUP reloads at once.
    install(&third);
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    let mut now = Vec::new();
    for _ in 0..50 {
        now = served().await.unwrap();
        if now == pki::der(&third.cert) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now, pki::der(&third.cert));
    // Same process, still serving and forwarding.
    assert_eq!(spool.pid(), pid);
    let r = python::spawn(
        dir.path(),
        "after",
        &{
            let grpc = format!("https://{}", spool.grpc);
            let ca = ca.file().to_str().unwrap().to_string();
            let mut a: Vec<String> = py_args("grpc", &grpc, "after")
                .into_iter()
                .map(String::from)
                .collect();
            a.extend(["--ca-file".into(), ca]);
            a
        }
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    )
    .wait();
    assert!(r.success, "{}", r.stderr);
    assert!(
        spool
            .metric(r#"tracespool_tls_reloads_total{result="ok"}"#)
            .await
            >= 2.0
    );
    assert!(
        spool
            .metric(r#"tracespool_tls_reloads_total{result="error"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_name_tenants_and_wrong_or_missing_tokens_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    let token_file = dir.path().join("shop-2.token");
    std::fs::write(&token_file, "shop-two-token-0123456789\n").unwrap();
    spool.append_config(&format!(
        "[[receivers.otlp.auth.tokens]]\ntenant = \"shop-1\"\ntoken_env = \"SHOP1_TOKEN\"\n\
         [[receivers.otlp.auth.tokens]]\ntenant = \"shop-2\"\ntoken_file = {token_file:?}\n"
    ));
    spool
        .env
        .push(("SHOP1_TOKEN".into(), "shop-one-token-0123456789".into()));
    spool.start();
    let grpc = spool.grpc_endpoint();
    let http = spool.http_endpoint();
    let run = |name: &str, protocol: &str, token: Option<&str>, deadline: &str| {
        let endpoint = if protocol == "grpc" { &grpc } else { &http };
        let mut a: Vec<String> = py_args(protocol, endpoint, name)
            .into_iter()
            .map(String::from)
            .collect();
        a.extend(["--deadline".into(), deadline.into(), "--keys".into()]);
        if let Some(t) = token {
            a.extend(["--header".into(), format!("authorization=Bearer {t}")]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        python::spawn(dir.path(), name, &a).wait()
    };
    // Right tokens: accepted, with their tenant.
    let r1 = run("t1", "grpc", Some("shop-one-token-0123456789"), "30");
    let r2 = run("t2", "http", Some("shop-two-token-0123456789"), "30");
    assert!(r1.success && r2.success, "{}\n{}", r1.stderr, r2.stderr);
    // Wrong and missing tokens: refused, nothing stored.
    for (name, protocol, token) in [
        ("bad-grpc", "grpc", Some("shop-one-token-012345678X")),
        ("none-grpc", "grpc", None),
        ("bad-http", "http", Some("not-a-token-at-all-xxxxxxx")),
        ("none-http", "http", None),
    ] {
        let r = run(name, protocol, token, "1");
        assert!(!r.success && r.acked.is_empty(), "{name} got through");
    }
    // A 401 carries its challenge, in the encoding of the request.
    let (body, _) = support::raw::request("no-token", 0, 1);
    let a = support::raw::http_post(&http, &[("content-type", "application/json")], body).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"tracespool\"");
    assert_eq!(a.headers["content-type"], "application/json");
    assert!(support::eventually(Duration::from_secs(20), || backend.span_count() == 12).await);
    let text = spool.metrics().await;
    let v = |s: &str| support::spool::metric_value(&text, s);
    assert!(
        v(r#"tracespool_receiver_requests_total{protocol="grpc",outcome="unauthenticated"}"#)
            >= 2.0
    );
    assert!(
        v(
            r#"tracespool_receiver_requests_total{protocol="http/protobuf",outcome="unauthenticated"}"#
        ) >= 2.0
    );
    assert_eq!(
        v(r#"tracespool_receiver_requests_total{protocol="http/json",outcome="unauthenticated"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tracespool_receiver_requests_total{protocol="grpc",outcome="accepted"}"#),
        2.0
    );
    // The ledger names the tenant of every stored batch, and of every refusal none.
    let ledger = tracespool::ledger::read_all(&spool.data.join("ledger")).unwrap();
    let mut tenants = Vec::new();
    let mut refused = 0;
    for e in &ledger {
        match e {
            tracespool::ledger::Entry::Accepted { tenant, key, .. } => {
                let t = tenant.clone().unwrap();
                // Keys are scoped to the tenant.
                assert!(
                    key.as_ref().unwrap().starts_with(&format!("{t}:")),
                    "{key:?}"
                );
                tenants.push(t);
            }
            tracespool::ledger::Entry::Rejected { reason, tenant, .. }
                if reason == "unauthenticated" =>
            {
                assert!(tenant.is_none());
                refused += 1;
            }
            _ => {}
        }
    }
    tenants.sort();
    assert_eq!(tenants, ["shop-1", "shop-1", "shop-2", "shop-2"]);
    assert!(refused >= 4);
    // The tokens are nowhere in the log or the ledger.
    let log = spool.log_text();
    let ledger_text: String = std::fs::read_dir(spool.data.join("ledger"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for secret in ["shop-one-token", "shop-two-token", "not-a-token"] {
        assert!(
            !log.contains(secret) && !ledger_text.contains(secret),
            "{secret} leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_destinations_verify_a_private_ca_and_present_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "backend");
    let clients = Ca::new(dir.path(), "edge-clients");
    let server = ca.server("collector", &["collector.internal"]);
    let client = clients.client("edge-7");
    // Backends that require our client certificate, over gRPC and HTTP.
    let acceptor = pki::acceptor(&server, Some(&clients.file()));
    let grpc = Backend::start_tls(Kind::Grpc, acceptor.clone()).await;
    let http = Backend::start_tls(Kind::Http, acceptor).await;
    let tls = |extra: &str| {
        format!(
            "tls.ca_file = {:?}\ntls.cert_file = {:?}\ntls.key_file = {:?}\n{extra}",
            ca.file(),
            client.cert,
            client.key
        )
    };
    // "insecure": an https backend whose certificate nobody can verify.
    let insecure = Backend::start_tls(Kind::Grpc, pki::acceptor(&server, None)).await;
    // "untrusted": verified against the system roots, which do not know our CA.
    let untrusted = Backend::start_tls(Kind::Grpc, pki::acceptor(&server, None)).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[
            Dest::new("grpc", &grpc.endpoint(), "grpc").with(&tls("")),
            Dest::new("http", &http.endpoint(), "http")
                .with(&tls("tls.server_name = \"collector.internal\"")),
            Dest::new("insecure", &insecure.endpoint(), "grpc")
                .with("tls.insecure_skip_verify = true"),
            Dest::new("untrusted", &untrusted.endpoint(), "grpc"),
        ],
    );
    spool.start();
    for b in 0..3 {
        raw::grpc_export(&spool.grpc_endpoint(), raw::request("dtls", b, 4).0, None)
            .await
            .unwrap();
    }
    for (name, b) in [("grpc", &grpc), ("http", &http), ("insecure", &insecure)] {
        assert!(
            support::eventually(Duration::from_secs(20), || b.span_count() == 12).await,
            "{name}: {} spans",
            b.span_count()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        untrusted.span_count(),
        0,
        "an unverifiable backend got spans"
    );
    assert!(
        spool
            .metric(
                r#"tracespool_export_requests_total{destination="untrusted",outcome="retryable"}"#
            )
            .await
            >= 1.0
    );
    let log = spool.log_text();
    assert!(
        log.contains("TLS certificate verification is OFF for this destination"),
        "insecure_skip_verify must be loud"
    );
    assert!(
        log.contains("invalid peer certificate") || log.contains("UnknownIssuer"),
        "the untrusted backend's failure says why"
    );
}
