//! TLS for the receivers: a rustls server configuration (TLS 1.2 and 1.3 only,
//! optionally requiring client certificates) that is rebuilt when its files change
//! or on SIGHUP. New connections get the new configuration; open ones keep theirs;
//! a bad new file is logged and the old configuration kept.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ReceiverTlsConfig;
use crate::metrics::Metrics;
use crate::pem::{load_certs, load_key, load_roots, provider};

/// The identity of a file's current content, as far as reloading cares.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Follow symlinks: Kubernetes swaps a `..data` link when a Secret changes.
    std::fs::metadata(path).ok().map(|m| Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

pub struct TlsServer {
    cfg: ReceiverTlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Option<Stamp>>>,
}

fn build(cfg: &ReceiverTlsConfig) -> Result<ServerConfig, String> {
    let certs = load_certs(&cfg.cert_file)?;
    let key = load_key(&cfg.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} and {}: {e}",
            cfg.cert_file.display(),
            cfg.key_file.display()
        )
    })?;
    // gRPC needs h2; OTLP/HTTP clients speak either.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl TlsServer {
    pub fn load(cfg: &ReceiverTlsConfig) -> Result<Arc<Self>, String> {
        let stamps = Self::files(cfg).iter().map(|p| stamp(p)).collect();
        let config = build(cfg)?;
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    fn files(cfg: &ReceiverTlsConfig) -> Vec<&Path> {
        let mut v = vec![cfg.cert_file.as_path(), cfg.key_file.as_path()];
        if let Some(ca) = &cfg.client_ca_file {
            v.push(ca);
        }
        v
    }

    /// The configuration for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap().clone())
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.cfg.client_ca_file.is_some()
    }

    /// Rebuilds the configuration if a file changed (or always, if `force`).
    /// Returns whether it was replaced.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let now: Vec<Option<Stamp>> = Self::files(&self.cfg).iter().map(|p| stamp(p)).collect();
        let mut stamps = self.stamps.lock().unwrap();
        if !force && *stamps == now {
            return Ok(false);
        }
        // Record what was seen even if it fails to load, so a bad file is reported
        // once, not every interval; a later change is tried again.
        *stamps = now;
        let config = build(&self.cfg)?;
        *self.current.write().unwrap() = Arc::new(config);
        Ok(true)
    }
}

/// Reloads on file changes (every `reload_interval`) and whenever `hup` fires.
pub async fn watch(
    tls: Arc<TlsServer>,
    hup: Arc<Notify>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(tls.cfg.reload_interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let force = tokio::select! {
            _ = tick.tick() => false,
            _ = hup.notified() => true,
            _ = stop.cancelled() => return,
        };
        let t = tls.clone();
        let result = tokio::task::spawn_blocking(move || t.reload(force))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match result {
            Ok(true) => {
                metrics.tls_reloaded(true);
                tracing::info!(
                    cert_file = %tls.cfg.cert_file.display(),
                    forced = force,
                    "TLS certificate reloaded; new connections use it"
                );
            }
            Ok(false) => {}
            Err(e) => {
                metrics.tls_reloaded(false);
                tracing::error!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
            }
        }
    }
}
