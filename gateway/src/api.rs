//! The router of the mTLS listener: every feature's routes, each declared once together with
//! its OpenAPI entry (`utoipa_axum::routes!`), behind the request gate ([`crate::gate`]), and
//! the OpenAPI 3.1 document those declarations make.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use http::header;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::state::Gateway;
use crate::{admin, audit, data, documents, gate, licences, matching};

/// Builds the router of the mTLS listener.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let (router, _) = features().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(from_fn_with_state(gateway.clone(), gate::gate))
        .layer(from_fn(gate::request_id))
        .with_state(gateway)
}

/// Every feature's routes with their OpenAPI entries.
fn features() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi))
        .merge(admin::routes())
        .merge(licences::routes())
        .merge(documents::routes())
        .merge(data::routes())
        .merge(matching::routes())
        .merge(audit::routes())
}

/// The OpenAPI document of every route the router serves (made from the same declarations).
pub fn document() -> utoipa::openapi::OpenApi {
    features().into_openapi()
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi() -> impl IntoResponse {
    static DOC: LazyLock<String> =
        LazyLock::new(|| document().to_pretty_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str())
}

/// The document's header: title, description and the tags the routes use.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "certgate",
        description = "Gateway for electronic licences, electronic seals, shared data and policy matching. \
Every caller is a department system authenticated by its TLS client certificate \
(SAN URI urn:certgate:dept:<USCC>). Errors are JSON {code, message, request_id}."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "seals", description = "Electronic seals (电子印章) and the keys that verify them"),
        (name = "licences", description = "Electronic licences (电子证照): issue, query, verify, check, lifecycle, status lists"),
        (name = "data", description = "Shared-data exchange (数据共享): records of departments' source systems, cached, filtered per department and purpose"),
        (name = "proofs", description = "No-proof checks (无证明): signed yes/no proofs instead of paper certificates"),
        (name = "policies", description = "Policy finds the enterprise (政策找企业): matching both ways with explanations, search, the push feed"),
        (name = "audit", description = "The tamper-evident access log: entries, checkpoints, proofs, the holder's view"),
        (name = "holders", description = "Holder consent (用证授权) and show-codes (一码亮证), through city apps"),
        (name = "identity", description = "Who the gateway takes the caller for"),
        (name = "admin", description = "Operating the gateway"),
        (name = "meta", description = "This document"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;
