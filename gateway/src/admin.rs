//! Routes about the gateway itself: who it takes the caller for, and reloading its
//! configuration.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Role;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ConnectionContext, NoBody, require};
use crate::identity::Caller;
use crate::state::{Gateway, LoadSummary};

/// The routes of this module, each with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::new()
        .routes(routes!(whoami))
        .routes(routes!(reload))
}

/// The caller as the gateway sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The caller.
    #[serde(flatten)]
    pub caller: Caller,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// True when the TLS session was resumed.
    pub tls_session_resumed: bool,
}

/// Tells a department system who the gateway takes it for.
#[utoipa::path(get, path = "/v1/whoami", tag = "identity",
    responses(
        (status = 200, description = "The caller", body = WhoAmI),
        (status = 403, description = "Refused caller (CG-AUTH-00x)", body = ErrorBody),
    ))]
async fn whoami(caller: Caller, req: Request) -> Result<Json<WhoAmI>, ApiError> {
    let ctx = req
        .extensions()
        .get::<Arc<ConnectionContext>>()
        .ok_or_else(ApiError::internal)?;
    Ok(Json(WhoAmI {
        caller,
        protocol: ctx.protocol.as_str(),
        tls_session_resumed: ctx.resumed,
    }))
}

/// Reloads the department table, trust anchors and CRLs from the configuration file.
/// Open connections are kept; the next handshake sees the new material.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin",
    responses(
        (status = 200, description = "What is now in force", body = LoadSummary),
        (status = 403, description = "Not an admin (CG-AUTH-006)", body = ErrorBody),
        (status = 422, description = "Invalid configuration; the previous one stays (CG-CFG-001)", body = ErrorBody),
    ))]
async fn reload(
    State(gateway): State<Arc<Gateway>>,
    caller: Caller,
    _: NoBody,
) -> Result<Json<LoadSummary>, ApiError> {
    require(&caller, Role::Admin)?;
    tracing::info!(department = %caller.department, "reload requested over the API");
    let summary = tokio::task::spawn_blocking(move || gateway.reload())
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::reload_failed)?;
    Ok(Json(summary))
}
