//! The Python SDK client (`tests/clients/otlp_client.py`) as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A batch the exporter acknowledged.
#[derive(Clone, Debug)]
pub struct Acked {
    pub batch: u64,
    pub key: Option<String>,
    /// When the client had the answer (Unix seconds).
    pub t: f64,
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

/// The interpreter the tests run: `TRACESPOOL_PYTHON` if set, else the tests' own
/// virtual environment under `target/test-venv`, created on first use with the
/// pinned `tests/requirements.txt` (a stock Debian python refuses `pip install`
/// outside one).
pub fn python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Ok(p) = std::env::var("TRACESPOOL_PYTHON") {
                return p;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            match ensure_venv(root) {
                Ok(p) => p.display().to_string(),
                Err(e) => panic!(
                    "cannot set up the OpenTelemetry Python SDK for the tests in {}/target/test-venv: {e}\n\
                     (needs python3 with the venv module — Debian: python3-venv — and PyPI)",
                    root.display()
                ),
            }
        })
        .clone()
}

/// Creates (once; every test process waits on a lock) `target/test-venv` with the
/// pinned requirements, and returns its interpreter. A venv made for another
/// `requirements.txt` is made again.
pub fn ensure_venv(workspace: &Path) -> Result<PathBuf, String> {
    let target = workspace.join("target");
    let venv = target.join("test-venv");
    let python = venv.join("bin/python");
    let requirements = workspace.join("tests/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let marker = venv.join(".tracespool-requirements");
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(target.join("test-venv.lock")).map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| format!("locking the venv: {e}"))?;
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) && python.exists()
    {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let run = super::run;
    eprintln!("setting up {} (once)", venv.display());
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
        "pip install -r tests/requirements.txt",
    )?;
    std::fs::write(&marker, &wanted).map_err(|e| e.to_string())?;
    Ok(python)
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
        .expect("run the Python SDK client");
    PyClient { child, out, err }
}

impl PyClient {
    /// What the client (its exporters) has logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn wait(self) -> PyResult {
        self.wait_for(std::time::Duration::from_secs(24 * 3600))
    }

    /// [`PyClient::wait`], killing the client (and failing) if it takes longer.
    pub fn wait_for(mut self, limit: std::time::Duration) -> PyResult {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the Python client did not finish within {limit:?}:\n{}",
                    std::fs::read_to_string(&self.err).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
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
                    t: v["t"].as_f64().unwrap_or(0.0),
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
