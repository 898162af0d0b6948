//! Calls to the departments' source systems through a [`Transport`] (the gateway's HTTPS
//! client): the total timeout, bounded retries with jitter, and a circuit breaker per source.
//! Every failure becomes a [`FetchError`] with its own answer; nothing here panics on what an
//! upstream sends.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::Observer;
use crate::catalog::UpstreamSettings;

/// A boxed future, for the object-safe [`Transport`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One attempt at fetching a JSON object from a source system: the gateway's HTTPS client (with
/// the upstream's CA and client certificate). Retries, the total timeout and the breaker are
/// the [`Upstream`]'s.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// GETs `url` and reads the JSON object it answers, at most `max_bytes` long.
    fn get<'a>(
        &'a self,
        url: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Map<String, Value>, FetchError>>;
}
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
    pub fn is_outage(&self) -> bool {
        match self {
            FetchError::Timeout(_) | FetchError::Unreachable(_) => true,
            FetchError::Status(s) => *s >= 500,
            _ => false,
        }
    }

    /// True when another attempt may succeed (a connection failure, a 502–504 answer).
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Unreachable(_) => true,
            FetchError::Status(s) => matches!(s, 502..=504),
            _ => false,
        }
    }
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
    transport: Arc<dyn Transport>,
    breaker: Mutex<Breaker>,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.settings.origin)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The upstream of `settings`, fetching through `transport`.
    pub fn new(
        settings: UpstreamSettings,
        transport: Arc<dyn Transport>,
        observer: Arc<dyn Observer>,
    ) -> Upstream {
        let upstream = Upstream {
            settings,
            transport,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            observer,
        };
        upstream.publish_state(BreakerState::Closed);
        upstream
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

    /// Fetches the JSON object at `url`, at most `max_bytes` long.
    pub async fn fetch(
        &self,
        url: &str,
        max_bytes: usize,
    ) -> Result<Map<String, Value>, FetchError> {
        self.admit()?;
        let started = Instant::now();
        let total = self.settings.timeout;
        let result = match tokio::time::timeout(total, self.attempts(url, max_bytes)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(total.as_millis())),
        };
        self.observer
            .fetched(&self.settings.origin, started.elapsed().as_secs_f64());
        self.settle(result.as_ref().err());
        result
    }

    async fn attempts(
        &self,
        url: &str,
        max_bytes: usize,
    ) -> Result<Map<String, Value>, FetchError> {
        let mut attempt = 0;
        loop {
            let result = self.transport.get(url, max_bytes).await;
            match result {
                Err(e) if e.is_retryable() && attempt < self.settings.retries => {
                    attempt += 1;
                    self.observer.retried(&self.settings.origin);
                    tokio::time::sleep(backoff(self.settings.retry_backoff, attempt)).await;
                }
                other => return other,
            }
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
        self.observer.breaker(&self.settings.origin, state);
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
