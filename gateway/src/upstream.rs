//! The HTTPS client the exchange reaches source systems through: one hyper client per
//! upstream (rustls with the upstream's CA and, when configured, the gateway's client
//! certificate), its connect timeout, and an answer read as one bounded JSON object.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use exchange::catalog::UpstreamSettings;
use exchange::upstream::{BoxFuture, FetchError, Transport};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};

/// One upstream's HTTPS client.
pub struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// The client for one upstream; the reason, when its CA or client certificate is unusable.
    pub fn for_upstream(settings: &UpstreamSettings) -> Result<Arc<dyn Transport>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &settings.ca_file {
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let tls = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
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
        Ok(Arc::new(HttpTransport { client }))
    }

    async fn once(&self, url: &str, max_bytes: usize) -> Result<Map<String, Value>, FetchError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| FetchError::Unreachable(format!("bad URL: {e}")))?;
        let request = http::Request::get(uri)
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
}

impl Transport for HttpTransport {
    fn get<'a>(
        &'a self,
        url: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Map<String, Value>, FetchError>> {
        Box::pin(self.once(url, max_bytes))
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
