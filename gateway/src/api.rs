//! The HTTP API on the mTLS listener: routes, the layers every request passes (request id,
//! identity gate, body limit, timeout, metrics) and the OpenAPI document.
//!
//! Handlers are thin: extract, call one function, map the result.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::request::Parts;
use http::{HeaderValue, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use utoipa::OpenApi;

use crate::access_log::{AccessNote, LEAF_VERSION, Leaf, NoteSlot};
use crate::config::Role;
use crate::error::{ApiError, ErrorBody};
use crate::identity::{Caller, PeerIdentity, Refusal};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::{Gateway, LoadSummary};
use crate::{audit, data, licences, matching};

/// What a connection knows about itself; every request on it carries this in its extensions.
#[derive(Debug)]
pub struct ConnectionContext {
    /// The peer's identity, read once after the handshake.
    pub identity: PeerIdentity,
    /// `HTTP/1.1` or `HTTP/2`, from ALPN.
    pub protocol: &'static str,
    /// True when the TLS session was resumed rather than fully negotiated.
    pub resumed: bool,
    /// The peer's socket address.
    pub peer: SocketAddr,
}

/// The id of one request, in the `x-request-id` header, error bodies and logs.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Builds the router of the mTLS listener.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/admin/reload", post(reload))
        .route("/openapi.json", get(openapi))
        .route(
            "/v1/seals",
            post(licences::create_seal).get(licences::list_seals),
        )
        .route("/v1/seals/{id}", get(licences::seal))
        .route(
            "/v1/seals/{id}/certificate",
            get(licences::seal_certificate),
        )
        .route("/v1/seals/{id}/revoke", post(licences::revoke_seal))
        .route("/v1/seals/{id}/sign", post(crate::documents::sign))
        .route("/v1/seals/verify", post(crate::documents::verify))
        .route("/v1/seal-cas", get(crate::documents::seal_cas))
        .route("/v1/admin/seal-cas", post(crate::documents::add_seal_ca))
        .route(
            "/v1/admin/seal-cas/{id}",
            axum::routing::delete(crate::documents::remove_seal_ca),
        )
        .route("/v1/seal-ca.pem", get(licences::seal_ca))
        .route("/.well-known/jwks.json", get(licences::jwks))
        .route("/v1/licence-types", get(licences::licence_types))
        .route(
            "/v1/licences",
            post(licences::issue).get(licences::licences_by_holder),
        )
        .route("/v1/licences/verify", post(licences::verify))
        .route("/v1/licences/{id}", get(licences::licence))
        .route("/v1/licences/{id}/check", post(licences::check))
        .route("/v1/licences/{id}/suspend", post(licences::suspend))
        .route("/v1/licences/{id}/resume", post(licences::resume))
        .route("/v1/licences/{id}/revoke", post(licences::revoke))
        .route("/v1/licences/{id}/renew", post(licences::renew))
        .route("/v1/status-lists/{n}", get(licences::status_list))
        .route("/v1/consents", post(licences::create_consent))
        .route("/v1/consents/{id}/revoke", post(licences::revoke_consent))
        .route("/v1/show-codes", post(licences::create_show_code))
        .route("/v1/show-codes/redeem", post(licences::redeem_show_code))
        .route("/v1/datasets", get(data::datasets))
        .route("/v1/data/{dataset}/{key}", get(data::record))
        .route(
            "/v1/data/{dataset}/{key}/invalidate",
            post(data::invalidate_key),
        )
        .route(
            "/v1/data/{dataset}/invalidate",
            post(data::invalidate_dataset),
        )
        .route("/v1/proof-types", get(data::proof_types))
        .route("/v1/proofs/verify", post(data::verify_proof))
        .route("/v1/proofs/{proof_type}", post(data::issue_proof))
        .route("/v1/policies", post(matching::publish))
        .route("/v1/policies/match", post(matching::match_enterprise))
        .route("/v1/policies/search", get(matching::search))
        .route(
            "/v1/policies/{id}",
            get(matching::policy).delete(matching::withdraw),
        )
        .route(
            "/v1/policies/{id}/eligible-enterprises",
            get(matching::eligible_enterprises),
        )
        .route("/v1/enterprises", post(matching::upsert_profile))
        .route("/v1/push-feed", get(matching::push_feed))
        .route("/v1/audit/log-key", get(audit::log_key))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/proof/inclusion", get(audit::inclusion))
        .route("/v1/audit/proof/consistency", get(audit::consistency))
        .route("/v1/audit/entries", get(audit::entries))
        .route("/v1/audit/holder-view", get(audit::holder_view))
        .route("/v1/audit/export", get(audit::export))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(from_fn_with_state(gateway.clone(), gate))
        .layer(from_fn(request_id))
        .with_state(gateway)
}

/// The authenticated caller of a request; present only when the identity gate let it through.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The gate puts the caller, with the department table's current roles, here.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
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
        let bad = |m: String| ApiError::new(http::StatusCode::BAD_REQUEST, "CG-REQ-007", m);
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(bad("send the body as Content-Type: application/json".into()));
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
                    http::StatusCode::BAD_REQUEST,
                    "CG-REQ-007",
                    format!("invalid query parameters: {}", e.body_text()),
                )
            })
    }
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
        protocol: ctx.protocol,
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
) -> Result<Json<LoadSummary>, ApiError> {
    require(&caller, Role::Admin)?;
    tracing::info!(department = %caller.department, "reload requested over the API");
    let summary = tokio::task::spawn_blocking(move || gateway.reload())
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::reload_failed)?;
    Ok(Json(summary))
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi() -> impl IntoResponse {
    static DOC: LazyLock<String> =
        LazyLock::new(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str())
}

/// The OpenAPI description of every route on the mTLS listener.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "certgate",
        description = "Gateway for electronic licences, electronic seals, shared data and policy matching. \
Every caller is a department system authenticated by its TLS client certificate \
(SAN URI urn:certgate:dept:<USCC>). Errors are JSON {code, message, request_id}."
    ),
    paths(whoami, reload, openapi,
        licences::create_seal, licences::list_seals, licences::seal, licences::seal_certificate,
        licences::revoke_seal, crate::documents::sign, crate::documents::verify, crate::documents::seal_cas,
        crate::documents::add_seal_ca, crate::documents::remove_seal_ca, licences::seal_ca, licences::jwks, licences::licence_types,
        licences::issue, licences::licence, licences::licences_by_holder, licences::verify,
        licences::check, licences::suspend, licences::resume, licences::revoke, licences::renew,
        licences::status_list, licences::create_consent, licences::revoke_consent,
        licences::create_show_code, licences::redeem_show_code,
        audit::log_key, audit::checkpoint, audit::inclusion, audit::consistency, audit::entries,
        audit::holder_view, audit::export,
        data::datasets, data::record, data::invalidate_key, data::invalidate_dataset,
        data::proof_types, data::issue_proof, data::verify_proof,
        matching::publish, matching::withdraw, matching::match_enterprise, matching::search, matching::policy,
        matching::eligible_enterprises, matching::upsert_profile, matching::push_feed),
    components(schemas(ErrorBody, WhoAmI, LoadSummary)),
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

/// Gives every request an id, and writes it into the response header and any error body.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = new_request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    if let Some(err) = response.extensions_mut().remove::<ApiError>() {
        let status = response.status();
        let body = ErrorBody {
            code: err.code,
            message: err.message,
            request_id: id.clone(),
        };
        let headers = std::mem::take(response.headers_mut());
        response = (status, Json(body)).into_response();
        for (name, value) in headers.iter() {
            if name != header::CONTENT_LENGTH {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    // aws-lc's system RNG does not fail on supported platforms; fall back to zeros loudly.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        tracing::error!("system random number generator failed");
    }
    hex::encode(bytes)
}

/// Refuses unidentified callers, bounds the body and the time of every request, and counts it.
async fn gate(State(gateway): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    // The handler and the log append run in their own task: a client that goes away
    // mid-request cannot cancel a change half-way or leave it without its leaf.
    tokio::spawn(gate_inner(gateway, req, next))
        .await
        .unwrap_or_else(|_| ApiError::internal().into_response())
}

async fn gate_inner(gateway: Arc<Gateway>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let serving = gateway.access_log.serving();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let ctx = req.extensions().get::<Arc<ConnectionContext>>().cloned();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let purpose = req
        .headers()
        .get("x-purpose")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::purpose::parse(v).ok());
    let case_id = req
        .headers()
        .get("x-case-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(64).collect::<String>());
    let mut department = "unidentified".to_owned();
    let slot = NoteSlot::default();
    // One snapshot of the reloadable configuration serves both checks below.
    let live = gateway.live();
    let revoked_since = ctx
        .as_ref()
        .and_then(|c| c.identity.revocation_key.as_ref())
        .is_some_and(|(issuer, serial)| live.revoked.contains(issuer, serial));
    // The certificate was read once per connection; the department table is consulted on
    // every request, so a reload that disables a department or changes its roles applies to
    // open and resumed connections too.
    let identity = match ctx.as_ref().map(|c| &c.identity.caller) {
        Some(Ok(_)) if revoked_since => Some(Err(Refusal::Revoked)),
        Some(Ok(caller)) => Some(match live.departments.get(&caller.department) {
            None => Err(Refusal::UnknownDepartment(caller.department.clone())),
            Some(d) if !d.enabled => Err(Refusal::DepartmentDisabled(caller.department.clone())),
            Some(d) => Ok(Caller {
                name: d.name.clone(),
                roles: d.roles.clone(),
                ..caller.clone()
            }),
        }),
        Some(Err(refusal)) => Some(Err(refusal.clone())),
        None => None,
    };
    drop(live);
    let response = match identity {
        None => ApiError::internal().into_response(),
        Some(Err(refusal)) => {
            tracing::warn!(%refusal, certificate = ?ctx.as_ref().and_then(|c| c.identity.certificate.as_ref()), "caller refused");
            let mut response = ApiError::from(&refusal).into_response();
            if ctx.as_ref().is_some_and(|c| c.protocol == "HTTP/1.1") {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
        // Nothing is served that cannot be logged: refuse before the handler runs.
        Some(Ok(caller)) if !gateway.access_log.is_healthy() => {
            department = caller.department.to_string();
            ApiError::log_unavailable().into_response()
        }
        Some(Ok(caller)) => {
            department = caller.department.to_string();
            req.extensions_mut().insert(caller);
            req.extensions_mut().insert(slot.clone());
            let limit = gateway.settings.max_body_bytes;
            // Reading the body counts against the request's time too.
            let run = async move {
                match buffer_body(req, limit).await {
                    Err(e) => e.into_response(),
                    Ok(req) => next.run(req).await,
                }
            };
            match tokio::time::timeout(gateway.settings.request_timeout, run).await {
                Ok(r) => r,
                Err(_) => ApiError::timeout().into_response(),
            }
        }
    };
    let mut response = response;
    let status = response.status().as_u16();
    let note = response
        .extensions_mut()
        .remove::<AccessNote>()
        .or_else(|| slot.take())
        .unwrap_or_default();
    let leaf = Leaf {
        v: LEAF_VERSION,
        seq: 0,
        time_ms: crate::state::unix_now_ms(),
        kind: "request".into(),
        request_id,
        department: (department != "unidentified").then(|| department.clone()),
        cert_sha256: ctx
            .as_ref()
            .and_then(|c| c.identity.certificate.as_ref())
            .map(|c| c.fingerprint_sha256.clone()),
        peer: ctx.as_ref().map(|c| c.peer.to_string()),
        method: Some(method),
        route: Some(route.clone()),
        resource: note
            .resource
            .or_else(|| route.contains('{').then(|| redact_path(&path))),
        holder: note.holder.map(|h| gateway.pseudonym(&h)),
        matter: purpose.as_ref().and_then(|p| p.matter.clone()),
        reason: purpose.and_then(|p| p.reason),
        case_id,
        outcome: Leaf::outcome_of(status).into(),
        status,
        code: response
            .extensions()
            .get::<ApiError>()
            .map(|e| e.code.to_owned()),
        latency_us: started.elapsed().as_micros() as u64,
    };
    if let Err(e) = gateway.access_log.append_served(leaf, serving).await {
        // The response is withheld: nothing leaves the gateway unlogged.
        tracing::error!(error = %e, "access log append failed; response withheld");
        response = ApiError::log_unavailable().into_response();
    }
    let m = &gateway.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            status: response.status().as_u16(),
            department,
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The request path as the access log may record it: a segment that is a citizen id (a client
/// that put one where it does not belong) is replaced, since raw citizen ids never enter the log.
fn redact_path(path: &str) -> String {
    // Anything shaped like a citizen id is hidden, valid or not: a mistyped check character
    // still names a person.
    let looks_like_citizen_id = |seg: &str| {
        (15..=18).contains(&seg.len())
            && seg
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'X' || b == b'x')
    };
    path.split('/')
        .map(|seg| {
            if looks_like_citizen_id(seg) || seg.parse::<cert_store::CitizenId>().is_ok() {
                "[citizen-id]"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads the whole body, refusing it past `limit` bytes. A declared length over the limit is
/// refused before any of the body is read.
async fn buffer_body(req: Request, limit: usize) -> Result<Request, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::body_too_large(limit)),
        Err(_) => Err(ApiError::unreadable_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_path;

    #[test]
    fn anything_shaped_like_a_citizen_id_is_redacted() {
        assert_eq!(
            redact_path("/v1/data/h/11010519491231002X"),
            "/v1/data/h/[citizen-id]"
        );
        // A wrong check character or a lower-case x still names a person.
        assert_eq!(
            redact_path("/v1/data/h/11010519491231002x"),
            "/v1/data/h/[citizen-id]"
        );
        assert_eq!(
            redact_path("/v1/data/h/110105194912310021"),
            "/v1/data/h/[citizen-id]"
        );
        assert_eq!(
            redact_path("/v1/licences/1.2.156.3005.2.x"),
            "/v1/licences/1.2.156.3005.2.x"
        );
        assert_eq!(
            redact_path("/v1/data/tax/91110108551385082Q"),
            "/v1/data/tax/91110108551385082Q"
        );
    }
}
