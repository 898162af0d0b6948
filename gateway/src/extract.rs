//! Request parts that several feature routers read: `X-Holder`, the holder a city app acts
//! for. (The caller and the purpose have their extractors beside their types.)

use axum::extract::FromRequestParts;
use cert_store::HolderId;
use http::StatusCode;
use http::request::Parts;

use crate::error::ApiError;

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
