//! The official OpenTelemetry JavaScript SDK exporters, installed by the tests
//! themselves (like the Python venv): `tests/clients/node/package-lock.json`
//! pinned, `npm ci` into `target/node-interop` once (every test process waits on a
//! lock), made again when the lock file changes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory with `node_modules` and `send.mjs`, or why there is none. Where
/// `TRACESPOOL_REQUIRE_NODE` is set, an absent node or npm is an error too.
pub fn ensure() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = workspace.join("tests/clients/node");
    let dir = workspace.join("target/node-interop");
    for tool in ["node", "npm"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Err(format!("{tool} is not installed (Debian: nodejs, npm)"));
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(workspace.join("target/node-interop.lock"))
        .map_err(|e| e.to_string())?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", dir.display()))?;
    let wanted = std::fs::read_to_string(src.join("package-lock.json"))
        .map_err(|e| format!("tests/clients/node/package-lock.json: {e}"))?;
    let marker = dir.join(".tracespool-lock");
    for f in ["package.json", "package-lock.json", "send.mjs"] {
        std::fs::copy(src.join(f), dir.join(f)).map_err(|e| format!("copying {f}: {e}"))?;
    }
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    eprintln!(
        "installing the OpenTelemetry JavaScript SDK into {} (once)",
        dir.display()
    );
    super::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
        "npm ci",
    )?;
    std::fs::write(&marker, &wanted).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// `None` (after printing `SKIPPED`) when node is truly absent here; panics where
/// it is required.
pub fn available(test: &str) -> Option<PathBuf> {
    match ensure() {
        Ok(dir) => Some(dir),
        Err(e) if std::env::var("TRACESPOOL_REQUIRE_NODE").is_ok() => {
            panic!("{test}: the JavaScript SDK is required here: {e}")
        }
        Err(e) => {
            println!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// Runs `send.mjs` with one exporter (and a quirk: one span with that value, see
/// `send.mjs`); returns the SDK's own protobuf encoding of the spans it sent (the
/// exporter reported success), or its error output.
pub fn send(
    dir: &Path,
    exporter: &str,
    endpoint: &str,
    compression: &str,
    quirk: Option<&str>,
) -> Result<Vec<u8>, String> {
    let name = format!("{exporter}-{compression}-{}", quirk.unwrap_or("all"));
    let out_file = dir.join(format!("sdk-{name}.pb"));
    super::run(
        Command::new("node")
            .arg(dir.join("send.mjs"))
            .args([exporter, endpoint, compression])
            .arg(&out_file)
            .args(quirk)
            .current_dir(dir),
        &format!("node send.mjs {name}"),
    )?;
    std::fs::read(&out_file).map_err(|e| format!("{}: {e}", out_file.display()))
}
