//! The Python SDK client (`tests/clients/otlp_client.py`) as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A batch the exporter acknowledged.
#[derive(Clone, Debug)]
pub struct Acked {
    pub batch: u64,
    pub key: Option<String>,
    pub spans: Vec<serde_json::Value>,
}

pub struct PyClient {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

pub struct PyResult {
    pub acked: Vec<Acked>,
    pub summary: serde_json::Value,
    pub success: bool,
    pub stderr: String,
}

impl PyResult {
    pub fn span_ids(&self) -> Vec<String> {
        self.acked
            .iter()
            .flat_map(|a| {
                a.spans
                    .iter()
                    .map(|s| s["span_id"].as_str().unwrap().to_string())
            })
            .collect()
    }

    pub fn spans(&self) -> Vec<serde_json::Value> {
        self.acked.iter().flat_map(|a| a.spans.clone()).collect()
    }
}

/// The interpreter the tests run (`TRACESPOOL_PYTHON`, default python3).
pub fn python() -> String {
    std::env::var("TRACESPOOL_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otlp_client.py")
}

/// Starts the client; `args` are passed through (see the script's --help).
pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> PyClient {
    let out = dir.join(format!("{name}.out.jsonl"));
    let err = dir.join(format!("{name}.err.log"));
    let child = Command::new(python())
        .arg(script())
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        // These would override the CA file a test passes (requests prefers them).
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .env_remove("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("run python3 (the tests need the OpenTelemetry Python SDK: pip install -r tests/requirements.txt)");
    PyClient { child, out, err }
}

impl PyClient {
    /// What the client (its exporters) has logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn wait(mut self) -> PyResult {
        let status = self.child.wait().unwrap();
        let stderr = std::fs::read_to_string(&self.err).unwrap_or_default();
        if status.code() == Some(3) {
            panic!("{stderr}");
        }
        let mut acked = Vec::new();
        let mut summary = serde_json::Value::Null;
        for line in std::fs::read_to_string(&self.out).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v.get("done").is_some() {
                summary = v;
            } else {
                acked.push(Acked {
                    batch: v["batch"].as_u64().unwrap(),
                    key: v["key"].as_str().map(str::to_string),
                    spans: v["spans"].as_array().unwrap().clone(),
                });
            }
        }
        PyResult {
            acked,
            summary,
            success: status.success(),
            stderr,
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
