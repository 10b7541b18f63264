//! A test OTLP backend (the receiving end): gRPC or HTTP, recording every request it
//! accepts, with switchable failure modes to play an unreliable uplink.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracespool::otlp::codec::{ExportFuture, ExportHandler, ExportService};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Grpc,
    Http,
}

/// How the backend answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// gRPC UNAVAILABLE / HTTP 503.
    Unavailable,
    /// Accept the connection and the request, never answer.
    BlackHole,
    /// gRPC UNAUTHENTICATED / HTTP 401.
    Unauthenticated,
    /// Accept, but report this many spans rejected (partial success).
    PartialReject(i64),
    /// Answer every n-th request that arrives UNAVAILABLE / 503 (retried), accept
    /// the others.
    FailEvery(usize),
}

/// One accepted request.
#[derive(Clone, Debug)]
pub struct Received {
    pub key: Option<String>,
    pub request: ExportTraceServiceRequest,
}

/// A span as the backend received it, flattened for comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRec {
    pub trace_id: String,
    pub span_id: String,
    pub name: String,
    pub attributes: serde_json::Value,
    pub resource: serde_json::Value,
    pub key: Option<String>,
}

#[derive(Default)]
struct State {
    mode: Mutex<Option<Mode>>,
    received: Mutex<Vec<Received>>,
    /// Every key of every request that arrived, answered or not.
    attempts: Mutex<Vec<Option<String>>>,
    /// Requests with a span of one of these names get INVALID_ARGUMENT / 400.
    poison: Mutex<Vec<String>>,
    /// Bytes of every request body that arrived, answered or not.
    attempt_bytes: Mutex<u64>,
    /// Every request body as it came over the wire (before decompression).
    wire: Mutex<Vec<WireBody>>,
    /// Lean: keep only [`Arrival`]s (for backlogs of gigabytes).
    lean: std::sync::atomic::AtomicBool,
    arrivals: Mutex<Vec<Arrival>>,
}

/// What a lean backend keeps of an accepted request.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub key: Option<String>,
    pub at: std::time::Instant,
    pub span_ids: Vec<[u8; 8]>,
}

/// A request body as it came over the wire: its encoding (`Content-Encoding`, or
/// `grpc-encoding` for a gRPC message sent with the compressed flag) and bytes
/// (for gRPC, the message without its 5-byte prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireBody {
    pub encoding: String,
    pub body: Vec<u8>,
    /// When it arrived (all of it).
    pub at: std::time::Instant,
}

pub struct Backend {
    pub kind: Kind,
    pub addr: SocketAddr,
    state: Arc<State>,
    server: Option<JoinHandle<()>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Backend {
    pub async fn start(kind: Kind) -> Self {
        Self::start_with(kind, None).await
    }

    /// A backend behind TLS (the acceptor holds its certificate, and a client CA
    /// when it requires client certificates).
    pub async fn start_tls(kind: Kind, tls: tokio_rustls::TlsAcceptor) -> Self {
        Self::start_with(kind, Some(tls)).await
    }

    /// A backend serving on a listener bound elsewhere (in a network namespace).
    pub fn start_on(kind: Kind, listener: std::net::TcpListener) -> Self {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.mode.lock().unwrap() = Some(Mode::Accept);
        let mut b = Self {
            kind,
            addr,
            state,
            server: None,
            tls: None,
        };
        b.serve(listener);
        b
    }

    async fn start_with(kind: Kind, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.mode.lock().unwrap() = Some(Mode::Accept);
        let mut b = Self {
            kind,
            addr,
            state,
            server: None,
            tls,
        };
        b.serve(listener);
        b
    }

    /// The endpoint a tracespool destination uses.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.kind {
            Kind::Grpc => format!("{scheme}://{}", self.addr),
            Kind::Http => format!("{scheme}://{}/v1/traces", self.addr),
        }
    }

    pub fn protocol(&self) -> &'static str {
        match self.kind {
            Kind::Grpc => "grpc",
            Kind::Http => "http",
        }
    }

    fn serve(&mut self, listener: TcpListener) {
        let state = self.state.clone();
        let router: axum::Router = match self.kind {
            Kind::Grpc => {
                tonic::service::Routes::new(ExportService::new(GrpcSink(state.clone()), 256 << 20))
                    .prepare()
                    .into_axum_router()
            }
            Kind::Http => axum::Router::new()
                .route("/v1/traces", axum::routing::post(http_sink))
                .with_state(state.clone()),
        };
        let kind = self.kind;
        let router = router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let state = state.clone();
                async move { record_wire(&state, kind, req, next).await }
            },
        ));
        // Our own accept loop, so stopping the server also closes every connection
        // it accepted (a plain abort of `axum::serve` would leave them serving).
        let tls = self.tls.clone();
        self.server = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = hyper_util::service::TowerToHyperService::new(router.clone());
                let tls = tls.clone();
                connections.spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }

    /// Requests with a span named `name` are refused as invalid (permanently).
    pub fn poison(&self, name: &str) {
        self.state.poison.lock().unwrap().push(name.to_string());
    }

    /// Accepts poisoned requests again.
    pub fn clear_poison(&self) {
        self.state.poison.lock().unwrap().clear();
    }

    /// Bytes of every request body that arrived, answered or not.
    pub fn attempt_bytes(&self) -> u64 {
        *self.state.attempt_bytes.lock().unwrap()
    }

    /// Closes the port: connections are refused until [`Backend::restart`].
    pub fn stop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                self.serve(l);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("cannot listen on {} again", self.addr);
    }

    /// Every request body as it came over the wire, in arrival order.
    /// Keeps only an [`Arrival`] per accepted request from now on: no bodies, no
    /// decoded requests ([`Backend::received`] and [`Backend::wire`] stay empty).
    pub fn lean(&self) {
        self.state
            .lean
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.arrivals.lock().unwrap().clone()
    }

    /// When the (lean) request holding the span `span_id` (hex) arrived.
    pub fn arrival_of(&self, span_id: &str) -> Option<std::time::Instant> {
        let id: Vec<u8> = (0..8)
            .map(|i| u8::from_str_radix(span_id.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        self.state
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.span_ids.iter().any(|s| s[..] == id[..]))
            .map(|a| a.at)
    }

    pub fn wire(&self) -> Vec<WireBody> {
        self.state.wire.lock().unwrap().clone()
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn attempt_keys(&self) -> Vec<Option<String>> {
        self.state.attempts.lock().unwrap().clone()
    }

    pub fn spans(&self) -> Vec<SpanRec> {
        let mut out = Vec::new();
        for r in self.received() {
            for rs in &r.request.resource_spans {
                let resource = attrs(
                    rs.resource
                        .as_ref()
                        .map(|r| &r.attributes[..])
                        .unwrap_or(&[]),
                );
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(SpanRec {
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            name: s.name.clone(),
                            attributes: attrs(&s.attributes),
                            resource: resource.clone(),
                            key: r.key.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    pub fn span_count(&self) -> usize {
        self.received()
            .iter()
            .map(|r| {
                r.request
                    .resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .map(|s| s.spans.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Requests per idempotency key, and whether every key always came with the
    /// same spans: a key naming two different batches is the one thing a dedup tier
    /// cannot survive. Returns (keys, redelivered requests, keys naming two batches).
    pub fn key_report(&self) -> (usize, usize, Vec<String>) {
        let mut by_key: BTreeMap<String, (Vec<String>, usize)> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for r in self.received() {
            let Some(key) = r.key.clone() else { continue };
            let mut ids: Vec<String> = r
                .request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .map(|s| hex(&s.span_id))
                .collect();
            ids.sort();
            let e = by_key
                .entry(key.clone())
                .or_insert_with(|| (ids.clone(), 0));
            if e.0 != ids && !conflicts.contains(&key) {
                conflicts.push(key);
            }
            e.1 += 1;
        }
        let redelivered = by_key.values().map(|(_, n)| n - 1).sum();
        (by_key.len(), redelivered, conflicts)
    }

    /// How many times each span id arrived.
    pub fn span_id_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.spans() {
            *m.entry(s.span_id).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value(v: &AnyValue) -> serde_json::Value {
    use serde_json::json;
    match &v.value {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            serde_json::Value::Array(a.values.iter().map(value).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => attrs(&kv.values),
        Some(any_value::Value::BytesValue(b)) => json!(hex(b)),
        _ => serde_json::Value::Null,
    }
}

pub fn attrs(kvs: &[KeyValue]) -> serde_json::Value {
    serde_json::Value::Object(
        kvs.iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    kv.value.as_ref().map(value).unwrap_or_default(),
                )
            })
            .collect(),
    )
}

/// Records the body as it arrived, then hands the request on unchanged.
async fn record_wire(
    state: &State,
    kind: Kind,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 512 << 20)
        .await
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity")
            .to_string()
    };
    let wire = match kind {
        Kind::Http => WireBody {
            encoding: header("content-encoding"),
            body: bytes.to_vec(),
            at: std::time::Instant::now(),
        },
        Kind::Grpc => WireBody {
            encoding: if bytes.first() == Some(&1) {
                header("grpc-encoding")
            } else {
                "identity".into()
            },
            body: bytes.get(5..).unwrap_or_default().to_vec(),
            at: std::time::Instant::now(),
        },
    };
    if !state.lean.load(std::sync::atomic::Ordering::Relaxed) {
        state.wire.lock().unwrap().push(wire);
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

enum Answer {
    Ok(Vec<u8>),
    Unavailable,
    Unauthenticated,
    Invalid(String),
    Never,
}

fn decide(state: &State, key: Option<String>, body: &[u8]) -> Answer {
    state.attempts.lock().unwrap().push(key.clone());
    *state.attempt_bytes.lock().unwrap() += body.len() as u64;
    let mode = state.mode.lock().unwrap().clone().unwrap_or(Mode::Accept);
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return Answer::Invalid(format!("backend cannot decode: {e}")),
    };
    let arrived = state.attempts.lock().unwrap().len();
    match mode {
        Mode::Unavailable => return Answer::Unavailable,
        Mode::FailEvery(n) if arrived.is_multiple_of(n) => return Answer::Unavailable,
        Mode::BlackHole => return Answer::Never,
        Mode::Unauthenticated => return Answer::Unauthenticated,
        _ => {}
    }
    let poison = state.poison.lock().unwrap().clone();
    let poisoned = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .any(|s| poison.contains(&s.name));
    if poisoned {
        return Answer::Invalid("poisoned span name".into());
    }
    if state.lean.load(std::sync::atomic::Ordering::Relaxed) {
        let span_ids = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| {
                let mut id = [0u8; 8];
                let n = s.span_id.len().min(8);
                id[..n].copy_from_slice(&s.span_id[..n]);
                id
            })
            .collect();
        state.arrivals.lock().unwrap().push(Arrival {
            key,
            at: std::time::Instant::now(),
            span_ids,
        });
    } else {
        state
            .received
            .lock()
            .unwrap()
            .push(Received { key, request });
    }
    match mode {
        Mode::PartialReject(n) => Answer::Ok(tracespool::otlp::partial_success_response(
            n,
            "some spans refused",
        )),
        _ => Answer::Ok(Vec::new()),
    }
}

#[derive(Clone)]
struct GrpcSink(Arc<State>);

impl ExportHandler for GrpcSink {
    fn export(&self, req: tonic::Request<Bytes>) -> ExportFuture {
        let state = self.0.clone();
        Box::pin(async move {
            let key = req
                .metadata()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match decide(&state, key, req.get_ref()) {
                Answer::Ok(body) => Ok(tonic::Response::new(Bytes::from(body))),
                Answer::Unavailable => Err(tonic::Status::unavailable("backend down")),
                Answer::Unauthenticated => Err(tonic::Status::unauthenticated("bad api key")),
                Answer::Invalid(m) => Err(tonic::Status::invalid_argument(m)),
                Answer::Never => std::future::pending().await,
            }
        })
    }
}

async fn http_sink(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        if flate2::read::MultiGzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return (http::StatusCode::BAD_REQUEST, "bad gzip").into_response();
        }
        Bytes::from(out)
    } else if headers.get("content-encoding").is_some_and(|v| v == "zstd") {
        match zstd::stream::decode_all(&body[..]) {
            Ok(out) => Bytes::from(out),
            Err(_) => return (http::StatusCode::BAD_REQUEST, "bad zstd").into_response(),
        }
    } else {
        body
    };
    match decide(&state, key, &body) {
        Answer::Ok(b) => {
            ([(http::header::CONTENT_TYPE, "application/x-protobuf")], b).into_response()
        }
        Answer::Unavailable => (http::StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        Answer::Unauthenticated => (http::StatusCode::UNAUTHORIZED, "bad api key").into_response(),
        Answer::Invalid(m) => (http::StatusCode::BAD_REQUEST, m).into_response(),
        Answer::Never => std::future::pending().await,
    }
}
