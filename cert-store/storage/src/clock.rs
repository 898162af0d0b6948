//! The clock: the one place that reads the system time. Everything else takes the time as a
//! parameter or a [`Clock`], so that tests can fix it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where the current time comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Seconds since the Unix epoch.
    fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one reading of the system time
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that stays where it is set (tests).
#[derive(Debug)]
pub struct FixedClock(std::sync::atomic::AtomicI64);

impl FixedClock {
    /// A clock at `ms` milliseconds since the epoch.
    pub fn at_ms(ms: i64) -> FixedClock {
        FixedClock(std::sync::atomic::AtomicI64::new(ms))
    }

    /// Moves the clock on by `ms`.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> i64 {
    SystemClock.now()
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn unix_now_ms() -> i64 {
    SystemClock.now_ms()
}

/// The system clock's time as a calendar time (UTC).
pub fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_now_ms()) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_stays_and_moves_when_told() {
        let c = FixedClock::at_ms(1_800_000_000_500);
        assert_eq!((c.now_ms(), c.now()), (1_800_000_000_500, 1_800_000_000));
        c.advance_ms(600);
        assert_eq!(c.now(), 1_800_000_001);
        assert!(SystemClock.now() > 1_700_000_000);
        assert!((now_utc().unix_timestamp() - unix_now()).abs() <= 1);
    }
}
