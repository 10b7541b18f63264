//! TLS to `https://` destinations (rustls): the system's roots or a configured CA
//! bundle, an optional client certificate (mTLS), an optional name to verify
//! instead of the host, and — only when asked, and loudly — no verification.

use std::sync::Arc;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{DestinationConfig, DestinationTlsConfig};
use crate::pem::{load_certs, load_key, load_roots, provider};

/// The system's trusted roots (as OpenSSL finds them: /etc/ssl/certs, SSL_CERT_FILE).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none found".into());
        return Err(format!(
            "no system root certificates ({why}); install ca-certificates or set tls.ca_file"
        ));
    }
    Ok(roots)
}

/// The rustls client configuration for a destination (or a NATS connection).
pub fn client_config(t: &DestinationTlsConfig) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = if t.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let roots = match &t.ca_file {
            Some(ca) => load_roots(ca)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .map_err(|e| format!("tls.cert_file/key_file: {e}")),
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A connector that speaks TLS to `https://` URIs and plain TCP to `http://`
/// ones; `h2` only (gRPC) or HTTP/1.1 and h2.
pub fn connector(
    d: &DestinationConfig,
    http: HttpConnector,
    h2_only: bool,
) -> Result<HttpsConnector<HttpConnector>, String> {
    // A plain http:// destination never uses TLS: no roots to load (a machine
    // without a CA store must still forward over plain http).
    let config = if d.is_https() {
        client_config(&d.tls)?
    } else {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    };
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let builder = match &d.tls.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(
            ServerName::try_from(name.clone()).map_err(|e| format!("tls.server_name: {e}"))?,
        )),
        None => builder,
    };
    Ok(if h2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    })
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake's signatures
/// are still checked (so the session is at least with the holder of that key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
