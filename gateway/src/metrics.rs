//! Prometheus metrics of the gateway, served on the operations listener at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern, e.g. `/v1/whoami`, or `unmatched`.
    pub route: String,
    /// The HTTP status code.
    pub status: u16,
    /// The caller's USCC, or `unidentified`.
    pub department: String,
}

/// Labels of a request-latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route pattern.
    pub route: String,
}

/// Labels of a refused TLS handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Why the handshake failed, e.g. `no_certificate`, `unknown_issuer`, `revoked`, `timeout`.
    pub reason: &'static str,
}

/// Labels of a dataset's cache metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatasetLabels {
    /// The dataset id.
    pub dataset: String,
}

/// Labels of a cache eviction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// Why the entry left: `size` (the byte budget), `expired`, `explicit` (invalidated),
    /// `replaced`.
    pub cause: &'static str,
}

/// Labels of an upstream's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream's origin, e.g. `https://10.1.2.3:8443`.
    pub upstream: String,
}

/// Metrics of the shared-data exchange: the cache and the source systems behind it.
#[derive(Debug)]
pub struct ExchangeMetrics {
    /// Requests answered from a fresh cache entry.
    pub hits: Family<DatasetLabels, Counter>,
    /// Requests that fetched from the source system.
    pub misses: Family<DatasetLabels, Counter>,
    /// Requests that waited for another request's fetch of the same key.
    pub coalesced: Family<DatasetLabels, Counter>,
    /// Requests answered with a stale entry because the source failed.
    pub stale: Family<DatasetLabels, Counter>,
    /// Entries that left the cache, by cause.
    pub evictions: Family<EvictionLabels, Counter>,
    upstream_latency: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    upstream_retries: Family<UpstreamLabels, Counter>,
    breaker: Family<UpstreamLabels, Gauge>,
}

impl exchange::Observer for ExchangeMetrics {
    fn cache(&self, dataset: &str, event: exchange::CacheEvent) {
        let family = match event {
            exchange::CacheEvent::Hit => &self.hits,
            exchange::CacheEvent::Miss => &self.misses,
            exchange::CacheEvent::Coalesced => &self.coalesced,
            exchange::CacheEvent::Stale => &self.stale,
        };
        ExchangeMetrics::count(family, dataset);
    }

    fn evicted(&self, cause: &'static str) {
        self.evictions
            .get_or_create(&EvictionLabels { cause })
            .inc();
    }

    fn fetched(&self, origin: &str, seconds: f64) {
        self.observe_upstream(origin, seconds);
    }

    fn retried(&self, origin: &str) {
        self.upstream_retry(origin);
    }

    fn breaker(&self, origin: &str, state: exchange::upstream::BreakerState) {
        use exchange::upstream::BreakerState as B;
        let v = match state {
            B::Closed => 0,
            B::Open => 1,
            B::HalfOpen => 2,
        };
        self.set_breaker(origin, v);
    }
}

impl ExchangeMetrics {
    fn new() -> Self {
        ExchangeMetrics {
            hits: Family::default(),
            misses: Family::default(),
            coalesced: Family::default(),
            stale: Family::default(),
            evictions: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            upstream_retries: Family::default(),
            breaker: Family::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "exchange_cache_hits",
            "Data requests answered from the cache",
            self.hits.clone(),
        );
        registry.register(
            "exchange_cache_misses",
            "Data requests that fetched from the source system",
            self.misses.clone(),
        );
        registry.register(
            "exchange_cache_coalesced",
            "Data requests that waited for a fetch already under way",
            self.coalesced.clone(),
        );
        registry.register(
            "exchange_cache_stale",
            "Data requests answered with a stale record because the source failed",
            self.stale.clone(),
        );
        registry.register(
            "exchange_cache_evictions",
            "Cache entries removed, by cause",
            self.evictions.clone(),
        );
        registry.register(
            "exchange_upstream_duration_seconds",
            "Time of one fetch from a source system, retries included",
            self.upstream_latency.clone(),
        );
        registry.register(
            "exchange_upstream_retries",
            "Retried calls to source systems",
            self.upstream_retries.clone(),
        );
        registry.register(
            "exchange_upstream_breaker_state",
            "Circuit breaker per source system: 0 closed, 1 open, 2 half-open",
            self.breaker.clone(),
        );
    }

    /// Counts one event of a dataset in `family`.
    pub fn count(family: &Family<DatasetLabels, Counter>, dataset: &str) {
        family
            .get_or_create(&DatasetLabels {
                dataset: dataset.to_owned(),
            })
            .inc();
    }

    /// Records the time of one fetch from `origin`.
    pub fn observe_upstream(&self, origin: &str, seconds: f64) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: origin.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a retried call to `origin`.
    pub fn upstream_retry(&self, origin: &str) {
        self.upstream_retries
            .get_or_create(&UpstreamLabels {
                upstream: origin.to_owned(),
            })
            .inc();
    }

    /// Sets the breaker state of `origin`.
    pub fn set_breaker(&self, origin: &str, state: i64) {
        self.breaker
            .get_or_create(&UpstreamLabels {
                upstream: origin.to_owned(),
            })
            .set(state);
    }
}

/// Labels of a rate-limited request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLabels {
    /// The department's USCC.
    pub department: String,
    /// `read`, `write`, `verify` or `export`.
    pub class: &'static str,
}

/// The gateway's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests served, by route, status and department.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds, by route.
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Refused TLS handshakes, by reason.
    pub handshake_failures: Family<HandshakeLabels, Counter>,
    /// Connections currently open on the mTLS listener.
    pub open_connections: Gauge,
    /// Connections closed on accept because the connection limit was reached.
    pub rejected_connections: Counter,
    /// Configuration reloads that failed (the previous configuration stays in force).
    pub reload_failures: Counter,
    /// Requests refused because the department's budget for the route class was spent.
    pub rate_limited: Family<RateLabels, Counter>,
    /// Connections in their TLS handshake (not yet authenticated).
    pub handshaking: Gauge,
    /// The shared-data exchange.
    pub exchange: std::sync::Arc<ExchangeMetrics>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("certgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let handshake_failures = Family::<HandshakeLabels, Counter>::default();
        let open_connections = Gauge::default();
        let rejected_connections = Counter::default();
        let reload_failures = Counter::default();
        let rate_limited = Family::<RateLabels, Counter>::default();
        let handshaking = Gauge::default();
        registry.register("http_requests", "Requests served", requests.clone());
        registry.register(
            "rate_limited",
            "Requests refused because the department's budget for the route class was spent",
            rate_limited.clone(),
        );
        registry.register(
            "handshaking_connections",
            "Connections in their TLS handshake, not yet authenticated",
            handshaking.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Request latency from head to response",
            latency.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Refused TLS handshakes",
            handshake_failures.clone(),
        );
        registry.register(
            "open_connections",
            "Connections open on the mTLS listener",
            open_connections.clone(),
        );
        registry.register(
            "rejected_connections",
            "Connections closed because the connection limit was reached",
            rejected_connections.clone(),
        );
        registry.register(
            "config_reload_failures",
            "Configuration reloads that failed",
            reload_failures.clone(),
        );
        let exchange = ExchangeMetrics::new();
        exchange.register(&mut registry);
        Metrics {
            exchange: std::sync::Arc::new(exchange),
            registry,
            requests,
            latency,
            handshake_failures,
            open_connections,
            rejected_connections,
            reload_failures,
            rate_limited,
            handshaking,
        }
    }
}

impl Metrics {
    /// Encodes every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a refused handshake.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { reason })
            .inc();
    }
}
