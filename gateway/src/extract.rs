//! What the feature routers share about a request: `X-Holder` (the holder a city app acts
//! for), and the note a handler leaves for the request's access-log leaf.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use cert_store::HolderId;
use http::StatusCode;
use http::request::Parts;

use crate::error::ApiError;

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
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "CG-LIC-001",
                        "X-Holder: not a USCC or citizen id",
                    )
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
                StatusCode::BAD_REQUEST,
                "CG-LIC-001",
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
                StatusCode::FORBIDDEN,
                "CG-LIC-002",
                "the holder app acts for the holder named in X-Holder, and this is another holder's",
            ))
        }
    }
}
