//! The two tantivy indexes. They narrow candidates and rank; they never decide eligibility
//! (that is `eligibility::evaluate`, in Rust, on every candidate). Their queries are built so
//! that every eligible pair is a candidate: they may let through too much, never too little.
//!
//! - policies: id, title and text (Chinese analysis), the region, industry codes and their
//!   prefixes, category;
//! - enterprise profiles: the row of the profile in memory, region ancestors, industry
//!   prefixes, scale, tags, and numeric fast fields (founding day, capital, employees, revenue,
//!   credit rank).

use std::ops::Bound;
use std::path::Path;

use search::ChineseAnalyzer;
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::columnar::Column;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, Value};
use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, SegmentReader, TantivyDocument,
    Term, doc,
};
use time::Date;

use crate::codes::{Industry, Region};
use crate::model::{Condition, Policy, Profile, whole_years};

/// An index error.
#[derive(Debug, thiserror::Error)]
#[error("index: {0}")]
pub struct IndexError(String);

impl From<tantivy::TantivyError> for IndexError {
    fn from(e: tantivy::TantivyError) -> Self {
        IndexError(e.to_string())
    }
}

impl From<search::SearchError> for IndexError {
    fn from(e: search::SearchError) -> Self {
        IndexError(e.to_string())
    }
}

const WRITER_HEAP: usize = 64 * 1024 * 1024;

fn open_or_create(dir: Option<&Path>, schema: Schema) -> Result<(Index, bool), IndexError> {
    let Some(dir) = dir else {
        return Ok((Index::create_in_ram(schema), true));
    };
    std::fs::create_dir_all(dir).map_err(|e| IndexError(format!("{}: {e}", dir.display())))?;
    match Index::open_in_dir(dir) {
        Ok(index) if index.schema() == schema => Ok((index, false)),
        // Missing, corrupt or of another schema: start again; the caller refills it from the store.
        _ => {
            for entry in std::fs::read_dir(dir).map_err(|e| IndexError(e.to_string()))? {
                let path = entry.map_err(|e| IndexError(e.to_string()))?.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
            Ok((Index::create_in_dir(dir, schema)?, true))
        }
    }
}

/// A reader and a writer of one index: what both indexes do alike.
pub struct Handle {
    reader: IndexReader,
    writer: std::sync::Mutex<IndexWriter>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    fn open(index: &Index) -> Result<Handle, IndexError> {
        Ok(Handle {
            reader: index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()?,
            writer: std::sync::Mutex::new(index.writer(WRITER_HEAP)?),
        })
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, IndexWriter>, IndexError> {
        self.writer
            .lock()
            .map_err(|_| IndexError("index writer lock poisoned".into()))
    }

    /// Removes every document (before a rebuild).
    pub fn clear(&self) -> Result<(), IndexError> {
        self.writer()?.delete_all_documents()?;
        Ok(())
    }

    /// Commits what was added and makes it visible.
    pub fn commit(&self) -> Result<(), IndexError> {
        self.writer()?.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Documents in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn term_any(field: Field, values: impl IntoIterator<Item = String>) -> Box<dyn Query> {
    let clauses: Vec<(Occur, Box<dyn Query>)> = values
        .into_iter()
        .map(|v| {
            let q: Box<dyn Query> = Box::new(TermQuery::new(
                Term::from_field_text(field, &v),
                IndexRecordOption::Basic,
            ));
            (Occur::Should, q)
        })
        .collect();
    Box::new(BooleanQuery::new(clauses))
}

/// A query that scores documents by how many of `text`'s tokens they hold (any of them).
fn relevance_query(
    analyzer: &ChineseAnalyzer,
    fields: &[Field],
    text: &str,
) -> Option<Box<dyn Query>> {
    let tokens = analyzer.tokens(text);
    let clauses: Vec<(Occur, Box<dyn Query>)> = tokens
        .iter()
        .take(64)
        .flat_map(|t| fields.iter().map(move |f| (t, *f)))
        .map(|(t, f)| {
            let q: Box<dyn Query> = Box::new(TermQuery::new(
                Term::from_field_text(f, t),
                IndexRecordOption::WithFreqs,
            ));
            (Occur::Should, q)
        })
        .collect();
    (!clauses.is_empty()).then(|| Box::new(BooleanQuery::new(clauses)) as Box<dyn Query>)
}

/// The policy index.
pub struct PolicyIndex {
    handle: Handle,
    row: Field,
    analyzer: ChineseAnalyzer,
    id: Field,
    title: Field,
    text: Field,
    region: Field,
    region_path: Field,
    industry_codes: Field,
    industry_prefixes: Field,
    category: Field,
}

impl std::fmt::Debug for PolicyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyIndex").finish_non_exhaustive()
    }
}

impl std::ops::Deref for PolicyIndex {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl std::ops::Deref for EnterpriseIndex {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

/// One search hit.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// The policy id.
    pub id: String,
    /// Relevance.
    pub score: f32,
    /// Highlighted snippet of the text (HTML, `<em>` around matches).
    pub snippet: String,
}

/// Filters of a policy search.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// Policies that apply in this region (it lies within theirs, or theirs within it).
    pub region: Option<Region>,
    /// Category.
    pub category: Option<crate::model::Category>,
    /// Policies whose industry condition covers this code, or lies within it, or that have none.
    pub industry: Option<Industry>,
}

const ANY: &str = "*";

impl PolicyIndex {
    /// Opens the index in `dir` (in memory without one). `true` in the second place: it is new
    /// and must be filled from the store.
    pub fn open(
        dir: Option<&Path>,
        analyzer: ChineseAnalyzer,
    ) -> Result<(PolicyIndex, bool), IndexError> {
        let mut b = Schema::builder();
        let row = b.add_u64_field(ROW, FAST);
        let id = b.add_text_field("id", STRING | STORED);
        let title = b.add_text_field("title", search::text_options());
        let text = b.add_text_field("text", search::text_options());
        let region = b.add_text_field("region", STRING);
        let region_path = b.add_text_field("region_path", STRING);
        let industry_codes = b.add_text_field("industry_codes", STRING);
        let industry_prefixes = b.add_text_field("industry_prefixes", STRING);
        let category = b.add_text_field("category", STRING);
        let (index, fresh) = open_or_create(dir, b.build())?;
        analyzer.register(&index);
        Ok((
            PolicyIndex {
                handle: Handle::open(&index)?,
                row,
                analyzer,
                id,
                title,
                text,
                region,
                region_path,
                industry_codes,
                industry_prefixes,
                category,
            },
            fresh,
        ))
    }

    /// Adds or replaces `policy`, held at `row` in memory (visible after
    /// [`PolicyIndex::commit`]).
    pub fn upsert(&self, row: u64, policy: &Policy) -> Result<(), IndexError> {
        let mut d = TantivyDocument::default();
        d.add_u64(self.row, row);
        d.add_text(self.id, &policy.id);
        d.add_text(self.title, &policy.title);
        d.add_text(self.text, &policy.text);
        d.add_text(self.region, policy.region.code());
        for r in policy.region.ancestors() {
            d.add_text(self.region_path, r.code());
        }
        d.add_text(self.category, policy.category.as_str());
        let codes: Vec<&Industry> = policy
            .conditions
            .iter()
            .flat_map(|c| match c {
                Condition::IndustryWithin { codes } => codes.iter().collect(),
                _ => Vec::new(),
            })
            .collect();
        if codes.is_empty() {
            d.add_text(self.industry_codes, ANY);
        }
        for c in codes {
            d.add_text(self.industry_codes, c.as_str());
            for p in c.prefixes() {
                d.add_text(self.industry_prefixes, p);
            }
        }
        let w = self.handle.writer()?;
        w.delete_term(Term::from_field_text(self.id, &policy.id));
        w.add_document(d)?;
        Ok(())
    }

    /// Removes a policy.
    pub fn delete(&self, id: &str) -> Result<(), IndexError> {
        self.handle
            .writer()?
            .delete_term(Term::from_field_text(self.id, id));
        Ok(())
    }

    /// Documents in the index.
    pub fn len(&self) -> u64 {
        self.handle.reader.searcher().num_docs()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids of the policies whose region covers `region` — the candidates for an enterprise
    /// registered there (every other condition is decided in Rust) — with the relevance of
    /// `scope` (the enterprise's business scope) to each.
    pub fn candidates(&self, region: Region, scope: &str) -> Result<Vec<(u64, f32)>, IndexError> {
        let searcher = self.handle.reader.searcher();
        let filter = term_any(self.region, region.ancestors().iter().map(|r| r.code()));
        let relevance = relevance_query(&self.analyzer, &[self.title, self.text], scope);
        let query: Box<dyn Query> = match relevance {
            Some(r) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, filter),
                (Occur::Should, r),
            ])),
            None => filter,
        };
        Ok(searcher.search(&query, &Rows { scored: true })?)
    }

    /// Full-text search with filters; `text` empty lists by filter only.
    pub fn search(
        &self,
        text: &str,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<SearchHit>, IndexError> {
        let searcher = self.handle.reader.searcher();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let text_query = search::text_query(&self.analyzer, &[self.title, self.text], text);
        if let Some(q) = &text_query {
            clauses.push((Occur::Must, q.box_clone()));
        }
        if let Some(r) = filter.region {
            // The policy's region covers r, or lies within r.
            let covers = term_any(self.region, r.ancestors().iter().map(|a| a.code()));
            let inside = term_any(self.region_path, [r.code()]);
            clauses.push((
                Occur::Must,
                Box::new(BooleanQuery::new(vec![
                    (Occur::Should, covers),
                    (Occur::Should, inside),
                ])),
            ));
        }
        if let Some(c) = filter.category {
            clauses.push((
                Occur::Must,
                term_any(self.category, [c.as_str().to_owned()]),
            ));
        }
        if let Some(i) = &filter.industry {
            let mut covering: Vec<String> = i.prefixes();
            covering.push(ANY.to_owned());
            let covers = term_any(self.industry_codes, covering);
            let inside = term_any(self.industry_prefixes, [i.as_str().to_owned()]);
            clauses.push((
                Occur::Must,
                Box::new(BooleanQuery::new(vec![
                    (Occur::Should, covers),
                    (Occur::Should, inside),
                ])),
            ));
        }
        if clauses.is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        let query = BooleanQuery::new(clauses);
        let top = searcher.search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let d: TantivyDocument = searcher.doc(addr)?;
            let Some(id) = d.get_first(self.id).and_then(|v| v.as_str()) else {
                continue;
            };
            let snippet = match &text_query {
                Some(q) => search::snippet(&searcher, q.as_ref(), self.text, &d, 160)?,
                None => String::new(),
            };
            out.push(SearchHit {
                id: id.to_owned(),
                score,
                snippet,
            });
        }
        Ok(out)
    }
}

/// The enterprise index.
pub struct EnterpriseIndex {
    handle: Handle,
    row: Field,
    uscc: Field,
    region: Field,
    industry: Field,
    scale: Field,
    tags: Field,
    founded: Field,
    capital: Field,
    employees: Field,
    revenue: Field,
    credit: Field,
}

impl std::fmt::Debug for EnterpriseIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnterpriseIndex").finish_non_exhaustive()
    }
}

const ROW: &str = "row";

/// Days since 1970-01-01.
fn epoch_day(d: Date) -> i64 {
    i64::from(d.to_julian_day()) - 2_440_588
}

impl EnterpriseIndex {
    /// Opens the index in `dir` (in memory without one); `true`: new, fill it from the store.
    pub fn open(dir: Option<&Path>) -> Result<(EnterpriseIndex, bool), IndexError> {
        let mut b = Schema::builder();
        let row = b.add_u64_field(ROW, FAST);
        let uscc = b.add_text_field("uscc", STRING);
        let region = b.add_text_field("region", STRING);
        let industry = b.add_text_field("industry", STRING);
        let scale = b.add_text_field("scale", STRING);
        let tags = b.add_text_field("tags", STRING);
        let founded = b.add_i64_field("founded", INDEXED | FAST);
        let capital = b.add_u64_field("capital", INDEXED | FAST);
        let employees = b.add_u64_field("employees", INDEXED | FAST);
        let revenue = b.add_u64_field("revenue", INDEXED | FAST);
        let credit = b.add_u64_field("credit", INDEXED | FAST);
        let (index, fresh) = open_or_create(dir, b.build())?;
        Ok((
            EnterpriseIndex {
                handle: Handle::open(&index)?,
                row,
                uscc,
                region,
                industry,
                scale,
                tags,
                founded,
                capital,
                employees,
                revenue,
                credit,
            },
            fresh,
        ))
    }

    /// Adds the profile held at `row` in memory, replacing the one of its USCC unless it is
    /// `new` to the index (a bulk import of new profiles then looks up no term to delete).
    pub fn upsert(&self, row: u64, p: &Profile, new: bool) -> Result<(), IndexError> {
        let mut d = doc!(self.row => row, self.uscc => p.uscc.as_str());
        for r in p.region.ancestors() {
            d.add_text(self.region, r.code());
        }
        if let Some(i) = &p.industry {
            for prefix in i.prefixes() {
                d.add_text(self.industry, prefix);
            }
        }
        if let Some(s) = p.scale {
            d.add_text(self.scale, s.as_str());
        }
        for t in &p.tags {
            d.add_text(self.tags, t.as_str());
        }
        if let Some(f) = p.founded {
            d.add_i64(self.founded, epoch_day(f));
        }
        if let Some(v) = p.registered_capital_yuan {
            d.add_u64(self.capital, v);
        }
        if let Some(v) = p.employees {
            d.add_u64(self.employees, v);
        }
        if let Some(v) = p.annual_revenue_yuan {
            d.add_u64(self.revenue, v);
        }
        if let Some(c) = p.credit_rating {
            d.add_u64(self.credit, u64::from(c.rank()));
        }
        let w = self.handle.writer()?;
        if !new {
            w.delete_term(Term::from_field_text(self.uscc, p.uscc.as_str()));
        }
        w.add_document(d)?;
        Ok(())
    }

    /// Commits and makes visible.
    pub fn commit(&self) -> Result<(), IndexError> {
        self.handle.writer()?.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    fn range_u64(field: Field, min: Option<u64>, max: Option<u64>) -> Box<dyn Query> {
        let lo = min.map_or(Bound::Unbounded, |v| {
            Bound::Included(Term::from_field_u64(field, v))
        });
        let hi = max.map_or(Bound::Unbounded, |v| {
            Bound::Included(Term::from_field_u64(field, v))
        });
        match (&lo, &hi) {
            (Bound::Unbounded, Bound::Unbounded) => Box::new(AllQuery),
            _ => Box::new(RangeQuery::new(lo, hi)),
        }
    }

    /// The rows of the profiles that may satisfy `policy` on `today`: a superset of the
    /// eligible ones (age bounds are widened by a few days; everything is decided again in
    /// Rust).
    pub fn candidates(&self, policy: &Policy, today: Date) -> Result<Vec<u64>, IndexError> {
        if !policy.window.contains(today) {
            return Ok(Vec::new());
        }
        let mut must: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, term_any(self.region, [policy.region.code()]))];
        for c in &policy.conditions {
            let q: (Occur, Box<dyn Query>) = match c {
                Condition::RegionWithin { regions } => (
                    Occur::Must,
                    term_any(self.region, regions.iter().map(|r| r.code())),
                ),
                Condition::IndustryWithin { codes } => (
                    Occur::Must,
                    term_any(self.industry, codes.iter().map(|c| c.as_str().to_owned())),
                ),
                Condition::ScaleIn { scales } => (
                    Occur::Must,
                    term_any(self.scale, scales.iter().map(|s| s.as_str().to_owned())),
                ),
                Condition::TagsAll { tags } => {
                    for t in tags {
                        must.push((Occur::Must, term_any(self.tags, [t.as_str().to_owned()])));
                    }
                    continue;
                }
                Condition::TagsNone { tags } => {
                    for t in tags {
                        must.push((Occur::MustNot, term_any(self.tags, [t.as_str().to_owned()])));
                    }
                    continue;
                }
                Condition::AgeYears { min, max } => {
                    // Age ≥ min ⇔ founded on or before today − min years; widened by 3 days.
                    let day = |years: u32| epoch_day(today) - i64::from(years) * 366 - 3;
                    let hi = min.map_or(Bound::Unbounded, |y| {
                        Bound::Included(Term::from_field_i64(
                            self.founded,
                            epoch_day(today) - i64::from(y) * 365 + 3,
                        ))
                    });
                    let lo = max.map_or(Bound::Unbounded, |y| {
                        Bound::Included(Term::from_field_i64(self.founded, day(y + 1)))
                    });
                    (Occur::Must, Box::new(RangeQuery::new(lo, hi)))
                }
                Condition::RegisteredCapital { min_yuan, max_yuan } => (
                    Occur::Must,
                    Self::range_u64(self.capital, *min_yuan, *max_yuan),
                ),
                Condition::Employees { min, max } => {
                    (Occur::Must, Self::range_u64(self.employees, *min, *max))
                }
                Condition::AnnualRevenue { min_yuan, max_yuan } => (
                    Occur::Must,
                    Self::range_u64(self.revenue, *min_yuan, *max_yuan),
                ),
                Condition::CreditAtLeast { rating } => (
                    Occur::Must,
                    Self::range_u64(self.credit, Some(u64::from(rating.rank())), None),
                ),
            };
            must.push(q);
        }
        let query = BooleanQuery::new(must);
        let rows = self
            .reader
            .searcher()
            .search(&query, &Rows { scored: false })?;
        Ok(rows.into_iter().map(|(row, _)| row).collect())
    }
}

/// Collects the `row` fast field (and, when `scored`, the score) of every matching document:
/// no stored document is read.
struct Rows {
    scored: bool,
}

struct SegmentRows {
    rows: Column<u64>,
    out: Vec<(u64, f32)>,
}

impl Collector for Rows {
    type Fruit = Vec<(u64, f32)>;
    type Child = SegmentRows;

    fn for_segment(&self, _: u32, segment: &SegmentReader) -> tantivy::Result<SegmentRows> {
        Ok(SegmentRows {
            rows: segment.fast_fields().u64(ROW)?,
            out: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.scored
    }

    fn merge_fruits(&self, fruits: Vec<Vec<(u64, f32)>>) -> tantivy::Result<Vec<(u64, f32)>> {
        Ok(fruits.concat())
    }
}

impl SegmentCollector for SegmentRows {
    type Fruit = Vec<(u64, f32)>;

    fn collect(&mut self, doc: DocId, score: Score) {
        if let Some(row) = self.rows.first(doc) {
            self.out.push((row, score));
        }
    }

    fn harvest(self) -> Vec<(u64, f32)> {
        self.out
    }
}

/// Whole years on `today` of an enterprise founded on `founded` (re-exported for callers that
/// compare with the index's widened bounds).
pub fn age(founded: Date, today: Date) -> i64 {
    whole_years(founded, today)
}
