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
    /// Stable code (it gives the HTTP status).
    pub code: Code,
    /// Message for the client.
    pub message: String,
}

/// Declares the stable error codes once each: the variant, the code, its HTTP status and its
/// meaning (the README's error table lists the same).
macro_rules! codes {
    ($($variant:ident = $code:literal, $status:ident, $meaning:literal;)*) => {
        /// A stable error code. Codes never change meaning; a new failure gets a new code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// Every code, in the README's order.
            pub const ALL: &[Code] = &[$(Code::$variant),*];

            /// The code as it appears in responses and the log, e.g. `CG-AUTH-003`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            /// The HTTP status the code is answered with.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::$status,)*
                }
            }

            /// What the code means, for the documentation.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Code::$variant => $meaning,)*
                }
            }
        }
    };
}

codes! {
    NoCertificate = "CG-AUTH-001", FORBIDDEN, "no client certificate reached the gateway";
    MalformedIdentity = "CG-AUTH-002", FORBIDDEN, "the client certificate does not carry a valid department identity (SAN URI urn:certgate:dept:<USCC>)";
    UnknownDepartment = "CG-AUTH-003", FORBIDDEN, "the department is not in the department table";
    DepartmentDisabled = "CG-AUTH-004", FORBIDDEN, "the department is disabled";
    CertificateRevoked = "CG-AUTH-005", FORBIDDEN, "the client certificate was revoked after this TLS session began";
    MissingRole = "CG-AUTH-006", FORBIDDEN, "the department lacks the role this route needs";
    NoRoute = "CG-REQ-001", NOT_FOUND, "no such route";
    MethodNotAllowed = "CG-REQ-002", METHOD_NOT_ALLOWED, "the route does not accept this method";
    BodyTooLarge = "CG-REQ-003", PAYLOAD_TOO_LARGE, "the request body is larger than server.max_body_bytes";
    UnreadableBody = "CG-REQ-004", BAD_REQUEST, "the request body could not be read";
    Timeout = "CG-REQ-005", SERVICE_UNAVAILABLE, "the request took longer than server.request_timeout_ms";
    BadPurpose = "CG-REQ-006", BAD_REQUEST, "X-Purpose is missing or malformed";
    BadRequest = "CG-REQ-007", BAD_REQUEST, "the body or query is not what the route expects (the message names the field)";
    RepeatedHeader = "CG-REQ-008", BAD_REQUEST, "a header that may appear once (X-Purpose, X-Case-Id, X-Consent, X-Holder, Content-Type, Content-Length) appears more than once";
    RateLimited = "CG-REQ-009", TOO_MANY_REQUESTS, "the department's request budget for this route class is spent (Retry-After says when to retry)";
    MalformedHead = "CG-REQ-010", BAD_REQUEST, "the request head was malformed or over the header budget (also 414 or 431); answered by the HTTP parser, in the access log only";
    NoAccessRule = "CG-AUTH-007", FORBIDDEN, "no access rule lets the department read this licence type (or field) for the stated purpose";
    LicenceInvalid = "CG-LIC-001", BAD_REQUEST, "a licence or seal request field is invalid (the message names the field)";
    LicenceForbidden = "CG-LIC-002", FORBIDDEN, "not allowed for this licence, seal or consent";
    LicenceNotFound = "CG-LIC-003", NOT_FOUND, "no such licence, seal, consent or status list";
    LicenceConflict = "CG-LIC-004", CONFLICT, "the licence, seal or consent is in a state that does not allow this";
    AlreadyHeld = "CG-LIC-005", CONFLICT, "the holder already holds a licence of a type held once (the message names it); renew it instead";
    BadRecordKey = "CG-DAT-001", BAD_REQUEST, "the record key is not of the dataset's key kind";
    NoDataGrant = "CG-DAT-002", FORBIDDEN, "no grant lets the department read this dataset for the stated purpose, or it is not the owner";
    NoDataset = "CG-DAT-003", NOT_FOUND, "no such dataset";
    NoRecord = "CG-DAT-004", NOT_FOUND, "the source system has no record for this key";
    UpstreamBadAnswer = "CG-DAT-005", BAD_GATEWAY, "the source system answered badly: an error status, a body that is not a JSON object, or one too large";
    UpstreamUnavailable = "CG-DAT-006", SERVICE_UNAVAILABLE, "the source system cannot be reached or its circuit breaker is open, and no stale record may stand in";
    UpstreamTimeout = "CG-DAT-007", GATEWAY_TIMEOUT, "the source system did not answer in time";
    BadProofRequest = "CG-PRF-001", BAD_REQUEST, "the proof request is invalid";
    ProofNotAllowed = "CG-PRF-002", FORBIDDEN, "the department may not ask for this proof type";
    NoProofType = "CG-PRF-003", NOT_FOUND, "no such proof type";
    PolicyInvalid = "CG-POL-001", BAD_REQUEST, "a policy, profile or query is invalid (the message names the field)";
    PolicyNotFound = "CG-POL-002", NOT_FOUND, "no such policy or enterprise profile";
    PolicyVersionNotNewer = "CG-POL-003", CONFLICT, "the policy's version is not newer than the stored one";
    NotProfileOwner = "CG-POL-004", FORBIDDEN, "only the data department named in policies.profile_owner maintains profiles";
    PolicyChangedSincePage = "CG-POL-005", CONFLICT, "the policy changed since the cursor was given: page again from the start";
    AuditOutOfRange = "CG-AUD-001", BAD_REQUEST, "an audit query or proof asks for something outside the log";
    NoCheckpoint = "CG-AUD-002", NOT_FOUND, "no checkpoint signed yet";
    ExportsBusy = "CG-AUD-003", SERVICE_UNAVAILABLE, "as many exports as the gateway streams at once are running: retry when one has ended";
    LogUnavailable = "CG-LOG-001", SERVICE_UNAVAILABLE, "the access log cannot be written: nothing is served unlogged";
    StoreUnavailable = "CG-STO-001", SERVICE_UNAVAILABLE, "the licence store (PostgreSQL) cannot be reached: nothing is issued or verified until it is back";
    ReloadFailed = "CG-CFG-001", UNPROCESSABLE_ENTITY, "the configuration could not be reloaded; the previous one stays in force";
    Internal = "CG-INT-001", INTERNAL_SERVER_ERROR, "internal error; details are in the gateway's log under the request id";
}

impl ApiError {
    /// The answer to this error with `Retry-After: seconds`.
    pub fn retry_after(self, seconds: u64) -> Response {
        let mut response = self.into_response();
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        response
    }

    /// An error with a stable code and a message for the caller.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The caller lacks `role`.
    pub fn missing_role(role: crate::config::Role) -> Self {
        Self::new(
            Code::MissingRole,
            format!("this route needs the `{}` role", role.as_str()),
        )
    }

    /// No route matches the path.
    pub fn not_found() -> Self {
        Self::new(Code::NoRoute, "no such route")
    }

    /// The route exists but not for this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            Code::MethodNotAllowed,
            "this route does not accept this method",
        )
    }

    /// The body exceeds the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            Code::BodyTooLarge,
            format!("request body larger than {limit} bytes"),
        )
    }

    /// The body could not be read from the connection.
    pub fn unreadable_body() -> Self {
        Self::new(Code::UnreadableBody, "request body could not be read")
    }

    /// The request ran out of time.
    pub fn timeout() -> Self {
        Self::new(Code::Timeout, "the request took too long and was abandoned")
    }

    /// A configuration reload failed.
    pub fn reload_failed(reason: impl std::fmt::Display) -> Self {
        Self::new(
            Code::ReloadFailed,
            format!("configuration not reloaded: {reason}"),
        )
    }

    /// The access log cannot take the request's leaf: the gateway fails closed.
    pub fn log_unavailable() -> Self {
        Self::new(
            Code::LogUnavailable,
            "the access log cannot be written; try again later",
        )
    }

    /// Something went wrong inside the gateway; the details belong in the log.
    pub fn internal() -> Self {
        Self::new(
            Code::Internal,
            "internal error; quote the request id to the operator",
        )
    }
}

/// A licence or seal request field the client got wrong (`CG-LIC-001`), naming it.
pub fn field_error(field: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(Code::LicenceInvalid, format!("{field}: {reason}"))
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
            E::Invalid { .. } => Self::new(Code::LicenceInvalid, e.to_string()),
            E::Forbidden(m) => Self::new(Code::LicenceForbidden, m),
            E::NotFound(_) => Self::new(Code::LicenceNotFound, e.to_string()),
            E::Conflict(m) => Self::new(Code::LicenceConflict, m),
            E::AlreadyHeld(_) => Self::new(Code::AlreadyHeld, e.to_string()),
            E::Store(cert_store::store::StoreError::Database(detail)) => {
                // Fail closed: without the store nothing is issued or verified.
                tracing::error!(error = %detail, "licence store unavailable");
                Self::new(
                    Code::StoreUnavailable,
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

impl From<&Refusal> for Code {
    fn from(r: &Refusal) -> Self {
        match r {
            Refusal::NoCertificate => Code::NoCertificate,
            Refusal::MalformedIdentity(_) => Code::MalformedIdentity,
            Refusal::UnknownDepartment(_) => Code::UnknownDepartment,
            Refusal::DepartmentDisabled(_) => Code::DepartmentDisabled,
            Refusal::Revoked => Code::CertificateRevoked,
        }
    }
}

impl From<&Refusal> for ApiError {
    fn from(r: &Refusal) -> Self {
        Self::new(Code::from(r), r.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The request-id layer fills in `request_id` from this extension.
        let body = ErrorBody {
            code: self.code.as_str(),
            message: self.message.clone(),
            request_id: String::new(),
        };
        let mut response = (self.code.status(), Json(body)).into_response();
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// The text of every product source file outside this one.
    fn sources() -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut text = String::new();
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
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("error.rs")
                {
                    text.push_str(&std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        text
    }

    #[test]
    fn every_code_is_used_and_in_the_readme_with_its_status_and_no_other_is() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .unwrap();
        let documented: Vec<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| CG-"))
            .filter_map(|l| l.split_whitespace().next())
            .map(|c| format!("CG-{c}"))
            .collect();
        let codes: Vec<String> = Code::ALL.iter().map(|c| c.as_str().to_owned()).collect();
        assert_eq!(codes, documented, "error::Code vs the README's error table");
        let used = sources()
            + include_str!("error.rs")
                .split("#[cfg(test)]")
                .next()
                .unwrap();
        for code in Code::ALL {
            let line = readme
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", code.as_str())))
                .unwrap();
            assert!(
                line.contains(&code.status().as_u16().to_string()),
                "{code:?}: {line}"
            );
            // Used somewhere besides its declaration.
            let named = format!("Code::{code:?}");
            assert!(used.contains(&named), "{named} is never used");
        }
        // No code spelled out as a string anywhere but in the declaration.
        assert!(
            !sources().contains("\"CG-"),
            "a code written as a string literal"
        );
    }
}
