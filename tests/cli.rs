//! The command line: `check-config`, configuration errors, and `run` with no config
//! file at all (spools to ./data, standard ports, OTEL_* destination).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::backend::{Backend, Kind};

fn tracespool() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracespool"));
    c.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("TRACESPOOL_CONFIG");
    c
}

#[test]
fn help_names_every_command() {
    let out = tracespool().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "run",
        "check-config",
        "status",
        "wal",
        "audit",
        "replay",
        "dead-letter",
        "--config",
        "--data-dir",
        "--json",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

#[test]
fn tools_on_a_directory_without_data_exit_2_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let out = tracespool()
        .arg("--data-dir")
        .arg(&missing)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no data directory at") && err.contains("nothing-here"),
        "{err}"
    );
    // A directory no forwarder ran in: status says so; the others find nothing.
    let out = tracespool()
        .arg("--data-dir")
        .arg(dir.path())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no forwarder has run"));
    let out = tracespool()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["replay", "--from", "1", "--endpoint", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instance-id"));
    let out = tracespool()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["audit", "show", "--trace-id", "xyz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a trace id"));
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[storage]\nmax_bytes = \"1GiB\"\n\n[[destinations]]\nname = \"central\"\nendpoint = \"http://collector:4317\"\nheaders = { \"x-api-key\" = \"hunter2\" }\n",
    )
    .unwrap();
    let out = tracespool()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("TRACESPOOL__STORAGE__FSYNC", "interval")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_bytes = \"1GiB\""), "{text}");
    assert!(text.contains("fsync = \"interval\""), "{text}");
    assert!(text.contains("name = \"central\""), "{text}");
    assert!(!text.contains("hunter2"), "secret printed:\n{text}");
}

#[test]
fn a_bad_configuration_exits_2_with_one_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[storage]\nmax_bytes = \"lots\"\n", "storage.max_bytes"),
        ("[storage]\nwhen_full = \"panic\"\n", "storage.when_full"),
        ("[storage]\nmaxbytes = 1\n", "maxbytes"),
        (
            "[[destinations]]\nname = \"x\"\nendpoint = \"ftp://nope\"\n",
            "destinations[0].endpoint",
        ),
        (
            "[[destinations]]\nname = \"x\"\nendpoint = \"http://a:1\"\nmax_in_flight = 0\n",
            "destinations[0].max_in_flight",
        ),
        ("this is not toml", "TOML"),
    ] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        for cmd in ["check-config", "run"] {
            let out = tracespool()
                .arg(cmd)
                .arg("--config")
                .arg(&cfg)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{cmd} with {text:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(key), "{cmd} with {text:?}: {err}");
            assert_eq!(
                err.trim()
                    .lines()
                    .filter(|l| l.starts_with("tracespool:"))
                    .count(),
                1,
                "{err}"
            );
        }
    }
    let out = tracespool()
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = tracespool()
        .arg("check-config")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
}

fn ports_free() -> bool {
    std::net::TcpListener::bind("127.0.0.1:4317").is_ok()
        && std::net::TcpListener::bind("127.0.0.1:4318").is_ok()
}

/// `tracespool run` with no config file: ./data, 127.0.0.1:4317 and :4318, and the
/// destination from OTEL_EXPORTER_OTLP_ENDPOINT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_a_config_file_uses_the_standard_ports_and_otel_variables() {
    if !ports_free() {
        println!("SKIPPED: 127.0.0.1:4317 or :4318 is in use on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(Kind::Grpc).await;
    let log = dir.path().join("log");
    let mut child = tracespool()
        .arg("run")
        .current_dir(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", backend.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = support::eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("tracespool running")
    })
    .await;
    assert!(started, "{}", std::fs::read_to_string(&log).unwrap());
    let (body, ids) = support::raw::request("noconf", 0, 2);
    support::raw::grpc_export("http://127.0.0.1:4317", body, None)
        .await
        .unwrap();
    assert!(support::eventually(Duration::from_secs(20), || backend.span_count() == 2).await);
    assert!(backend.span_id_counts().contains_key(&ids[0]));
    assert!(dir.path().join("data/wal").is_dir(), "spools to ./data");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_destination_it_spools_and_says_nothing_is_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = support::spool::Spool::new(dir.path(), "", &[]);
    spool.start();
    let warn = spool
        .log_lines()
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("NOTHING IS BEING FORWARDED"))
        })
        .expect("a warning that nothing is forwarded");
    assert_eq!(warn["level"], "WARN");
    let (body, _) = support::raw::request("spool", 0, 2);
    support::raw::grpc_export(&spool.grpc_endpoint(), body, None)
        .await
        .unwrap();
    let (status, _) = spool.terminate();
    assert!(status.success());
    let segments: u64 = std::fs::read_dir(spool.data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(segments > 64, "the batch was spooled");
}

#[test]
fn a_log_written_by_a_newer_format_refuses_the_start_with_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let wal = data.join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    // A segment header of format version 9 (magic, version, length, first seq, ...).
    let mut h = [0u8; 64];
    h[0..8].copy_from_slice(b"TSPOOLWL");
    h[8..12].copy_from_slice(&9u32.to_le_bytes());
    h[12..16].copy_from_slice(&64u32.to_le_bytes());
    h[16..24].copy_from_slice(&1u64.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    let seg = wal.join("00000000000000000001.seg");
    std::fs::write(&seg, h).unwrap();
    let out = tracespool()
        .arg("--data-dir")
        .arg(&data)
        .arg("run")
        .env("TRACESPOOL__RECEIVERS__OTLP__GRPC", "127.0.0.1:0")
        .env("TRACESPOOL__RECEIVERS__OTLP__HTTP", "127.0.0.1:0")
        .env("TRACESPOOL__ADMIN__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("00000000000000000001.seg") && err.contains("version 9"),
        "{err}"
    );
    // Nothing was touched.
    assert_eq!(std::fs::read(&seg).unwrap(), h);
}

#[test]
fn a_port_already_taken_fails_the_start_with_exit_1_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = tracespool()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("run")
        .env("TRACESPOOL__RECEIVERS__OTLP__GRPC", addr.to_string())
        .env("TRACESPOOL__RECEIVERS__OTLP__HTTP", "127.0.0.1:0")
        .env("TRACESPOOL__ADMIN__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // A taken port may be free at the next start: 1, not the 2 of a refusal.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    drop(taken);
}
