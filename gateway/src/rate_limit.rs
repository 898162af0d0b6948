//! Per-department request budgets: a token bucket per department and route class, sized from
//! the department table ([`RateLimits`]) on every request, so a reload applies at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cert_store::Uscc;

use crate::config::{RateLimits, RouteClass};

/// The buckets of every department that has made a request; at most four per department in
/// the table.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(Uscc, RouteClass), Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Takes one request from `department`'s `class` bucket at `now`; when it is empty, how
    /// long until one request is allowed again.
    pub fn take(
        &self,
        department: &Uscc,
        class: RouteClass,
        limits: &RateLimits,
        now: Instant,
    ) -> Result<(), Duration> {
        let (rate, burst) = (limits.rate(class), limits.burst(class));
        // A poisoned lock only means another request panicked mid-update: the counts stay
        // usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry((department.clone(), class))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::default();
        let dept: Uscc = "11110105MB0000001C".parse().unwrap();
        let limits = RateLimits {
            per_second: [10.0, 1.0, 10.0, 0.1],
        };
        let t0 = Instant::now();
        // Reads: a burst of 20 (two seconds' worth), then refused.
        for i in 0..20 {
            assert!(
                limiter.take(&dept, RouteClass::Read, &limits, t0).is_ok(),
                "{i}"
            );
        }
        let wait = limiter
            .take(&dept, RouteClass::Read, &limits, t0)
            .unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // A tenth of a second later, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.take(&dept, RouteClass::Read, &limits, t1).is_ok());
        assert!(limiter.take(&dept, RouteClass::Read, &limits, t1).is_err());
        // Classes and departments have buckets of their own; exports burst three at least.
        for _ in 0..3 {
            assert!(limiter.take(&dept, RouteClass::Export, &limits, t0).is_ok());
        }
        let wait = limiter
            .take(&dept, RouteClass::Export, &limits, t0)
            .unwrap_err();
        assert_eq!(wait.as_secs(), 10);
        let other: Uscc = "11110105MB0000002F".parse().unwrap();
        assert!(limiter.take(&other, RouteClass::Read, &limits, t1).is_ok());
    }
}
