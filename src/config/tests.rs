use std::collections::BTreeMap;
use std::io::Write;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn defaults_without_a_file_spool_to_data_and_listen_on_loopback() {
    let cfg = Config::load(None, &env(&[])).unwrap();
    assert_eq!(cfg.storage.dir, PathBuf::from("./data"));
    assert_eq!(cfg.receivers.otlp.grpc.to_string(), "127.0.0.1:4317");
    assert_eq!(cfg.receivers.otlp.http.to_string(), "127.0.0.1:4318");
    assert_eq!(cfg.storage.max_bytes, ByteSize(4 << 30));
    assert_eq!(cfg.storage.fsync, FsyncMode::Always);
    assert!(cfg.destinations.is_empty());
}

#[test]
fn a_file_and_environment_overrides_combine() {
    let f = file(
        r#"
        [storage]
        dir = "/var/lib/tracespool"
        max_bytes = "8GiB"
        when_full = "drop_oldest"

        [[destinations]]
        name = "central"
        endpoint = "http://collector:4318"
        protocol = "http"
        headers = { "x-api-key" = "secret" }
        retry.initial_backoff = "1s"
        "#,
    );
    let cfg = Config::load(
        Some(f.path()),
        &env(&[
            ("TRACESPOOL__STORAGE__MAX_BYTES", "2GiB"),
            ("TRACESPOOL__RECEIVERS__OTLP__GRPC", "0.0.0.0:14317"),
            ("TRACESPOOL__DEDUP__MAX_KEYS", "10"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.storage.dir, PathBuf::from("/var/lib/tracespool"));
    assert_eq!(cfg.storage.max_bytes, ByteSize(2 << 30));
    assert_eq!(cfg.storage.when_full, WhenFull::DropOldest);
    assert_eq!(cfg.receivers.otlp.grpc.to_string(), "0.0.0.0:14317");
    assert_eq!(cfg.dedup.max_keys, 10);
    assert_eq!(
        cfg.destinations.len(),
        1,
        "OTEL variables only apply without destinations"
    );
    let d = &cfg.destinations[0];
    assert_eq!(d.retry.initial_backoff.0, Duration::from_secs(1));
    assert_eq!(
        d.export_uri().to_string(),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(d.max_in_flight, 8);
}

#[test]
fn otel_variables_make_a_destination_when_none_is_configured() {
    let cfg = Config::load(
        None,
        &env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.destinations.len(), 1);
    assert_eq!(cfg.destinations[0].protocol, Protocol::Grpc);
    assert_eq!(
        cfg.destinations[0].export_uri().to_string(),
        "http://collector:4317/"
    );
}

fn load_err(text: &str, vars: &[(&str, &str)]) -> String {
    let f = file(text);
    Config::load(Some(f.path()), &env(vars)).unwrap_err().0
}

#[test]
fn bad_configs_name_the_key_and_the_problem() {
    let e = load_err("[storage]\nmax_bytes = \"4XB\"\n", &[]);
    assert!(
        e.contains("storage.max_bytes") && e.contains("unknown unit"),
        "{e}"
    );
    let e = load_err("[storage]\nmax_byte = \"4GiB\"\n", &[]);
    assert!(e.contains("max_byte") && e.contains("unknown field"), "{e}");
    let e = load_err("[storage]\nfsync = \"sometimes\"\n", &[]);
    assert!(
        e.contains("storage.fsync") && e.contains("sometimes"),
        "{e}"
    );
    let e = load_err("[receivers.otlp]\ngrpc = \"localhost\"\n", &[]);
    assert!(e.contains("receivers.otlp.grpc"), "{e}");
    let e = load_err(
        "[[destinations]]\nname = \"a\"\nendpoint = \"ftp://x\"\n",
        &[],
    );
    assert!(
        e.contains("destinations[0].endpoint") && e.contains("http://"),
        "{e}"
    );
    let e = load_err(
        "[[destinations]]\nname = \"a\"\nendpoint = \"http://x:1\"\n[[destinations]]\nname = \"a\"\nendpoint = \"http://y:1\"\n",
        &[],
    );
    assert!(
        e.contains("destinations[1].name") && e.contains("used by another"),
        "{e}"
    );
    let e = load_err(
        "[storage]\nsegment_bytes = \"1MiB\"\nmax_bytes = \"512KiB\"\n",
        &[],
    );
    assert!(e.contains("storage.max_bytes"), "{e}");
    let e = load_err("", &[("TRACESPOOL__STORAGE__FSYNC_INTERVAL", "5")]);
    assert!(
        e.contains("storage.fsync_interval") && e.contains("give a unit"),
        "{e}"
    );
    let e = Config::load(Some(std::path::Path::new("/nonexistent/t.toml")), &env(&[]))
        .unwrap_err()
        .0;
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn effective_config_hides_header_values_and_reloads_to_the_same() {
    let f = file(
        r#"
        [[destinations]]
        name = "central"
        endpoint = "http://collector:4317"
        headers = { "x-api-key" = "hunter2" }
        "#,
    );
    let cfg = Config::load(Some(f.path()), &env(&[])).unwrap();
    let shown = cfg.to_redacted_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    // What is printed is itself a valid configuration with the same settings.
    let again = Config::load(Some(file(&shown).path()), &env(&[])).unwrap();
    assert_eq!(again.to_redacted_toml(), shown);
    assert_eq!(again.storage.max_bytes, cfg.storage.max_bytes);
    assert_eq!(again.destinations[0].timeout, cfg.destinations[0].timeout);
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn example_configs_are_valid() {
    for name in ["tracespool.toml", "edge.toml", "gateway.toml"] {
        Config::load(Some(&example(name)), &env(&[])).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let edge = Config::load(Some(&example("edge.toml")), &env(&[])).unwrap();
    assert_eq!(edge.storage.when_full, WhenFull::DropOldest);
    assert_eq!(edge.destinations[0].name, "gateway");
}

#[test]
fn the_reference_config_documents_every_key_with_its_default() {
    let documented = Config::load(Some(&example("tracespool.toml")), &env(&[])).unwrap();
    let defaults = Config::load(None, &env(&[])).unwrap();
    assert_eq!(
        documented.to_redacted_toml(),
        defaults.to_redacted_toml(),
        "a default differs from config/tracespool.toml"
    );
    let text = std::fs::read_to_string(example("tracespool.toml")).unwrap();
    // Every key of every section, and of a destination, appears in the file.
    let mut with_dest = defaults.clone();
    with_dest.destinations.push(DestinationConfig {
        name: "x".into(),
        endpoint: Some(Endpoint::parse("http://x:1").unwrap()),
        tls: DestinationTlsConfig {
            ca_file: Some("/ca.pem".into()),
            cert_file: Some("/c.pem".into()),
            key_file: Some("/k.pem".into()),
            server_name: Some("x".into()),
            insecure_skip_verify: false,
        },
        ..Default::default()
    });
    // A JetStream destination and source, with every key.
    let credentials = NatsCredentials {
        token_file: Some("/t".into()),
        token_env: Some("T".into()),
        user: Some("u".into()),
        password_file: Some("/p".into()),
        password_env: Some("P".into()),
        nkey_seed_file: Some("/s".into()),
        nkey_seed_env: Some("S".into()),
        creds_file: Some("/c.creds".into()),
        resolved: None,
    };
    with_dest.destinations.push(DestinationConfig {
        name: "js".into(),
        protocol: Protocol::Jetstream,
        urls: vec!["nats://x:4222".into()],
        stream: "S".into(),
        subject: "s.{tenant}".into(),
        tenant: Some("t".into()),
        create_stream: true,
        stream_config: StreamSettings {
            replicas: 1,
            ..Default::default()
        },
        credentials: credentials.clone(),
        ..Default::default()
    });
    with_dest.receivers.jetstream = Some(JetStreamReceiverConfig {
        urls: vec!["nats://x:4222".into()],
        stream: "S".into(),
        filter_subject: "s.>".into(),
        credentials,
        tls: DestinationTlsConfig {
            ca_file: Some("/ca.pem".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    // And every optional table: receiver TLS, a token, each processor.
    with_dest.receivers.otlp.tls = Some(ReceiverTlsConfig {
        cert_file: "/c.pem".into(),
        key_file: "/k.pem".into(),
        client_ca_file: Some("/ca.pem".into()),
        reload_interval: Dur(Duration::from_secs(10)),
    });
    with_dest.receivers.otlp.auth.tokens.push(TokenConfig {
        tenant: "t".into(),
        token: Some("x".into()),
        token_file: Some("/t".into()),
        token_env: Some("T".into()),
        resolved: String::new(),
    });
    let mut redact = processors::RedactConfig {
        hash_key: Some("k".into()),
        hash_key_file: Some("/k".into()),
        hash_key_env: Some("K".into()),
        ..Default::default()
    };
    redact.custom_patterns.push(processors::CustomPattern {
        name: "n".into(),
        regex: "r".into(),
    });
    let mut filter = processors::FilterConfig::default();
    filter.drop.push(processors::DropRule {
        span_name: Some("s".into()),
        span_name_regex: Some("s".into()),
        service: Some("s".into()),
        attributes: [("a".to_string(), "b".to_string())].into(),
        attributes_regex: [("a".to_string(), "b".into())].into(),
    });
    let mut sample = processors::SampleConfig::default();
    sample.service_rates.insert("s".into(), 0.5);
    with_dest.processors = vec![
        ProcessorConfig::Redact(redact),
        ProcessorConfig::Sample(sample),
        ProcessorConfig::Filter(filter),
        ProcessorConfig::Limits(Default::default()),
    ];
    let mut table = String::new();
    for line in with_dest.to_redacted_toml().lines() {
        if line.starts_with('[') {
            table = line.trim_matches(['[', ']']).to_string();
        }
        // Maps whose keys are data (service names, attribute keys), not settings.
        let data = ["service_rates", "attributes", "attributes_regex", "headers"];
        if data.iter().any(|d| table.ends_with(&format!(".{d}"))) {
            continue;
        }
        if let Some((key, _)) = line.split_once(" = ") {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("retry.{key} ="))
                    || l.starts_with(&format!("tls.{key} ="))
            });
            assert!(
                documented,
                "key {key:?} is not documented in config/tracespool.toml"
            );
        }
    }
}

#[test]
fn secrets_come_from_the_file_a_file_or_a_variable_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token-0123456789abcdef\n").unwrap();
    let header_file = dir.path().join("auth");
    std::fs::write(&header_file, "Bearer header-file-secret\n").unwrap();
    let f = file(&format!(
        r#"
        [[receivers.otlp.auth.tokens]]
        tenant = "a"
        token = "inline-token-0123456789abcdef"
        [[receivers.otlp.auth.tokens]]
        tenant = "b"
        token_file = {token_file:?}
        [[receivers.otlp.auth.tokens]]
        tenant = "c"
        token_env = "TOKEN_C"

        [[destinations]]
        name = "central"
        endpoint = "http://collector:4317"
        header_files = {{ "authorization" = {header_file:?} }}
        header_env = {{ "x-api-key" = "API_KEY" }}

        [[processors]]
        type = "redact"
        action = "hash"
        hash_key_env = "HASH_KEY"
        "#
    ));
    let vars = env(&[
        ("TOKEN_C", "env-token-0123456789abcdef"),
        ("API_KEY", "env-api-key-secret"),
        ("HASH_KEY", "env-hash-key-0123456789"),
    ]);
    let cfg = Config::load(Some(f.path()), &vars).unwrap();
    let tokens: Vec<&str> = cfg
        .receivers
        .otlp
        .auth
        .tokens
        .iter()
        .map(|t| t.resolved.as_str())
        .collect();
    assert_eq!(
        tokens,
        [
            "inline-token-0123456789abcdef",
            "file-token-0123456789abcdef",
            "env-token-0123456789abcdef"
        ]
    );
    let h = &cfg.destinations[0].headers;
    assert_eq!(h["authorization"], "Bearer header-file-secret");
    assert_eq!(h["x-api-key"], "env-api-key-secret");
    let shown = cfg.to_redacted_toml();
    for secret in [
        "inline-token",
        "file-token",
        "env-token",
        "header-file-secret",
        "env-api-key-secret",
        "env-hash-key",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(
        shown.contains("TOKEN_C") && shown.contains("HASH_KEY"),
        "{shown}"
    );

    // Errors name the key and the source, never the value.
    let e = Config::load(Some(f.path()), &env(&[("TOKEN_C", "x")]))
        .unwrap_err()
        .0;
    assert!(
        e.contains("tokens[2].token") && e.contains("shorter than 16"),
        "{e}"
    );
    assert!(!e.contains("inline-token"), "{e}");
    let e = Config::load(Some(f.path()), &env(&[])).unwrap_err().0;
    assert!(e.contains("TOKEN_C is not set"), "{e}");
}

#[test]
fn tls_and_processor_mistakes_name_the_key() {
    for (text, want) in [
        (
            "[receivers.otlp.tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
            "receivers.otlp.tls.cert_file /nonexistent/c.pem",
        ),
        (
            "[[destinations]]\nname = \"d\"\nendpoint = \"http://x:1\"\ntls.insecure_skip_verify = true\n",
            "destinations[0].tls: the endpoint \"http://x:1\" is plain http://",
        ),
        (
            "[[destinations]]\nname = \"d\"\nendpoint = \"https://x:1\"\ntls.cert_file = \"/c\"\n",
            "destinations[0].tls: cert_file and key_file go together",
        ),
        (
            "[[processors]]\ntype = \"sample\"\nrate = 1.5\n",
            "processors[0].rate must be between 0.0 and 1.0",
        ),
        (
            "[[processors]]\ntype = \"redact\"\naction = \"hash\"\n",
            "processors[0]: action = \"hash\" needs hash_key",
        ),
        (
            "[[processors]]\ntype = \"redact\"\n[[processors.custom_patterns]]\nname = \"x\"\nregex = \"(\"\n",
            "processors[0].custom_patterns[0].regex: not a valid regex",
        ),
        (
            "[[processors]]\ntype = \"filter\"\n[[processors.drop]]\n",
            "processors[0].drop[0]: no condition",
        ),
        ("[[processors]]\ntype = \"shred\"\n", "unknown variant `shred`"),
        (
            "[[processors]]\ntype = \"limits\"\nmax_attributes = 0\n",
            "processors[0].max_attributes must be at least 1",
        ),
    ] {
        let e = load_err(text, &[]);
        assert!(e.contains(want), "{text}\n→ {e}\n(wanted {want})");
    }
}

#[test]
fn jetstream_destinations_and_sources_load_and_their_mistakes_name_the_key() {
    let js = "[[destinations]]\nname = \"s\"\nprotocol = \"jetstream\"\nurls = [\"nats://a:4222\", \"tls://b:4222\"]\nstream = \"TRACES\"\nsubject = \"traces.{tenant}.{service}\"\ntenant = \"shop-1\"\n";
    let f = file(&format!(
        "{js}[destinations.credentials]\nuser = \"edge\"\npassword_env = \"NATS_PW\"\n\n[receivers.jetstream]\nurls = [\"nats://a:4222\"]\nstream = \"TRACES\"\n"
    ));
    let cfg = Config::load(Some(f.path()), &env(&[("NATS_PW", "pw")])).unwrap();
    let d = &cfg.destinations[0];
    assert_eq!(d.protocol, Protocol::Jetstream);
    assert!(d.is_https(), "a tls:// server means TLS");
    assert_eq!(
        d.credentials.resolved,
        Some(NatsAuth::UserPassword("edge".into(), "pw".into()))
    );
    assert!(!cfg.to_redacted_toml().contains("\"pw\""));
    let r = cfg.receivers.jetstream.as_ref().unwrap();
    assert_eq!((r.consumer.as_str(), r.batch), ("tracespool", 64));
    // A gateway fed only by the stream needs no OTLP receiver.
    let only_stream = file(
        "[receivers.otlp]\ngrpc = \"\"\nhttp = \"\"\n[receivers.jetstream]\nurls = [\"nats://a\"]\nstream = \"T\"\n",
    );
    Config::load(Some(only_stream.path()), &env(&[])).unwrap();
    let e = load_err("[receivers.otlp]\ngrpc = \"\"\nhttp = \"\"\n", &[]);
    assert!(e.contains("nothing would receive spans"), "{e}");

    let cases: &[(&str, &str)] = &[
        (
            "[[destinations]]\nname = \"s\"\nprotocol = \"jetstream\"\nstream = \"T\"\nsubject = \"t\"\n",
            "destinations[0].urls",
        ),
        (
            "[[destinations]]\nname = \"s\"\nprotocol = \"jetstream\"\nendpoint = \"http://x:1\"\nurls = [\"nats://a\"]\nstream = \"T\"\nsubject = \"t\"\n",
            "names its servers in urls",
        ),
        (
            "[[destinations]]\nname = \"s\"\nprotocol = \"jetstream\"\nurls = [\"nats://a\"]\nstream = \"T\"\nsubject = \"t.{tenant}\"\n",
            "set destinations[0].tenant",
        ),
        (
            "[[destinations]]\nname = \"s\"\nprotocol = \"jetstream\"\nurls = [\"nats://a\"]\nstream = \"T.x\"\nsubject = \"t\"\n",
            "destinations[0].stream",
        ),
        (
            "[[destinations]]\nname = \"s\"\nprotocol = \"jetstream\"\nurls = [\"nats://a\"]\nstream = \"T\"\nsubject = \"t\"\ncompression = \"gzip\"\n",
            "destinations[0].compression",
        ),
        (
            "[[destinations]]\nname = \"o\"\nendpoint = \"http://x:1\"\nstream = \"T\"\n",
            "destinations[0].stream applies to protocol = \"jetstream\" only",
        ),
        (
            "[[destinations]]\nname = \"o\"\nprotocol = \"grpc\"\n",
            "destinations[0].endpoint is missing",
        ),
        (
            "[receivers.jetstream]\nurls = [\"nats://a\"]\nstream = \"T\"\nbatch = 100\nmax_ack_pending = 10\n",
            "receivers.jetstream.batch",
        ),
        (
            "[receivers.jetstream]\nurls = [\"nats://user:pw@a\"]\nstream = \"T\"\n",
            "carries credentials",
        ),
    ];
    for (text, wanted) in cases {
        let e = load_err(text, &[]);
        assert!(e.contains(wanted), "{text}\n→ {e}\n(wanted {wanted:?})");
        assert!(!e.contains("pw@"), "a secret in an error: {e}");
    }
}

#[test]
fn compression_and_encryption_keys_load_from_files_and_variables_and_never_show() {
    let hex1 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let hex2 = "FFEEDDCCBBAA99887766554433221100ffeeddccbbaa99887766554433221100";
    let mut keyfile = tempfile::NamedTempFile::new().unwrap();
    writeln!(keyfile, "{hex1}").unwrap();
    let f = file(&format!(
        r#"
        [storage]
        compression = "zstd"
        compression_level = 3
        [storage.encryption]
        active_key = 2
        [[storage.encryption.keys]]
        id = 1
        file = "{}"
        [[storage.encryption.keys]]
        id = 2
        env = "SPOOL_KEY_2"
        "#,
        keyfile.path().display()
    ));
    let cfg = Config::load(Some(f.path()), &env(&[("SPOOL_KEY_2", hex2)])).unwrap();
    assert_eq!(
        cfg.storage.record_compression(),
        crate::payload::Compression::Zstd { level: 3 }
    );
    let ring = &cfg.storage.encryption.ring;
    assert_eq!(ring.ids().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(ring.active(), Some(2));
    assert_eq!(cfg.wal_config().keys.active(), Some(2));
    // No key byte in Debug or in the effective configuration.
    for shown in [format!("{cfg:?}"), cfg.to_redacted_toml()] {
        for needle in ["00112233", "ffeeddcc", "FFEEDDCC"] {
            assert!(!shown.contains(needle), "{needle} in {shown}");
        }
    }
    assert!(cfg.to_redacted_toml().contains("SPOOL_KEY_2"));
}

#[test]
fn encryption_mistakes_name_the_key_id_and_never_the_key() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[[storage.encryption.keys]]\nid = 3\nenv = \"K\"\n",
            &[("K", "00112233")],
            "(key id 3): a key is 32 bytes written as 64 hex digits",
        ),
        (
            "[[storage.encryption.keys]]\nid = 3\nenv = \"K\"\n",
            &[],
            "storage.encryption.keys[0].env (key id 3): the variable K is not set",
        ),
        (
            "[[storage.encryption.keys]]\nid = 3\n",
            &[],
            "give exactly one of file or env",
        ),
        (
            "[[storage.encryption.keys]]\nid = 0\nenv = \"K\"\n",
            &[("K", hex)],
            "keys[0].id: give each key a non-zero id",
        ),
        (
            "[[storage.encryption.keys]]\nid = 1\nenv = \"K\"\n[[storage.encryption.keys]]\nid = 1\nenv = \"K\"\n",
            &[("K", hex)],
            "key id 1 is given twice",
        ),
        (
            "active_key = 9\n[[storage.encryption.keys]]\nid = 1\nenv = \"K\"\n",
            &[("K", hex)],
            "storage.encryption.active_key: the active key id 9 is not among the keys",
        ),
        (
            "[[storage.encryption.keys]]\nid = 1\nfile = \"/nonexistent/key\"\n",
            &[],
            "storage.encryption.keys[0].file (key id 1) /nonexistent/key",
        ),
    ];
    for (text, vars, want) in cases {
        let text = format!("[storage.encryption]\n{text}");
        let e = load_err(&text, vars);
        assert!(e.contains(want), "{text}: {e}");
        assert!(!e.contains("00112233"), "{e}");
    }
    let e = load_err("[storage]\ncompression_level = 20\n", &[]);
    assert!(
        e.contains("storage.compression_level must be between 1 and 19"),
        "{e}"
    );
    let e = load_err("[storage]\ncompression = \"lz4\"\n", &[]);
    assert!(e.contains("compression"), "{e}");
}

#[test]
fn egress_limits_load_and_their_mistakes_name_the_key() {
    let dest = "[[destinations]]\nname = \"b\"\nendpoint = \"http://x:4317\"\n";
    let f = file(&format!(
        "{dest}max_egress_bytes_per_s = \"2MiB\"\negress_burst = \"64KiB\"\n"
    ));
    let cfg = Config::load(Some(f.path()), &env(&[])).unwrap();
    assert_eq!(
        cfg.destinations[0].max_egress_bytes_per_s,
        Some(ByteSize(2 << 20))
    );
    assert!(cfg.destinations[0].egress_limit().is_some());
    for (extra, want) in [
        (
            "max_egress_bytes_per_s = \"0\"\n",
            "destinations[0].max_egress_bytes_per_s must be greater than 0",
        ),
        (
            "egress_burst = \"1MiB\"\n",
            "destinations[0].egress_burst needs max_egress_bytes_per_s",
        ),
        (
            "max_egress_bytes_per_s = \"1MiB\"\negress_burst = \"0\"\n",
            "destinations[0].egress_burst must be greater than 0",
        ),
    ] {
        let e = load_err(&format!("{dest}{extra}"), &[]);
        assert!(e.contains(want), "{extra}: {e}");
    }
}

#[test]
fn max_age_loads_and_zero_is_refused() {
    let dest = "[[destinations]]\nname = \"b\"\nendpoint = \"http://x:4317\"\n";
    let f = file(&format!("{dest}max_age = \"36h\"\n"));
    let cfg = Config::load(Some(f.path()), &env(&[])).unwrap();
    assert_eq!(
        cfg.destinations[0].max_age.map(|d| d.0),
        Some(Duration::from_secs(36 * 3600))
    );
    let e = load_err(&format!("{dest}max_age = \"0s\"\n"), &[]);
    assert!(
        e.contains("destinations[0].max_age must be greater than 0"),
        "{e}"
    );
}

#[test]
fn lanes_load_and_their_mistakes_name_the_key() {
    let dest = "[[destinations]]\nname = \"b\"\nendpoint = \"http://x:4317\"\n";
    let f = file(&format!(
        "{dest}live_first = true\nlive_lag = \"5s\"\nbacklog_share = 0.4\nbacklog_order = \"newest_first\"\n"
    ));
    let cfg = Config::load(Some(f.path()), &env(&[])).unwrap();
    let d = &cfg.destinations[0];
    assert!(d.live_first);
    assert_eq!(d.live_lag.0, Duration::from_secs(5));
    assert_eq!(d.backlog_share, 0.4);
    assert_eq!(d.backlog_order, crate::config::BacklogOrder::NewestFirst);
    // Defaults: one lane, oldest first.
    let f = file(dest);
    let d = Config::load(Some(f.path()), &env(&[]))
        .unwrap()
        .destinations[0]
        .clone();
    assert!(!d.live_first);
    assert_eq!(
        (d.live_lag.0, d.backlog_share, d.backlog_order),
        (
            Duration::from_secs(2),
            0.2,
            crate::config::BacklogOrder::OldestFirst
        )
    );
    for (extra, want) in [
        (
            "live_first = true\nbacklog_share = 1.0\n",
            "destinations[0].backlog_share must be between 0 and 1",
        ),
        (
            "live_first = true\nbacklog_share = 0\n",
            "destinations[0].backlog_share must be between 0 and 1",
        ),
        (
            "backlog_order = \"newest_first\"\n",
            "destinations[0].backlog_order = \"newest_first\" needs live_first = true",
        ),
        (
            "live_first = true\nlive_lag = \"0s\"\n",
            "destinations[0].live_lag must be greater than 0",
        ),
        ("backlog_order = \"random\"\n", "backlog_order"),
    ] {
        let e = load_err(&format!("{dest}{extra}"), &[]);
        assert!(e.contains(want), "{extra}: {e}");
    }
}
