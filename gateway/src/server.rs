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
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::api::{self, ConnectionContext};
use crate::identity;
use crate::state::Gateway;

/// Serves the mTLS listener until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (up to `server.shutdown_grace_ms`) and returns.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let router = api::router(gateway.clone());
    let daily = tokio::spawn(crate::matching::rematch_daily(Arc::downgrade(&gateway)));
    let limit = Arc::new(Semaphore::new(gateway.settings.max_connections));
    let graceful = GracefulShutdown::new();
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            gateway.metrics.rejected_connections.inc();
            tracing::warn!(%peer, "connection limit reached; connection closed");
            drop(tcp);
            continue;
        };
        let gateway = gateway.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            serve_connection(&gateway, router, tcp, peer, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    daily.abort();
    gateway.begin_shutdown();
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
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
    watcher: Watcher,
) {
    let _ = tcp.set_nodelay(true);
    let live = gateway.live();
    let handshake = tokio::time::timeout(
        gateway.settings.handshake_timeout,
        live.acceptor.accept(tcp),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            gateway.metrics.handshake_failed(reason);
            gateway
                .access_log
                .append_detached(crate::access_log::Leaf::handshake(peer, reason));
            tracing::info!(%peer, reason, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            gateway.metrics.handshake_failed("timeout");
            gateway
                .access_log
                .append_detached(crate::access_log::Leaf::handshake(peer, "timeout"));
            tracing::info!(%peer, "TLS handshake timed out");
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
        protocol: if h2 { "HTTP/2" } else { "HTTP/1.1" },
        resumed: session.handshake_kind() == Some(HandshakeKind::Resumed),
        peer,
    });
    drop(live);

    gateway.metrics.open_connections.inc();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ctx.clone());
        router.clone().oneshot(req)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    gateway.metrics.open_connections.dec();
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
    if gateway.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
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
