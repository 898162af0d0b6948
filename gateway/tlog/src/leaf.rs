//! One access as the log records it ([`Leaf`]) and its canonical bytes.
//!
//! Leaf bytes (version 1) are the JSON serialisation of [`Leaf`] with its fields in declaration
//! order, no insignificant whitespace, absent values as `null` — except the fields added for
//! summaries of refused handshakes (`count`, `first_ms`), which are left out when absent, so
//! that every other leaf keeps its version-1 bytes. The same leaf always gives the same bytes.

use serde::{Deserialize, Serialize};

/// The version of the leaf encoding written today.
pub const LEAF_VERSION: u8 = 1;

/// One access, as recorded. Field order is part of the encoding: do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// Encoding version (1).
    pub v: u8,
    /// Position in the log (0-based), assigned when the leaf is appended.
    pub seq: u64,
    /// Time of the access, Unix milliseconds.
    pub time_ms: i64,
    /// `request` or `handshake` (a refused TLS handshake).
    pub kind: String,
    /// The request id (also in the response header).
    pub request_id: Option<String>,
    /// The caller's USCC, when identified.
    pub department: Option<String>,
    /// SHA-256 of the caller's certificate, when one was presented.
    pub cert_sha256: Option<String>,
    /// The peer address, for refused handshakes.
    pub peer: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// Route pattern, e.g. `/v1/licences/{id}`.
    pub route: Option<String>,
    /// The resource touched: a licence identifier, `seal:<id>`, `dataset:<id>/<key>`, …
    pub resource: Option<String>,
    /// Keyed pseudonym (HMAC-SHA256, hex) of the holder whose data was touched; never the id.
    pub holder: Option<String>,
    /// Stated matter code.
    pub matter: Option<String>,
    /// Stated reason.
    pub reason: Option<String>,
    /// Case id.
    pub case_id: Option<String>,
    /// `allowed`, `denied` or `error`.
    pub outcome: String,
    /// HTTP status (0 for a refused handshake).
    pub status: u16,
    /// Stable error code, or the handshake refusal reason.
    pub code: Option<String>,
    /// Time from request head to response, microseconds.
    pub latency_us: u64,
    /// For a summary of refused handshakes (`kind` `handshakes`): how many it counts.
    /// Absent on other leaves (which therefore keep their version-1 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For a summary: the first refusal's time (Unix ms); `time_ms` is the last one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ms: Option<i64>,
}

impl Leaf {
    /// The canonical bytes hashed into the tree.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The summary of the TLS handshakes refused from one source (`peer` an address, or `*`
    /// for the sources past the window's cap) between `first_ms` and `last_ms`: how many, and
    /// how many for each reason (`code`: `reason:count,…` in name order). A certificate, if
    /// any, never reached the application, so the address and the reasons are what is known.
    pub fn handshakes(
        peer: &str,
        count: u64,
        first_ms: i64,
        last_ms: i64,
        reasons: &std::collections::BTreeMap<&'static str, u64>,
    ) -> Leaf {
        let code = reasons
            .iter()
            .map(|(r, n)| format!("{r}:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        Leaf {
            peer: Some(peer.to_owned()),
            code: Some(code),
            count: Some(count),
            first_ms: Some(first_ms),
            ..Leaf::new("handshakes", last_ms, 0)
        }
    }

    /// A leaf of `kind` at `time_ms` with `status` (0 for none) and its outcome, every other
    /// field absent, for a caller to fill in.
    pub fn new(kind: &str, time_ms: i64, status: u16) -> Leaf {
        Leaf {
            v: LEAF_VERSION,
            seq: 0,
            time_ms,
            kind: kind.to_owned(),
            request_id: None,
            department: None,
            cert_sha256: None,
            peer: None,
            method: None,
            route: None,
            resource: None,
            holder: None,
            matter: None,
            reason: None,
            case_id: None,
            outcome: if status == 0 {
                "denied".into()
            } else {
                Leaf::outcome_of(status).into()
            },
            status,
            code: None,
            latency_us: 0,
            count: None,
            first_ms: None,
        }
    }

    /// The outcome of an HTTP status.
    pub fn outcome_of(status: u16) -> &'static str {
        match status {
            0..=399 => "allowed",
            400..=499 => "denied",
            _ => "error",
        }
    }
}
