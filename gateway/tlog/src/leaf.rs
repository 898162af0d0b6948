//! One access as the log records it ([`Leaf`]) and its canonical bytes.
//!
//! Leaf bytes (version 1) are the JSON serialisation of [`Leaf`] with its fields in declaration
//! order, no insignificant whitespace, absent values as `null` — except the fields added for
//! summaries of refused handshakes (`count`, `first_ms`), which are left out when absent, so
//! that every other leaf keeps its version-1 bytes. The same leaf always gives the same bytes.

use serde::{Deserialize, Serialize};

/// The version of the leaf encoding written today.
pub const LEAF_VERSION: u8 = 1;

/// What a leaf records. Stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeafKind {
    /// A request over an established connection (or a request head the parser refused).
    Request,
    /// One refused TLS handshake (written by versions that logged each one).
    Handshake,
    /// The summary of the handshakes refused from one source in one window.
    Handshakes,
}

impl LeafKind {
    /// The name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            LeafKind::Request => "request",
            LeafKind::Handshake => "handshake",
            LeafKind::Handshakes => "handshakes",
        }
    }
}

/// How the access ended. Stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Served (status below 400).
    Allowed,
    /// Refused (a 4xx, or a refused handshake).
    Denied,
    /// Failed on the gateway's side (a 5xx).
    Error,
}

impl Outcome {
    /// The outcome of an HTTP status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            0..=399 => Outcome::Allowed,
            400..=499 => Outcome::Denied,
            _ => Outcome::Error,
        }
    }

    /// The name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Outcome, String> {
        match s {
            "allowed" => Ok(Outcome::Allowed),
            "denied" => Ok(Outcome::Denied),
            "error" => Ok(Outcome::Error),
            _ => Err("outcome must be allowed, denied or error".to_owned()),
        }
    }
}

/// One access, as recorded. Field order is part of the encoding: do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// Encoding version (1).
    pub v: u8,
    /// Position in the log (0-based), assigned when the leaf is appended.
    pub seq: u64,
    /// Time of the access, Unix milliseconds.
    pub time_ms: i64,
    /// What the leaf records.
    pub kind: LeafKind,
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
    /// How the access ended.
    pub outcome: Outcome,
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
    /// Requests refused after the handshake because the certificate names no usable
    /// department, past the first few of the source, are counted here too, each reason being
    /// the refusal's error code.
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
            ..Leaf::new(LeafKind::Handshakes, last_ms, 0)
        }
    }

    /// A leaf of `kind` at `time_ms` with `status` (0 for none) and its outcome, every other
    /// field absent, for a caller to fill in.
    pub fn new(kind: LeafKind, time_ms: i64, status: u16) -> Leaf {
        Leaf {
            v: LEAF_VERSION,
            seq: 0,
            time_ms,
            kind,
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
                Outcome::Denied
            } else {
                Outcome::of_status(status)
            },
            status,
            code: None,
            latency_us: 0,
            count: None,
            first_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_leaves_read_back_to_the_same_bytes_with_typed_kind_and_outcome() {
        // A request leaf and a per-handshake leaf as earlier versions wrote them.
        let stored = [
            r#"{"v":1,"seq":7,"time_ms":1700000000000,"kind":"request","request_id":"r1","department":"11100000000000001X","cert_sha256":null,"peer":null,"method":"GET","route":"/v1/licences/{id}","resource":"L1","holder":null,"matter":null,"reason":null,"case_id":null,"outcome":"allowed","status":200,"code":null,"latency_us":12}"#,
            r#"{"v":1,"seq":8,"time_ms":1700000000001,"kind":"handshake","request_id":null,"department":null,"cert_sha256":null,"peer":"127.0.0.1:5","method":null,"route":null,"resource":null,"holder":null,"matter":null,"reason":null,"case_id":null,"outcome":"denied","status":0,"code":"protocol","latency_us":0}"#,
        ];
        let kinds = [LeafKind::Request, LeafKind::Handshake];
        let outcomes = [Outcome::Allowed, Outcome::Denied];
        for ((bytes, kind), outcome) in stored.iter().zip(kinds).zip(outcomes) {
            let leaf: Leaf = serde_json::from_str(bytes).unwrap();
            assert_eq!((leaf.kind, leaf.outcome), (kind, outcome));
            assert_eq!(leaf.to_bytes(), bytes.as_bytes());
        }
        let unknown = stored[0].replace(r#""kind":"request""#, r#""kind":"visit""#);
        assert!(serde_json::from_str::<Leaf>(&unknown).is_err());
        assert_eq!(Outcome::of_status(503), Outcome::Error);
        assert_eq!("denied".parse::<Outcome>(), Ok(Outcome::Denied));
    }
}
