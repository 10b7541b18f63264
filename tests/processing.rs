//! The processor pipeline end to end, with real processes: redaction of spans sent
//! by the Python SDK (every attribute of every scope checked at the backend),
//! consistent sampling across two tracespools and against the Python SDK's own
//! `TraceIdRatioBased` sampler, filters and limits, and what the ledger says.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use support::backend::{hex, Backend, Kind};
use support::python;
use support::raw;
use support::spool::{metric_value, Dest, Spool};
use tracespool::ledger::{read_all, Entry};

const HASH_KEY: &str = "test-hmac-key-0123456789abcdef";

/// What `action = "hash"` turns `v` into, computed independently of tracespool.
fn hm(v: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HASH_KEY.as_bytes());
    format!(
        "hmac:{}",
        hex(&ring::hmac::sign(&key, v.as_bytes()).as_ref()[..16])
    )
}

fn attributes_json() -> serde_json::Value {
    let one = serde_json::json!({
        "user.email": "jane.doe@example.com",
        "payment.card": "4111 1111 1111 1111",
        "net.peer.ip": "10.20.30.40",
        "net.peer.ip6": "2001:db8::1",
        "http.authorization": "Bearer abcDEF123.456",
        "session.jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl",
        "user.password": "hunter2-secret",
        "note": "call jane.doe@example.com from 10.20.30.40",
        "emails": ["a@b.io", "ok"],
        "safe": "order 12345",
    });
    serde_json::json!({"resource": one, "scope": one, "span": one, "event": one, "link": one})
}

/// Text no attribute may contain after redaction.
const FLAGGED: &[&str] = &[
    "jane.doe@example.com",
    "a@b.io",
    "4111 1111 1111 1111",
    "10.20.30.40",
    "2001:db8::1",
    "abcDEF123",
    "eyJhbGciOiJIUzI1NiJ9",
    "hunter2",
];

/// Every attribute list of a request, with the scope it belongs to.
fn attribute_lists(req: &ExportTraceServiceRequest) -> Vec<(&'static str, &[KeyValue])> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        if let Some(r) = &rs.resource {
            out.push(("resource", &r.attributes[..]));
        }
        for ss in &rs.scope_spans {
            if let Some(s) = &ss.scope {
                out.push(("scope", &s.attributes[..]));
            }
            for span in &ss.spans {
                out.push(("span", &span.attributes[..]));
                for e in &span.events {
                    out.push(("event", &e.attributes[..]));
                }
                for l in &span.links {
                    out.push(("link", &l.attributes[..]));
                }
            }
        }
    }
    out
}

fn strings<'a>(v: &'a AnyValue, out: &mut Vec<&'a str>) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => out.push(s),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().for_each(|x| strings(x, out)),
        Some(any_value::Value::KvlistValue(l)) => l
            .values
            .iter()
            .filter_map(|kv| kv.value.as_ref())
            .for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn get<'a>(list: &'a [KeyValue], key: &str) -> &'a AnyValue {
    list.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .unwrap_or_else(|| panic!("{key} missing"))
}

fn string(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Checks every attribute of `requests`; returns how many attribute lists carried
/// the test's attributes.
fn check_redacted(requests: &[ExportTraceServiceRequest]) -> u64 {
    let mut lists = 0;
    let mut scopes = BTreeSet::new();
    for req in requests {
        for (scope, list) in attribute_lists(req) {
            for kv in list {
                let mut texts = vec![kv.key.as_str()];
                if let Some(v) = &kv.value {
                    strings(v, &mut texts);
                }
                for t in texts {
                    for f in FLAGGED {
                        assert!(
                            !t.contains(f),
                            "{f:?} reached the backend in {scope} attribute {}: {t:?}",
                            kv.key
                        );
                    }
                }
            }
            if !list.iter().any(|kv| kv.key == "user.email") {
                continue;
            }
            lists += 1;
            scopes.insert(scope);
            let s = |k: &str| string(get(list, k));
            assert_eq!(s("user.email"), hm("jane.doe@example.com"), "{scope}");
            assert_eq!(s("payment.card"), hm("4111 1111 1111 1111"));
            assert_eq!(s("net.peer.ip"), hm("10.20.30.40"));
            assert_eq!(s("net.peer.ip6"), hm("2001:db8::1"));
            assert_eq!(s("http.authorization"), hm("Bearer abcDEF123.456"));
            assert_eq!(
                s("session.jwt"),
                hm("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl")
            );
            assert_eq!(s("user.password"), hm("hunter2-secret"));
            assert_eq!(
                s("note"),
                format!(
                    "call {} from {}",
                    hm("jane.doe@example.com"),
                    hm("10.20.30.40")
                )
            );
            assert_eq!(s("safe"), "order 12345");
            let mut arr = Vec::new();
            strings(get(list, "emails"), &mut arr);
            assert_eq!(arr, [hm("a@b.io").as_str(), "ok"]);
        }
    }
    assert_eq!(
        scopes,
        BTreeSet::from(["event", "link", "resource", "scope", "span"]),
        "the client put the attributes in every scope"
    );
    lists
}

/// The counts a run of `lists` attribute lists must have produced, per rule.
fn check_counts(text: &str, lists: u64) {
    for (rule, per_list) in [
        ("email", 3),
        ("card_number", 1),
        ("ipv4", 2),
        ("ipv6", 1),
        ("bearer_token", 1),
        ("jwt", 1),
        ("deny_keys", 1),
    ] {
        let series = format!("tracespool_redacted_attributes_total{{rule=\"{rule}\"}}");
        assert_eq!(
            metric_value(text, &series),
            (per_list * lists) as f64,
            "{series}"
        );
    }
}

fn py(
    dir: &Path,
    name: &str,
    protocol: &str,
    endpoint: &str,
    batches: &str,
    spans: &str,
    extra: &[&str],
) -> python::PyResult {
    let mut args = vec![
        "--protocol",
        protocol,
        "--endpoint",
        endpoint,
        "--batches",
        batches,
        "--spans",
        spans,
        "--prefix",
        name,
        "--attempt-timeout",
        "5",
        "--deadline",
        "30",
    ];
    args.extend_from_slice(extra);
    python::spawn(dir, name, &args).wait()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_leaves_no_flagged_value_in_any_scope_and_hashes_stay_stable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "grpc")],
    );
    spool.append_config(
        "[[processors]]\ntype = \"redact\"\n\
         patterns = [\"email\", \"card_number\", \"ipv4\", \"ipv6\", \"bearer_token\", \"jwt\"]\n\
         deny_keys = [\"user.password\"]\naction = \"hash\"\nhash_key_env = \"REDACT_KEY\"\n",
    );
    spool.env.push(("REDACT_KEY".into(), HASH_KEY.into()));
    spool.start();
    let attrs = dir.path().join("attrs.json");
    std::fs::write(&attrs, attributes_json().to_string()).unwrap();
    let attrs = attrs.to_str().unwrap();
    // --spans 4: the fourth span links to the first, so links carry attributes too.
    let a = py(
        dir.path(),
        "redact-http",
        "http",
        &spool.http_endpoint(),
        "2",
        "4",
        &["--attributes-json", attrs],
    );
    let b = py(
        dir.path(),
        "redact-grpc",
        "grpc",
        &spool.grpc_endpoint(),
        "1",
        "4",
        &["--attributes-json", attrs],
    );
    assert!(a.success && b.success, "{}\n{}", a.stderr, b.stderr);
    let mut sent: BTreeSet<String> = a.span_ids().into_iter().collect();
    sent.extend(b.span_ids());
    support::assert_delivered(&backend, &sent, "redacted spans").await;
    let first: Vec<_> = backend.received().into_iter().map(|r| r.request).collect();
    let lists = check_redacted(&first);
    assert_eq!(
        lists,
        3 * 11,
        "3 requests × (resource, scope, 4 spans, 4 events, 1 link)"
    );
    check_counts(&spool.metrics().await, lists);
    // Nothing flagged on disk either: the log holds the processed request.
    let mut on_disk = Vec::new();
    for e in walk(&spool.data.join("wal")) {
        on_disk.extend(std::fs::read(e).unwrap());
    }
    assert!(!on_disk.is_empty());
    for f in FLAGGED {
        assert!(
            memchr::memmem::find(&on_disk, f.as_bytes()).is_none(),
            "{f:?} is in the log on disk"
        );
    }

    // After a restart the same values hash to the same text (check_redacted
    // compares with the HMAC computed here), and counting starts again.
    spool.terminate();
    spool.start();
    let c = py(
        dir.path(),
        "redact-after",
        "http",
        &spool.http_endpoint(),
        "1",
        "4",
        &["--attributes-json", attrs],
    );
    assert!(c.success, "{}", c.stderr);
    sent.extend(c.span_ids());
    support::assert_delivered(&backend, &sent, "after the restart").await;
    let all: Vec<_> = backend.received().into_iter().map(|r| r.request).collect();
    let later = check_redacted(&all[first.len()..]);
    assert_eq!(later, 11);
    check_counts(&spool.metrics().await, later);
    // Secrets stay out of the log file and check-config.
    assert!(!spool.log_text().contains(HASH_KEY));
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A deterministic stream of ids.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn resource_spans(service: &str, trace_ids: &[[u8; 16]], ids: &mut SplitMix) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![raw::kv("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans: trace_ids
                .iter()
                .map(|t| Span {
                    trace_id: t.to_vec(),
                    span_id: ids.next().to_be_bytes().to_vec(),
                    name: format!("{service} op"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn trace_ids(b: &Backend, service: &str) -> BTreeSet<String> {
    b.spans()
        .into_iter()
        .filter(|s| s.resource["service.name"] == service)
        .map(|s| s.trace_id)
        .collect()
}

/// The Python SDK's `TraceIdRatioBased(rate)` decision for each trace id.
fn python_keeps(dir: &Path, rate: f64, ids: &[String]) -> BTreeSet<String> {
    let script = format!(
        "import sys\nfrom opentelemetry.sdk.trace.sampling import TraceIdRatioBased, Decision\n\
         s = TraceIdRatioBased({rate})\n\
         for line in sys.stdin:\n    t = line.strip()\n    \
         if s.should_sample(None, int(t, 16), 'x').decision == Decision.RECORD_AND_SAMPLE: print(t)\n"
    );
    let mut child = Command::new(python::python())
        .args(["-c", &script])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    for id in ids {
        writeln!(stdin, "{id}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tracespools_sample_the_same_traces_as_the_python_sdk_and_count_the_rest() {
    const RATE: f64 = 0.25;
    const PER_REQUEST: usize = 250;
    const REQUESTS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let sample = format!(
        "[[processors]]\ntype = \"sample\"\nrate = {RATE}\nservice_rates = {{ checkout = 1.0 }}\n"
    );
    let mut spools = Vec::new();
    let mut backends = Vec::new();
    for name in ["a", "b"] {
        let backend = Backend::start(Kind::Grpc).await;
        let root = dir.path().join(name);
        std::fs::create_dir(&root).unwrap();
        let mut spool = Spool::new(&root, "", &[Dest::new("b", &backend.endpoint(), "grpc")]);
        spool.append_config(&sample);
        spool.start();
        spools.push(spool);
        backends.push(backend);
    }
    let mut rng = SplitMix(0x5eed);
    let mut web_ids = Vec::new();
    for _ in 0..REQUESTS {
        let mut tids = |n: usize| -> Vec<[u8; 16]> {
            (0..n)
                .map(|_| {
                    let mut t = [0u8; 16];
                    t[..8].copy_from_slice(&rng.next().to_be_bytes());
                    t[8..].copy_from_slice(&rng.next().to_be_bytes());
                    t
                })
                .collect()
        };
        let web = tids(PER_REQUEST);
        let checkout = tids(PER_REQUEST / 5);
        web_ids.extend(web.iter().map(|t| hex(t)));
        let mut ids = SplitMix(rng.next());
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                resource_spans("web", &web, &mut ids),
                resource_spans("checkout", &checkout, &mut ids),
            ],
        };
        let body = req.encode_to_vec();
        // The same request to both: one by gRPC, one by HTTP.
        raw::grpc_export(&spools[0].grpc_endpoint(), body.clone(), None)
            .await
            .unwrap();
        let r = raw::http_post(
            &spools[1].http_endpoint(),
            &[("content-type", "application/x-protobuf")],
            body,
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // A request whose every span is sampled out: answered with success, nothing
    // stored, written to the ledger as discarded.
    let out_ids: Vec<[u8; 16]> = (0..3u8)
        .map(|i| {
            [
                i, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ]
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans("web", &out_ids, &mut SplitMix(1))],
    };
    raw::grpc_export(&spools[0].grpc_endpoint(), req.encode_to_vec(), None)
        .await
        .unwrap();

    let checkout_total = REQUESTS * (PER_REQUEST / 5);
    let kept_a = python_keeps(dir.path(), RATE, &web_ids);
    let want = checkout_total + kept_a.len();
    for b in &backends {
        assert!(
            support::eventually(Duration::from_secs(20), || b.span_count() == want).await,
            "expected {want} spans, got {}",
            b.span_count()
        );
    }
    // Both kept exactly the traces the Python SDK's sampler keeps.
    let (a, b) = (
        trace_ids(&backends[0], "web"),
        trace_ids(&backends[1], "web"),
    );
    assert_eq!(a, b, "two tracespools kept different traces");
    assert_eq!(a, kept_a, "tracespool and TraceIdRatioBased disagree");
    assert_eq!(trace_ids(&backends[0], "checkout").len(), checkout_total);
    // Within 5 standard deviations of the rate (binomial).
    let n = web_ids.len() as f64;
    let sd = (n * RATE * (1.0 - RATE)).sqrt();
    let kept = a.len() as f64;
    assert!(
        (kept - n * RATE).abs() < 5.0 * sd,
        "kept {kept} of {n} at rate {RATE}"
    );

    // Counted, not silently lost: in the metrics and the ledger.
    let text = spools[0].metrics().await;
    let out = web_ids.len() - a.len() + 3;
    assert_eq!(
        metric_value(
            &text,
            r#"tracespool_spans_sampled_out_total{service="other"}"#
        ),
        out as f64
    );
    assert_eq!(
        metric_value(
            &text,
            r#"tracespool_spans_sampled_out_total{service="checkout"}"#
        ),
        0.0
    );
    assert_eq!(
        metric_value(&text, r#"tracespool_sample_rate{service="other"}"#),
        RATE
    );
    assert_eq!(
        metric_value(&text, r#"tracespool_sample_rate{service="checkout"}"#),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"tracespool_receiver_requests_total{protocol="grpc",outcome="accepted"}"#
        ),
        (REQUESTS + 1) as f64
    );
    let ledger = read_all(&spools[0].data.join("ledger")).unwrap();
    let (mut stored, mut sampled, mut discarded) = (0u64, 0u64, 0);
    for e in &ledger {
        match e {
            Entry::Accepted { spans, removed, .. } => {
                stored += *spans as u64;
                sampled += removed.map_or(0, |r| r.sampled);
            }
            Entry::Discarded { spans, removed, .. } => {
                assert_eq!((*spans, removed.sampled), (3, 3));
                sampled += removed.sampled;
                discarded += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        (stored as usize, sampled as usize, discarded),
        (want, out, 1)
    );
    let (code, summary) = spools[0].tool_json(&["audit", "summary"]).await;
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["balanced"], true);
    assert_eq!(summary["removed_by_processors"]["sampled"], out as u64);
    assert_eq!(summary["discarded"]["records"], 1);

    // Everything in the data directory is the owner's alone.
    for spool in &spools {
        let mut paths = walk(&spool.data);
        paths.push(spool.data.clone());
        for p in paths {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{} is mode {:o}",
                p.display(),
                mode & 0o777
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_drop_matching_spans_and_limits_cut_values_and_refuse_oversized_requests() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Http).await;
    let mut spool = Spool::new(
        dir.path(),
        "",
        &[Dest::new("b", &backend.endpoint(), "http")],
    );
    spool.append_config(
        // Limits first: a request too large is refused before anything else looks
        // at it.
        "[[processors]]\ntype = \"limits\"\nmax_attribute_value_length = 12\nmax_spans_per_request = 10\n\
         [[processors]]\ntype = \"filter\"\nname = \"warmup\"\ndrop = [{ span_name_regex = ' op 0\\.[0-9]+$' }]\n",
    );
    spool.start();
    let endpoint = spool.http_endpoint();
    let r = py(
        dir.path(),
        "filtering-limits",
        "http",
        &endpoint,
        "3",
        "4",
        &["--service", "svc"],
    );
    assert!(r.success, "{}", r.stderr);
    assert_eq!(r.acked.len(), 3, "the emptied batch is acknowledged too");
    let kept: Vec<String> = r
        .acked
        .iter()
        .filter(|a| a.batch > 0)
        .flat_map(|a| {
            a.spans
                .iter()
                .map(|s| s["span_id"].as_str().unwrap().to_string())
        })
        .collect();
    let kept: BTreeSet<String> = kept.into_iter().collect();
    support::assert_delivered(&backend, &kept, "filtered").await;
    assert_eq!(backend.span_count(), 8, "batch 0 was filtered out");
    let mut twelve = 0;
    for rec in backend.received() {
        for (_, list) in attribute_lists(&rec.request) {
            for kv in list {
                let mut t = Vec::new();
                if let Some(v) = &kv.value {
                    strings(v, &mut t);
                }
                for s in t {
                    assert!(s.len() <= 12, "{}: {s:?} longer than the limit", kv.key);
                    twelve += usize::from(s.len() == 12);
                }
            }
        }
    }
    for s in backend.spans() {
        assert_eq!(s.attributes["prefix"], "filtering-li");
    }
    // Too many spans in one request: refused whole, nothing stored.
    let big = py(
        dir.path(),
        "too-many",
        "http",
        &endpoint,
        "1",
        "11",
        &["--deadline", "2"],
    );
    assert!(!big.success && big.acked.is_empty());
    let text = spool.metrics().await;
    assert_eq!(
        metric_value(&text, r#"tracespool_spans_filtered_total{filter="warmup"}"#),
        4.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"tracespool_limits_applied_total{limit="values_truncated"}"#
        ),
        // The limits ran before the filter, on all three requests, which carry the
        // same long values; two of them reached the backend.
        (twelve * 3 / 2) as f64
    );
    // The client tried until its deadline; every attempt was refused and counted.
    let refused = metric_value(
        &text,
        r#"tracespool_limits_applied_total{limit="requests_refused"}"#,
    );
    assert!(refused >= 1.0);
    assert_eq!(
        metric_value(
            &text,
            r#"tracespool_receiver_requests_total{protocol="http/protobuf",outcome="too_large"}"#
        ),
        refused
    );
    let too_large = read_all(&spool.data.join("ledger"))
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Entry::Rejected { reason, spans, .. } if reason == "too_large" && *spans == 11))
        .count();
    assert_eq!(too_large as f64, refused);
    assert_eq!(backend.span_count(), 8);
    let ledger = read_all(&spool.data.join("ledger")).unwrap();
    let filtered: u64 = ledger
        .iter()
        .map(|e| match e {
            Entry::Discarded { removed, .. } => removed.filtered,
            Entry::Accepted { removed, .. } => removed.map_or(0, |r| r.filtered),
            _ => 0,
        })
        .sum();
    assert_eq!(filtered, 4);
}
