//! Licence and seal records served from memory: a [`Store`] in front of another that keeps
//! the records it has read (bounded by bytes) and forgets one as the store changes it, so a
//! hit costs no database read and no thread hop.
//!
//! Every change made through this store forgets the record before it returns, so the next read
//! in this process sees the change (a revocation is seen on the next request). Changes other
//! processes make to a shared store reach this one as [`CachedStore::forget_licence`] and
//! [`CachedStore::forget_seal`] from the notification bus, or [`CachedStore::forget_all`] when
//! notices may have been missed; on a shared store records also expire after
//! [`SHARED_TTL`], whatever the bus says.
//!
//! A read that raced a change cannot put the old record back: reads note a generation before
//! going to the store and keep what they read only if nothing was forgotten meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

use crate::id::Uscc;
use crate::licence::{
    ConsentRecord, LicenceRecord, LicenceStatus, SealRecord, ShowCodeRecord, TrustedSealCa,
};
use crate::store::{HolderOrder, Result, Store};

/// How long a record is kept when other processes share the store: the bound on staleness if
/// a notice is lost without the bus noticing.
pub const SHARED_TTL: Duration = Duration::from_secs(5);

/// The default bound on the memory the records take.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A [`Store`] that serves licence and seal records from memory.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    licences: Cache<String, Arc<LicenceRecord>>,
    seals: Cache<String, Arc<SealRecord>>,
    /// Bumped by every forget; see the module documentation.
    generation: AtomicU64,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("licences", &self.licences.entry_count())
            .field("seals", &self.seals.entry_count())
            .finish_non_exhaustive()
    }
}

/// Roughly the bytes a licence record takes in memory.
fn licence_weight(id: &str, l: &LicenceRecord) -> u32 {
    let fields: usize = l
        .fields
        .iter()
        .map(|(k, v)| k.len() + v.to_string().len() + 64)
        .sum();
    u32::try_from(id.len() + l.sd_jwt.len() + fields + 512).unwrap_or(u32::MAX)
}

/// Roughly the bytes a seal record takes in memory.
fn seal_weight(id: &str, s: &SealRecord) -> u32 {
    u32::try_from(id.len() + s.certificate_pem.len() + s.encrypted_key.len() + 512)
        .unwrap_or(u32::MAX)
}

impl CachedStore {
    /// Puts a cache of at most `max_bytes` (licences and seals together) in front of
    /// `inner`.
    pub fn new(inner: Arc<dyn Store>, max_bytes: u64) -> CachedStore {
        let ttl = inner.is_shared().then_some(SHARED_TTL);
        let mut licences = Cache::builder()
            .max_capacity(max_bytes - max_bytes / 8)
            .weigher(|k: &String, v: &Arc<LicenceRecord>| licence_weight(k, v));
        let mut seals = Cache::builder()
            .max_capacity(max_bytes / 8)
            .weigher(|k: &String, v: &Arc<SealRecord>| seal_weight(k, v));
        if let Some(ttl) = ttl {
            licences = licences.time_to_live(ttl);
            seals = seals.time_to_live(ttl);
        }
        CachedStore {
            inner,
            licences: licences.build(),
            seals: seals.build(),
            generation: AtomicU64::new(0),
        }
    }

    /// The licence, if it is in memory.
    pub fn cached_licence(&self, id: &str) -> Option<Arc<LicenceRecord>> {
        self.licences.get(id)
    }

    /// The seal, if it is in memory.
    pub fn cached_seal(&self, id: &str) -> Option<SealRecord> {
        self.seals.get(id).map(|s| (*s).clone())
    }

    /// Forgets a licence another process changed.
    pub fn forget_licence(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.licences.invalidate(id);
    }

    /// Forgets a seal another process changed.
    pub fn forget_seal(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.seals.invalidate(id);
    }

    /// Forgets every record (changes elsewhere may have been missed).
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.licences.invalidate_all();
        self.seals.invalidate_all();
    }

    /// Records in memory and the bytes they take (after pending evictions).
    pub fn usage(&self) -> (u64, u64) {
        self.licences.run_pending_tasks();
        self.seals.run_pending_tasks();
        (
            self.licences.entry_count() + self.seals.entry_count(),
            self.licences.weighted_size() + self.seals.weighted_size(),
        )
    }
}

impl CachedStore {
    /// A record from `cache`, else from `load` (the store) and kept, unless a change came
    /// in while it was read: then the next read reads again.
    fn read_through<T: Clone + Send + Sync + 'static>(
        &self,
        cache: &Cache<String, Arc<T>>,
        id: &str,
        load: impl FnOnce() -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        if let Some(hit) = cache.get(id) {
            return Ok(Some((*hit).clone()));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = load()?;
        if let Some(record) = &found
            && self.generation.load(Ordering::SeqCst) == generation
        {
            cache.insert(id.to_owned(), Arc::new(record.clone()));
        }
        Ok(found)
    }
}

impl Store for CachedStore {
    fn put_secret_once(&self, name: &str, blob: &[u8]) -> Result<Vec<u8>> {
        self.inner.put_secret_once(name, blob)
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.secret(name)
    }

    fn insert_seal(&self, seal: &SealRecord) -> Result<()> {
        self.inner.insert_seal(seal)
    }

    fn seal(&self, id: &str) -> Result<Option<SealRecord>> {
        self.read_through(&self.seals, id, || self.inner.seal(id))
    }

    fn seals(
        &self,
        owner: &Uscc,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<SealRecord>> {
        self.inner.seals(owner, after, limit)
    }

    fn revoke_seal(&self, id: &str, at: i64, reason: &str) -> Result<bool> {
        let changed = self.inner.revoke_seal(id, at, reason);
        self.forget_seal(id);
        changed
    }

    fn insert_trusted_ca(&self, ca: &TrustedSealCa) -> Result<()> {
        self.inner.insert_trusted_ca(ca)
    }

    fn remove_trusted_ca(&self, id: &str, at: i64) -> Result<bool> {
        self.inner.remove_trusted_ca(id, at)
    }

    fn trusted_cas(&self) -> Result<Vec<TrustedSealCa>> {
        self.inner.trusted_cas()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn insert_licence(&self, licence: &LicenceRecord, held_at: Option<i64>) -> Result<()> {
        self.inner.insert_licence(licence, held_at)
    }

    fn queues_inserts(&self) -> bool {
        self.inner.queues_inserts()
    }

    fn queue_licence(
        &self,
        licence: LicenceRecord,
        held_at: Option<i64>,
        done: crate::store::Inserted,
    ) {
        self.inner.queue_licence(licence, held_at, done);
    }

    fn insert_renewal(&self, old: &str, new: &LicenceRecord, at: i64) -> Result<()> {
        let done = self.inner.insert_renewal(old, new, at);
        self.forget_licence(old);
        done
    }

    fn licence(&self, id: &str) -> Result<Option<LicenceRecord>> {
        self.read_through(&self.licences, id, || self.inner.licence(id))
    }

    fn licences_by_holder(
        &self,
        holder: &str,
        type_code: &str,
        issuer: Option<&Uscc>,
        after: Option<&HolderOrder>,
        limit: u32,
    ) -> Result<Vec<LicenceRecord>> {
        self.inner
            .licences_by_holder(holder, type_code, issuer, after, limit)
    }

    fn set_status(
        &self,
        id: &str,
        from: LicenceStatus,
        to: LicenceStatus,
        reason: Option<&str>,
    ) -> Result<()> {
        let done = self.inner.set_status(id, from, to, reason);
        self.forget_licence(id);
        done
    }

    fn status_entries(&self, list: u32) -> Result<Vec<(u32, LicenceStatus)>> {
        self.inner.status_entries(list)
    }

    fn status_list_len(&self, list: u32) -> Result<u64> {
        self.inner.status_list_len(list)
    }

    fn insert_consent(&self, consent: &ConsentRecord) -> Result<()> {
        self.inner.insert_consent(consent)
    }

    fn consent(&self, id: &str) -> Result<Option<ConsentRecord>> {
        self.inner.consent(id)
    }

    fn revoke_consent(&self, id: &str, at: i64) -> Result<bool> {
        self.inner.revoke_consent(id, at)
    }

    fn insert_show_code(&self, code: &ShowCodeRecord) -> Result<()> {
        self.inner.insert_show_code(code)
    }

    fn purge_show_codes(&self, expired_before: i64) -> Result<u64> {
        self.inner.purge_show_codes(expired_before)
    }

    fn show_code(&self, code_sha256: &str) -> Result<Option<ShowCodeRecord>> {
        self.inner.show_code(code_sha256)
    }

    fn redeem_show_code(
        &self,
        code_sha256: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<Option<ShowCodeRecord>> {
        self.inner.redeem_show_code(code_sha256, by, now)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn stores() -> (Arc<dyn Store>, CachedStore) {
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let cached = CachedStore::new(inner.clone(), DEFAULT_CACHE_BYTES);
        (inner, cached)
    }

    #[test]
    fn a_change_through_the_cache_is_seen_by_the_next_read() {
        let (_, cached) = stores();
        let seal = crate::store::tests::seal();
        cached.insert_seal(&seal).unwrap();
        let l = crate::store::tests::licence("L1", 1);
        cached.insert_licence(&l, None).unwrap();
        assert!(
            cached.cached_licence(l.id.as_str()).is_none(),
            "not read yet"
        );
        assert_eq!(
            cached.licence(l.id.as_str()).unwrap().unwrap().status,
            LicenceStatus::Valid
        );
        assert!(cached.cached_licence(l.id.as_str()).is_some(), "kept");
        cached
            .set_status(
                l.id.as_str(),
                LicenceStatus::Valid,
                LicenceStatus::Revoked,
                Some("r"),
            )
            .unwrap();
        assert!(cached.cached_licence(l.id.as_str()).is_none(), "forgotten");
        assert_eq!(
            cached.licence(l.id.as_str()).unwrap().unwrap().status,
            LicenceStatus::Revoked
        );
        assert!(cached.seal(&seal.id).unwrap().unwrap().revoked_at.is_none());
        assert!(cached.cached_seal(&seal.id).is_some());
        cached.revoke_seal(&seal.id, 5, "key lost").unwrap();
        assert_eq!(cached.seal(&seal.id).unwrap().unwrap().revoked_at, Some(5));
    }

    #[test]
    fn a_change_elsewhere_is_seen_once_forgotten() {
        let (inner, cached) = stores();
        let seal = crate::store::tests::seal();
        inner.insert_seal(&seal).unwrap();
        let l = crate::store::tests::licence("L1", 1);
        inner.insert_licence(&l, None).unwrap();
        cached.licence(l.id.as_str()).unwrap();
        // Another node changes the shared store; its notice has not arrived yet.
        inner
            .set_status(
                l.id.as_str(),
                LicenceStatus::Valid,
                LicenceStatus::Suspended,
                None,
            )
            .unwrap();
        assert_eq!(
            cached.licence(l.id.as_str()).unwrap().unwrap().status,
            LicenceStatus::Valid,
            "this test must see the cache answer, or it proves nothing"
        );
        cached.forget_licence(l.id.as_str());
        assert_eq!(
            cached.licence(l.id.as_str()).unwrap().unwrap().status,
            LicenceStatus::Suspended
        );
        cached.forget_all();
        assert!(cached.cached_licence(l.id.as_str()).is_none());
    }

    #[test]
    fn memory_is_bounded_by_bytes() {
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let cached = CachedStore::new(inner.clone(), 256 * 1024);
        let seal = crate::store::tests::seal();
        inner.insert_seal(&seal).unwrap();
        for i in 0..500u32 {
            let l = crate::store::tests::licence(&format!("L{i}"), i);
            inner.insert_licence(&l, None).unwrap();
            cached.licence(l.id.as_str()).unwrap().unwrap();
        }
        let (entries, bytes) = cached.usage();
        assert!(bytes <= 256 * 1024, "{bytes} bytes in {entries} records");
        assert!(entries > 10 && entries < 500, "{entries}");
    }
}
