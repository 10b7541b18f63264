//! TLS, receiver tokens and secrets from files or the environment.
//!
//! Secrets (tokens, header values, hash keys) come from the file itself, from a
//! file (`*_file`, trimmed) or from an environment variable (`*_env`). They are read
//! once, at load, and never printed: `check-config` shows `<redacted>`, and error
//! messages name the key and the file or variable, never the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Dur};

/// `[receivers.otlp.tls]`: TLS on both OTLP receivers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverTlsConfig {
    /// The server certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// With it, clients must present a certificate signed by one of these CAs
    /// (mTLS); without a valid one the handshake fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes (a SIGHUP reloads at once).
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Dur,
}

fn default_reload_interval() -> Dur {
    Dur(Duration::from_secs(10))
}

/// `[receivers.otlp.auth]`: bearer tokens. Without any, requests are not
/// authenticated.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverAuthConfig {
    pub tokens: Vec<TokenConfig>,
}

/// One accepted token and the tenant it stands for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Recorded in the audit ledger with every batch sent with this token.
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The token, resolved at load from one of the three.
    #[serde(skip)]
    pub resolved: String,
}

/// `[destinations.tls]`: how an `https://` destination is verified and whom we
/// present ourselves as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationTlsConfig {
    /// CA bundle (PEM) to verify the server with; default: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for destinations that require mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name to verify the server's certificate against (and send as SNI),
    /// instead of the endpoint's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Do not verify the server's certificate at all. For tests and emergencies
    /// only: logged as an error at every start.
    pub insecure_skip_verify: bool,
}

impl DestinationTlsConfig {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// Reads a secret from exactly one of: the value, a file, an environment variable.
pub fn resolve_secret(
    key: &str,
    value: Option<&str>,
    file: Option<&Path>,
    var: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<Option<String>, ConfigError> {
    let given = value.is_some() as u8 + file.is_some() as u8 + var.is_some() as u8;
    if given > 1 {
        return Err(ConfigError(format!(
            "{key}: give the value, a file or an environment variable, not several"
        )));
    }
    let secret = if let Some(v) = value {
        v.to_string()
    } else if let Some(f) = file {
        std::fs::read_to_string(f)
            .map_err(|e| ConfigError(format!("{key}_file {}: {e}", f.display())))?
            .trim()
            .to_string()
    } else if let Some(name) = var {
        env.get(name)
            .ok_or_else(|| ConfigError(format!("{key}_env: the variable {name} is not set")))?
            .trim()
            .to_string()
    } else {
        return Ok(None);
    };
    if secret.is_empty() {
        return Err(ConfigError(format!("{key}: the secret is empty")));
    }
    Ok(Some(secret))
}

impl ReceiverAuthConfig {
    pub(super) fn resolve(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let mut tenants = std::collections::BTreeSet::new();
        for (i, t) in self.tokens.iter_mut().enumerate() {
            let key = format!("receivers.otlp.auth.tokens[{i}].token");
            if t.tenant.is_empty()
                || !t
                    .tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ConfigError(format!(
                    "receivers.otlp.auth.tokens[{i}].tenant {:?}: use letters, digits, '-', '_' or '.'",
                    t.tenant
                )));
            }
            tenants.insert(t.tenant.clone());
            t.resolved = resolve_secret(
                &key,
                t.token.as_deref(),
                t.token_file.as_deref(),
                t.token_env.as_deref(),
                env,
            )?
            .ok_or_else(|| ConfigError(format!("{key}: set token, token_file or token_env")))?;
            if t.resolved.len() < 16 {
                return Err(ConfigError(format!(
                    "{key}: shorter than 16 characters; use a long random token"
                )));
            }
            if t.resolved
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError(format!(
                    "{key}: contains whitespace or control characters"
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if !seen.insert(t.resolved.clone()) {
                return Err(ConfigError(format!(
                    "receivers.otlp.auth.tokens[{i}]: the same token is configured twice"
                )));
            }
        }
        Ok(())
    }
}

/// Checks that a PEM file holds at least one item of the wanted kind.
pub fn check_pem(key: &str, path: &Path, what: PemKind) -> Result<(), ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes =
        std::fs::read(path).map_err(|e| ConfigError(format!("{key} {}: {e}", path.display())))?;
    let ok = match what {
        PemKind::Certificates => CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map(|v| !v.is_empty())
            .unwrap_or(false),
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if !ok {
        return Err(ConfigError(format!(
            "{key} {}: no {} in PEM format",
            path.display(),
            match what {
                PemKind::Certificates => "certificate",
                PemKind::PrivateKey => "private key",
            }
        )));
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub enum PemKind {
    Certificates,
    PrivateKey,
}

impl ReceiverTlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let k = "receivers.otlp.tls";
        check_pem(
            &format!("{k}.cert_file"),
            &self.cert_file,
            PemKind::Certificates,
        )?;
        check_pem(
            &format!("{k}.key_file"),
            &self.key_file,
            PemKind::PrivateKey,
        )?;
        if let Some(ca) = &self.client_ca_file {
            check_pem(&format!("{k}.client_ca_file"), ca, PemKind::Certificates)?;
        }
        if self.reload_interval.0.is_zero() {
            return Err(ConfigError(format!(
                "{k}.reload_interval must be greater than 0"
            )));
        }
        Ok(())
    }
}
