//! The JSON bodies of licence views the gateway sent, kept so that a licence read again with
//! the same fields is answered without presenting and serialising it again.

use cert_store::licence::{LicenceRecord, LicenceStatus};

/// The JSON bodies of licence views recently answered by `GET /v1/licences/{id}`, so that a
/// licence read again with the same fields is not presented and serialised again. A body is
/// found only under everything it depends on — the licence, its current status, reason and
/// successor, the fields disclosed, whether the reader is the issuer — so a licence whose
/// status changed is never answered from here. Bounded by bytes ([`VIEW_CACHE_BYTES`]) and
/// by time unread ([`VIEW_CACHE_IDLE`]).
#[derive(Debug)]
pub struct ViewCache(moka::sync::Cache<ViewKey, axum::body::Bytes>);

/// Bytes of licence-view bodies (and their keys) kept at most.
pub const VIEW_CACHE_BYTES: u64 = 16 << 20;

impl Default for ViewCache {
    fn default() -> Self {
        ViewCache(
            moka::sync::Cache::builder()
                .max_capacity(VIEW_CACHE_BYTES)
                .weigher(|k: &ViewKey, v: &axum::body::Bytes| {
                    let key = k.id.len()
                        + k.status_reason.as_ref().map_or(0, String::len)
                        + k.fields.iter().map(String::len).sum::<usize>();
                    u32::try_from(key + v.len() + 64).unwrap_or(u32::MAX)
                })
                // A body of a licence nobody reads any more (or of a status it no longer
                // has) is not kept in memory for long.
                .time_to_idle(VIEW_CACHE_IDLE)
                .build(),
        )
    }
}

/// How long a body nobody asks for stays.
pub const VIEW_CACHE_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

impl ViewCache {
    /// The body kept under `key`.
    pub fn get(&self, key: &ViewKey) -> Option<axum::body::Bytes> {
        self.0.get(key)
    }

    /// Keeps `body` under `key`.
    pub fn insert(&self, key: ViewKey, body: axum::body::Bytes) {
        self.0.insert(key, body);
    }
}

/// What a licence view's body depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewKey {
    id: String,
    status: LicenceStatus,
    status_reason: Option<String>,
    replaced_by: Option<String>,
    pub(crate) fields: std::collections::BTreeSet<String>,
    pub(crate) issuer: bool,
}

impl ViewKey {
    pub(crate) fn new(
        record: &LicenceRecord,
        fields: std::collections::BTreeSet<String>,
        issuer: bool,
    ) -> ViewKey {
        ViewKey {
            id: record.id.to_string(),
            status: record.status,
            // Only the issuer is shown the reason.
            status_reason: record.status_reason.clone().filter(|_| issuer),
            replaced_by: record.replaced_by.as_ref().map(ToString::to_string),
            fields,
            issuer,
        }
    }
}
