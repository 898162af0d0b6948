//! Routes of the policy knowledge base (政策找企业): matching in both directions, search, the
//! push feed, and upserts of policies (admin) and profiles (the data department). Thin: parse,
//! call `policies::KnowledgeBase` on a blocking thread, map.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::header;
use policies::eligibility::Explained;
use policies::index::SearchFilter;
use policies::model::{Category, from_json};
use policies::{KbError, KnowledgeBase, Policy, PolicyMatch, Profile};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::Date;

use crate::config::Role;
use crate::error::{ApiError, Code, ErrorBody};
use crate::extract::NoteSlot;
use crate::extract::{QueryParams, require};
use crate::identity::Caller;
use crate::state::Gateway;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::new()
        .routes(routes!(publish))
        .routes(routes!(match_enterprise))
        .routes(routes!(explain))
        .routes(routes!(search))
        .routes(routes!(policy, withdraw))
        .routes(routes!(eligible_enterprises))
        .routes(routes!(upsert_profile))
        .routes(routes!(push_feed))
        .routes(routes!(schema))
}

fn invalid(e: &policies::InvalidField) -> ApiError {
    ApiError::new(Code::PolicyInvalid, e.to_string())
}

fn bad(field: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(Code::PolicyInvalid, format!("`{field}`: {reason}"))
}

fn not_found(what: String) -> ApiError {
    ApiError::new(Code::PolicyNotFound, what)
}

fn kb_error(e: KbError) -> ApiError {
    tracing::error!(error = %e, "policy knowledge base failed");
    ApiError::internal()
}

/// Decides every policy again once a day (and once at start): eligibility that changes with
/// time alone (windows, anniversaries) reaches the push feed. Ends with the gateway.
pub async fn rematch_daily(gateway: std::sync::Weak<Gateway>) {
    let mut done: Option<Date> = None;
    loop {
        let day = today();
        if done != Some(day) {
            let Some(gw) = gateway.upgrade() else { return };
            let kb = gw.policies.clone();
            drop(gw);
            match tokio::task::spawn_blocking(move || kb.rematch_all(day)).await {
                Ok(Ok(c)) => {
                    tracing::info!(
                        new = c.new_matches,
                        ended = c.ended_matches,
                        "daily rematch"
                    );
                    done = Some(day);
                }
                Ok(Err(e)) => tracing::error!(error = %e, "daily rematch failed; retried later"),
                Err(e) => tracing::error!(error = %e, "daily rematch task failed"),
            }
        }
        if gateway.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    }
}

/// The day to decide eligibility on: `as_of` (YYYY-MM-DD, from 2000-01-01 to a year from
/// today), or today.
fn decision_day(as_of: Option<&str>) -> Result<Date, ApiError> {
    let today = today();
    let Some(text) = as_of else {
        return Ok(today);
    };
    let day = policies::model::parse_date(text).map_err(|e| bad("as_of", e))?;
    let earliest = Date::from_calendar_date(2000, time::Month::January, 1).unwrap_or(today);
    if day < earliest || day > today + time::Duration::days(366) {
        return Err(bad(
            "as_of",
            "must be between 2000-01-01 and a year from today",
        ));
    }
    Ok(day)
}

/// Today in China Standard Time: windows and ages are counted in local days.
pub fn today() -> Date {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    storage::clock::now_utc().to_offset(offset).date()
}

async fn blocking<T: Send + 'static>(
    gw: &Gateway,
    f: impl FnOnce(&KnowledgeBase) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let kb = gw.policies.clone();
    tokio::task::spawn_blocking(move || f(&kb))
        .await
        .map_err(|_| ApiError::internal())?
}

/// 404 for a policy id that names none (the id cut to 40 characters in the message).
fn no_policy(id: &str) -> ApiError {
    not_found(format!(
        "no policy {}",
        id.chars().take(40).collect::<String>()
    ))
}

/// Reads a JSON body into `T` with the field at fault named (`CG-POL-001`).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("(document)", "not UTF-8"))?;
    from_json(text).map_err(|e| invalid(&e))
}

// ---- enterprise → policies ----

/// One condition as explained to the caller.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConditionView {
    /// `region`, `window` or the condition kind.
    pub condition: &'static str,
    /// `met`, `not_met` or `missing`.
    pub outcome: &'static str,
    /// The enterprise's value.
    #[schema(value_type = Object)]
    pub value: Value,
    /// The policy's threshold.
    #[schema(value_type = Object)]
    pub threshold: Value,
}

impl From<&Explained> for ConditionView {
    fn from(e: &Explained) -> Self {
        ConditionView {
            condition: e.condition,
            outcome: match e.outcome {
                policies::eligibility::Outcome::Met => "met",
                policies::eligibility::Outcome::NotMet => "not_met",
                policies::eligibility::Outcome::Missing => "missing",
            },
            value: e.value.clone(),
            threshold: e.threshold.clone(),
        }
    }
}

/// A policy matched to an enterprise.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MatchView {
    /// Policy id.
    pub policy_id: String,
    /// Version.
    pub version: u32,
    /// Title.
    pub title: String,
    /// Issuer.
    pub issuer: String,
    /// 免申即享, 在线办理 or 宣传展示.
    pub category: &'static str,
    /// Estimated benefit in yuan (absent when a formula's field is missing).
    pub benefit_yuan: Option<u64>,
    /// Relevance of the policy to the enterprise's business scope.
    pub relevance: f32,
    /// True when eligible.
    pub eligible: bool,
    /// Every condition with its outcome.
    pub conditions: Vec<ConditionView>,
}

impl From<&PolicyMatch> for MatchView {
    fn from(m: &PolicyMatch) -> Self {
        MatchView {
            policy_id: m.policy.id.clone(),
            version: m.policy.version,
            title: m.policy.title.clone(),
            issuer: m.policy.issuer.clone(),
            category: m.policy.category.as_str(),
            benefit_yuan: m.eligibility.benefit_yuan,
            relevance: m.relevance,
            eligible: m.eligibility.eligible,
            conditions: m
                .eligibility
                .conditions
                .iter()
                .map(ConditionView::from)
                .collect(),
        }
    }
}

/// The answer to a match request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MatchResult {
    /// The enterprise.
    pub uscc: String,
    /// The day eligibility was decided on.
    pub date: String,
    /// Eligible policies, ranked: category (免申即享 first), benefit, relevance.
    pub eligible: Vec<MatchView>,
    /// Policies missed by exactly one condition (other than the region), with what is missing.
    pub almost_eligible: Vec<MatchView>,
}

/// A match request: a USCC whose profile is in the store, or an inline profile.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    /// The enterprise's USCC (its stored profile is used).
    pub uscc: Option<String>,
    /// A profile given inline instead.
    #[schema(value_type = Option<Object>)]
    pub profile: Option<Value>,
    /// Decide as on this day (YYYY-MM-DD, China Standard Time), e.g. the day the enterprise
    /// applied: the policies' windows and the enterprise's age are taken on that day, with the
    /// policies and the profile as they are now. Default today.
    pub as_of: Option<String>,
}

/// The role check, the body and the decision day of a match or an explanation, and the
/// enterprise it is about.
fn read_match_request(
    caller: &Caller,
    headers: &http::HeaderMap,
    slot: &NoteSlot,
    body: &[u8],
) -> Result<(Date, ProfileRef), ApiError> {
    if !(caller.has(Role::Consumer) || caller.has(Role::PolicyPush) || caller.has(Role::Admin)) {
        return Err(ApiError::missing_role(Role::Consumer));
    }
    let req: MatchRequest = parse(body)?;
    let day = decision_day(req.as_of.as_deref())?;
    Ok((day, ProfileRef::of(req.uscc, req.profile, headers, slot)?))
}

/// The enterprise a match or an explanation is about: a stored profile (an enterprise's data,
/// so the purpose is stated and the read logged under it) or one given inline.
enum ProfileRef {
    Stored(cert_store::Uscc),
    Inline(Value),
}

impl ProfileRef {
    fn of(
        uscc: Option<String>,
        profile: Option<Value>,
        headers: &http::HeaderMap,
        slot: &NoteSlot,
    ) -> Result<ProfileRef, ApiError> {
        match (uscc, profile) {
            (Some(u), None) => {
                let u: cert_store::Uscc = u.parse().map_err(|e| bad("uscc", e))?;
                slot.record(&format!("profile:{u}"), u.as_str());
                crate::purpose::Purpose::from_headers(headers)?;
                Ok(ProfileRef::Stored(u))
            }
            (None, Some(p)) => Ok(ProfileRef::Inline(p)),
            _ => Err(bad("uscc", "give either uscc or profile")),
        }
    }

    fn resolve(self, kb: &KnowledgeBase) -> Result<Arc<Profile>, ApiError> {
        match self {
            ProfileRef::Stored(u) => kb
                .profile(u.as_str())
                .ok_or_else(|| not_found(format!("no profile for {u}"))),
            ProfileRef::Inline(p) => {
                let p: Profile = from_json(&p.to_string()).map_err(|e| {
                    bad(
                        &format!("profile.{}", e.field.trim_start_matches('.')),
                        e.reason,
                    )
                })?;
                p.validate()
                    .map_err(|e| bad(&format!("profile.{}", e.field), e.reason))?;
                Ok(Arc::new(p))
            }
        }
    }
}

/// Enterprise → policies: every policy the enterprise is eligible for, explained condition by
/// condition, and the policies it misses by one condition.
#[utoipa::path(post, path = "/v1/policies/match", tag = "policies", request_body = MatchRequest,
    responses((status = 200, body = MatchResult),
        (status = 400, description = "Bad request, the field named (CG-POL-001)", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "No such enterprise (CG-POL-002)", body = ErrorBody)))]
pub async fn match_enterprise(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    headers: http::HeaderMap,
    Extension(slot): Extension<NoteSlot>,
    body: axum::body::Bytes,
) -> Result<Json<MatchResult>, ApiError> {
    let (day, who) = read_match_request(&caller, &headers, &slot, &body)?;
    blocking(&gw, move |kb| {
        let profile = who.resolve(kb)?;
        let m = kb.match_enterprise(&profile, day).map_err(kb_error)?;
        Ok(Json(MatchResult {
            uscc: profile.uscc.to_string(),
            date: policies::model::format_date(day),
            eligible: m.eligible.iter().map(MatchView::from).collect(),
            almost_eligible: m.almost.iter().map(MatchView::from).collect(),
        }))
    })
    .await
}

/// Why an enterprise is or is not eligible for one policy.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExplainResult {
    /// The enterprise.
    pub uscc: String,
    /// The day eligibility was decided on.
    pub date: String,
    /// The policy, with every condition's outcome, the enterprise's value and the threshold.
    pub policy: MatchView,
    /// How many conditions (region and window included) are not met or cannot be decided.
    pub unmet: usize,
}

/// One enterprise and one policy, whatever the outcome: every condition explained, however
/// many are not met (an enterprise asking why it is not on a policy's list).
#[utoipa::path(post, path = "/v1/policies/{id}/explain", tag = "policies", request_body = MatchRequest,
    params(("id" = String, Path, description = "Policy id")),
    responses((status = 200, body = ExplainResult),
        (status = 400, description = "Bad request, the field named (CG-POL-001)", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "No such policy or enterprise (CG-POL-002)", body = ErrorBody)))]
pub async fn explain(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    headers: http::HeaderMap,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    body: axum::body::Bytes,
) -> Result<Json<ExplainResult>, ApiError> {
    let (day, who) = read_match_request(&caller, &headers, &slot, &body)?;
    blocking(&gw, move |kb| {
        let policy = kb.policy(&id).ok_or_else(|| no_policy(&id))?;
        let profile = who.resolve(kb)?;
        let eligibility = policies::eligibility::evaluate(&policy, &profile, day);
        let unmet = eligibility.unmet().count();
        let m = PolicyMatch {
            policy: policy.clone(),
            eligibility,
            relevance: 0.0,
        };
        Ok(Json(ExplainResult {
            uscc: profile.uscc.to_string(),
            date: policies::model::format_date(day),
            policy: MatchView::from(&m),
            unmet,
        }))
    })
    .await
}

// ---- policy → enterprises ----

/// `?cursor=&limit=` of the eligible-enterprise list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// The previous page's `next_cursor`: `<policy version>.<last USCC>`. Paging goes on
    /// where that page stopped, each page costing only its own enterprises; a cursor of an
    /// earlier version of the policy is refused (409 `CG-POL-005`: page again from the start).
    pub cursor: Option<String>,
    /// Enterprises per page (default 1000, at most 100000).
    pub limit: Option<usize>,
    /// Decide as on this day (YYYY-MM-DD), with the policy and profiles as they are now;
    /// default today. Keep it the same while paging.
    pub as_of: Option<String>,
}

/// Every enterprise eligible for a policy today (or `as_of`), by USCC, cursor-paged; the page
/// is decided while it is sent (its first lines at once, with the policy as it was when the
/// page began). Each line of `enterprises` is `{uscc, name, region, benefit_yuan}`.
#[utoipa::path(get, path = "/v1/policies/{id}/eligible-enterprises", tag = "policies",
    params(("id" = String, Path, description = "Policy id"), PageQuery),
    responses((status = 200, description = "{\"policy_id\", \"enterprises\": [...], \"next_cursor\"}", content_type = "application/json"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn eligible_enterprises(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    // A bulk list of enterprises is the policy-push service's: a department that handles a
    // matter asks about its own enterprise (match, explain), not for the register.
    if !(caller.has(Role::PolicyPush) || caller.has(Role::Admin)) {
        return Err(ApiError::missing_role(Role::PolicyPush));
    }
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > policies::kb::MAX_ELIGIBLE_PAGE {
        return Err(bad(
            "limit",
            format!("between 1 and {}", policies::kb::MAX_ELIGIBLE_PAGE),
        ));
    }
    let after = match &q.cursor {
        Some(c) => {
            let (version, uscc) = c
                .split_once('.')
                .ok_or_else(|| bad("cursor", "`<version>.<USCC>`, as `next_cursor` gives it"))?;
            let version: u32 = version
                .parse()
                .map_err(|_| bad("cursor", "`<version>.<USCC>`, as `next_cursor` gives it"))?;
            let uscc = uscc
                .parse::<cert_store::Uscc>()
                .map_err(|e| bad("cursor", e))?;
            Some((version, uscc))
        }
        None => None,
    };
    let day = decision_day(q.as_of.as_deref())?;
    // The first lines are decided before the answer starts (a fault is still a status then);
    // the rest step by step while it is sent, each step under the store's read lock only for
    // its own lines, all with the policy as it was when the page began.
    let first = blocking(&gw, move |kb| {
        let policy = kb.policy(&id).ok_or_else(|| no_policy(&id))?;
        if let Some((version, _)) = &after
            && *version != policy.version
        {
            return Err(ApiError::new(
                Code::PolicyChangedSincePage,
                format!(
                    "policy {} is at version {} since this cursor (version {version}) was given: page again from the start",
                    policy.id, policy.version
                ),
            ));
        }
        let mut page = PageWriter {
            policy,
            day,
            after: after.map(|(_, u)| u),
            left: limit,
            written: 0,
            done: false,
        };
        let bytes = page.step(kb).map_err(kb_error)?;
        Ok((page, bytes))
    })
    .await?;
    let kb = gw.policies.clone();
    let rest = futures_util::stream::unfold(Some(first.0), move |page| {
        let kb = kb.clone();
        async move {
            let mut page = page.filter(|p| !p.done)?;
            let step = tokio::task::spawn_blocking(move || {
                let bytes = page.step(&kb);
                (page, bytes)
            })
            .await;
            match step {
                Ok((page, Ok(bytes))) => Some((Ok(bytes), Some(page))),
                Ok((_, Err(e))) => {
                    tracing::error!(error = %e, "an eligible-enterprise page ended early");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
                Err(e) => {
                    tracing::error!(error = %e, "an eligible-enterprise page ended early");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok(first.1) }),
        rest,
    );
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Enterprises decided and written in the first step of a page of eligible enterprises; each
/// further step twice as many as the last, up to [`PAGE_STEP_MAX`] (the first lines leave at
/// once, and a large page takes few hops to the blocking pool).
const PAGE_STEP: usize = 512;

/// Most enterprises decided and written in one step.
const PAGE_STEP_MAX: usize = 16_384;

/// A page of eligible enterprises being written: each [`PageWriter::step`] decides the next
/// enterprises and writes them; the first step writes the head, the last the cursor of the
/// next page.
struct PageWriter {
    policy: Arc<Policy>,
    day: Date,
    /// The last USCC written (or the cursor's).
    after: Option<cert_store::Uscc>,
    /// Enterprises still to write on this page.
    left: usize,
    /// Enterprises written (the first step, which writes none or some, writes the head).
    written: usize,
    done: bool,
}

impl PageWriter {
    fn step(&mut self, kb: &KnowledgeBase) -> Result<bytes::Bytes, KbError> {
        /// One line of `enterprises`, written straight into the step's buffer.
        #[derive(Serialize)]
        struct Line<'a> {
            uscc: &'a str,
            name: &'a str,
            region: policies::codes::Region,
            benefit_yuan: Option<u64>,
        }
        let want = self
            .left
            .min(self.written.max(PAGE_STEP / 2).saturating_mul(2))
            .min(PAGE_STEP_MAX);
        let sub = kb.eligible_page(&self.policy, self.day, self.after.as_ref(), want)?;
        let mut out: Vec<u8> = Vec::with_capacity(sub.enterprises.len() * 128 + 128);
        let first = self.written == 0;
        if first {
            #[derive(Serialize)]
            struct Head<'a> {
                policy_id: &'a str,
                version: u32,
                date: String,
            }
            // Writing plain fields into memory cannot fail.
            let _ = serde_json::to_writer(
                &mut out,
                &Head {
                    policy_id: &self.policy.id,
                    version: self.policy.version,
                    date: policies::model::format_date(self.day),
                },
            );
            out.pop();
            out.extend_from_slice(b",\"enterprises\":[");
        }
        for (i, p) in sub.enterprises.iter().enumerate() {
            if !(first && i == 0) {
                out.push(b',');
            }
            self.written += 1;
            let line = Line {
                uscc: p.uscc.as_str(),
                name: &p.name,
                region: p.region,
                benefit_yuan: policies::eligibility::benefit(&self.policy, p),
            };
            let _ = serde_json::to_writer(&mut out, &line);
        }
        self.left -= sub.enterprises.len();
        self.after = sub.enterprises.last().map(|p| p.uscc.clone());
        // The page ends with the policy's list, or full: then the next page's cursor, when
        // one more is eligible.
        if sub.enterprises.len() < want || sub.next.is_none() || self.left == 0 {
            let next = match (self.left, sub.next) {
                (0, Some(u)) => Some(format!("{}.{u}", self.policy.version)),
                _ => None,
            };
            out.extend_from_slice(b"],\"next_cursor\":");
            let _ = serde_json::to_writer(&mut out, &next);
            out.push(b'}');
            self.done = true;
        }
        Ok(bytes::Bytes::from(out))
    }
}

// ---- search ----

/// `?q=&region=&category=&industry=&limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Text, analysed with the same Chinese analyser as the index.
    pub q: Option<String>,
    /// Policies that apply in this region (GB/T 2260).
    pub region: Option<String>,
    /// 免申即享, 在线办理 or 宣传展示.
    pub category: Option<String>,
    /// GB/T 4754-2017 code.
    pub industry: Option<String>,
    /// At most this many hits (default 20, at most 200).
    pub limit: Option<usize>,
}

/// A search hit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchHitView {
    /// Policy id.
    pub policy_id: String,
    /// Title.
    pub title: String,
    /// Category.
    pub category: &'static str,
    /// Region code.
    pub region: String,
    /// Score.
    pub score: f32,
    /// Highlighted fragment of the text (`<em>` around matched terms, HTML-escaped otherwise).
    pub snippet: String,
}

/// Full-text search of the policy knowledge base, with filters and highlighted snippets.
#[utoipa::path(get, path = "/v1/policies/search", tag = "policies", params(SearchQuery),
    responses((status = 200, body = [SearchHitView]), (status = 400, body = ErrorBody)))]
pub async fn search(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
    QueryParams(q): QueryParams<SearchQuery>,
) -> Result<Json<Vec<SearchHitView>>, ApiError> {
    let text = q.q.unwrap_or_default();
    if text.chars().count() > 200 {
        return Err(bad("q", "at most 200 characters"));
    }
    let filter = SearchFilter {
        region: q
            .region
            .map(|r| policies::codes::Region::parse(&r))
            .transpose()
            .map_err(|e| bad("region", e))?,
        category: q
            .category
            .map(|c| from_json::<Category>(&serde_json::json!(c).to_string()))
            .transpose()
            .map_err(|_| bad("category", "one of 免申即享, 在线办理, 宣传展示"))?,
        industry: q
            .industry
            .map(|i| policies::codes::Industry::parse(&i))
            .transpose()
            .map_err(|e| bad("industry", e))?,
    };
    let limit = q.limit.unwrap_or(20);
    if limit == 0 || limit > 200 {
        return Err(bad("limit", "between 1 and 200"));
    }
    blocking(&gw, move |kb| {
        let hits = kb.search(&text, &filter, limit).map_err(kb_error)?;
        Ok(Json(
            hits.into_iter()
                .filter_map(|h| {
                    let p = kb.policy(&h.id)?;
                    Some(SearchHitView {
                        policy_id: h.id,
                        title: p.title.clone(),
                        category: p.category.as_str(),
                        region: p.region.code(),
                        score: h.score,
                        snippet: h.snippet,
                    })
                })
                .collect(),
        ))
    })
    .await
}

/// One policy.
#[utoipa::path(get, path = "/v1/policies/{id}", tag = "policies",
    params(("id" = String, Path, description = "Policy id")),
    responses((status = 200, description = "The policy", content_type = "application/json"), (status = 404, body = ErrorBody)))]
pub async fn policy(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Policy>, ApiError> {
    gw.policies
        .policy(&id)
        .map(|p| Json((*p).clone()))
        .ok_or_else(|| no_policy(&id))
}

/// The JSON Schema (draft 2020-12) of a policy or an enterprise profile, as `POST
/// /v1/policies`, `POST /v1/enterprises` and the JSON Lines imports read them (shipped as
/// `policies/data/schema/`). Bounds are inclusive.
#[utoipa::path(get, path = "/v1/schemas/{name}", tag = "policies",
    params(("name" = String, Path, description = "`policy` or `profile`")),
    responses((status = 200, description = "The schema", content_type = "application/schema+json"), (status = 404, body = ErrorBody)))]
pub async fn schema(_caller: Caller, Path(name): Path<String>) -> Result<Response, ApiError> {
    let text = match name.as_str() {
        "policy" => policies::POLICY_SCHEMA,
        "profile" => policies::PROFILE_SCHEMA,
        _ => {
            return Err(not_found(format!(
                "no schema {}; there are `policy` and `profile`",
                name.chars().take(40).collect::<String>()
            )));
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/schema+json")],
        Body::from(text),
    )
        .into_response())
}

/// What a publication or an upsert changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangesView {
    /// Items stored.
    pub stored: usize,
    /// New (policy, enterprise) eligibilities: one push-feed event each.
    pub new_matches: usize,
    /// Matches that no longer hold.
    pub ended_matches: usize,
}

impl From<policies::Changes> for ChangesView {
    fn from(c: policies::Changes) -> Self {
        ChangesView {
            stored: c.stored,
            new_matches: c.new_matches,
            ended_matches: c.ended_matches,
        }
    }
}

/// Publishes a new policy or a new version of one (admin). Every enterprise newly eligible
/// becomes one push-feed event.
#[utoipa::path(post, path = "/v1/policies", tag = "policies",
    request_body(content = Object, description = "A policy (see the README for its schema)"),
    responses((status = 200, body = ChangesView),
        (status = 400, description = "Invalid, the field named (CG-POL-001)", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "The version is not newer than the stored one (CG-POL-003)", body = ErrorBody)))]
pub async fn publish(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<ChangesView>, ApiError> {
    require(&caller, Role::Admin)?;
    let policy: Policy = parse(&body)?;
    policy.validate().map_err(|e| invalid(&e))?;
    let day = today();
    blocking(&gw, move |kb| match kb.publish(vec![policy], day) {
        Ok(c) => Ok(Json(c.into())),
        Err(e @ KbError::NotNewer { .. }) => {
            Err(ApiError::new(Code::PolicyVersionNotNewer, e.to_string()))
        }
        Err(e) => Err(kb_error(e)),
    })
    .await
}

/// What a withdrawal ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Withdrawn {
    /// The policy id.
    pub policy_id: String,
    /// Matches that ended with it (their feed events stay, as history).
    pub ended_matches: usize,
}

/// Withdraws a policy (admin): it leaves the knowledge base, the index and every match.
#[utoipa::path(delete, path = "/v1/policies/{id}", tag = "policies",
    params(("id" = String, Path, description = "Policy id")),
    responses((status = 200, body = Withdrawn), (status = 403, body = ErrorBody),
        (status = 404, description = "No such policy (CG-POL-002)", body = ErrorBody)))]
pub async fn withdraw(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Withdrawn>, ApiError> {
    require(&caller, Role::Admin)?;
    blocking(&gw, move |kb| match kb.withdraw(&id).map_err(kb_error)? {
        Some(ended_matches) => Ok(Json(Withdrawn {
            policy_id: id,
            ended_matches,
        })),
        None => Err(no_policy(&id)),
    })
    .await
}

/// Adds or replaces an enterprise profile (the data department named by
/// `policies.profile_owner`). A profile that becomes eligible for a policy produces one
/// push-feed event per policy.
#[utoipa::path(post, path = "/v1/enterprises", tag = "policies",
    request_body(content = Object, description = "An enterprise profile (see the README)"),
    responses((status = 200, body = ChangesView),
        (status = 400, description = "Invalid, the field named (CG-POL-001)", body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn upsert_profile(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<ChangesView>, ApiError> {
    if gw.profile_owner.as_ref() != Some(&caller.department) {
        return Err(ApiError::new(
            Code::NotProfileOwner,
            "only the data department named in policies.profile_owner maintains profiles",
        ));
    }
    let profile: Profile = parse(&body)?;
    profile.validate().map_err(|e| invalid(&e))?;
    let day = today();
    blocking(&gw, move |kb| {
        kb.upsert_profiles(vec![profile], day)
            .map(|c| Json(c.into()))
            .map_err(kb_error)
    })
    .await
}

/// `?after=&limit=` of the push feed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Read events after this cursor (the `seq` of the last event read; default 0).
    pub after: Option<i64>,
    /// At most this many events (default 100, at most 10000).
    pub limit: Option<usize>,
}

/// A page of the push feed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedPage {
    /// Events in order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<policies::store::FeedEvent>,
    /// Pass as `after` to read on (the last event's `seq`, or the `after` given).
    pub next_cursor: i64,
}

/// The push feed for the policy-push service: new (policy, enterprise) eligibilities in order.
/// Reading again from an old cursor returns the same events (at-least-once; the `event_id` is
/// stable, so the reader can drop duplicates).
#[utoipa::path(get, path = "/v1/push-feed", tag = "policies", params(FeedQuery),
    responses((status = 200, body = FeedPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn push_feed(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    QueryParams(q): QueryParams<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    require(&caller, Role::PolicyPush)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(bad("after", "a cursor is not negative"));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(bad("limit", "between 1 and 10000"));
    }
    blocking(&gw, move |kb| {
        let events = kb.feed(after, limit).map_err(kb_error)?;
        let next_cursor = events.last().map_or(after, |e| e.seq);
        Ok(Json(FeedPage {
            events,
            next_cursor,
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page written in steps of growing size is the same list, cut at the same places, as
    /// the knowledge base's own pages, whatever the limit relative to the steps.
    #[test]
    fn a_page_written_step_by_step_is_the_knowledge_base_s_page() {
        let day = policies::model::parse_date("2026-11-01").unwrap();
        let kb = KnowledgeBase::open(None, search::ChineseAnalyzer::new().unwrap()).unwrap();
        let all: Vec<Policy> = policies::SAMPLE_POLICIES
            .lines()
            .map(|l| Policy::from_json(l).unwrap())
            .collect();
        kb.load_without_matching(
            all.clone(),
            policies::generate::population(4_000, 5, day).collect(),
        )
        .unwrap();
        let policy = all
            .iter()
            .max_by_key(|p| kb.eligible_enterprises(p, day).unwrap().len())
            .map(|p| Arc::new(p.clone()))
            .unwrap();
        let want: Vec<String> = kb
            .eligible_enterprises(&policy, day)
            .unwrap()
            .iter()
            .map(|p| p.uscc.to_string())
            .collect();
        assert!(want.len() > PAGE_STEP * 4, "{}", want.len());
        for limit in [
            1,
            511,
            512,
            513,
            1_536,
            1_537,
            want.len() - 1,
            want.len(),
            100_000,
        ] {
            let mut got = Vec::new();
            let mut after: Option<cert_store::Uscc> = None;
            loop {
                let mut page = PageWriter {
                    policy: policy.clone(),
                    day,
                    after: after.clone(),
                    left: limit,
                    written: 0,
                    done: false,
                };
                let mut body = Vec::new();
                let mut steps = 0;
                while !page.done {
                    body.extend_from_slice(&page.step(&kb).unwrap());
                    steps += 1;
                }
                let page: Value = serde_json::from_slice(&body).unwrap();
                let lines = page["enterprises"].as_array().unwrap();
                assert!(lines.len() <= limit);
                assert!(
                    steps <= 1 + lines.len().div_ceil(PAGE_STEP).max(1),
                    "{steps} steps"
                );
                got.extend(lines.iter().map(|l| l["uscc"].as_str().unwrap().to_owned()));
                match page["next_cursor"].as_str() {
                    Some(c) => {
                        assert_eq!(lines.len(), limit, "a full page before a cursor");
                        let (version, uscc) = c.split_once('.').unwrap();
                        assert_eq!(version, policy.version.to_string());
                        assert_eq!(Some(uscc), got.last().map(String::as_str));
                        after = Some(uscc.parse().unwrap());
                    }
                    None => break,
                }
            }
            assert_eq!(got, want, "limit {limit}");
        }
    }
}
