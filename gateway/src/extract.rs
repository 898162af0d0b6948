//! What every feature router reads of a request, and nothing else: the connection, the caller
//! (read once per connection, checked on every request by the gate), the role check, JSON
//! bodies and query strings in the error model, `X-Holder` (the holder a city app acts for),
//! `X-Consent`, and the note a handler leaves for the request's access-log leaf. Feature
//! modules and the gate import from here; none imports the router.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use cert_store::HolderId;
use http::header;
use http::request::Parts;

use crate::config::Role;
use crate::error::{ApiError, Code};
use crate::identity::{Caller, PeerIdentity};
pub use crate::purpose::Purpose;

/// What a connection knows about itself; every request on it carries this in its extensions.
#[derive(Debug)]
pub struct ConnectionContext {
    /// The peer's identity, read once after the handshake.
    pub identity: PeerIdentity,
    /// HTTP/1.1 or HTTP/2, from ALPN.
    pub protocol: Protocol,
    /// True when the TLS session was resumed rather than fully negotiated.
    pub resumed: bool,
    /// The peer's socket address as the log records it, written once for the connection.
    pub peer: String,
    /// The peer's address, by which refusals are counted.
    pub source: std::net::IpAddr,
    /// Woken when the connection is to be closed once the requests in flight on it are
    /// answered (see [`ConnectionContext::close`]).
    pub closing: tokio::sync::Notify,
}

impl ConnectionContext {
    /// Asks the server to close this connection once the requests in flight on it are
    /// answered: HTTP/2 sends GOAWAY, HTTP/1.1 ends after the current response.
    pub fn close(&self) {
        self.closing.notify_one();
    }
}

/// The HTTP version a connection speaks, chosen by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

impl Protocol {
    /// `HTTP/1.1` or `HTTP/2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// The id of one request, in the `x-request-id` header, error bodies and logs.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The authenticated caller of a request; present only when the identity gate let it through.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The gate puts the caller, with the department table's current roles, here, for
        // the one extractor that takes it.
        parts
            .extensions
            .remove::<Caller>()
            .ok_or_else(ApiError::internal)
    }
}

/// Refuses a caller that lacks `role`.
pub fn require(caller: &Caller, role: Role) -> Result<(), ApiError> {
    if caller.has(role) {
        Ok(())
    } else {
        Err(ApiError::missing_role(role))
    }
}

/// A JSON request body. A body that does not parse is refused with `CG-REQ-007` and a message
/// naming the field at fault.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bad = |m: String| ApiError::new(Code::BadRequest, m);
        if !is_json(req.headers()) {
            return Err(not_json());
        }
        // The gate has already buffered the body within the size limit.
        let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .map_err(|_| ApiError::unreadable_body())?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." {
                    bad(format!("invalid JSON body: {}", e.inner()))
                } else {
                    bad(format!("invalid JSON body at `{path}`: {}", e.inner()))
                }
            })
    }
}

/// True when the request says its body is JSON.
pub fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let media = v.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/json")
        })
}

pub fn not_json() -> ApiError {
    ApiError::new(
        Code::BadRequest,
        "send the body as Content-Type: application/json",
    )
}

/// The body of a route that takes none: empty, or the empty JSON object `{}`; anything else
/// is refused with `CG-REQ-007` rather than ignored.
#[derive(Debug)]
pub struct NoBody;

impl<S: Send + Sync> axum::extract::FromRequest<S> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        // The gate has already buffered the body within the size limit.
        let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .map_err(|_| ApiError::unreadable_body())?;
        let empty_object = || {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes)
                .is_ok_and(|m| m.is_empty())
        };
        if bytes.iter().all(u8::is_ascii_whitespace) || empty_object() {
            Ok(NoBody)
        } else {
            Err(ApiError::new(
                Code::BadRequest,
                "this route takes no body (or `{}`)",
            ))
        }
    }
}

/// Query parameters. Unknown or malformed parameters are refused with `CG-REQ-007` and the
/// parser's reason, in the error model like every other error.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| {
                ApiError::new(
                    Code::BadRequest,
                    format!("invalid query parameters: {}", e.body_text()),
                )
            })
    }
}

/// What a handler tells the access log about the request it served: the resource touched and
/// the holder whose data it was (pseudonymised before it is written). Put it in the response
/// extensions.
#[derive(Debug, Clone, Default)]
pub struct AccessNote {
    /// The resource, e.g. a licence identifier.
    pub resource: Option<String>,
    /// The holder's id (USCC or citizen id).
    pub holder: Option<String>,
}

/// A place in the request's extensions where a handler notes what it touched as soon as it
/// knows, so that a request refused later (a 403 after the licence was looked up) still names
/// the licence and the holder's pseudonym in its leaf.
#[derive(Debug, Clone, Default)]
pub struct NoteSlot(Arc<std::sync::Mutex<Option<AccessNote>>>);

impl NoteSlot {
    /// Notes the resource and holder touched.
    pub fn record(&self, resource: &str, holder: &str) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(AccessNote {
                resource: Some(resource.to_owned()),
                holder: Some(holder.to_owned()),
            });
        }
    }

    /// Notes a resource that belongs to no holder.
    pub fn record_resource(&self, resource: &str) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(AccessNote {
                resource: Some(resource.to_owned()),
                holder: None,
            });
        }
    }

    /// What was noted, if anything.
    pub fn take(&self) -> Option<AccessNote> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// `X-Holder`: the holder (citizen or enterprise) a holder app acts for. The gate has already
/// refused a request that repeats the header.
#[derive(Debug, Clone)]
pub struct HolderHeader(Option<HolderId>);

impl<S: Send + Sync> FromRequestParts<S> for HolderHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("x-holder") {
            None => Ok(HolderHeader(None)),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<HolderId>().ok())
                .map(|h| HolderHeader(Some(h)))
                .ok_or_else(|| {
                    ApiError::new(Code::LicenceInvalid, "X-Holder: not a USCC or citizen id")
                }),
        }
    }
}

impl HolderHeader {
    /// The holder named, if any.
    pub fn holder(&self) -> Option<&HolderId> {
        self.0.as_ref()
    }

    /// The holder named; a holder app must name one.
    pub fn required(&self) -> Result<&HolderId, ApiError> {
        self.0.as_ref().ok_or_else(|| {
            ApiError::new(
                Code::LicenceInvalid,
                "X-Holder is required: name the holder the app acts for",
            )
        })
    }

    /// Refuses unless the header names `holder` (as stored: a canonical USCC or citizen id).
    pub fn require(&self, holder: &str) -> Result<(), ApiError> {
        let named = self.required()?;
        if named.as_str() == holder {
            Ok(())
        } else {
            Err(ApiError::new(
                Code::LicenceForbidden,
                "the holder app acts for the holder named in X-Holder, and this is another holder's",
            ))
        }
    }
}

/// `X-Consent`: the holder's consent token, when one is sent.
#[derive(Debug)]
pub struct ConsentHeader(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ConsentHeader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        match parts.headers.get("x-consent") {
            None => Ok(ConsentHeader(None)),
            Some(v) => v
                .to_str()
                .map(|t| ConsentHeader(Some(t.trim().to_owned())))
                .map_err(|_| ApiError::new(Code::LicenceInvalid, "X-Consent: not a token")),
        }
    }
}
