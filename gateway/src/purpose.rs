//! The stated purpose of a data access: `X-Purpose` (a matter code 事项编码 and/or a reason of at
//! most 200 characters) and the optional `X-Case-Id`. No purpose, no data.
//!
//! Accepted forms: `X-Purpose: <matter code>` or
//! `X-Purpose: matter=<matter code>; reason=<percent-encoded UTF-8 text>` (either part may be
//! left out, not both).

use axum::extract::FromRequestParts;
use http::request::Parts;
use serde::Serialize;

use crate::error::{ApiError, Code};

/// A purpose that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Purpose {
    /// The matter code (事项编码), when given.
    pub matter: Option<String>,
    /// The free-text reason, when given.
    pub reason: Option<String>,
    /// The case id (`X-Case-Id`), when given.
    pub case_id: Option<String>,
}

/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

impl<S: Send + Sync> FromRequestParts<S> for Purpose {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Purpose::from_headers(&parts.headers)
    }
}

impl Purpose {
    /// The purpose stated in `X-Purpose` (and `X-Case-Id`); a route that reads data only on
    /// some requests calls this when it does.
    pub fn from_headers(headers: &http::HeaderMap) -> Result<Purpose, ApiError> {
        let header = |name: &str| -> Result<Option<&str>, ApiError> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        bad(&format!("{name} must be ASCII (percent-encode the reason)"))
                    })
                })
                .transpose()
        };
        let raw = header("x-purpose")?.ok_or_else(|| {
            bad("X-Purpose is required: state the matter code and/or the reason for this access")
        })?;
        let mut purpose = parse(raw).map_err(|e| bad(&e))?;
        if let Some(case) = header("x-case-id")? {
            if !is_code(case) {
                return Err(bad("X-Case-Id must be 1-64 of A-Z a-z 0-9 . _ -"));
            }
            purpose.case_id = Some(case.to_owned());
        }
        Ok(purpose)
    }
}

fn bad(message: &str) -> ApiError {
    ApiError::new(Code::BadPurpose, message)
}

/// True for a code: 1 to 64 of `A-Z a-z 0-9 . _ -` (matter codes, case ids).
pub fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses the `X-Purpose` value.
pub fn parse(raw: &str) -> Result<Purpose, String> {
    let raw = raw.trim();
    let mut purpose = Purpose {
        matter: None,
        reason: None,
        case_id: None,
    };
    if !raw.contains('=') {
        if !is_code(raw) {
            return Err(
                "X-Purpose must be a matter code (1-64 of A-Z a-z 0-9 . _ -) or matter=…; reason=…"
                    .into(),
            );
        }
        purpose.matter = Some(raw.to_owned());
        return Ok(purpose);
    }
    for part in raw.split(';') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("X-Purpose part `{}` is not key=value", part.trim()));
        };
        match key.trim() {
            "matter" if purpose.matter.is_none() => {
                let value = value.trim();
                if !is_code(value) {
                    return Err("the matter code must be 1-64 of A-Z a-z 0-9 . _ -".into());
                }
                purpose.matter = Some(value.to_owned());
            }
            "reason" if purpose.reason.is_none() => {
                let text = percent_decode(value.trim())
                    .ok_or("the reason is not valid percent-encoded UTF-8")?;
                let text = cert_store::text::plain(&text, MAX_REASON_CHARS)
                    .map_err(|e| format!("the reason {e}"))?;
                purpose.reason = Some(text.to_owned());
            }
            other => {
                return Err(format!(
                    "X-Purpose has an unknown or repeated part `{other}`"
                ));
            }
        }
    }
    if purpose.matter.is_none() && purpose.reason.is_none() {
        return Err("X-Purpose names neither a matter nor a reason".into());
    }
    Ok(purpose)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_parse_or_are_refused_with_a_reason() {
        let ok = |raw: &str, matter: Option<&str>, reason: Option<&str>| {
            let p = parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(
                (p.matter.as_deref(), p.reason.as_deref()),
                (matter, reason),
                "{raw}"
            );
        };
        ok("11110105-MATTER-001", Some("11110105-MATTER-001"), None);
        ok(
            "matter=M-1; reason=%E5%8A%9E%E7%90%86%E8%90%A5%E4%B8%9A%E6%89%A7%E7%85%A7",
            Some("M-1"),
            Some("办理营业执照"),
        );
        ok("reason=annual%20check", None, Some("annual check"));
        for bad in [
            "",
            "   ",
            "has space",
            "matter=",
            "matter=M; matter=N",
            "colour=red",
            "reason=%ZZ",
            "reason=%E5%8A",
            "reason=%0A",
            &format!("reason={}", "a".repeat(201)),
            &"M".repeat(65),
            "reason=a%E2%80%AEb",
            "reason=a%0Db",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
