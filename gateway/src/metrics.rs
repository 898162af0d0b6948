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
        registry.register("http_requests", "Requests served", requests.clone());
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
        Metrics {
            registry,
            requests,
            latency,
            handshake_failures,
            open_connections,
            rejected_connections,
            reload_failures,
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
