//! The request gate: every request on the mTLS listener passes these steps, in order, each a
//! function of its own — give it an id; read what the log needs ([`RequestFacts`]); resolve the
//! caller against the current CRLs and department table; refuse repeated single headers; refuse
//! while the log cannot be written; take from the department's budget; bound the body and the
//! time and run the handler, catching a panic; build the leaf ([`leaf_of`]) and append it,
//! durable before the response leaves; record the metrics. All but the id run in a task of
//! their own, which a client that goes away cannot cancel.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, header};
use http_body_util::BodyExt;

use crate::config::{Department, RouteClass};
use crate::error::{ApiError, Code, ErrorBody};
use crate::extract::{
    AccessNote, ConnectionContext, NoteSlot, Protocol, RequestId, is_json, not_json,
};
use crate::identity::{Caller, Refusal};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::Gateway;
use tlog::Leaf;

/// Gives every request an id, and writes it into the response header and any error body.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = new_request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    if let Some(err) = response.extensions_mut().remove::<ApiError>() {
        let status = response.status();
        let body = ErrorBody {
            code: err.code.as_str(),
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
    crate::state::lower_hex(&bytes)
}

/// The headers a request may carry once: a repeated one is refused (the first would win in
/// one place and the last in another).
static SINGLE_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("x-purpose"),
    HeaderName::from_static("x-case-id"),
    HeaderName::from_static("x-consent"),
    HeaderName::from_static("x-holder"),
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
];

/// Refuses unidentified callers, bounds the body and the time of every request, and counts it.
pub async fn gate(State(gateway): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
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
    let live = gateway.live();
    let identity = resolve_caller(
        &|id| live.departments.get(id),
        &|issuer, serial| live.revoked.contains(issuer, serial),
        facts.ctx.as_deref(),
    );
    let department = match &identity {
        Ok(caller) => Some(caller.department.clone()),
        Err((_, named)) => named.clone(),
    };
    let response = match identity {
        Err((refusal, _)) => {
            let response = refuse(&refusal, facts.ctx.as_deref());
            // A caller without a usable department has no budget: past the first few of its
            // source in a window its refusals are only counted in the window's summary.
            let own_leaf = facts.ctx.as_deref().is_none_or(|ctx| {
                gateway.preauth.refused_request(
                    ctx.source,
                    Code::from(&refusal).as_str(),
                    crate::state::unix_now_ms(),
                )
            });
            if !own_leaf {
                record_metrics(&gateway.metrics, &facts, department.as_ref(), &response);
                return response;
            }
            response
        }
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
    let pseudonym = |holder: &str| gateway.pseudonym(holder);
    let leaf = leaf_of(
        &pseudonym,
        &facts,
        department.as_ref(),
        &mut response,
        &slot,
    );
    if let Err(e) = gateway.access_log.append_served(leaf, serving).await {
        // The response is withheld: nothing leaves the gateway unlogged.
        tracing::error!(error = %e, "access log append failed; response withheld");
        response = ApiError::log_unavailable().into_response();
    }
    record_metrics(&gateway.metrics, &facts, department.as_ref(), &response);
    response
}

/// The caller of a request: the connection's identity (read once, after the handshake) checked
/// against the current CRLs and department table, so a reload that revokes, disables or
/// changes a department applies to open and resumed connections too. A refusal carries the
/// department the certificate named, when it named one.
fn resolve_caller<'a>(
    department: &dyn Fn(&cert_store::Uscc) -> Option<&'a Department>,
    revoked: &dyn Fn(&[u8], &[u8]) -> bool,
    ctx: Option<&ConnectionContext>,
) -> Result<Caller, (Refusal, Option<cert_store::Uscc>)> {
    let Some(ctx) = ctx else {
        return Err((Refusal::NoCertificate, None));
    };
    let revoked_since = ctx
        .identity
        .revocation_key
        .as_ref()
        .is_some_and(|(issuer, serial)| revoked(issuer, serial));
    match &ctx.identity.caller {
        Ok(caller) if revoked_since => Err((Refusal::Revoked, Some(caller.department.clone()))),
        Ok(caller) => match department(&caller.department) {
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

/// The answer to a refused caller; the connection is closed after it (HTTP/1.1 says so in
/// the answer, HTTP/2 with GOAWAY).
fn refuse(refusal: &Refusal, ctx: Option<&ConnectionContext>) -> Response {
    tracing::warn!(%refusal, certificate = ?ctx.and_then(|c| c.identity.certificate.as_ref()), "caller refused");
    let mut response = ApiError::from(refusal).into_response();
    if let Some(ctx) = ctx {
        ctx.close();
        if ctx.protocol == Protocol::Http1 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// A refusal when a header that may appear once appears more often.
fn repeated_header(req: &Request) -> Option<ApiError> {
    SINGLE_HEADERS
        .iter()
        .find(|name| req.headers().get_all(*name).iter().nth(1).is_some())
        .map(|name| {
            ApiError::new(
                Code::RepeatedHeader,
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

/// Reads the body within the size limit and runs the handler, so that a panic becomes a 500
/// with its leaf. Reading the body counts against the request timeout, and so does a read; a
/// change, once its handler runs, is never cut off half-way (stores, upstreams and the log
/// bound it with their own timeouts).
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
    // The gate's own task is the handler's: a read that runs out of time is dropped where it
    // stands.
    let handler = caught(next.run(req));
    if changes {
        handler.await
    } else {
        tokio::time::timeout_at(deadline, handler)
            .await
            .unwrap_or_else(|_| ApiError::timeout().into_response())
    }
}

/// The handler's response, or a 500 when it panics.
async fn caught(handler: impl std::future::Future<Output = Response>) -> Response {
    std::panic::AssertUnwindSafe(handler)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("handler panicked");
            ApiError::internal().into_response()
        })
}

/// The request's leaf. Every text that came from the client is bounded and clean: no control
/// or bidi characters, at most [`MAX_LOGGED_CHARS`] characters, no raw citizen id.
fn leaf_of(
    pseudonym: &dyn Fn(&str) -> String,
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
        v: tlog::LEAF_VERSION,
        seq: 0,
        time_ms: crate::state::unix_now_ms(),
        kind: tlog::LeafKind::Request,
        request_id: facts.request_id.clone(),
        department: department.map(|d| d.as_str().to_owned()),
        cert_sha256: facts
            .ctx
            .as_ref()
            .and_then(|c| c.identity.certificate.as_ref())
            .map(|c| c.fingerprint_sha256.clone()),
        peer: facts.ctx.as_ref().map(|c| c.peer.clone()),
        method: Some(facts.method.as_str().to_owned()),
        route: Some(facts.route.clone()),
        resource: resource.map(|r| log_text(&redact_citizen_ids(&r))),
        holder: note.holder.map(|h| pseudonym(&h)),
        matter: facts
            .purpose
            .as_ref()
            .and_then(|p| p.matter.as_deref())
            .map(logged_matter),
        reason: facts
            .purpose
            .as_ref()
            .and_then(|p| p.reason.as_deref())
            .map(|r| log_text(&redact_citizen_ids(r))),
        case_id: facts.case_id.clone(),
        outcome: tlog::Outcome::of_status(status),
        status,
        code: response
            .extensions()
            .get::<ApiError>()
            .map(|e| e.code.as_str().to_owned()),
        latency_us: facts.started.elapsed().as_micros() as u64,
        count: None,
        first_ms: None,
    }
}

fn record_metrics(
    m: &crate::metrics::Metrics,
    facts: &RequestFacts,
    department: Option<&cert_store::Uscc>,
    response: &Response,
) {
    m.requests
        .get_or_create(&RequestLabels {
            route: facts.route.clone(),
            status: response.status().as_u16(),
            department: department
                .map_or_else(|| "unidentified".to_owned(), |d| d.as_str().to_owned()),
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
    // Short printable ASCII, what nearly every request sends, is kept as it is.
    if value.len() <= MAX_LOGGED_CHARS && value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return value.to_owned();
    }
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

/// A matter code as the log records it: as sent, unless a part of it is a citizen id (one
/// whose check character holds: a matter code may be any long run of digits).
fn logged_matter(matter: &str) -> String {
    let names_a_citizen = matter
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|t| t.parse::<cert_store::CitizenId>().is_ok());
    if names_a_citizen {
        redact_citizen_ids(matter).into_owned()
    } else {
        matter.to_owned()
    }
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

    use crate::config::Role;
    use crate::identity::{CertificateFacts, PeerIdentity};

    const MARKET: &str = "11110105MB0000002F";

    fn context(caller: Result<Caller, Refusal>, protocol: Protocol) -> ConnectionContext {
        ConnectionContext {
            identity: PeerIdentity {
                certificate: None,
                revocation_key: Some((b"issuer".to_vec(), b"serial".to_vec())),
                caller,
            },
            protocol,
            resumed: false,
            peer: "127.0.0.1:4000".into(),
            source: std::net::Ipv4Addr::LOCALHOST.into(),
            closing: tokio::sync::Notify::new(),
        }
    }

    fn caller() -> Caller {
        Caller {
            department: MARKET.parse().unwrap(),
            name: "from the certificate".into(),
            roles: Default::default(),
            certificate: CertificateFacts {
                subject: "CN=market".into(),
                serial: "01".into(),
                fingerprint_sha256: "00".into(),
            },
        }
    }

    fn department(enabled: bool) -> Department {
        Department {
            id: MARKET.parse().unwrap(),
            name: "市场监管局".into(),
            full_name: None,
            roles: [Role::Issuer].into(),
            enabled,
            rate_limits: Default::default(),
        }
    }

    #[test]
    fn the_caller_is_resolved_against_the_current_table_and_crls() {
        let enabled = department(true);
        let disabled = department(false);
        let ctx = context(Ok(caller()), Protocol::Http2);
        let not_revoked = |_: &[u8], _: &[u8]| false;
        let resolved = resolve_caller(&|_| Some(&enabled), &not_revoked, Some(&ctx)).unwrap();
        // Name and roles come from the table as it is now, not from the certificate.
        assert_eq!(resolved.name, "市场监管局");
        assert!(resolved.has(Role::Issuer));
        let refusal = |r: Result<Caller, (Refusal, Option<cert_store::Uscc>)>| {
            let (refusal, named) = r.unwrap_err();
            (ApiError::from(&refusal).code, named.map(|d| d.to_string()))
        };
        let revoked = |i: &[u8], s: &[u8]| i == b"issuer" && s == b"serial";
        let malformed = context(
            Err(Refusal::MalformedIdentity("no SAN".into())),
            Protocol::Http2,
        );
        let named = Some(MARKET.to_owned());
        type Lookup<'a> = &'a dyn Fn(&cert_store::Uscc) -> Option<&'a Department>;
        type Revoked<'a> = &'a dyn Fn(&[u8], &[u8]) -> bool;
        let cases: [(Lookup, Revoked, _, _); 5] = [
            (
                &|_| None,
                &not_revoked,
                Some(&ctx),
                (Code::UnknownDepartment, named.clone()),
            ),
            (
                &|_| Some(&disabled),
                &not_revoked,
                Some(&ctx),
                (Code::DepartmentDisabled, named.clone()),
            ),
            (
                &|_| Some(&enabled),
                &revoked,
                Some(&ctx),
                (Code::CertificateRevoked, named),
            ),
            (
                &|_| Some(&enabled),
                &not_revoked,
                None,
                (Code::NoCertificate, None),
            ),
            (
                &|_| Some(&enabled),
                &not_revoked,
                Some(&malformed),
                (Code::MalformedIdentity, None),
            ),
        ];
        for (department, revoked, ctx, expected) in cases {
            assert_eq!(refusal(resolve_caller(department, revoked, ctx)), expected);
        }
    }

    #[test]
    fn a_refused_caller_over_http1_gets_its_connection_closed() {
        let h1 = context(Err(Refusal::NoCertificate), Protocol::Http1);
        let h2 = context(Err(Refusal::NoCertificate), Protocol::Http2);
        let closed = refuse(&Refusal::NoCertificate, Some(&h1));
        assert_eq!(closed.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(closed.headers()[header::CONNECTION], "close");
        let open = refuse(&Refusal::NoCertificate, Some(&h2));
        assert!(open.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn a_header_that_may_appear_once_is_refused_when_repeated() {
        let mut req = Request::new(Body::empty());
        req.headers_mut()
            .append("x-purpose", HeaderValue::from_static("a"));
        req.headers_mut()
            .append("accept", HeaderValue::from_static("a"));
        req.headers_mut()
            .append("accept", HeaderValue::from_static("b"));
        assert!(repeated_header(&req).is_none());
        req.headers_mut()
            .append("x-purpose", HeaderValue::from_static("b"));
        let refused = repeated_header(&req).unwrap();
        assert_eq!(refused.code, Code::RepeatedHeader);
        assert!(refused.message.contains("x-purpose"));
    }

    fn facts(route: &str, path: &str) -> RequestFacts {
        RequestFacts {
            started: Instant::now(),
            route: route.into(),
            ctx: Some(Arc::new(context(Ok(caller()), Protocol::Http2))),
            method: http::Method::GET,
            path: path.into(),
            request_id: Some("req-1".into()),
            purpose: crate::purpose::parse("matter=M-FOOD-001; reason=抽查 11010519491231002X")
                .ok(),
            case_id: None,
        }
    }

    #[test]
    fn the_leaf_names_the_caller_the_note_and_the_outcome_with_the_holder_pseudonymised() {
        let market: cert_store::Uscc = MARKET.parse().unwrap();
        let pseudonym = |h: &str| format!("p({})", h.len());
        // A handler's note: resource and holder.
        let mut served = http::StatusCode::OK.into_response();
        served.extensions_mut().insert(AccessNote {
            resource: Some("L1".into()),
            holder: Some("91110108551385082Q".into()),
        });
        let leaf_at = |path: &str, response: &mut Response| {
            let f = facts("/v1/licences/{id}", path);
            leaf_of(
                &pseudonym,
                &f,
                Some(&market),
                response,
                &NoteSlot::default(),
            )
        };
        let leaf = leaf_at("/v1/licences/L1", &mut served);
        assert_eq!(leaf.kind, tlog::LeafKind::Request);
        assert_eq!(leaf.outcome, tlog::Outcome::Allowed);
        assert_eq!(leaf.department.as_deref(), Some(MARKET));
        assert_eq!(leaf.resource.as_deref(), Some("L1"));
        assert_eq!(leaf.holder.as_deref(), Some("p(18)"));
        assert_eq!(leaf.matter.as_deref(), Some("M-FOOD-001"));
        assert!(!leaf.reason.unwrap().contains("11010519491231002X"));
        assert_eq!(leaf.peer.as_deref(), Some("127.0.0.1:4000"));
        // A refusal without a note: the code, and the path as the resource, its id redacted.
        let mut refused = ApiError::new(Code::LicenceNotFound, "no").into_response();
        let leaf = leaf_at("/v1/licences/11010519491231002X", &mut refused);
        assert_eq!(leaf.outcome, tlog::Outcome::Denied);
        assert_eq!(leaf.code.as_deref(), Some(Code::LicenceNotFound.as_str()));
        assert!(!leaf.resource.unwrap().contains("11010519491231002X"));
        assert!(leaf.holder.is_none());
        // A matter code is any code; one shaped like a citizen id is not logged as it is.
        let mut f = facts("/v1/licences/{id}", "/v1/licences/L1");
        f.purpose = crate::purpose::parse("11010519491231002X").ok();
        assert_eq!(
            f.purpose.as_ref().and_then(|p| p.matter.as_deref()),
            Some("11010519491231002X")
        );
        let leaf = leaf_of(
            &pseudonym,
            &f,
            Some(&market),
            &mut http::StatusCode::OK.into_response(),
            &NoteSlot::default(),
        );
        assert_eq!(leaf.matter.as_deref(), Some("[citizen-id]"));
        // A matter code of digits that is no citizen id (its check character fails) stays.
        assert_eq!(logged_matter("110105194912310021"), "110105194912310021");
        assert_eq!(logged_matter("M-11010519491231002X"), "M-[citizen-id]");
    }

    #[test]
    fn metrics_count_by_route_status_and_department() {
        let metrics = crate::metrics::Metrics::default();
        let market: cert_store::Uscc = MARKET.parse().unwrap();
        let f = facts("/v1/licences/{id}", "/v1/licences/L1");
        let response = http::StatusCode::OK.into_response();
        record_metrics(&metrics, &f, Some(&market), &response);
        record_metrics(&metrics, &f, None, &response);
        let text = metrics.encode();
        for department in [MARKET, "unidentified"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("certgate_http_requests_total{")
                        && l.contains(department)
                        && l.ends_with(" 1")),
                "{department}: {text}"
            );
        }
    }

    fn request(body: &'static [u8], declared: Option<usize>, json: bool) -> Request {
        let mut req = Request::new(Body::from(body));
        if let Some(n) = declared {
            req.headers_mut().insert(header::CONTENT_LENGTH, n.into());
        }
        if json {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        req
    }

    #[tokio::test]
    async fn bodies_are_bounded_and_must_be_json() {
        let code = |r: Result<Request, ApiError>| r.err().map(|e| e.code);
        // Within the limit, JSON: the body is passed on whole.
        let req = buffer_body(request(b"{\"a\":1}", Some(7), true), 7)
            .await
            .unwrap();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"a\":1}");
        // Declared too large: refused before reading; sent too large without a length too.
        assert_eq!(
            code(buffer_body(request(b"{}", Some(100), true), 7).await),
            Some(Code::BodyTooLarge)
        );
        assert_eq!(
            code(buffer_body(request(b"{\"a\":12345}", None, true), 7).await),
            Some(Code::BodyTooLarge)
        );
        // A body that does not say it is JSON is not parsed on a guess; no body needs no type.
        assert_eq!(
            code(buffer_body(request(b"{}", Some(2), false), 7).await),
            Some(Code::BadRequest)
        );
        assert!(buffer_body(request(b"", None, false), 7).await.is_ok());
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_500_and_one_that_does_not_its_own() {
        let panicked = caught(async { panic!("a handler's bug") }).await;
        assert_eq!(panicked.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let err = panicked.extensions().get::<ApiError>().expect("an error");
        assert_eq!(err.code, Code::Internal);
        let fine = caught(async { http::StatusCode::CREATED.into_response() }).await;
        assert_eq!(fine.status(), http::StatusCode::CREATED);
    }

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
