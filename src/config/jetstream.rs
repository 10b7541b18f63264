//! NATS JetStream settings: the servers, credentials and TLS that a
//! `protocol = "jetstream"` destination and the `[receivers.jetstream]` source share,
//! the settings of a stream we create, and the subject template.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::security::{resolve_secret, DestinationTlsConfig};
use super::{ByteSize, ConfigError, Dur};

/// How we authenticate to the NATS servers. Secrets come from files or environment
/// variables only (never from the configuration file) and are never logged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsCredentials {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// An NKey seed (`SU…`), from a file or a variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_env: Option<String>,
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// What the settings above resolve to, at load.
    #[serde(skip)]
    pub resolved: Option<NatsAuth>,
}

impl NatsCredentials {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// Reads the secrets; at most one way to authenticate may be given.
    pub(super) fn resolve(
        &mut self,
        key: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let token = resolve_secret(
            &format!("{key}.token"),
            None,
            self.token_file.as_deref(),
            self.token_env.as_deref(),
            env,
        )?;
        let password = resolve_secret(
            &format!("{key}.password"),
            None,
            self.password_file.as_deref(),
            self.password_env.as_deref(),
            env,
        )?;
        let seed = resolve_secret(
            &format!("{key}.nkey_seed"),
            None,
            self.nkey_seed_file.as_deref(),
            self.nkey_seed_env.as_deref(),
            env,
        )?;
        let mut ways = Vec::new();
        if let Some(t) = token {
            ways.push(NatsAuth::Token(t));
        }
        match (&self.user, password) {
            (Some(u), Some(p)) => ways.push(NatsAuth::UserPassword(u.clone(), p)),
            (None, None) => {}
            _ => {
                return Err(ConfigError(format!(
                    "{key}: user and password_file/password_env go together"
                )))
            }
        }
        if let Some(s) = seed {
            if !s.starts_with('S') {
                return Err(ConfigError(format!(
                    "{key}.nkey_seed: not an NKey seed (a seed starts with 'S')"
                )));
            }
            ways.push(NatsAuth::NKey(s));
        }
        if let Some(f) = &self.creds_file {
            std::fs::metadata(f)
                .map_err(|e| ConfigError(format!("{key}.creds_file {}: {e}", f.display())))?;
            ways.push(NatsAuth::CredsFile(f.clone()));
        }
        if ways.len() > 1 {
            return Err(ConfigError(format!(
                "{key}: give one way to authenticate (token, user and password, NKey seed or a .creds file), not several"
            )));
        }
        self.resolved = ways.pop();
        Ok(())
    }
}

/// A resolved way to authenticate. Its `Debug` names the kind, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    Token(String),
    UserPassword(String, String),
    NKey(String),
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(..)"),
            Self::UserPassword(u, _) => write!(f, "UserPassword({u:?}, ..)"),
            Self::NKey(_) => f.write_str("NKey(..)"),
            Self::CredsFile(p) => write!(f, "CredsFile({p:?})"),
        }
    }
}

/// What to do when a stream we create is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discard {
    /// Refuse new messages (the edge keeps them in its own log and retries).
    New,
    /// Delete the oldest messages of the stream (they are lost to the gateways).
    Old,
}

/// `[destinations.stream_config]`: the stream created when `create_stream = true`
/// (file storage, always). An existing stream is used as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    pub replicas: usize,
    /// How long the stream remembers a `Nats-Msg-Id` to drop repeats of it.
    pub duplicate_window: Dur,
    /// Upper bound on the stream's bytes; 0 means no limit.
    pub max_bytes: ByteSize,
    pub discard: Discard,
    /// Messages older than this are deleted by the server; 0 means kept until
    /// consumed (work-queue retention deletes each once a gateway acknowledges it).
    pub max_age: Dur,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 3,
            duplicate_window: Dur(Duration::from_secs(120)),
            max_bytes: ByteSize(0),
            discard: Discard::New,
            max_age: Dur(Duration::ZERO),
        }
    }
}

impl StreamSettings {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// `[receivers.jetstream]`: a durable pull consumer on a stream, each message stored
/// in our log (durably) before it is acknowledged.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamReceiverConfig {
    /// `nats://host:port` or `tls://host:port`; the client fails over between them.
    pub urls: Vec<String>,
    pub stream: String,
    /// The durable consumer's name; gateways with the same name share its work.
    pub consumer: String,
    /// Only messages on subjects matching this (empty: every subject of the stream).
    pub filter_subject: String,
    /// A message not acknowledged this long after delivery is delivered again.
    pub ack_wait: Dur,
    /// Messages delivered and not yet acknowledged, over all gateways of the consumer.
    pub max_ack_pending: i64,
    /// Messages asked for in one pull, and stored at once.
    pub batch: usize,
    #[serde(skip_serializing_if = "NatsCredentials::is_default")]
    pub credentials: NatsCredentials,
    #[serde(skip_serializing_if = "DestinationTlsConfig::is_default")]
    pub tls: DestinationTlsConfig,
}

impl Default for JetStreamReceiverConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            stream: String::new(),
            consumer: "tracespool".into(),
            filter_subject: String::new(),
            ack_wait: Dur(Duration::from_secs(30)),
            max_ack_pending: 1024,
            batch: 64,
            credentials: NatsCredentials::default(),
            tls: DestinationTlsConfig::default(),
        }
    }
}

impl JetStreamReceiverConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let key = "receivers.jetstream";
        check_urls(key, &self.urls)?;
        check_name(&format!("{key}.stream"), &self.stream)?;
        check_name(&format!("{key}.consumer"), &self.consumer)?;
        if !self.filter_subject.is_empty() {
            check_subject(&format!("{key}.filter_subject"), &self.filter_subject, true)?;
        }
        if self.ack_wait.0 < Duration::from_secs(1) {
            return Err(ConfigError(format!(
                "{key}.ack_wait must be at least 1s (a message must be stored before it is acknowledged)"
            )));
        }
        if self.max_ack_pending < 1 {
            return Err(ConfigError(format!(
                "{key}.max_ack_pending must be at least 1"
            )));
        }
        if self.batch == 0 || self.batch > 4096 {
            return Err(ConfigError(format!(
                "{key}.batch must be between 1 and 4096, got {}",
                self.batch
            )));
        }
        if self.batch as i64 > self.max_ack_pending {
            return Err(ConfigError(format!(
                "{key}.batch ({}) must not exceed max_ack_pending ({})",
                self.batch, self.max_ack_pending
            )));
        }
        Ok(())
    }
}

/// Whether TLS is required with these servers: a `tls://` URL or TLS settings.
pub fn wants_tls(urls: &[String], tls: &DestinationTlsConfig) -> bool {
    !tls.is_default() || urls.iter().any(|u| u.starts_with("tls://"))
}

pub(super) fn check_urls(key: &str, urls: &[String]) -> Result<(), ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError(format!(
            "{key}.urls: name at least one NATS server (nats://host:port)"
        )));
    }
    for (i, u) in urls.iter().enumerate() {
        let rest = u
            .strip_prefix("nats://")
            .or_else(|| u.strip_prefix("tls://"))
            .ok_or_else(|| {
                ConfigError(format!(
                    "{key}.urls: {u:?} must start with nats:// or tls://"
                ))
            })?;
        // Credentials belong in [credentials], where they are not logged (nor
        // echoed here).
        if rest.contains('@') {
            return Err(ConfigError(format!(
                "{key}.urls[{i}] carries credentials (user:password@host); put them in {key}.credentials"
            )));
        }
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "4222"));
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(ConfigError(format!(
                "{key}.urls: {u:?} is not nats://host:port"
            )));
        }
    }
    Ok(())
}

/// Stream and consumer names: no whitespace, '.', '*', '>', path separators.
pub(super) fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(ConfigError(format!(
            "{key} {name:?}: use letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// A subject: dot-separated tokens; `*` and `>` only where wildcards are allowed.
fn check_subject(key: &str, subject: &str, wildcards: bool) -> Result<(), ConfigError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        check_token(key, subject, t, wildcards, i + 1 == tokens.len())?;
    }
    Ok(())
}

fn check_token(
    key: &str,
    subject: &str,
    t: &str,
    wildcards: bool,
    last: bool,
) -> Result<(), ConfigError> {
    let bad = t.is_empty()
        || t.chars().any(|c| c.is_whitespace() || c.is_control())
        || (t.contains('*') && (t != "*" || !wildcards))
        || (t.contains('>') && (t != ">" || !wildcards || !last));
    if bad {
        return Err(ConfigError(format!(
            "{key} {subject:?}: {t:?} is not a valid subject token"
        )));
    }
    Ok(())
}

/// The placeholders a destination's subject may use.
pub const SUBJECT_PLACEHOLDERS: [&str; 3] = ["{tenant}", "{service}", "{instance}"];

/// Checks a subject template; returns the stream subject that covers every subject
/// it can produce (each placeholder token becomes `*`).
pub fn check_subject_template(key: &str, template: &str) -> Result<String, ConfigError> {
    let mut covering = Vec::new();
    for t in template.split('.') {
        if t.contains('{') || t.contains('}') {
            if !SUBJECT_PLACEHOLDERS.contains(&t) {
                return Err(ConfigError(format!(
                    "{key} {template:?}: {t:?} is not a placeholder; use {} as whole tokens",
                    SUBJECT_PLACEHOLDERS.join(", ")
                )));
            }
            covering.push("*");
        } else {
            check_token(key, template, t, false, false)?;
            covering.push(t);
        }
    }
    Ok(covering.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_nats_servers_without_credentials() {
        assert!(check_urls("k", &["nats://a:4222".into(), "tls://b".into()]).is_ok());
        for bad in ["http://a:1", "nats://:4222", "nats://a:x"] {
            let e = check_urls("k", &[bad.into()]).unwrap_err().0;
            assert!(e.contains(bad), "{e}");
        }
        let e = check_urls("k", &["nats://u:s3cret@a:4222".into()])
            .unwrap_err()
            .0;
        assert!(e.contains("k.urls[0]") && !e.contains("s3cret"), "{e}");
        assert!(check_urls("k", &[]).unwrap_err().0.contains("at least one"));
    }

    #[test]
    fn subject_templates_take_whole_token_placeholders() {
        assert_eq!(
            check_subject_template("s", "traces.{tenant}.{service}").unwrap(),
            "traces.*.*"
        );
        assert_eq!(check_subject_template("s", "traces").unwrap(), "traces");
        for bad in [
            "traces.x{tenant}",
            "traces.{host}",
            "traces..a",
            "traces.*",
            "a b",
        ] {
            assert!(check_subject_template("s", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_way_to_authenticate_and_no_secret_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        let env: BTreeMap<String, String> = [("NATS_PW".to_string(), "pw-123".to_string())].into();
        let mut c = NatsCredentials {
            token_file: Some(token.clone()),
            ..Default::default()
        };
        c.resolve("k", &env).unwrap();
        assert_eq!(c.resolved, Some(NatsAuth::Token("s3cret-token".into())));
        assert!(!format!("{:?}", c.resolved).contains("s3cret"));

        let mut both = NatsCredentials {
            token_file: Some(token),
            user: Some("edge".into()),
            password_env: Some("NATS_PW".into()),
            ..Default::default()
        };
        assert!(both
            .resolve("k", &env)
            .unwrap_err()
            .0
            .contains("not several"));

        let mut user = NatsCredentials {
            user: Some("edge".into()),
            password_env: Some("NATS_PW".into()),
            ..Default::default()
        };
        user.resolve("k", &env).unwrap();
        assert!(!format!("{:?}", user.resolved).contains("pw-123"));

        let mut lone = NatsCredentials {
            user: Some("edge".into()),
            ..Default::default()
        };
        assert!(lone
            .resolve("k", &env)
            .unwrap_err()
            .0
            .contains("go together"));
        let mut missing = NatsCredentials {
            password_env: Some("NOPE".into()),
            user: Some("u".into()),
            ..Default::default()
        };
        assert!(missing.resolve("k", &env).unwrap_err().0.contains("NOPE"));
    }
}
