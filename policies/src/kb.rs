//! The knowledge base: the store, the profiles and policies in memory, and the two indexes,
//! kept in step. Matching in both directions, the push feed, search.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use cert_store::Uscc;
use search::ChineseAnalyzer;
use time::Date;

use crate::eligibility::{self, CompactFacts, Eligibility};
use crate::index::{EnterpriseIndex, IndexError, PolicyIndex, SearchFilter, SearchHit};
use crate::model::{Policy, Profile};
use crate::store::{FeedEvent, KbStore, NewMatch, Store, StoreError};

/// Most enterprises one page of [`KnowledgeBase::eligible_page`] holds.
pub const MAX_ELIGIBLE_PAGE: usize = 100_000;

/// A page of eligible enterprises.
#[derive(Debug)]
pub struct EligiblePage {
    /// The enterprises, by USCC.
    pub enterprises: Vec<Arc<Profile>>,
    /// The cursor of the next page (the last USCC of this one), when there are more.
    pub next: Option<Uscc>,
}

/// A knowledge-base error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KbError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A lock was poisoned by a panic elsewhere.
    #[error("knowledge base lock poisoned")]
    Poisoned,
    /// A policy's version is not newer than the stored one.
    #[error("policy {id} is at version {stored}; publish a higher version")]
    NotNewer {
        /// The policy.
        id: String,
        /// Its stored version.
        stored: u32,
    },
}

/// A policy matched to an enterprise, with the explanation.
#[derive(Debug, Clone)]
pub struct PolicyMatch {
    /// The policy.
    pub policy: Arc<Policy>,
    /// Its eligibility, condition by condition.
    pub eligibility: Eligibility,
    /// Relevance of the policy's text to the enterprise's business scope.
    pub relevance: f32,
}

/// An enterprise's matches: eligible policies, ranked, and policies it misses by one condition.
#[derive(Debug, Clone, Default)]
pub struct Matches {
    /// Eligible, ranked by category, benefit, relevance.
    pub eligible: Vec<PolicyMatch>,
    /// Exactly one condition (other than the region) not met or missing.
    pub almost: Vec<PolicyMatch>,
}

/// Profiles by row (the row is what the enterprise index holds).
#[derive(Default)]
struct Profiles {
    rows: Vec<Arc<Profile>>,
    /// Each row's facts in compact form (`None`: decided on the profile itself), so that
    /// deciding a policy for many profiles reads them in one stream.
    facts: Vec<Option<CompactFacts>>,
    by_uscc: HashMap<String, u64>,
    /// True while rows are in USCC order, so that sorting rows sorts by USCC.
    sorted: bool,
    /// When rows are not in USCC order: the rows in USCC order (kept by [`Profiles::order`]
    /// after every change), so that a page of eligible enterprises resumes where the last
    /// one stopped without sorting anything.
    order: Vec<u32>,
    /// New rows not yet in `order`.
    unordered: Vec<u32>,
}

impl Profiles {
    /// Puts `p` in its row (a new one at the end) and returns the row.
    fn put(&mut self, p: Arc<Profile>) -> u64 {
        if let Some(row) = self.by_uscc.get(p.uscc.as_str()).copied() {
            if let Some(slot) = self.facts.get_mut(row as usize) {
                *slot = CompactFacts::of(&p);
            }
            if let Some(slot) = self.rows.get_mut(row as usize) {
                *slot = p;
            }
            return row;
        }
        if self.rows.last().is_some_and(|last| last.uscc > p.uscc) {
            self.sorted = false;
        }
        let row = self.rows.len() as u64;
        self.by_uscc.insert(p.uscc.as_str().to_owned(), row);
        self.facts.push(CompactFacts::of(&p));
        self.rows.push(p);
        self.unordered.push(row as u32);
        row
    }

    /// Brings `order` up to date with the rows put since: a few are inserted where they
    /// belong, many sort the whole order again.
    fn order(&mut self) {
        if self.sorted {
            self.order.clear();
            self.unordered.clear();
            return;
        }
        let fresh = std::mem::take(&mut self.unordered);
        if self.order.len() + fresh.len() != self.rows.len() || fresh.len() > 1000 {
            let rows = &self.rows;
            let mut order: Vec<u32> = (0..rows.len() as u32).collect();
            order.sort_unstable_by(|a, b| rows[*a as usize].uscc.cmp(&rows[*b as usize].uscc));
            self.order = order;
            return;
        }
        for row in fresh {
            let uscc = &self.rows[row as usize].uscc;
            let at = self
                .order
                .partition_point(|r| self.rows[*r as usize].uscc < *uscc);
            self.order.insert(at, row);
        }
    }

    /// The row of the profile `i`th in USCC order.
    fn row_in_order(&self, i: usize) -> Option<usize> {
        if self.sorted {
            (i < self.rows.len()).then_some(i)
        } else {
            self.order.get(i).map(|r| *r as usize)
        }
    }

    /// The profile `i`th in USCC order.
    fn in_order(&self, i: usize) -> Option<&Arc<Profile>> {
        self.rows.get(self.row_in_order(i)?)
    }

    /// Whether the profile in `row` is eligible for `policy` on `today` (decided on its
    /// compact facts where it has them).
    fn eligible(&self, row: usize, policy: &Policy, today: Date) -> bool {
        match self.facts.get(row) {
            Some(Some(facts)) => eligibility::decide(policy, facts, today),
            _ => self
                .rows
                .get(row)
                .is_some_and(|p| eligibility::is_eligible(policy, p, today)),
        }
    }
}

/// Policies by row (the row is what the policy index holds); a withdrawn policy leaves an
/// empty row.
#[derive(Default)]
struct Policies {
    rows: Vec<Option<Arc<Policy>>>,
    by_id: HashMap<String, u64>,
}

impl Policies {
    fn put(&mut self, p: Arc<Policy>) -> u64 {
        if let Some(row) = self.by_id.get(&p.id).copied() {
            if let Some(slot) = self.rows.get_mut(row as usize) {
                *slot = Some(p);
            }
            return row;
        }
        let row = self.rows.len() as u64;
        self.by_id.insert(p.id.clone(), row);
        self.rows.push(Some(p));
        row
    }

    fn get(&self, id: &str) -> Option<&Arc<Policy>> {
        self.row(*self.by_id.get(id)?)
    }

    /// Puts a stored policy back in its row.
    fn put_at(&mut self, row: u64, p: Arc<Policy>) {
        let i = row as usize;
        if self.rows.len() <= i {
            self.rows.resize(i + 1, None);
        }
        self.by_id.insert(p.id.clone(), row);
        self.rows[i] = Some(p);
    }

    fn row_of(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    fn row(&self, row: u64) -> Option<&Arc<Policy>> {
        self.rows.get(row as usize)?.as_ref()
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Policy>> {
        let row = self.by_id.remove(id)?;
        self.rows.get_mut(row as usize)?.take()
    }

    fn live(&self) -> impl Iterator<Item = (u64, &Arc<Policy>)> {
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as u64, p)))
    }
}

/// What a publication or an import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Items stored.
    pub stored: usize,
    /// New feed events.
    pub new_matches: usize,
    /// Matches that no longer hold.
    pub ended_matches: usize,
}

/// The knowledge base.
pub struct KnowledgeBase {
    store: Arc<dyn KbStore>,
    /// The store's change mark this node's memory and indexes reflect (see
    /// [`KbStore::changes_since`]).
    mark: Mutex<i64>,
    policies: RwLock<Policies>,
    profiles: RwLock<Profiles>,
    policy_index: PolicyIndex,
    enterprise_index: EnterpriseIndex,
    /// Serialises changes, so that match bookkeeping sees one change at a time.
    writing: Mutex<()>,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    storage::clock::unix_now_ms()
}

impl KnowledgeBase {
    /// Opens the knowledge base in `dir` (`policies.db`, `index/`), or in memory without one.
    /// Profiles and policies are loaded into memory; an index that is missing, corrupt or out
    /// of step with the store is rebuilt from it.
    pub fn open(dir: Option<&Path>, analyzer: ChineseAnalyzer) -> Result<KnowledgeBase, KbError> {
        let store = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| StoreError::from_io(d, e))?;
                Store::open(&d.join("policies.db"))?
            }
            None => Store::in_memory()?,
        };
        KnowledgeBase::open_on(dir, analyzer, Arc::new(store))
    }

    /// Opens the knowledge base on `store`, with its indexes in `dir` (or in memory). With a
    /// store several nodes share, the indexes are rebuilt at start and kept in step with the
    /// other nodes' changes by [`KnowledgeBase::refresh`] and before every write.
    pub fn open_on(
        dir: Option<&Path>,
        analyzer: ChineseAnalyzer,
        store: Arc<dyn KbStore>,
    ) -> Result<KnowledgeBase, KbError> {
        if let Some(d) = dir {
            std::fs::create_dir_all(d).map_err(|e| StoreError::from_io(d, e))?;
        }
        // Taken before loading: a change made while loading is applied again later, which
        // is harmless, rather than missed.
        let mark = store.mark()?;
        // Whether the policy index is new does not matter: it is rebuilt below in any case.
        let (policy_index, _) =
            PolicyIndex::open(dir.map(|d| d.join("index/policies")).as_deref(), analyzer)?;
        let (enterprise_index, fresh_e) =
            EnterpriseIndex::open(dir.map(|d| d.join("index/enterprises")).as_deref())?;
        // Rows are stored with the profiles and policies, so that the rows the indexes hold
        // stay theirs across restarts.
        let load = |store: &dyn KbStore| -> Result<(Profiles, bool), KbError> {
            let mut profiles = Profiles::default();
            let mut gap = false;
            store.for_each_profile(&mut |row, p| {
                gap |= row != profiles.rows.len() as u64;
                profiles.put(Arc::new(p));
            })?;
            Ok((profiles, gap))
        };
        let (mut profiles, gap) = load(store.as_ref())?;
        // A write that failed after rows were handed out leaves a gap: number them again
        // (and rebuild the index below, whose rows no longer match).
        let renumbered = gap;
        if gap {
            store.renumber_profiles()?;
            profiles = load(store.as_ref())?.0;
        }
        profiles.sorted = profiles.rows.windows(2).all(|w| w[0].uscc < w[1].uscc);
        profiles.order();
        let mut policies = Policies::default();
        for (row, p) in store.policies()? {
            policies.put_at(row, Arc::new(p));
        }
        // An index that is new, or of another size than the store, is rebuilt.
        if fresh_e
            || renumbered
            || !store.keeps_rows()
            || enterprise_index.len() != profiles.rows.len() as u64
        {
            enterprise_index.clear()?;
            for (row, p) in profiles.rows.iter().enumerate() {
                enterprise_index.upsert(row as u64, p, true)?;
            }
            enterprise_index.commit()?;
        }
        // The policy index is small (20,000 policies index in under a second): it is rebuilt
        // at every start, so a crash between an index commit and the store's cannot leave it
        // ahead of the store.
        policy_index.clear()?;
        for (row, p) in policies.live() {
            policy_index.upsert(row, p)?;
        }
        policy_index.commit()?;
        Ok(KnowledgeBase {
            store,
            mark: Mutex::new(mark),
            policies: RwLock::new(policies),
            profiles: RwLock::new(profiles),
            policy_index,
            enterprise_index,
            writing: Mutex::new(()),
        })
    }

    /// A policy by id.
    pub fn policy(&self, id: &str) -> Option<Arc<Policy>> {
        self.policies.read().ok()?.get(id).cloned()
    }

    /// Every policy.
    pub fn policies(&self) -> Vec<Arc<Policy>> {
        self.policies
            .read()
            .map(|p| p.live().map(|(_, p)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// A profile by USCC.
    pub fn profile(&self, uscc: &str) -> Option<Arc<Profile>> {
        let p = self.profiles.read().ok()?;
        let row = *p.by_uscc.get(uscc)?;
        p.rows.get(row as usize).cloned()
    }

    /// Number of profiles.
    pub fn profile_count(&self) -> usize {
        self.profiles.read().map_or(0, |p| p.rows.len())
    }

    /// Every profile (tests and brute-force checks).
    pub fn profiles(&self) -> Vec<Arc<Profile>> {
        self.profiles
            .read()
            .map(|p| p.rows.clone())
            .unwrap_or_default()
    }

    /// One page of the enterprises eligible for `policy` on `today`, by USCC: at most
    /// `limit` (1 to [`MAX_ELIGIBLE_PAGE`]) after the USCC `after`, and the cursor of the next
    /// page when there are more. A page costs the profiles between its first and its last
    /// (and one more eligible), never the whole population.
    pub fn eligible_page(
        &self,
        policy: &Policy,
        today: Date,
        after: Option<&Uscc>,
        limit: usize,
    ) -> Result<EligiblePage, KbError> {
        let limit = limit.clamp(1, MAX_ELIGIBLE_PAGE);
        let mut page = EligiblePage {
            enterprises: Vec::new(),
            next: None,
        };
        if policy.category == crate::model::Category::Publicity || !policy.window.contains(today) {
            return Ok(page);
        }
        // Profiles in USCC order from just after `after`, each decided once: a page costs the
        // profiles it passes over, and paging through the whole list passes over each once.
        let profiles = self.profiles.read().map_err(|_| KbError::Poisoned)?;
        let n = profiles.rows.len();
        let mut i = match after {
            None => 0,
            Some(after) => {
                let (mut lo, mut hi) = (0, n);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    match profiles.in_order(mid) {
                        Some(p) if p.uscc <= *after => lo = mid + 1,
                        _ => hi = mid,
                    }
                }
                lo
            }
        };
        while let Some(row) = profiles.row_in_order(i) {
            i += 1;
            if !profiles.eligible(row, policy, today) {
                continue;
            }
            let Some(p) = profiles.rows.get(row) else {
                continue;
            };
            if page.enterprises.len() == limit {
                // One more is eligible: the next page starts after this one's last.
                page.next = page.enterprises.last().map(|p| p.uscc.clone());
                break;
            }
            page.enterprises.push(p.clone());
        }
        Ok(page)
    }

    /// The enterprises eligible for `policy` on `today`, by USCC.
    pub fn eligible_enterprises(
        &self,
        policy: &Policy,
        today: Date,
    ) -> Result<Vec<Arc<Profile>>, KbError> {
        // No one is eligible for a publicity policy (`eligibility::is_eligible`): do not walk
        // every profile of its region to find that out.
        if policy.category == crate::model::Category::Publicity {
            return Ok(Vec::new());
        }
        let mut rows = self.enterprise_index.candidates(policy, today)?;
        let profiles = self.profiles.read().map_err(|_| KbError::Poisoned)?;
        if profiles.sorted {
            rows.sort_unstable();
        }
        let mut out: Vec<Arc<Profile>> = rows
            .into_iter()
            .filter(|r| profiles.eligible(*r as usize, policy, today))
            .filter_map(|r| profiles.rows.get(r as usize))
            .cloned()
            .collect();
        if !profiles.sorted {
            out.sort_unstable_by(|a, b| a.uscc.cmp(&b.uscc));
        }
        Ok(out)
    }

    /// The policies `profile` is eligible for on `today`, ranked, with the ones it misses by
    /// one condition.
    pub fn match_enterprise(&self, profile: &Profile, today: Date) -> Result<Matches, KbError> {
        let candidates = self
            .policy_index
            .candidates(profile.region, &profile.business_scope)?;
        let policies = self.policies.read().map_err(|_| KbError::Poisoned)?;
        let mut m = Matches::default();
        for (row, relevance) in candidates {
            let Some(policy) = policies.row(row) else {
                continue;
            };
            // Publicity policies are found by search; there is nothing to be eligible for.
            if policy.category == crate::model::Category::Publicity {
                continue;
            }
            let (region, unmet) = eligibility::unmet_count(policy, profile, today);
            if !region || unmet > 1 {
                continue;
            }
            let pm = PolicyMatch {
                policy: policy.clone(),
                eligibility: eligibility::evaluate(policy, profile, today),
                relevance,
            };
            if unmet == 0 {
                m.eligible.push(pm);
            } else {
                m.almost.push(pm);
            }
        }
        let rank = |a: &PolicyMatch, b: &PolicyMatch| {
            b.policy
                .category
                .rank()
                .cmp(&a.policy.category.rank())
                .then(b.eligibility.benefit_yuan.cmp(&a.eligibility.benefit_yuan))
                .then(b.relevance.total_cmp(&a.relevance))
                .then(a.policy.id.cmp(&b.policy.id))
        };
        m.eligible.sort_by(rank);
        m.almost.sort_by(rank);
        Ok(m)
    }

    /// Full-text search.
    pub fn search(
        &self,
        text: &str,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<SearchHit>, KbError> {
        Ok(self.policy_index.search(text, filter, limit)?)
    }

    /// Feed events after `after`.
    pub fn feed(&self, after: i64, limit: usize) -> Result<Vec<FeedEvent>, KbError> {
        Ok(self.store.feed(after, limit)?)
    }

    /// Loads policies and profiles into an empty knowledge base without computing matches (no
    /// feed events): for benchmarks and for seeding a test population. They are held in memory
    /// and the indexes only, not stored: matches are computed for each policy the next time it
    /// is published, and profiles stored later cannot match a policy loaded this way until then
    /// (the store refuses a match of a policy it does not hold).
    pub fn load_without_matching(
        &self,
        policies: Vec<Policy>,
        profiles: Vec<Profile>,
    ) -> Result<(), KbError> {
        let _w = self.writing.lock().map_err(|_| KbError::Poisoned)?;
        let mut profiles = profiles;
        profiles.sort_unstable_by(|a, b| a.uscc.cmp(&b.uscc));
        {
            let mut rows = self.profiles.write().map_err(|_| KbError::Poisoned)?;
            if rows.rows.is_empty() {
                rows.sorted = true;
            }
            for p in profiles {
                let new = !rows.by_uscc.contains_key(p.uscc.as_str());
                let p = Arc::new(p);
                let row = rows.put(p.clone());
                self.enterprise_index.upsert(row, &p, new)?;
            }
            rows.order();
        }
        self.enterprise_index.commit()?;
        {
            let mut set = self.policies.write().map_err(|_| KbError::Poisoned)?;
            for p in policies {
                let p = Arc::new(p);
                let row = set.put(p.clone());
                self.policy_index.upsert(row, &p)?;
            }
        }
        self.policy_index.commit()?;
        Ok(())
    }

    /// Decides every policy again for today: eligibility that changes with time alone (an
    /// application window opening or closing, an enterprise's anniversary) becomes feed events
    /// and ended matches. Run once a day.
    pub fn rematch_all(&self, today: Date) -> Result<Changes, KbError> {
        let _w = self.writing.lock().map_err(|_| KbError::Poisoned)?;
        self.write(|| {
            let mut changes = Changes::default();
            for policy in self.policies() {
                let c = self.rematch_policy(&policy, today)?;
                changes.new_matches += c.new_matches;
                changes.ended_matches += c.ended_matches;
            }
            Ok(changes)
        })
    }

    /// Applies what other nodes sharing the store changed since this node last looked;
    /// returns the number of policies and profiles applied. (A store of one node's own has
    /// nothing to apply.)
    pub fn refresh(&self) -> Result<usize, KbError> {
        let _w = self.writing.lock().map_err(|_| KbError::Poisoned)?;
        self.catch_up()
    }

    /// Runs a change with every other writer of the store held off, after catching up with
    /// them, so that matching sees every earlier change of every node.
    fn write<T>(&self, change: impl FnOnce() -> Result<T, KbError>) -> Result<T, KbError> {
        let _lock = self.store.lock_writes()?;
        self.catch_up()?;
        let out = change()?;
        // Nobody else has written since the catch-up: this node is at the newest change.
        *self.mark.lock().map_err(|_| KbError::Poisoned)? = self.store.mark()?;
        Ok(out)
    }

    /// Brings memory and indexes up to the store's newest change. Call with `writing` held.
    fn catch_up(&self) -> Result<usize, KbError> {
        let mut mark = self.mark.lock().map_err(|_| KbError::Poisoned)?;
        let changes = self.store.changes_since(*mark)?;
        let applied = changes.policies.len() + changes.profiles.len();
        if !changes.policies.is_empty() {
            let mut set = self.policies.write().map_err(|_| KbError::Poisoned)?;
            for (id, policy) in changes.policies {
                match policy {
                    Some(p) => {
                        let p = Arc::new(p);
                        let row = set.put(p.clone());
                        self.policy_index.upsert(row, &p)?;
                    }
                    None => {
                        set.remove(&id);
                        self.policy_index.delete(&id)?;
                    }
                }
            }
            drop(set);
            self.policy_index.commit()?;
        }
        if !changes.profiles.is_empty() {
            let mut profiles = self.profiles.write().map_err(|_| KbError::Poisoned)?;
            for p in changes.profiles {
                let new = !profiles.by_uscc.contains_key(p.uscc.as_str());
                let p = Arc::new(p);
                let row = profiles.put(p.clone());
                self.enterprise_index.upsert(row, &p, new)?;
            }
            profiles.order();
            drop(profiles);
            self.enterprise_index.commit()?;
        }
        *mark = changes.mark;
        Ok(applied)
    }

    /// Withdraws a policy: it leaves the store, the index and every match (its feed events
    /// stay, as history). Returns the number of matches ended, or `None` for an unknown id.
    pub fn withdraw(&self, id: &str) -> Result<Option<usize>, KbError> {
        let _w = self.writing.lock().map_err(|_| KbError::Poisoned)?;
        self.write(|| {
            if self.policy(id).is_none() {
                return Ok(None);
            }
            let ended = self.store.delete_policy(id)?;
            self.policy_index.delete(id)?;
            self.policy_index.commit()?;
            self.policies
                .write()
                .map_err(|_| KbError::Poisoned)?
                .remove(id);
            Ok(Some(ended))
        })
    }

    /// Publishes new or changed policies: stores them, indexes them, and turns every new
    /// (policy, enterprise) eligibility into a feed event. A policy whose version is not newer
    /// than the stored one is refused by the caller's check ([`KnowledgeBase::policy`]).
    pub fn publish(&self, policies: Vec<Policy>, today: Date) -> Result<Changes, KbError> {
        let _w = self.writing.lock().map_err(|_| KbError::Poisoned)?;
        self.write(|| self.publish_locked(policies, today))
    }

    fn publish_locked(&self, policies: Vec<Policy>, today: Date) -> Result<Changes, KbError> {
        // Checked under the lock, so that two racing publications cannot go backwards.
        for p in &policies {
            if let Some(old) = self.policy(&p.id)
                && old.version >= p.version
            {
                return Err(KbError::NotNewer {
                    id: p.id.clone(),
                    stored: old.version,
                });
            }
        }
        // Index them all and commit once; then match and store them one by one.
        let mut staged = Vec::with_capacity(policies.len());
        {
            let mut set = self.policies.write().map_err(|_| KbError::Poisoned)?;
            for policy in policies {
                let previous = set.get(&policy.id).cloned();
                let row = set.put(Arc::new(policy.clone()));
                self.policy_index.upsert(row, &policy)?;
                staged.push((row, policy, previous));
            }
        }
        self.policy_index.commit()?;
        let mut changes = Changes::default();
        for (k, (_, policy, _)) in staged.iter().enumerate() {
            match self.rematch_policy(policy, today) {
                Ok(c) => {
                    changes.new_matches += c.new_matches;
                    changes.ended_matches += c.ended_matches;
                    changes.stored += 1;
                }
                Err(e) => {
                    // Those not stored go back, in memory and in the index, to what the store
                    // holds.
                    let mut set = self.policies.write().map_err(|_| KbError::Poisoned)?;
                    for (row, policy, previous) in &staged[k..] {
                        match previous {
                            Some(old) => {
                                set.put(old.clone());
                                self.policy_index.upsert(*row, old)?;
                            }
                            None => {
                                set.remove(&policy.id);
                                self.policy_index.delete(&policy.id)?;
                            }
                        }
                    }
                    drop(set);
                    self.policy_index.commit()?;
                    return Err(e);
                }
            }
        }
        Ok(changes)
    }

    fn rematch_policy(&self, policy: &Policy, today: Date) -> Result<Changes, KbError> {
        let eligible = self.eligible_enterprises(policy, today)?;
        let before: HashSet<String> = self
            .store
            .matches_of_policy(&policy.id)?
            .into_iter()
            .collect();
        let now: HashSet<&str> = eligible.iter().map(|p| p.uscc.as_str()).collect();
        let added: Vec<NewMatch> = eligible
            .iter()
            .filter(|p| !before.contains(p.uscc.as_str()))
            .map(|p| {
                let e = eligibility::evaluate(policy, p, today);
                NewMatch {
                    uscc: p.uscc.to_string(),
                    benefit_yuan: e.benefit_yuan,
                    digest: e.digest(),
                }
            })
            .collect();
        let removed: Vec<String> = before
            .iter()
            .filter(|u| !now.contains(u.as_str()))
            .cloned()
            .collect();
        let row = self
            .policies
            .read()
            .map_err(|_| KbError::Poisoned)?
            .row_of(&policy.id)
            .ok_or_else(|| StoreError::corrupt("a policy being matched has no row"))?;
        let events = self
            .store
            .save_policy(row, policy, &added, &removed, now_ms())?;
        Ok(Changes {
            stored: 1,
            new_matches: events,
            ended_matches: removed.len(),
        })
    }

    /// Adds or replaces profiles; every new (policy, enterprise) eligibility becomes a feed
    /// event. Large batches are matched policy by policy, small ones enterprise by enterprise.
    pub fn upsert_profiles(&self, batch: Vec<Profile>, today: Date) -> Result<Changes, KbError> {
        let _w = self.writing.lock().map_err(|_| KbError::Poisoned)?;
        self.write(|| self.upsert_profiles_locked(batch, today))
    }

    fn upsert_profiles_locked(&self, batch: Vec<Profile>, today: Date) -> Result<Changes, KbError> {
        let mut changed = Vec::with_capacity(batch.len());
        // Whether each changed profile replaced a stored one (else it had no matches).
        let mut replaced = Vec::with_capacity(batch.len());
        {
            let mut profiles = self.profiles.write().map_err(|_| KbError::Poisoned)?;
            if profiles.rows.is_empty() {
                profiles.sorted = true;
            }
            let mut batch = batch;
            // Stable: of several lines for one enterprise, the last stays last.
            batch.sort_by(|a, b| a.uscc.cmp(&b.uscc));
            batch.dedup_by(|later, earlier| {
                // The last of several lines for one enterprise wins.
                if later.uscc == earlier.uscc {
                    std::mem::swap(later, earlier);
                    true
                } else {
                    false
                }
            });
            for p in batch {
                let known = profiles.by_uscc.contains_key(p.uscc.as_str());
                replaced.push(known);
                let p = Arc::new(p);
                let row = profiles.put(p.clone());
                self.enterprise_index.upsert(row, &p, !known)?;
                changed.push((row, p));
            }
            profiles.order();
        }
        self.enterprise_index.commit()?;
        let stored = changed.len();
        let policies = self.policies();
        if changed.len() > 64 && changed.len() > policies.len() {
            // Bulk: decide every policy for the changed profiles only (a new profile had no
            // matches before; a replaced one's are read from the store), and store the
            // profiles with their match changes in one transaction.
            let live: Vec<&Arc<Policy>> = policies
                .iter()
                .filter(|p| p.category != crate::model::Category::Publicity)
                .filter(|p| p.window.contains(today))
                .collect();
            let mut changes = Changes {
                stored,
                ..Changes::default()
            };
            let mut items = Vec::with_capacity(changed.len());
            for ((row, p), replaced) in changed.iter().zip(replaced) {
                let before: HashSet<String> = if replaced {
                    self.store
                        .matches_of_enterprise(p.uscc.as_str())?
                        .into_iter()
                        .collect()
                } else {
                    HashSet::new()
                };
                let mut now: HashSet<&str> = HashSet::new();
                let mut added = Vec::new();
                for policy in &live {
                    if !eligibility::is_eligible(policy, p, today) {
                        continue;
                    }
                    now.insert(&policy.id);
                    if !before.contains(&policy.id) {
                        let e = eligibility::evaluate(policy, p, today);
                        added.push((
                            (*policy).clone(),
                            NewMatch {
                                uscc: p.uscc.to_string(),
                                benefit_yuan: e.benefit_yuan,
                                digest: e.digest(),
                            },
                        ));
                    }
                }
                let removed: Vec<String> = before
                    .into_iter()
                    .filter(|id| !now.contains(id.as_str()))
                    .collect();
                changes.ended_matches += removed.len();
                items.push((*row, p.clone(), added, removed));
            }
            changes.new_matches += self.store.save_profiles(&items, now_ms())?;
            return Ok(changes);
        }
        let mut changes = Changes {
            stored,
            ..Changes::default()
        };
        let mut items = Vec::with_capacity(changed.len());
        for (row, p) in changed {
            let m = self.match_enterprise(&p, today)?;
            let before: HashSet<String> = self
                .store
                .matches_of_enterprise(p.uscc.as_str())?
                .into_iter()
                .collect();
            let now: HashSet<&str> = m.eligible.iter().map(|x| x.policy.id.as_str()).collect();
            let added: Vec<_> = m
                .eligible
                .iter()
                .filter(|x| !before.contains(&x.policy.id))
                .map(|x| {
                    (
                        x.policy.clone(),
                        NewMatch {
                            uscc: p.uscc.to_string(),
                            benefit_yuan: x.eligibility.benefit_yuan,
                            digest: x.eligibility.digest(),
                        },
                    )
                })
                .collect();
            let removed: Vec<String> = before
                .into_iter()
                .filter(|id| !now.contains(id.as_str()))
                .collect();
            changes.ended_matches += removed.len();
            items.push((row, p, added, removed));
        }
        changes.new_matches += self.store.save_profiles(&items, now_ms())?;
        Ok(changes)
    }
}
