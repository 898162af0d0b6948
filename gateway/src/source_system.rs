//! A small sample source system (部门业务系统): an HTTPS server that answers
//! `GET /<collection>/<key>` with a JSON record, for the demo and the tests. It can be told to
//! answer slowly, with an error status, with a malformed or oversized body, or to drop every
//! connection, so that the exchange meets real failures over real sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// How the source system misbehaves, for every request until changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fault {
    /// Answers normally.
    #[default]
    None,
    /// Waits this long before answering.
    Delay(Duration),
    /// Answers with this status and an empty body.
    Status(u16),
    /// Answers 200 with a body that is not JSON.
    Malformed,
    /// Answers 200 with a JSON string of this many bytes.
    Oversized(usize),
    /// Closes every connection as soon as it is accepted.
    Down,
}

/// What a running source system holds and how it behaves; shared with the test or demo
/// that started it.
#[derive(Debug, Default)]
pub struct Controls {
    records: RwLock<HashMap<String, Bytes>>,
    fault: Mutex<Fault>,
    calls: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
}

impl Controls {
    /// Sets (or replaces) the record of `key`.
    pub fn put(&self, key: &str, record: &Value) {
        if let Ok(mut r) = self.records.write() {
            r.insert(key.to_owned(), Bytes::from(record.to_string()));
        }
    }

    /// Removes the record of `key`.
    pub fn remove(&self, key: &str) {
        if let Ok(mut r) = self.records.write() {
            r.remove(key);
        }
    }

    /// Sets the fault every request meets from now on.
    pub fn set_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    /// Requests received for `key`.
    pub fn calls(&self, key: &str) -> u64 {
        self.calls
            .lock()
            .map(|c| c.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_calls(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    fn fault(&self) -> Fault {
        self.fault.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

/// A running source system; stops when dropped.
#[derive(Debug)]
pub struct SourceSystem {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its records and behaviour.
    pub controls: Arc<Controls>,
    task: JoinHandle<()>,
}

impl Drop for SourceSystem {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a source system could not start.
#[derive(Debug, thiserror::Error)]
#[error("source system: {0}")]
pub struct SourceError(String);

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SourceError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| SourceError(format!("{}: {e}", path.display())))
}

impl SourceSystem {
    /// Starts a source system on `addr` (port 0 for any) with the server certificate and key
    /// given; with `client_ca`, it accepts only clients with a certificate from that CA.
    pub async fn start(
        addr: SocketAddr,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<SourceSystem, SourceError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SourceError(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs(ca)? {
                    roots.add(c).map_err(|e| SourceError(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| SourceError(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| SourceError(format!("{}: {e}", key.display())))?;
        let mut config = builder
            .with_single_cert(load_certs(cert)?, key)
            .map_err(|e| SourceError(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| SourceError(format!("cannot listen on {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SourceError(e.to_string()))?;
        let controls = Arc::new(Controls::default());
        let task = tokio::spawn(accept_loop(listener, acceptor, controls.clone()));
        Ok(SourceSystem {
            addr,
            controls,
            task,
        })
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, controls: Arc<Controls>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if controls.fault() == Fault::Down {
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let controls = controls.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req| answer(controls.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn answer(
    controls: Arc<Controls>,
    req: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, SourceError> {
    let key = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    controls.total.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut calls) = controls.calls.lock() {
        *calls.entry(key.clone()).or_insert(0) += 1;
    }
    let respond = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    // The record is read when the request arrives; a delay is then spent "on the way back".
    let record = controls
        .records
        .read()
        .ok()
        .and_then(|r| r.get(&key).cloned());
    match controls.fault() {
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::Status(s) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(respond(status, Bytes::new()));
        }
        Fault::Malformed => {
            return Ok(respond(
                StatusCode::OK,
                Bytes::from_static(b"{\"name\": \"unterminated"),
            ));
        }
        Fault::Oversized(n) => {
            let body = format!("\"{}\"", "x".repeat(n));
            return Ok(respond(StatusCode::OK, Bytes::from(body)));
        }
        // Connections opened before the fault are cut mid-request.
        Fault::Down => return Err(SourceError("down".into())),
        Fault::None => {}
    }
    Ok(match record {
        Some(body) => respond(StatusCode::OK, body),
        None => respond(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    })
}
