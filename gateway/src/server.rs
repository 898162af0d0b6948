//! The listeners: the mTLS accept loop (connection limit, handshake timeout, identity read
//! once per connection, HTTP/1.1 or HTTP/2 by ALPN, graceful shutdown) and the plain-HTTP
//! operations listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::api;
use crate::extract::{ConnectionContext, Protocol};
use crate::identity;
use crate::state::Gateway;
use tlog::Leaf;

/// Serves the mTLS listener until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (up to `server.shutdown_grace_ms`) and returns.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let router = api::router(gateway.clone());
    let daily = tokio::spawn(crate::matching::rematch_daily(Arc::downgrade(&gateway)));
    let summaries = tokio::spawn(summarise_refusals(Arc::downgrade(&gateway)));
    let limit = gateway.connection_slots.clone();
    // Every connection holds a receiver: `true` asks it to finish what is in flight and close,
    // and the sender sees all closed when the last connection ends.
    let (drain, draining) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // One source may hold only its share of the slots while unauthenticated.
        let Some(pending) = gateway.preauth.admit(peer.ip()) else {
            gateway.metrics.rejected_connections.inc();
            gateway
                .preauth
                .refused(peer.ip(), "source_limit", crate::state::unix_now_ms());
            tracing::debug!(%peer, "too many handshakes from this source; connection closed");
            drop(tcp);
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            gateway.metrics.rejected_connections.inc();
            gateway
                .preauth
                .refused(peer.ip(), "connection_limit", crate::state::unix_now_ms());
            tracing::warn!(%peer, "connection limit reached; connection closed");
            drop(tcp);
            continue;
        };
        let gateway = gateway.clone();
        let router = router.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            serve_connection(&gateway, router, tcp, peer, draining, pending).await;
            drop(permit);
        });
    }
    drop(listener);
    daily.abort();
    summaries.abort();
    append_summaries(&gateway);
    gateway.begin_shutdown();
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    drop(draining);
    // No connection left means no receiver: nothing to tell then.
    let _ = drain.send(true);
    tokio::select! {
        () = drain.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(gateway.settings.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

async fn serve_connection(
    gateway: &Gateway,
    router: Router,
    tcp: TcpStream,
    peer: SocketAddr,
    mut draining: watch::Receiver<bool>,
    pending: crate::preauth::Pending,
) {
    let _ = tcp.set_nodelay(true);
    let live = gateway.live();
    gateway.metrics.handshaking.inc();
    let handshake = tokio::time::timeout(
        gateway.settings.handshake_timeout,
        live.acceptor.accept(tcp),
    )
    .await;
    gateway.metrics.handshaking.dec();
    drop(pending);
    let refused = |reason: &'static str| {
        gateway.metrics.handshake_failed(reason);
        gateway
            .preauth
            .refused(peer.ip(), reason, crate::state::unix_now_ms());
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            refused(reason);
            tracing::debug!(%peer, reason, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            refused("timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let ctx = Arc::new(ConnectionContext {
        identity: identity::identify(
            session.peer_certificates(),
            &live.departments,
            &live.revoked,
        ),
        protocol: if h2 { Protocol::Http2 } else { Protocol::Http1 },
        resumed: session.handshake_kind() == Some(HandshakeKind::Resumed),
        peer: peer.to_string(),
        source: peer.ip(),
        closing: tokio::sync::Notify::new(),
    });
    drop(live);

    gateway.metrics.open_connections.inc();
    let conn_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ctx.clone());
        router.clone().oneshot(req)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.settings.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    // Served until the peer leaves, or until the gateway drains or a request's refusal closes
    // the connection: then what is in flight is answered and the connection ends. A refused
    // caller's connection ends within `header_read_timeout` even if its peer never answers
    // the PING with which HTTP/2 closes gracefully.
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        why = close_asked(&mut draining, &conn_ctx) => {
            connection.as_mut().graceful_shutdown();
            match why {
                Close::Drain => connection.await,
                Close::Refused => {
                    let deadline = gateway.settings.header_read_timeout;
                    match tokio::time::timeout(deadline, connection.as_mut()).await {
                        Ok(ended) => ended,
                        Err(_) => {
                            tracing::debug!(%peer, "refused caller's connection cut off");
                            Ok(())
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
        // A request head hyper refused never reached the router: its answer (400, 414 or
        // 431) went out from hyper, and its leaf is written here.
        if let Some(status) = refused_head(&*e) {
            gateway
                .access_log
                .append_detached(head_refusal_leaf(&conn_ctx, status));
        }
    }
    gateway.metrics.open_connections.dec();
}

/// Why a connection is being closed.
enum Close {
    /// The gateway drains (or has stopped).
    Drain,
    /// A request on it was refused for want of a usable department.
    Refused,
}

/// Completes when the gateway drains or the connection was asked to close, saying which.
async fn close_asked(draining: &mut watch::Receiver<bool>, ctx: &ConnectionContext) -> Close {
    tokio::select! {
        _ = draining.wait_for(|d| *d) => Close::Drain,
        () = ctx.closing.notified() => Close::Refused,
    }
}

/// The largest request head (HTTP/1: the request line and headers; HTTP/2: the decoded
/// header list) the gateway reads, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header fields an HTTP/1 request may carry.
pub const MAX_HEADERS: usize = 64;

/// The status hyper answered a request head it could not take with, if that ended the
/// connection.
fn refused_head(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        Some(if e.to_string().contains("URI too long") {
            414
        } else {
            431
        })
    } else if e.is_parse() || e.is_parse_status() {
        Some(400)
    } else {
        None
    }
}

/// The leaf of a request head refused on an authenticated connection.
fn head_refusal_leaf(ctx: &ConnectionContext, status: u16) -> Leaf {
    Leaf {
        department: ctx
            .identity
            .caller
            .as_ref()
            .ok()
            .map(|c| c.department.to_string()),
        cert_sha256: ctx
            .identity
            .certificate
            .as_ref()
            .map(|c| c.fingerprint_sha256.clone()),
        peer: Some(ctx.peer.clone()),
        code: Some(crate::error::Code::MalformedHead.as_str().into()),
        ..Leaf::new(tlog::LeafKind::Request, crate::state::unix_now_ms(), status)
    }
}

/// Every window, writes the summaries of the handshakes refused in it to the access log.
async fn summarise_refusals(gateway: std::sync::Weak<Gateway>) {
    let Some(window) = gateway.upgrade().map(|g| g.refusal_window) else {
        return;
    };
    let mut tick = tokio::time::interval(window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        append_summaries(&gateway);
    }
}

fn append_summaries(gateway: &Gateway) {
    for leaf in gateway.preauth.take_summaries() {
        gateway.access_log.append_detached(leaf);
    }
}

/// A short label for a refused handshake, for metrics and logs.
fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_key_usage"
            }
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            _ => "invalid_certificate",
        },
        Some(_) => "protocol",
        None => "io",
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` over plain HTTP until `shutdown` completes.
pub async fn serve_ops(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(gateway);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "operations listener failed");
    }
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    match gateway.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(),
    )
}
