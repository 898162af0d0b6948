//! Shared-data exchange (数据共享): the catalog of datasets and proof types, records of the
//! departments' source systems kept in a `moka` cache, shown to each department only as its
//! grants allow, and no-proof checks (无证明) answered from them.
//!
//! It knows nothing of HTTP: a source system is reached through a [`upstream::Transport`] the
//! gateway supplies (its HTTPS client); retries, timeouts and the circuit breaker are here.
//! Metrics go to an [`Observer`], time comes from a [`storage::Clock`].
//!
//! Two caches hold the same `Arc`ed records: `fresh` answers within a dataset's TTL and
//! coalesces concurrent misses (`try_get_with`: N waiters, one upstream call); `last_good`
//! keeps each record for TTL + the stale-if-error window, so that a failing source can be
//! covered by a stale answer, marked as such. Invalidation removes a key from both.
//!
//! ```
//! use exchange::mask_value;
//! assert_eq!(mask_value(&serde_json::json!("张三丰")), serde_json::json!("张**"));
//! ```

#![forbid(unsafe_code)]

pub mod catalog;
pub mod proofs;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cert_store::Uscc;
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use serde_json::{Map, Value};

use catalog::{Dataset, ExchangeSettings, Mask, ProofType, UpstreamSettings};
use upstream::{BreakerState, FetchError, Transport, Upstream};

/// What the exchange tells the gateway's metrics.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A request for a record of `dataset` was answered so.
    fn cache(&self, dataset: &str, event: CacheEvent);
    /// A record left the fresh cache, for `cause` (`size`, `expired`, `explicit`, `replaced`).
    fn evicted(&self, cause: &'static str);
    /// A fetch from `origin` took `seconds` (retries included).
    fn fetched(&self, origin: &str, seconds: f64);
    /// A fetch from `origin` was tried again.
    fn retried(&self, origin: &str);
    /// The breaker of `origin` is now in `state`.
    fn breaker(&self, origin: &str, state: BreakerState);
}

/// How a request for a record was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// From a fresh cache entry.
    Hit,
    /// Fetched for this request.
    Miss,
    /// Waited for a fetch another request started.
    Coalesced,
    /// A record past its TTL, because the source failed.
    Stale,
}

/// Why the exchange could not be built.
#[derive(Debug, thiserror::Error)]
#[error("upstream {origin}: {reason}")]
pub struct UpstreamError {
    /// The upstream's origin.
    pub origin: String,
    /// Why its transport could not be made.
    pub reason: String,
}

/// A cache key: dataset and record key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    dataset: Arc<str>,
    key: Arc<str>,
}

/// One record as fetched from its source system, with the catalog's fields only.
#[derive(Debug)]
pub struct Record {
    /// The record's fields.
    pub fields: Map<String, Value>,
    /// When it was fetched (Unix seconds).
    pub fetched_at: i64,
    fetched: Instant,
    ttl: Duration,
    keep: Duration,
    weight: u32,
}

/// Where an answer came from; sent in the `cache-status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// A fresh cache entry.
    Hit,
    /// Fetched from the source system for this request (or a concurrent one).
    Miss,
    /// An entry past its TTL, served because the source failed.
    Stale,
}

impl CacheStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
        }
    }
}

/// Expires a record after the span `span` gives for it: its TTL in the fresh cache, its TTL and
/// stale window in the last-good cache.
struct ExpireAfter(fn(&Record) -> Duration);

impl Expiry<CacheKey, Arc<Record>> for ExpireAfter {
    fn expire_after_create(&self, _: &CacheKey, v: &Arc<Record>, _: Instant) -> Option<Duration> {
        Some((self.0)(v))
    }
    fn expire_after_update(
        &self,
        _: &CacheKey,
        v: &Arc<Record>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some((self.0)(v))
    }
}

/// The exchange: catalog, upstream clients and caches.
pub struct Exchange {
    datasets: HashMap<String, Arc<Dataset>>,
    proof_types: HashMap<String, Arc<ProofType>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Bumped by every invalidation of a dataset (or of one of its keys), so that a fetch that
    /// was under way when its owner invalidated is done again rather than cached.
    generations: HashMap<String, AtomicU64>,
    fresh: Cache<CacheKey, Arc<Record>>,
    last_good: Cache<CacheKey, Arc<Record>>,
    observer: Arc<dyn Observer>,
    clock: Arc<dyn storage::Clock>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("datasets", &self.datasets.len())
            .field("upstreams", &self.upstreams.len())
            .finish_non_exhaustive()
    }
}

/// Makes the transport for one upstream; the reason, when its settings are unusable.
pub type MakeTransport<'a> = &'a dyn Fn(&UpstreamSettings) -> Result<Arc<dyn Transport>, String>;

impl Exchange {
    /// Builds the exchange from validated settings, reaching each upstream through the
    /// transport `transport` makes for it.
    pub fn new(
        settings: ExchangeSettings,
        transport: MakeTransport<'_>,
        observer: Arc<dyn Observer>,
        clock: Arc<dyn storage::Clock>,
    ) -> Result<Exchange, UpstreamError> {
        let mut upstreams = HashMap::new();
        for u in settings.upstreams {
            let origin = u.origin.clone();
            let t = transport(&u).map_err(|reason| UpstreamError {
                origin: origin.clone(),
                reason,
            })?;
            upstreams.insert(origin, Arc::new(Upstream::new(u, t, observer.clone())));
        }
        let listener = observer.clone();
        let fresh = Cache::builder()
            .max_capacity(settings.cache_bytes)
            .weigher(|_: &CacheKey, v: &Arc<Record>| v.weight)
            .expire_after(ExpireAfter(|r| r.ttl))
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit => "explicit",
                    RemovalCause::Replaced => "replaced",
                };
                listener.evicted(cause);
            })
            .build();
        let last_good = Cache::builder()
            .max_capacity(settings.cache_bytes)
            .weigher(|_: &CacheKey, v: &Arc<Record>| v.weight)
            .expire_after(ExpireAfter(|r| r.keep))
            .support_invalidation_closures()
            .build();
        Ok(Exchange {
            generations: settings
                .datasets
                .iter()
                .map(|d| (d.id.clone(), AtomicU64::new(0)))
                .collect(),
            datasets: settings
                .datasets
                .into_iter()
                .map(|d| (d.id.clone(), Arc::new(d)))
                .collect(),
            proof_types: settings
                .proof_types
                .into_iter()
                .map(|p| (p.id.clone(), Arc::new(p)))
                .collect(),
            upstreams,
            fresh,
            last_good,
            observer,
            clock,
        })
    }

    /// A dataset by id.
    pub fn dataset(&self, id: &str) -> Option<&Arc<Dataset>> {
        self.datasets.get(id)
    }

    /// Every dataset, by id.
    pub fn datasets(&self) -> impl Iterator<Item = &Arc<Dataset>> {
        let mut v: Vec<_> = self.datasets.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter()
    }

    /// A proof type by id.
    pub fn proof_type(&self, id: &str) -> Option<&Arc<ProofType>> {
        self.proof_types.get(id)
    }

    /// Every proof type, by id.
    pub fn proof_types(&self) -> impl Iterator<Item = &Arc<ProofType>> {
        let mut v: Vec<_> = self.proof_types.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v.into_iter()
    }

    /// The fields `department` may see of `dataset` for `matter`, with their masks; `None`
    /// when no grant covers it. The owner sees every field.
    pub fn visible_fields(
        dataset: &Dataset,
        department: &Uscc,
        matter: Option<&str>,
    ) -> Option<BTreeMap<String, Mask>> {
        if &dataset.owner == department {
            return Some(
                dataset
                    .fields
                    .iter()
                    .map(|f| (f.clone(), Mask::Full))
                    .collect(),
            );
        }
        let mut visible: Option<BTreeMap<String, Mask>> = None;
        for g in dataset
            .grants
            .iter()
            .filter(|g| g.applies(department, matter))
        {
            let v = visible.get_or_insert_with(BTreeMap::new);
            for (field, mask) in &g.fields {
                let m = v.entry(field.clone()).or_insert(Mask::Omit);
                *m = (*m).max(*mask);
            }
        }
        visible
    }

    /// The record of `key` in `dataset`: from the cache when fresh, else from the source
    /// system (one call however many requests wait for it), else — when `allow_stale` and the
    /// source is failing — the last good record within the stale-if-error window.
    pub async fn get(
        &self,
        dataset: &Arc<Dataset>,
        key: &str,
        allow_stale: bool,
    ) -> Result<(Arc<Record>, CacheStatus), FetchError> {
        let ck = CacheKey {
            dataset: Arc::from(dataset.id.as_str()),
            key: Arc::from(key),
        };
        if let Some(r) = self.fresh.get(&ck).await {
            self.observer.cache(&dataset.id, CacheEvent::Hit);
            return Ok((r, CacheStatus::Hit));
        }
        let fetched_here = AtomicBool::new(false);
        // The generation the cached record was fetched at.
        let fetched_at = AtomicU64::new(0);
        let init = async {
            fetched_here.store(true, Ordering::Relaxed);
            let generation = self.generation(&dataset.id);
            fetched_at.store(generation, Ordering::SeqCst);
            let mut record = Arc::new(self.fetch(dataset, key).await?);
            if self.generation(&dataset.id) != generation {
                // Invalidated while the fetch was under way: what came back may predate the
                // owner's change.
                fetched_at.store(self.generation(&dataset.id), Ordering::SeqCst);
                record = Arc::new(self.fetch(dataset, key).await?);
            }
            if !dataset.stale_if_error.is_zero() {
                self.last_good.insert(ck.clone(), record.clone()).await;
            }
            Ok::<_, FetchError>(record)
        };
        let result = self.fresh.try_get_with(ck.clone(), init).await;
        let event = if fetched_here.load(Ordering::Relaxed) {
            CacheEvent::Miss
        } else {
            CacheEvent::Coalesced
        };
        self.observer.cache(&dataset.id, event);
        // An invalidation that came while the record was on its way into the cache found
        // nothing to remove: remove it now (this request still gets what it fetched).
        if fetched_here.load(Ordering::Relaxed)
            && self.generation(&dataset.id) != fetched_at.load(Ordering::SeqCst)
        {
            self.fresh.invalidate(&ck).await;
            self.last_good.invalidate(&ck).await;
        }
        match result {
            Ok(r) => Ok((r, CacheStatus::Miss)),
            Err(e) if matches!(*e, FetchError::NotFound) => {
                // The source no longer has it: it must not come back as a stale answer.
                self.last_good.invalidate(&ck).await;
                Err(FetchError::NotFound)
            }
            Err(e) => {
                if allow_stale
                    && e.allows_stale()
                    && let Some(r) = self.last_good.get(&ck).await
                    && r.fetched.elapsed() < r.keep
                {
                    self.observer.cache(&dataset.id, CacheEvent::Stale);
                    tracing::warn!(dataset = %dataset.id, error = %e, "source failing; stale record served");
                    return Ok((r, CacheStatus::Stale));
                }
                Err((*e).clone())
            }
        }
    }

    fn generation(&self, dataset: &str) -> u64 {
        self.generations
            .get(dataset)
            .map_or(0, |g| g.load(Ordering::SeqCst))
    }

    fn bump_generation(&self, dataset: &str) {
        if let Some(g) = self.generations.get(dataset) {
            g.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn fetch(&self, dataset: &Dataset, key: &str) -> Result<Record, FetchError> {
        let upstream = self
            .upstreams
            .get(&dataset.origin)
            .ok_or_else(|| FetchError::Unreachable("no upstream configured".into()))?;
        // Keys are checked by kind before they get here: no character needs escaping.
        let url = dataset.url.replace("{key}", key);
        let mut fields = upstream.fetch(&url, dataset.max_entry_bytes).await?;
        fields.retain(|k, _| dataset.fields.contains(k));
        let weight = serde_json::to_vec(&fields).map_or(u32::MAX, |v| {
            u32::try_from(v.len() + key.len() + 64).unwrap_or(u32::MAX)
        });
        Ok(Record {
            fields,
            fetched_at: self.clock.now(),
            fetched: Instant::now(),
            ttl: dataset.ttl,
            keep: dataset.ttl + dataset.stale_if_error,
            weight,
        })
    }

    /// Drops one key of a dataset from the cache: the next request fetches it again.
    pub async fn invalidate_key(&self, dataset: &str, key: &str) {
        self.bump_generation(dataset);
        let ck = CacheKey {
            dataset: Arc::from(dataset),
            key: Arc::from(key),
        };
        self.fresh.invalidate(&ck).await;
        self.last_good.invalidate(&ck).await;
    }

    /// Drops every key of a dataset from the cache.
    pub fn invalidate_dataset(&self, dataset: &str) {
        self.bump_generation(dataset);
        for cache in [&self.fresh, &self.last_good] {
            let id: Arc<str> = Arc::from(dataset);
            // Only fails when closures are not enabled, which the builder above does.
            if let Err(e) = cache.invalidate_entries_if(move |k, _| k.dataset == id) {
                tracing::error!(error = %e, "cache invalidation refused");
            }
        }
    }

    /// Drops everything from the cache (after a gap in the notifications from other nodes).
    pub fn invalidate_all(&self) {
        for g in self.generations.values() {
            g.fetch_add(1, Ordering::SeqCst);
        }
        self.fresh.invalidate_all();
        self.last_good.invalidate_all();
    }

    /// A licence of `licence_type` held by `holder` changed status: drop the holder's record
    /// from every dataset that depends on that type.
    pub async fn licence_changed(&self, licence_type: &str, holder: &str) {
        for d in self.datasets.values() {
            if d.invalidated_by_licence_types.contains(licence_type)
                && let Ok(key) = d.key_kind.parse(holder)
            {
                self.invalidate_key(&d.id, &key).await;
            }
        }
    }

    /// Upstream origins with their breaker states.
    pub fn breakers(&self) -> Vec<(String, upstream::BreakerState)> {
        let mut v: Vec<_> = self
            .upstreams
            .values()
            .map(|u| (u.origin().to_owned(), u.breaker_state()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The record as `visible` lets a department see it: listed fields only, masked as listed.
pub fn present(record: &Record, visible: &BTreeMap<String, Mask>) -> Map<String, Value> {
    let mut out = Map::new();
    for (field, mask) in visible {
        let Some(v) = record.fields.get(field) else {
            continue;
        };
        match mask {
            Mask::Omit => {}
            Mask::Full => {
                out.insert(field.clone(), v.clone());
            }
            Mask::Partial => {
                out.insert(field.clone(), mask_value(v));
            }
        }
    }
    out
}

/// Masks the middle of a value: a quarter of the characters stay visible at each end
/// (`4201**********1234` for an 18-character id), the first only for short values, nothing
/// for values that are not text or numbers.
pub fn mask_value(v: &Value) -> Value {
    let text = match v {
        Value::Null => return Value::Null,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Value::String("***".into()),
    };
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let (head, tail) = match n {
        0 => (0, 0),
        1 => (0, 0),
        2..=3 => (1, 0),
        _ => (n / 4, n / 4),
    };
    let mut out: String = chars[..head].iter().collect();
    out.extend(std::iter::repeat_n('*', n - head - tail));
    out.extend(chars[n - tail..].iter());
    Value::String(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masking_keeps_a_quarter_at_each_end() {
        assert_eq!(
            mask_value(&json!("420102199001011234")),
            json!("4201**********1234")
        );
        assert_eq!(mask_value(&json!("张三丰")), json!("张**"));
        assert_eq!(mask_value(&json!("张三")), json!("张*"));
        assert_eq!(mask_value(&json!("x")), json!("*"));
        assert_eq!(mask_value(&json!("")), json!(""));
        assert_eq!(mask_value(&json!(13800138000_u64)), json!("13*******00"));
        assert_eq!(mask_value(&json!({"a": 1})), json!("***"));
        assert_eq!(mask_value(&Value::Null), Value::Null);
    }
}
