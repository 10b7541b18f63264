//! Bearer tokens on the receivers: `authorization: Bearer <token>` (HTTP header or
//! gRPC metadata). Each configured token stands for a tenant; the tenant is recorded
//! with every batch in the audit ledger and scopes its idempotency keys.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time, against
//! every configured token, so neither timing nor memory dumps give one away.

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use crate::config::ReceiverAuthConfig;

pub struct Auth {
    tokens: Vec<([u8; 32], String)>,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

impl Auth {
    /// `None` when no token is configured: requests are not authenticated.
    pub fn new(cfg: &ReceiverAuthConfig) -> Option<Self> {
        if cfg.tokens.is_empty() {
            return None;
        }
        Some(Self {
            tokens: cfg
                .tokens
                .iter()
                .map(|t| (sha256(t.resolved.as_bytes()), t.tenant.clone()))
                .collect(),
        })
    }

    /// The tenant of the `authorization` header's bearer token, if it is one of
    /// ours.
    pub fn tenant(&self, authorization: Option<&[u8]>) -> Option<&str> {
        let value = authorization?;
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))?;
        let presented = sha256(token.trim_ascii());
        let mut found: Option<&str> = None;
        // Every token is compared, whatever matched before.
        for (digest, tenant) in &self.tokens {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(tenant);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    #[test]
    fn only_configured_bearer_tokens_name_a_tenant() {
        let cfg = ReceiverAuthConfig {
            tokens: vec![
                TokenConfig {
                    tenant: "shop-1".into(),
                    resolved: "token-one-0123456789".into(),
                    ..Default::default()
                },
                TokenConfig {
                    tenant: "shop-2".into(),
                    resolved: "token-two-0123456789".into(),
                    ..Default::default()
                },
            ],
        };
        let auth = Auth::new(&cfg).unwrap();
        assert_eq!(
            auth.tenant(Some(b"Bearer token-two-0123456789")),
            Some("shop-2")
        );
        assert_eq!(
            auth.tenant(Some(b"bearer token-one-0123456789")),
            Some("shop-1")
        );
        assert_eq!(auth.tenant(Some(b"Bearer token-one-012345678")), None);
        assert_eq!(auth.tenant(Some(b"token-one-0123456789")), None);
        assert_eq!(auth.tenant(Some(b"Basic dG9rZW4=")), None);
        assert_eq!(auth.tenant(None), None);
        assert!(Auth::new(&ReceiverAuthConfig::default()).is_none());
    }
}
