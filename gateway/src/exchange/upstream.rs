//! Calls to the departments' source systems: one hyper client per upstream (rustls, optional
//! client certificate), connect and total timeouts, bounded retries with jitter, and a circuit
//! breaker. Every failure becomes a [`FetchError`] with its own answer; nothing here panics on
//! what an upstream sends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};

use super::catalog::UpstreamSettings;
use crate::metrics::ExchangeMetrics;

/// Why a record could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The source system has no record for the key (it answered 404).
    #[error("the source system has no record for this key")]
    NotFound,
    /// The source system did not answer within the configured time.
    #[error("the source system did not answer within {0} ms")]
    Timeout(u128),
    /// The source system could not be reached.
    #[error("the source system cannot be reached: {0}")]
    Unreachable(String),
    /// The circuit breaker is open after repeated failures.
    #[error("the source system is failing; calls are suspended for a while (circuit breaker open)")]
    BreakerOpen,
    /// The source system answered with an error status.
    #[error("the source system answered with status {0}")]
    Status(u16),
    /// The answer is not a JSON object.
    #[error("the source system's answer is not a JSON object: {0}")]
    Malformed(String),
    /// The answer is larger than the dataset's `max_entry_bytes`.
    #[error("the source system's answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl FetchError {
    /// True when the source is failing (rather than answering something definite), so that a
    /// stale record may stand in.
    pub fn allows_stale(&self) -> bool {
        self.is_outage() || matches!(self, FetchError::BreakerOpen)
    }

    /// True when the failure counts against the circuit breaker.
    fn is_outage(&self) -> bool {
        match self {
            FetchError::Timeout(_) | FetchError::Unreachable(_) => true,
            FetchError::Status(s) => *s >= 500,
            _ => false,
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            FetchError::Unreachable(_) => true,
            FetchError::Status(s) => matches!(s, 502..=504),
            _ => false,
        }
    }
}

/// Why an upstream client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("upstream {origin}: {reason}")]
pub struct UpstreamError {
    origin: String,
    reason: String,
}

/// The state of a circuit breaker; the metric encodes it as 0, 1, 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One trial call is in flight; its result closes or re-opens the breaker.
    HalfOpen,
}

#[derive(Debug)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { since: Instant },
}

/// One source system.
pub struct Upstream {
    settings: UpstreamSettings,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    breaker: Mutex<Breaker>,
    metrics: Arc<ExchangeMetrics>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.settings.origin)
            .finish_non_exhaustive()
    }
}

fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

impl Upstream {
    /// Builds the client for one upstream from its settings.
    pub fn new(
        settings: UpstreamSettings,
        metrics: Arc<ExchangeMetrics>,
    ) -> Result<Upstream, UpstreamError> {
        let fail = |reason: String| UpstreamError {
            origin: settings.origin.clone(),
            reason,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &settings.ca_file {
            for cert in load_certs(ca).map_err(fail)? {
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("{}: {e}", ca.display())))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert).map_err(fail)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| fail(format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| fail(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let upstream = Upstream {
            settings,
            client,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            metrics,
        };
        upstream.publish_state(BreakerState::Closed);
        Ok(upstream)
    }

    /// The upstream's origin.
    pub fn origin(&self) -> &str {
        &self.settings.origin
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        match self.breaker.lock().as_deref() {
            Ok(Breaker::Closed { .. }) => BreakerState::Closed,
            Ok(Breaker::Open { until }) if Instant::now() >= *until => BreakerState::HalfOpen,
            Ok(Breaker::Open { .. }) => BreakerState::Open,
            Ok(Breaker::HalfOpen { .. }) => BreakerState::HalfOpen,
            Err(_) => BreakerState::Open,
        }
    }

    /// Fetches the JSON object at `uri`, at most `max_bytes` long.
    pub async fn fetch(
        &self,
        uri: &Uri,
        max_bytes: usize,
    ) -> Result<Map<String, Value>, FetchError> {
        self.admit()?;
        let started = Instant::now();
        let total = self.settings.timeout;
        let result = match tokio::time::timeout(total, self.attempts(uri, max_bytes)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(total.as_millis())),
        };
        self.metrics
            .observe_upstream(&self.settings.origin, started.elapsed().as_secs_f64());
        self.settle(result.as_ref().err());
        result
    }

    async fn attempts(
        &self,
        uri: &Uri,
        max_bytes: usize,
    ) -> Result<Map<String, Value>, FetchError> {
        let mut attempt = 0;
        loop {
            let result = self.once(uri, max_bytes).await;
            match result {
                Err(e) if e.is_retryable() && attempt < self.settings.retries => {
                    attempt += 1;
                    self.metrics.upstream_retry(&self.settings.origin);
                    tokio::time::sleep(backoff(self.settings.retry_backoff, attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, uri: &Uri, max_bytes: usize) -> Result<Map<String, Value>, FetchError> {
        let request = http::Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "certgate")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Unreachable(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| {
            // The chain of causes names the refused connection or the TLS failure.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            FetchError::Unreachable(reason)
        })?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(FetchError::NotFound),
            s => return Err(FetchError::Status(s.as_u16())),
        }
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes as u64) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    FetchError::TooLarge(max_bytes)
                } else {
                    FetchError::Unreachable(format!("the answer broke off: {e}"))
                }
            })?
            .to_bytes();
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(FetchError::Malformed("not an object".into())),
            Err(e) => Err(FetchError::Malformed(e.to_string())),
        }
    }

    /// Lets a call through, or refuses it while the breaker is open. After the open period
    /// one trial call goes through (half-open); others are refused until it settles.
    fn admit(&self) -> Result<(), FetchError> {
        let Ok(mut b) = self.breaker.lock() else {
            return Err(FetchError::BreakerOpen);
        };
        let now = Instant::now();
        match *b {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } if now < until => Err(FetchError::BreakerOpen),
            Breaker::Open { .. } => {
                *b = Breaker::HalfOpen { since: now };
                drop(b);
                self.publish_state(BreakerState::HalfOpen);
                Ok(())
            }
            // A trial that never settled (its caller went away) does not block for ever.
            Breaker::HalfOpen { since }
                if now.duration_since(since) > self.settings.timeout * 2 =>
            {
                *b = Breaker::HalfOpen { since: now };
                Ok(())
            }
            Breaker::HalfOpen { .. } => Err(FetchError::BreakerOpen),
        }
    }

    fn settle(&self, error: Option<&FetchError>) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        let outage = error.is_some_and(FetchError::is_outage);
        let next = match (&*b, outage) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, true)
                if failures + 1 < self.settings.breaker_failures =>
            {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            (_, true) => Breaker::Open {
                until: Instant::now() + self.settings.breaker_open,
            },
        };
        let state = match next {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { .. } => BreakerState::Open,
            Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        if state == BreakerState::Open && !matches!(*b, Breaker::Open { .. }) {
            tracing::warn!(upstream = %self.settings.origin, "circuit breaker opened");
        }
        *b = next;
        drop(b);
        self.publish_state(state);
    }

    fn publish_state(&self, state: BreakerState) {
        let v = match state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.metrics.set_breaker(&self.settings.origin, v);
    }
}

/// `base × 2^(attempt-1)`, scaled by a random factor in [0.5, 1.5).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let mut r = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut r);
    let jitter = 0.5 + f64::from(u16::from_le_bytes(r)) / 65_536.0;
    base.mul_f64(f64::from(1u32 << attempt.min(10).saturating_sub(1)) * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter() {
        let base = Duration::from_millis(100);
        for attempt in 1..=3 {
            let d = backoff(base, attempt);
            let nominal = 100.0 * f64::from(1u32 << (attempt - 1));
            let ms = d.as_secs_f64() * 1000.0;
            assert!(ms >= nominal * 0.5 && ms < nominal * 1.5, "{attempt}: {ms}");
        }
    }

    #[test]
    fn errors_are_classified() {
        assert!(!FetchError::NotFound.allows_stale());
        assert!(!FetchError::Status(403).allows_stale());
        assert!(!FetchError::Malformed(String::new()).allows_stale());
        assert!(FetchError::BreakerOpen.allows_stale());
        assert!(FetchError::Status(503).allows_stale());
        assert!(FetchError::Status(503).is_retryable());
        assert!(!FetchError::Status(500).is_retryable());
        assert!(FetchError::Status(500).is_outage());
        assert!(!FetchError::Malformed(String::new()).is_outage());
    }
}
