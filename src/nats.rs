//! Connections to NATS servers, shared by the JetStream destination
//! ([`crate::export::jetstream`]) and source ([`crate::receiver::jetstream`]): the
//! servers to fail over between, credentials, TLS, and connection events in our
//! logs. A connection is made in the background and remade for as long as we run:
//! the forwarder starts, and keeps spooling, whether or not the servers are up.

use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};

use crate::config::{jetstream::wants_tls, DestinationTlsConfig, NatsAuth, NatsCredentials};

/// What a connection is for, and where to.
pub struct Servers<'a> {
    /// Shown to the servers as the client's name, and in our logs.
    pub name: String,
    pub urls: &'a [String],
    pub credentials: &'a NatsCredentials,
    pub tls: &'a DestinationTlsConfig,
    /// Deadline of one request (a publish's acknowledgement, a pull).
    pub timeout: Duration,
}

/// Opens a client. It returns at once; the connection is made (and remade after a
/// disconnect) in the background, and requests meanwhile fail as transient.
pub async fn connect(s: &Servers<'_>) -> Result<async_nats::Client, String> {
    let addrs = s
        .urls
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| format!("NATS server {u:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = s.name.clone();
    let mut opts = ConnectOptions::new()
        .name(&s.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(s.timeout.min(Duration::from_secs(10)))
        .request_timeout(Some(s.timeout))
        // A partition shows as missed pings: notice it in seconds, not minutes.
        .ping_interval(Duration::from_secs(5))
        .event_callback(move |event| {
            let name = name.clone();
            async move { log_event(&name, event) }
        });
    match &s.credentials.resolved {
        None => {}
        Some(NatsAuth::Token(t)) => opts = opts.token(t.clone()),
        Some(NatsAuth::UserPassword(u, p)) => opts = opts.user_and_password(u.clone(), p.clone()),
        Some(NatsAuth::NKey(seed)) => opts = opts.nkey(seed.clone()),
        Some(NatsAuth::CredsFile(path)) => {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| format!("credentials.creds_file {}: {e}", path.display()))?
        }
    }
    if wants_tls(s.urls, s.tls) {
        let config = crate::export::tls::client_config(s.tls)?;
        opts = opts.require_tls(true).tls_client_config(config);
    }
    opts.connect(addrs)
        .await
        .map_err(|e| format!("connecting to NATS {}: {e}", s.urls.join(",")))
}

fn log_event(name: &str, event: Event) {
    match event {
        Event::Connected => tracing::info!(client = name, "connected to NATS"),
        Event::Disconnected => {
            tracing::warn!(client = name, "disconnected from NATS; reconnecting")
        }
        Event::LameDuckMode => {
            tracing::info!(
                client = name,
                "NATS server is shutting down (lame duck); moving"
            )
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(client = name, subscription = sid, "NATS slow consumer")
        }
        Event::ServerError(e) => tracing::warn!(client = name, error = %e, "NATS server error"),
        Event::ClientError(e) => tracing::warn!(client = name, error = %e, "NATS client error"),
        other => tracing::debug!(client = name, event = %other, "NATS event"),
    }
}
