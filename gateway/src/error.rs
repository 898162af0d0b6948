//! The one place where failures become HTTP responses: a status, a stable code and a message
//! meant for the calling system. Internal details are logged, never sent.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::identity::Refusal;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable error code, e.g. `CG-AUTH-003`. Codes never change meaning.
    #[schema(example = "CG-AUTH-003")]
    pub code: &'static str,
    /// Human-readable explanation for the operator of the calling system.
    pub message: String,
    /// The request id, also in the `x-request-id` response header and in the logs.
    pub request_id: String,
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message for the client.
    pub message: String,
}

/// Every stable error code with its status and meaning, for the documentation and for tests.
pub const CODES: &[(&str, u16, &str)] = &[
    (
        "CG-AUTH-001",
        403,
        "no client certificate reached the gateway",
    ),
    (
        "CG-AUTH-002",
        403,
        "the client certificate does not carry a valid department identity (SAN URI urn:certgate:dept:<USCC>)",
    ),
    (
        "CG-AUTH-003",
        403,
        "the department is not in the department table",
    ),
    ("CG-AUTH-004", 403, "the department is disabled"),
    (
        "CG-AUTH-005",
        403,
        "the client certificate was revoked after this TLS session began",
    ),
    (
        "CG-AUTH-006",
        403,
        "the department lacks the role this route needs",
    ),
    ("CG-REQ-001", 404, "no such route"),
    ("CG-REQ-002", 405, "the route does not accept this method"),
    (
        "CG-REQ-003",
        413,
        "the request body is larger than server.max_body_bytes",
    ),
    ("CG-REQ-004", 400, "the request body could not be read"),
    (
        "CG-REQ-005",
        503,
        "the request took longer than server.request_timeout_ms",
    ),
    ("CG-REQ-006", 400, "X-Purpose is missing or malformed"),
    (
        "CG-REQ-007",
        400,
        "the body or query is not what the route expects (the message names the field)",
    ),
    (
        "CG-REQ-008",
        400,
        "a header that may appear once (X-Purpose, X-Case-Id, X-Consent, X-Holder, Content-Type, Content-Length) appears more than once",
    ),
    (
        "CG-REQ-009",
        429,
        "the department's request budget for this route class is spent (Retry-After says when to retry)",
    ),
    (
        "CG-REQ-010",
        400,
        "the request head was malformed or over the header budget (also 414 or 431); answered by the HTTP parser, in the access log only",
    ),
    (
        "CG-AUTH-007",
        403,
        "no access rule lets the department read this licence type (or field) for the stated purpose",
    ),
    (
        "CG-LIC-001",
        400,
        "a licence or seal request field is invalid (the message names the field)",
    ),
    (
        "CG-LIC-002",
        403,
        "not allowed for this licence, seal or consent",
    ),
    (
        "CG-LIC-003",
        404,
        "no such licence, seal, consent or status list",
    ),
    (
        "CG-LIC-004",
        409,
        "the licence, seal or consent is in a state that does not allow this",
    ),
    (
        "CG-LIC-005",
        409,
        "the holder already holds a licence of a type held once (the message names it); renew it instead",
    ),
    (
        "CG-DAT-001",
        400,
        "the record key is not of the dataset's key kind",
    ),
    (
        "CG-DAT-002",
        403,
        "no grant lets the department read this dataset for the stated purpose, or it is not the owner",
    ),
    ("CG-DAT-003", 404, "no such dataset"),
    (
        "CG-DAT-004",
        404,
        "the source system has no record for this key",
    ),
    (
        "CG-DAT-005",
        502,
        "the source system answered badly: an error status, a body that is not a JSON object, or one too large",
    ),
    (
        "CG-DAT-006",
        503,
        "the source system cannot be reached or its circuit breaker is open, and no stale record may stand in",
    ),
    (
        "CG-DAT-007",
        504,
        "the source system did not answer in time",
    ),
    ("CG-PRF-001", 400, "the proof request is invalid"),
    (
        "CG-PRF-002",
        403,
        "the department may not ask for this proof type",
    ),
    ("CG-PRF-003", 404, "no such proof type"),
    (
        "CG-POL-001",
        400,
        "a policy, profile or query is invalid (the message names the field)",
    ),
    ("CG-POL-002", 404, "no such policy or enterprise profile"),
    (
        "CG-POL-003",
        409,
        "the policy's version is not newer than the stored one",
    ),
    (
        "CG-POL-004",
        403,
        "only the data department named in policies.profile_owner maintains profiles",
    ),
    (
        "CG-AUD-001",
        400,
        "an audit query or proof asks for something outside the log",
    ),
    ("CG-AUD-002", 404, "no checkpoint signed yet"),
    (
        "CG-LOG-001",
        503,
        "the access log cannot be written: nothing is served unlogged",
    ),
    (
        "CG-STO-001",
        503,
        "the licence store (PostgreSQL) cannot be reached: nothing is issued or verified until it is back",
    ),
    (
        "CG-CFG-001",
        422,
        "the configuration could not be reloaded; the previous one stays in force",
    ),
    (
        "CG-INT-001",
        500,
        "internal error; details are in the gateway's log under the request id",
    ),
];

impl ApiError {
    /// An error with a status, a stable code from [`CODES`] and a message for the caller.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The caller lacks `role`.
    pub fn missing_role(role: crate::config::Role) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "CG-AUTH-006",
            format!("this route needs the `{}` role", role.as_str()),
        )
    }

    /// No route matches the path.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "CG-REQ-001", "no such route")
    }

    /// The route exists but not for this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CG-REQ-002",
            "this route does not accept this method",
        )
    }

    /// The body exceeds the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "CG-REQ-003",
            format!("request body larger than {limit} bytes"),
        )
    }

    /// The body could not be read from the connection.
    pub fn unreadable_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "CG-REQ-004",
            "request body could not be read",
        )
    }

    /// The request ran out of time.
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "CG-REQ-005",
            "the request took too long and was abandoned",
        )
    }

    /// A configuration reload failed.
    pub fn reload_failed(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CG-CFG-001",
            format!("configuration not reloaded: {reason}"),
        )
    }

    /// The access log cannot take the request's leaf: the gateway fails closed.
    pub fn log_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "CG-LOG-001",
            "the access log cannot be written; try again later",
        )
    }

    /// Something went wrong inside the gateway; the details belong in the log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CG-INT-001",
            "internal error; quote the request id to the operator",
        )
    }
}

/// A licence or seal request field the client got wrong (`CG-LIC-001`), naming it.
pub fn field_error(field: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "CG-LIC-001",
        format!("{field}: {reason}"),
    )
}

/// At most 64 characters of a client's value, for a message or a log note.
pub fn truncated(value: &str) -> String {
    let mut out: String = value.chars().filter(|c| !c.is_control()).take(64).collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    out
}

impl From<cert_store::service::ServiceError> for ApiError {
    fn from(e: cert_store::service::ServiceError) -> Self {
        use cert_store::service::ServiceError as E;
        match e {
            E::Invalid { .. } => Self::new(StatusCode::BAD_REQUEST, "CG-LIC-001", e.to_string()),
            E::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "CG-LIC-002", m),
            E::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "CG-LIC-003", e.to_string()),
            E::Conflict(m) => Self::new(StatusCode::CONFLICT, "CG-LIC-004", m),
            E::AlreadyHeld(_) => Self::new(StatusCode::CONFLICT, "CG-LIC-005", e.to_string()),
            E::Store(cert_store::store::StoreError::Database(detail)) => {
                // Fail closed: without the store nothing is issued or verified.
                tracing::error!(error = %detail, "licence store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "CG-STO-001",
                    "the licence store cannot be reached; try again later",
                )
            }
            other => {
                tracing::error!(error = %other, "licence service failure");
                Self::internal()
            }
        }
    }
}

impl From<&Refusal> for ApiError {
    fn from(r: &Refusal) -> Self {
        let code = match r {
            Refusal::NoCertificate => "CG-AUTH-001",
            Refusal::MalformedIdentity(_) => "CG-AUTH-002",
            Refusal::UnknownDepartment(_) => "CG-AUTH-003",
            Refusal::DepartmentDisabled(_) => "CG-AUTH-004",
            Refusal::Revoked => "CG-AUTH-005",
        };
        Self::new(StatusCode::FORBIDDEN, code, r.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The request-id layer fills in `request_id` from this extension.
        let body = ErrorBody {
            code: self.code,
            message: self.message.clone(),
            request_id: String::new(),
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::CODES;

    /// Every code literal in the product's sources.
    fn codes_in_sources() -> std::collections::BTreeSet<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = std::collections::BTreeSet::new();
        let mut dirs = vec![
            root.join("gateway/src"),
            root.join("cert-store/src"),
            root.join("policies/src"),
        ];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for piece in text.split('"') {
                        let parts: Vec<&str> = piece.split('-').collect();
                        if let ["CG", area, number] = parts.as_slice()
                            && !area.is_empty()
                            && area.bytes().all(|b| b.is_ascii_uppercase())
                            && number.len() == 3
                            && number.bytes().all(|b| b.is_ascii_digit())
                        {
                            found.insert(piece.to_owned());
                        }
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_code_used_is_in_the_table_and_the_readme_and_nothing_else_is() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .unwrap();
        let documented: std::collections::BTreeSet<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| CG-"))
            .filter_map(|l| l.split_whitespace().next())
            .map(|c| format!("CG-{c}"))
            .collect();
        let table: std::collections::BTreeSet<String> =
            CODES.iter().map(|(c, _, _)| (*c).to_owned()).collect();
        let used = codes_in_sources();
        assert_eq!(used, table, "codes used in the sources vs error::CODES");
        assert_eq!(
            table, documented,
            "error::CODES vs the README's error table"
        );
        // The status of each code in the README is the table's.
        for (code, status, _) in CODES {
            let line = readme
                .lines()
                .find(|l| l.starts_with(&format!("| {code} |")))
                .unwrap();
            assert!(line.contains(&status.to_string()), "{code}: {line}");
        }
    }
}
