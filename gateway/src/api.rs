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
use http_body_util::BodyExt;
use serde::Serialize;
use utoipa::OpenApi;

use crate::config::{Role, RouteClass};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{AccessNote, NoteSlot};
use crate::identity::{Caller, PeerIdentity, Refusal};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::{Gateway, LoadSummary};
use crate::{audit, data, licences, matching};
use tlog::{LEAF_VERSION, Leaf};

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
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let media = v.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/json")
        })
}

fn not_json() -> ApiError {
    ApiError::new(
        http::StatusCode::BAD_REQUEST,
        "CG-REQ-007",
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
                http::StatusCode::BAD_REQUEST,
                "CG-REQ-007",
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
            message: bounded_message(err.message),
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

/// Longest error message sent, in characters: a message that quotes what the client sent
/// (a 900 KB tag, say) is cut, so an error is never larger than a few hundred bytes.
pub const MAX_MESSAGE_CHARS: usize = 300;

fn bounded_message(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    cut.push_str("… (cut)");
    cut
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    // aws-lc's system RNG does not fail on supported platforms; fall back to zeros loudly.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        tracing::error!("system random number generator failed");
    }
    hex::encode(bytes)
}

/// The headers a request may carry once: a repeated one is refused (the first would win in
/// one place and the last in another).
const SINGLE_HEADERS: &[&str] = &[
    "x-purpose",
    "x-case-id",
    "x-consent",
    "x-holder",
    "content-type",
    "content-length",
];

/// Refuses unidentified callers, bounds the body and the time of every request, and counts it.
async fn gate(State(gateway): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    // The handler and the log append run in their own task: a client that goes away
    // mid-request cannot cancel a change half-way or leave it without its leaf.
    tokio::spawn(gate_inner(gateway, req, next))
        .await
        .unwrap_or_else(|_| ApiError::internal().into_response())
}

/// What the gate reads of a request before anything runs, for the leaf and the metrics.
struct RequestFacts {
    started: Instant,
    route: String,
    ctx: Option<Arc<ConnectionContext>>,
    method: http::Method,
    path: String,
    request_id: Option<String>,
    purpose: Option<crate::purpose::Purpose>,
    case_id: Option<String>,
}

impl RequestFacts {
    fn read(req: &Request) -> RequestFacts {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        RequestFacts {
            started: Instant::now(),
            route: req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |m| m.as_str())
                .to_owned(),
            ctx: req.extensions().get::<Arc<ConnectionContext>>().cloned(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
            // The log records a purpose only as the extractor would accept it.
            purpose: header("x-purpose").and_then(|v| crate::purpose::parse(v).ok()),
            case_id: header("x-case-id")
                .filter(|v| crate::purpose::is_code(v))
                .map(|v| redact_citizen_ids(v).into_owned()),
        }
    }
}

async fn gate_inner(gateway: Arc<Gateway>, mut req: Request, next: Next) -> Response {
    let serving = gateway.access_log.serving();
    let facts = RequestFacts::read(&req);
    let slot = NoteSlot::default();
    let identity = resolve_caller(&gateway, facts.ctx.as_deref());
    let department = match &identity {
        Ok(caller) => Some(caller.department.clone()),
        Err((_, named)) => named.clone(),
    };
    let response = match identity {
        Err((refusal, _)) => refuse(&refusal, facts.ctx.as_deref()),
        Ok(caller) => {
            if let Some(refused) = repeated_header(&req) {
                refused.into_response()
            } else if !gateway.access_log.is_healthy() {
                // Nothing is served that cannot be logged: refuse before the handler runs.
                ApiError::log_unavailable().into_response()
            } else if let Some(limited) =
                gateway.rate_limited(&caller, route_class(&facts.method, &facts.route))
            {
                limited
            } else {
                req.extensions_mut().insert(caller);
                req.extensions_mut().insert(slot.clone());
                serve(&gateway, req, next).await
            }
        }
    };
    let mut response = response;
    let leaf = leaf_of(&gateway, &facts, department.as_ref(), &mut response, &slot);
    if let Err(e) = gateway.access_log.append_served(leaf, serving).await {
        // The response is withheld: nothing leaves the gateway unlogged.
        tracing::error!(error = %e, "access log append failed; response withheld");
        response = ApiError::log_unavailable().into_response();
    }
    record_metrics(&gateway, &facts, department.as_ref(), &response);
    response
}

/// The caller of a request: the connection's identity (read once, after the handshake) checked
/// against the current CRLs and department table, so a reload that revokes, disables or
/// changes a department applies to open and resumed connections too. A refusal carries the
/// department the certificate named, when it named one.
fn resolve_caller(
    gateway: &Gateway,
    ctx: Option<&ConnectionContext>,
) -> Result<Caller, (Refusal, Option<cert_store::Uscc>)> {
    let Some(ctx) = ctx else {
        return Err((Refusal::NoCertificate, None));
    };
    let live = gateway.live();
    let revoked_since = ctx
        .identity
        .revocation_key
        .as_ref()
        .is_some_and(|(issuer, serial)| live.revoked.contains(issuer, serial));
    match &ctx.identity.caller {
        Ok(caller) if revoked_since => Err((Refusal::Revoked, Some(caller.department.clone()))),
        Ok(caller) => match live.departments.get(&caller.department) {
            None => Err((
                Refusal::UnknownDepartment(caller.department.clone()),
                Some(caller.department.clone()),
            )),
            Some(d) if !d.enabled => Err((
                Refusal::DepartmentDisabled(caller.department.clone()),
                Some(caller.department.clone()),
            )),
            Some(d) => Ok(Caller {
                name: d.name.clone(),
                roles: d.roles.clone(),
                ..caller.clone()
            }),
        },
        Err(refusal) => {
            let named = match refusal {
                Refusal::UnknownDepartment(d) | Refusal::DepartmentDisabled(d) => Some(d.clone()),
                _ => None,
            };
            Err((refusal.clone(), named))
        }
    }
}

/// The answer to a refused caller; an HTTP/1.1 connection is closed after it.
fn refuse(refusal: &Refusal, ctx: Option<&ConnectionContext>) -> Response {
    tracing::warn!(%refusal, certificate = ?ctx.and_then(|c| c.identity.certificate.as_ref()), "caller refused");
    let mut response = ApiError::from(refusal).into_response();
    if ctx.is_some_and(|c| c.protocol == "HTTP/1.1") {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A refusal when a header that may appear once appears more often.
fn repeated_header(req: &Request) -> Option<ApiError> {
    SINGLE_HEADERS
        .iter()
        .find(|name| req.headers().get_all(**name).iter().nth(1).is_some())
        .map(|name| {
            ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "CG-REQ-008",
                format!("header `{name}` appears more than once; send it once"),
            )
        })
}

/// The budget class of a route.
fn route_class(method: &http::Method, route: &str) -> RouteClass {
    const VERIFY: &[&str] = &[
        "/v1/licences/verify",
        "/v1/seals/verify",
        "/v1/proofs/verify",
        "/v1/proofs/{proof_type}",
        "/v1/licences/{id}/check",
        "/v1/show-codes/redeem",
        "/v1/policies/match",
    ];
    if route == "/v1/audit/export" {
        RouteClass::Export
    } else if VERIFY.contains(&route) {
        RouteClass::Verify
    } else if method == http::Method::GET || method == http::Method::HEAD {
        RouteClass::Read
    } else {
        RouteClass::Write
    }
}

/// Reads the body within the size limit and runs the handler in a task of its own, so that a
/// panic becomes a 500 with its leaf. Reading the body counts against the request timeout,
/// and so does a read; a change, once its handler runs, is never cut off half-way (stores,
/// upstreams and the log bound it with their own timeouts).
async fn serve(gateway: &Gateway, req: Request, next: Next) -> Response {
    let timeout = gateway.settings.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let changes = !matches!(req.method(), &http::Method::GET | &http::Method::HEAD);
    let req =
        match tokio::time::timeout_at(deadline, buffer_body(req, gateway.settings.max_body_bytes))
            .await
        {
            Ok(Ok(req)) => req,
            Ok(Err(e)) => return e.into_response(),
            Err(_) => return ApiError::timeout().into_response(),
        };
    let handler = tokio::spawn(next.run(req));
    let ran = if changes {
        handler.await
    } else {
        match tokio::time::timeout_at(deadline, handler).await {
            Ok(ran) => ran,
            Err(_) => return ApiError::timeout().into_response(),
        }
    };
    ran.unwrap_or_else(|e| {
        tracing::error!(error = %e, "handler panicked");
        ApiError::internal().into_response()
    })
}

/// The request's leaf. Every text that came from the client is bounded and clean: no control
/// or bidi characters, at most [`MAX_LOGGED_CHARS`] characters, no raw citizen id.
fn leaf_of(
    gateway: &Gateway,
    facts: &RequestFacts,
    department: Option<&cert_store::Uscc>,
    response: &mut Response,
    slot: &NoteSlot,
) -> Leaf {
    let status = response.status().as_u16();
    let note = response
        .extensions_mut()
        .remove::<AccessNote>()
        .or_else(|| slot.take())
        .unwrap_or_default();
    let resource = note
        .resource
        .or_else(|| facts.route.contains('{').then(|| redact_path(&facts.path)));
    Leaf {
        v: LEAF_VERSION,
        seq: 0,
        time_ms: crate::state::unix_now_ms(),
        kind: "request".into(),
        request_id: facts.request_id.clone(),
        department: department.map(ToString::to_string),
        cert_sha256: facts
            .ctx
            .as_ref()
            .and_then(|c| c.identity.certificate.as_ref())
            .map(|c| c.fingerprint_sha256.clone()),
        peer: facts.ctx.as_ref().map(|c| c.peer.to_string()),
        method: Some(facts.method.to_string()),
        route: Some(facts.route.clone()),
        resource: resource.map(|r| log_text(&redact_citizen_ids(&r))),
        holder: note.holder.map(|h| gateway.pseudonym(&h)),
        matter: facts.purpose.as_ref().and_then(|p| p.matter.clone()),
        reason: facts
            .purpose
            .as_ref()
            .and_then(|p| p.reason.as_deref())
            .map(|r| log_text(&redact_citizen_ids(r))),
        case_id: facts.case_id.clone(),
        outcome: Leaf::outcome_of(status).into(),
        status,
        code: response
            .extensions()
            .get::<ApiError>()
            .map(|e| e.code.to_owned()),
        latency_us: facts.started.elapsed().as_micros() as u64,
        count: None,
        first_ms: None,
    }
}

fn record_metrics(
    gateway: &Gateway,
    facts: &RequestFacts,
    department: Option<&cert_store::Uscc>,
    response: &Response,
) {
    let m = &gateway.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            route: facts.route.clone(),
            status: response.status().as_u16(),
            department: department.map_or_else(|| "unidentified".to_owned(), ToString::to_string),
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels {
            route: facts.route.clone(),
        })
        .observe(facts.started.elapsed().as_secs_f64());
}

/// Longest text a leaf records from a client (resource, reason), in characters.
pub const MAX_LOGGED_CHARS: usize = 200;

/// `value` as a leaf may hold it: control and bidi characters dropped, at most
/// [`MAX_LOGGED_CHARS`] characters; a longer value keeps its start and the SHA-256 of the
/// whole, so two long values stay told apart.
fn log_text(value: &str) -> String {
    let clean: String = value
        .chars()
        .filter(|c| !c.is_control() && !cert_store::text::is_bidi_control(*c))
        .collect();
    if clean.chars().count() <= MAX_LOGGED_CHARS {
        return clean;
    }
    let digest = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(value.as_bytes())[..8]);
    let head: String = clean.chars().take(MAX_LOGGED_CHARS - 26).collect();
    format!("{head}…sha256:{digest}")
}

/// Replaces every token of `text` (a run of letters and digits) shaped like a citizen id with
/// `[citizen-id]`: raw citizen ids never enter the log, whichever field a client put them in.
fn redact_citizen_ids(text: &str) -> std::borrow::Cow<'_, str> {
    let looks_like_citizen_id = |token: &str| {
        (15..=18).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'X' || b == b'x')
            && (token.parse::<cert_store::CitizenId>().is_ok()
                || token.parse::<cert_store::Uscc>().is_err())
    };
    if !text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(looks_like_citizen_id)
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if looks_like_citizen_id(token) {
            out.push_str("[citizen-id]");
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    std::borrow::Cow::Owned(out)
}

/// The request path as the access log may record it: percent-decoded segment by segment, with
/// anything shaped like a citizen id replaced (a client that put one where it does not
/// belong), since raw citizen ids never enter the log.
fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let decoded = percent_decode_lossy(seg);
            let trimmed = decoded.trim();
            if trimmed.parse::<cert_store::CitizenId>().is_ok() {
                "[citizen-id]".to_owned()
            } else {
                redact_citizen_ids(trimmed).into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `%XX` sequences decoded, anything undecodable kept as it was.
fn percent_decode_lossy(seg: &str) -> String {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the whole body, refusing it past `limit` bytes.
///
/// Over HTTP/1 a declared length over the limit is refused before any of the body is read, and
/// the connection closes after the answer. Over HTTP/2 the stream is the client's to finish: an
/// answer sent while the client is still sending reaches it as a stream reset rather than as
/// the 413, so the rest of an oversized body is read and dropped first — up to
/// [`DRAIN_FACTOR`] times the limit (the request timeout bounds the time); past that the stream
/// is reset.
async fn buffer_body(req: Request, limit: usize) -> Result<Request, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let h2 = req.version() >= http::Version::HTTP_2;
    if !h2 && declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let json = is_json(req.headers());
    let (parts, mut body) = req.into_parts();
    let mut bytes = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ApiError::unreadable_body());
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            if !h2 || seen > limit.saturating_mul(DRAIN_FACTOR) {
                return Err(ApiError::body_too_large(limit));
            }
            continue;
        }
        bytes.extend_from_slice(&data);
    }
    if seen > limit {
        return Err(ApiError::body_too_large(limit));
    }
    // Every body the API takes is JSON, and says so: nothing is parsed on a guess.
    if !bytes.is_empty() && !json {
        return Err(not_json());
    }
    Ok(Request::from_parts(parts, Body::from(bytes.freeze())))
}

/// How many times the body limit an HTTP/2 client may send before its oversized stream is reset
/// rather than answered 413.
pub const DRAIN_FACTOR: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_text_is_bounded_clean_and_free_of_citizen_ids() {
        for (input, expected) in [
            ("审批 11010519491231002X 事项", "审批 [citizen-id] 事项"),
            ("id=11010519491231002x;", "id=[citizen-id];"),
            // A USCC stays: it names an organisation, not a person.
            (
                "dataset:tax/914403001922038216",
                "dataset:tax/914403001922038216",
            ),
            (
                "dataset:tax/91110108551385082Q",
                "dataset:tax/91110108551385082Q",
            ),
        ] {
            assert_eq!(redact_citizen_ids(input), expected, "{input}");
        }
        assert_eq!(log_text("seal:a\0b\r\n\u{202E}c"), "seal:abc");
        let long = log_text(&"字".repeat(5000));
        assert!(long.chars().count() <= MAX_LOGGED_CHARS);
        assert!(long.contains("…sha256:"), "{long}");
        assert_ne!(log_text(&"字".repeat(5000)), log_text(&"字".repeat(5001)));
        let message = bounded_message("x".repeat(10_000));
        assert!(message.chars().count() <= MAX_MESSAGE_CHARS + 10);
    }

    #[test]
    fn routes_fall_in_their_budget_classes() {
        for (method, route, class) in [
            (http::Method::GET, "/v1/licences/{id}", RouteClass::Read),
            (http::Method::POST, "/v1/licences", RouteClass::Write),
            (
                http::Method::POST,
                "/v1/licences/verify",
                RouteClass::Verify,
            ),
            (
                http::Method::POST,
                "/v1/show-codes/redeem",
                RouteClass::Verify,
            ),
            (http::Method::GET, "/v1/audit/export", RouteClass::Export),
            (http::Method::DELETE, "/v1/policies/{id}", RouteClass::Write),
            (http::Method::GET, "unmatched", RouteClass::Read),
        ] {
            assert_eq!(route_class(&method, route), class, "{method} {route}");
        }
    }

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
        // Percent-encoded, padded or inside a longer segment: still redacted.
        assert_eq!(
            redact_path("/v1/data/h/11010519491231002%58%20"),
            "/v1/data/h/[citizen-id]"
        );
        assert_eq!(
            redact_path("/v1/data/h/id-11010519491231002X"),
            "/v1/data/h/id-[citizen-id]"
        );
    }
}
