//! Forwarding behaviours: dead letters, auth failures, partial success, stable
//! idempotency keys across retries and restarts, dedup on receive, clean shutdown.

mod support;

use std::time::Duration;

use support::backend::{Backend, Kind, Mode};
use support::raw;
use support::spool::{Dest, Spool};

async fn send(spool: &Spool, prefix: &str, batch: u64, key: Option<&str>) -> Vec<String> {
    let (body, ids) = raw::request(prefix, batch, 3);
    raw::grpc_export(&spool.grpc_endpoint(), body, key)
        .await
        .unwrap();
    ids
}

fn lines_with(spool: &Spool, message: &str) -> Vec<serde_json::Value> {
    spool
        .log_lines()
        .into_iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(message)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanently_refused_batch_becomes_a_dead_letter_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Http).await;
    backend.poison("poison 2.0");
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "http")],
    );
    spool.start();
    for b in 0..5 {
        send(&spool, "poison", b, None).await;
    }
    assert!(support::eventually(Duration::from_secs(20), || backend.received().len() == 4).await);
    let letters = tracespool::deadletter::DeadLetters::new(&spool.data)
        .list(Some("b"))
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!((l.seq, l.spans), (3, 3));
    assert!(l.reason.contains("HTTP 400"), "{}", l.reason);
    assert_eq!(l.export_key, format!("{}-3", spool.instance_id()));
    let kept = std::fs::read(spool.data.join("dead-letter/b/00000000000000000003.pb")).unwrap();
    assert_eq!(
        kept,
        raw::request("poison", 2, 3).0,
        "the dead letter is the batch as received"
    );
    let logged = lines_with(&spool, "kept as a dead letter");
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["seq"], 3);
    // Not retried forever: the attempts at seq 3 stop at one.
    let attempts = backend
        .attempt_keys()
        .iter()
        .filter(|k| k.as_deref() == Some(&format!("{}-3", spool.instance_id())))
        .count();
    assert_eq!(attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_retried_loudly_until_the_credentials_work() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    backend.set_mode(Mode::Unauthenticated);
    let spool = Spool::started_to(dir.path(), &backend);
    for b in 0..3 {
        send(&spool, "auth", b, None).await;
    }
    assert!(
        support::eventually(Duration::from_secs(20), || backend.attempt_keys().len()
            >= 9)
        .await
    );
    assert!(backend.received().is_empty());
    assert!(lines_with(&spool, "refused our credentials").len() >= 3);
    assert!(tracespool::deadletter::DeadLetters::new(&spool.data)
        .list(None)
        .unwrap()
        .is_empty());
    backend.set_mode(Mode::Accept);
    assert!(support::eventually(Duration::from_secs(20), || backend.received().len() == 3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_is_logged_with_the_rejected_count() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    backend.set_mode(Mode::PartialReject(2));
    let spool = Spool::started_to(dir.path(), &backend);
    send(&spool, "partial", 0, None).await;
    assert!(
        support::eventually(Duration::from_secs(20), || !lines_with(
            &spool,
            "accepted the batch partially"
        )
        .is_empty())
        .await
    );
    let l = &lines_with(&spool, "accepted the batch partially")[0];
    assert_eq!(l["rejected_spans"], 2);
    assert_eq!(l["seq"], 1);
    assert_eq!(
        backend.received().len(),
        1,
        "a partial success is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_keys_stay_the_same_across_retries_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::start(Kind::Grpc).await;
    backend.set_mode(Mode::Unavailable);
    let mut spool = Spool::started_to(dir.path(), &backend);
    let instance = spool.instance_id();
    send(&spool, "keys", 0, None).await;
    send(&spool, "keys", 1, None).await;
    assert!(
        support::eventually(Duration::from_secs(20), || backend.attempt_keys().len()
            >= 6)
        .await
    );
    spool.kill();
    backend.stop(); // connections refused while it is down
    spool.start();
    assert_eq!(spool.instance_id(), instance, "the instance id is kept");
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend.restart().await;
    backend.set_mode(Mode::Accept);
    assert!(support::eventually(Duration::from_secs(20), || backend.received().len() == 2).await);
    let expected = [format!("{instance}-1"), format!("{instance}-2")];
    for k in backend.attempt_keys() {
        assert!(
            expected.contains(&k.clone().unwrap()),
            "unexpected key {k:?}"
        );
    }
    let mut got: Vec<_> = backend
        .received()
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_batch_is_stored_once_however_often_it_is_sent_even_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::started_to(dir.path(), &backend);
    let (body, _) = raw::request("dedup", 0, 3);
    for _ in 0..3 {
        raw::grpc_export(&spool.grpc_endpoint(), body.clone(), Some("batch-a"))
            .await
            .unwrap();
        let a = raw::http_post(
            &spool.http_endpoint(),
            &[
                ("content-type", "application/x-protobuf"),
                ("idempotency-key", "batch-a"),
            ],
            body.clone(),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    raw::grpc_export(&spool.grpc_endpoint(), body.clone(), Some("batch-b"))
        .await
        .unwrap();
    // Killed right after: the keys may not have reached sled, but they are in the log.
    spool.kill();
    spool.start();
    raw::grpc_export(&spool.grpc_endpoint(), body.clone(), Some("batch-a"))
        .await
        .unwrap();
    raw::grpc_export(&spool.grpc_endpoint(), body.clone(), Some("batch-b"))
        .await
        .unwrap();
    raw::grpc_export(&spool.grpc_endpoint(), body.clone(), None)
        .await
        .unwrap();
    assert!(support::eventually(Duration::from_secs(20), || backend.received().len() >= 3).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let instance = spool.instance_id();
    let mut keys: Vec<_> = backend
        .received()
        .iter()
        .map(|r| r.key.clone().unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys,
        vec![
            format!("{instance}-1"),
            format!("{instance}-2"),
            format!("{instance}-3")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_and_the_next_start_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::start(Kind::Grpc).await;
    // No export may time out (and be sent twice) on a busy machine.
    let dest = Dest::new("b", &backend.endpoint(), "grpc").timeout("30s");
    let mut spool = Spool::new(dir.path(), "", &[dest]);
    spool.start();
    for b in 0..3 {
        send(&spool, "term", b, None).await;
    }
    assert!(support::eventually(Duration::from_secs(20), || backend.received().len() == 3).await);
    backend.stop();
    for b in 3..6 {
        send(&spool, "term", b, None).await;
    }
    let (status, took) = spool.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    backend.restart().await;
    spool.start();
    assert!(support::eventually(Duration::from_secs(20), || backend.received().len() >= 6).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Delivered before the stop: not sent again. Pending: sent after the restart.
    let counts = backend.span_id_counts();
    assert_eq!(counts.len(), 18);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}
