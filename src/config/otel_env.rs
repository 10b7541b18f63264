//! A destination from the OpenTelemetry exporter variables, so `tracespool run`
//! with no config file forwards where an SDK on the same box would export:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS`, `OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`,
//! `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`, `OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION`,
//! and for TLS `OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE` (CA bundle),
//! `_CLIENT_CERTIFICATE`, `_CLIENT_KEY` and `_INSECURE` (plain http for an endpoint
//! without a scheme).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    Compression, ConfigError, DestinationConfig, DestinationTlsConfig, Dur, Endpoint, Protocol,
};

/// The name of the destination made from the environment.
pub const ENV_DESTINATION: &str = "otlp";

fn var<'a>(
    env: &'a BTreeMap<String, String>,
    signal: &str,
    generic: &str,
) -> Option<(&'a str, String)> {
    [signal, generic].into_iter().find_map(|k| {
        env.get(k)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v.as_str(), k.to_string()))
    })
}

pub fn destination_from_env(
    env: &BTreeMap<String, String>,
) -> Result<Option<DestinationConfig>, ConfigError> {
    let traces = env
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .filter(|v| !v.trim().is_empty());
    let base = env
        .get("OTEL_EXPORTER_OTLP_ENDPOINT")
        .filter(|v| !v.trim().is_empty());
    if traces.is_none() && base.is_none() {
        return Ok(None);
    }
    let protocol = match var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) {
        None => Protocol::Http, // the specification's default
        Some(("grpc", _)) => Protocol::Grpc,
        Some(("http/protobuf", _)) => Protocol::Http,
        Some((other, key)) => {
            return Err(ConfigError(format!(
                "{key}={other:?}: tracespool forwards with \"grpc\" or \"http/protobuf\""
            )))
        }
    };
    let endpoint = match (traces, base) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(b)) => {
            let b = b.trim().trim_end_matches('/');
            match protocol {
                Protocol::Http => format!("{b}/v1/traces"),
                Protocol::Grpc | Protocol::Jetstream => b.to_string(),
            }
        }
        (None, None) => unreachable!(),
    };
    let mut headers = BTreeMap::new();
    if let Some((raw, key)) = var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ) {
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // The message never repeats the pair: its value may be a secret.
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ConfigError(format!("{key}: an entry is not key=value (value hidden)"))
            })?;
            headers.insert(
                percent_decode(k.trim()).to_ascii_lowercase(),
                percent_decode(v.trim()),
            );
        }
    }
    let timeout = match var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ) {
        None => Duration::from_secs(10),
        Some((v, key)) => Duration::from_millis(
            v.trim()
                .parse()
                .map_err(|_| ConfigError(format!("{key}={v:?}: expected milliseconds")))?,
        ),
    };
    let compression = match var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ) {
        None | Some(("none", _)) => Compression::None,
        Some(("gzip", _)) => Compression::Gzip,
        Some((other, key)) => {
            return Err(ConfigError(format!(
                "{key}={other:?}: expected \"gzip\" or \"none\""
            )))
        }
    };
    let path = |signal: &str, generic: &str| var(env, signal, generic).map(|(v, _)| v.into());
    let tls = DestinationTlsConfig {
        ca_file: path(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        cert_file: path(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        key_file: path(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ),
        ..Default::default()
    };
    let insecure = var(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "OTEL_EXPORTER_OTLP_INSECURE",
    )
    .is_some_and(|(v, _)| v.trim().eq_ignore_ascii_case("true"));
    // An endpoint without a scheme is https, unless marked insecure (the spec's
    // rule for gRPC); with a scheme, the scheme decides.
    let endpoint = if endpoint.contains("://") {
        endpoint
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    };
    let key = if traces.is_some() {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    } else {
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    };
    let endpoint =
        Endpoint::parse(&endpoint).map_err(|e| ConfigError(format!("{key}={endpoint:?}: {e}")))?;
    Ok(Some(DestinationConfig {
        name: ENV_DESTINATION.into(),
        endpoint: Some(endpoint),
        protocol,
        headers,
        timeout: Dur(timeout),
        compression,
        tls,
        ..Default::default()
    }))
}

/// Decodes `%XX` escapes (the W3C baggage format the header variable uses).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_set_means_no_destination() {
        assert!(destination_from_env(&env(&[])).unwrap().is_none());
    }

    #[test]
    fn base_endpoint_gets_the_traces_path_for_http() {
        let d = destination_from_env(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318/",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(d.protocol, Protocol::Http);
        assert_eq!(
            d.endpoint.as_ref().unwrap().as_str(),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn traces_endpoint_wins_and_grpc_headers_timeout_apply() {
        let d = destination_from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=se%20cret, X-Tenant = a",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            d.endpoint.as_ref().unwrap().as_str(),
            "http://collector:4317"
        );
        assert_eq!(d.protocol, Protocol::Grpc);
        assert_eq!(d.headers["api-key"], "se cret");
        assert_eq!(d.headers["x-tenant"], "a");
        assert_eq!(d.timeout.0, Duration::from_millis(2500));
        assert_eq!(d.compression, Compression::Gzip);
    }

    #[test]
    fn unsupported_protocol_names_the_variable() {
        let e = destination_from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]))
        .unwrap_err();
        assert!(e.0.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }
}
