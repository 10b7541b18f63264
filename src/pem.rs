//! PEM files and the crypto provider, for both sides of the forwarder: the
//! receivers' server TLS and the destinations' client TLS load certificates, keys
//! and CA bundles the same way and fail with the same errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The one crypto provider (ring) every TLS configuration is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file that could not be used, and why.
#[derive(Debug)]
pub struct PemError {
    pub path: PathBuf,
    pub problem: String,
}

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for PemError {}

impl From<PemError> for String {
    fn from(e: PemError) -> Self {
        e.to_string()
    }
}

fn error(path: &Path, problem: impl fmt::Display) -> PemError {
    PemError {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// The certificates of a PEM file, in order (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "no certificate in PEM format"));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = std::fs::read(path).map_err(|e| error(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| error(path, format!("no private key in PEM format ({e})")))
}

/// A CA bundle as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| error(path, e))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_certs(&missing).unwrap_err();
        assert_eq!(e.path, missing);
        assert!(e.to_string().starts_with(&missing.display().to_string()));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        assert_eq!(
            load_certs(&empty).unwrap_err().problem,
            "no certificate in PEM format"
        );
        assert!(load_key(&empty)
            .unwrap_err()
            .problem
            .starts_with("no private key in PEM format"));
        assert!(load_roots(&empty).is_err());
    }
}
