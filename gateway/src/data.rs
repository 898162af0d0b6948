//! Routes of the shared-data exchange and the no-proof checks. Each handler checks the caller
//! and the purpose, calls the exchange, and maps the result.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use cert_store::licence::LicenceStatus;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Role;
use crate::error::{ApiError, Code, ErrorBody};
use crate::extract::NoteSlot;
use crate::extract::{JsonBody, require};
use crate::identity::Caller;
use crate::purpose::Purpose;
use crate::state::Gateway;
use exchange::catalog::Dataset;
use exchange::proofs::{self, PROOF_TYP, ProofCheck, ProofError};
use exchange::upstream::FetchError;
use exchange::{self, Exchange};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::new()
        .routes(routes!(datasets))
        .routes(routes!(record))
        .routes(routes!(invalidate_key))
        .routes(routes!(invalidate_dataset))
        .routes(routes!(proof_types))
        .routes(routes!(verify_proof))
        .routes(routes!(issue_proof))
}

/// A record as the calling department may see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DataView {
    /// The dataset id.
    pub dataset: String,
    /// The record key.
    pub key: String,
    /// When the gateway fetched it from the source system (Unix seconds).
    pub fetched_at: i64,
    /// `hit`, `miss` or `stale` (also in the `cache-status` header).
    pub cache: &'static str,
    /// The fields this department may see for this purpose, masked as configured.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

fn bad_key(message: String) -> ApiError {
    ApiError::new(Code::BadRecordKey, message)
}

fn not_permitted(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::NoDataGrant, message)
}

fn dataset_of(gw: &Gateway, id: &str) -> Result<Arc<Dataset>, ApiError> {
    gw.exchange.dataset(id).cloned().ok_or_else(|| {
        ApiError::new(
            Code::NoDataset,
            format!("no dataset `{}`", id.chars().take(40).collect::<String>()),
        )
    })
}

/// The answer for a source system that failed. The detail goes to the log, not the caller.
fn fetch_error(dataset: &str, e: &FetchError) -> ApiError {
    tracing::warn!(dataset, error = %e, "source system fetch failed");
    let (code, message) = match e {
        FetchError::NotFound => (
            Code::NoRecord,
            "the source system has no record for this key".to_owned(),
        ),
        FetchError::Timeout(ms) => (
            Code::UpstreamTimeout,
            format!("the source system did not answer within {ms} ms"),
        ),
        FetchError::Unreachable(_) => (
            Code::UpstreamUnavailable,
            "the source system cannot be reached".to_owned(),
        ),
        FetchError::BreakerOpen => (
            Code::UpstreamUnavailable,
            "the source system is failing; calls to it are suspended for a while".to_owned(),
        ),
        FetchError::Status(s) => (
            Code::UpstreamBadAnswer,
            format!("the source system answered with status {s}"),
        ),
        FetchError::Malformed(_) => (
            Code::UpstreamBadAnswer,
            "the source system's answer is not a JSON object".to_owned(),
        ),
        FetchError::TooLarge(n) => (
            Code::UpstreamBadAnswer,
            format!("the source system's answer is larger than the dataset's limit of {n} bytes"),
        ),
        _ => (
            Code::UpstreamUnavailable,
            "the source system cannot be used now".to_owned(),
        ),
    };
    ApiError::new(code, format!("{dataset}: {message}"))
}

/// Notes the dataset and key for the access log: holder keys are pseudonymised there.
fn note(slot: &NoteSlot, dataset: &Dataset, key: &str) {
    let resource = format!("dataset:{}", dataset.id);
    if dataset.key_kind.is_holder() {
        slot.record(&resource, key);
    } else {
        slot.record_resource(&format!("{resource}/{key}"));
    }
}

/// One record of a dataset, fetched from its source system through the cache and filtered
/// to the fields this department may see for the stated purpose.
#[utoipa::path(get, path = "/v1/data/{dataset}/{key}", tag = "data",
    params(("dataset" = String, Path, description = "Dataset id"),
        ("key" = String, Path, description = "Record key (USCC, citizen id or free key, as the dataset says)"),
        ("X-Purpose" = String, Header, description = "Matter code and/or reason")),
    responses(
        (status = 200, body = DataView, headers(("cache-status" = String, description = "hit, miss or stale"))),
        (status = 400, description = "Bad key (CG-DAT-001) or no purpose (CG-REQ-006)", body = ErrorBody),
        (status = 403, description = "No grant for this department and purpose (CG-DAT-002)", body = ErrorBody),
        (status = 404, description = "Unknown dataset (CG-DAT-003) or no record (CG-DAT-004)", body = ErrorBody),
        (status = 502, description = "The source answered badly (CG-DAT-005)", body = ErrorBody),
        (status = 503, description = "The source is unreachable or its breaker is open (CG-DAT-006)", body = ErrorBody),
        (status = 504, description = "The source timed out (CG-DAT-007)", body = ErrorBody),
    ))]
pub async fn record(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    purpose: Purpose,
    Path((dataset, key)): Path<(String, String)>,
    Extension(slot): Extension<NoteSlot>,
) -> Result<Response, ApiError> {
    let ds = dataset_of(&gw, &dataset)?;
    let key = ds
        .key_kind
        .parse(&key)
        .map_err(|e| bad_key(format!("key: {e}")))?;
    note(&slot, &ds, &key);
    if ds.owner != caller.department {
        require(&caller, Role::Consumer)?;
    }
    // Decide before looking, so that a refusal says nothing about the record.
    let visible = Exchange::visible_fields(&ds, &caller.department, purpose.matter.as_deref())
        .ok_or_else(|| {
            not_permitted(format!(
                "no grant lets this department read {} for this purpose",
                ds.id
            ))
        })?;
    let (record, status) = gw
        .exchange
        .get(&ds, &key, true)
        .await
        .map_err(|e| fetch_error(&ds.id, &e))?;
    let view = DataView {
        dataset: ds.id.clone(),
        key,
        fetched_at: record.fetched_at,
        cache: status.as_str(),
        fields: exchange::present(&record, &visible),
    };
    Ok(([("cache-status", status.as_str())], Json(view)).into_response())
}

/// What an invalidation dropped.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Invalidated {
    /// The dataset id.
    pub dataset: String,
    /// The key, or none when the whole dataset was dropped.
    pub key: Option<String>,
}

fn require_owner(caller: &Caller, ds: &Dataset) -> Result<(), ApiError> {
    if caller.department == ds.owner {
        Ok(())
    } else {
        Err(not_permitted(format!(
            "only the owner of {} may invalidate its records",
            ds.id
        )))
    }
}

/// Drops one record from the cache; the next request fetches it from the source (owner only).
#[utoipa::path(post, path = "/v1/data/{dataset}/{key}/invalidate", tag = "data",
    params(("dataset" = String, Path, description = "Dataset id"), ("key" = String, Path, description = "Record key")),
    responses((status = 200, body = Invalidated), (status = 400, body = ErrorBody),
        (status = 403, description = "Not the owner (CG-DAT-002)", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn invalidate_key(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path((dataset, key)): Path<(String, String)>,
    Extension(slot): Extension<NoteSlot>,
) -> Result<Json<Invalidated>, ApiError> {
    let ds = dataset_of(&gw, &dataset)?;
    let key = ds
        .key_kind
        .parse(&key)
        .map_err(|e| bad_key(format!("key: {e}")))?;
    note(&slot, &ds, &key);
    require_owner(&caller, &ds)?;
    gw.invalidate(storage::bus::Change::DataKey {
        dataset: ds.id.clone(),
        key: key.clone(),
    })
    .await;
    Ok(Json(Invalidated {
        dataset: ds.id.clone(),
        key: Some(key),
    }))
}

/// Drops every record of a dataset from the cache (owner only).
#[utoipa::path(post, path = "/v1/data/{dataset}/invalidate", tag = "data",
    params(("dataset" = String, Path, description = "Dataset id")),
    responses((status = 200, body = Invalidated),
        (status = 403, description = "Not the owner (CG-DAT-002)", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn invalidate_dataset(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(dataset): Path<String>,
    Extension(slot): Extension<NoteSlot>,
) -> Result<Json<Invalidated>, ApiError> {
    let ds = dataset_of(&gw, &dataset)?;
    slot.record_resource(&format!("dataset:{}", ds.id));
    require_owner(&caller, &ds)?;
    gw.invalidate(storage::bus::Change::Dataset {
        dataset: ds.id.clone(),
    })
    .await;
    Ok(Json(Invalidated {
        dataset: ds.id.clone(),
        key: None,
    }))
}

/// A dataset as listed to departments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatasetView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Owner department.
    pub owner: String,
    /// `uscc`, `citizen-id` or `free`.
    pub key_kind: &'static str,
    /// Cache lifetime of a record, in seconds.
    pub ttl_seconds: u64,
    /// Every field a record may carry.
    pub fields: Vec<String>,
}

/// The dataset catalog.
#[utoipa::path(get, path = "/v1/datasets", tag = "data", responses((status = 200, body = [DatasetView])))]
pub async fn datasets(State(gw): State<Arc<Gateway>>, _caller: Caller) -> Json<Vec<DatasetView>> {
    Json(
        gw.exchange
            .datasets()
            .map(|d| DatasetView {
                id: d.id.clone(),
                name: d.name.clone(),
                owner: d.owner.to_string(),
                key_kind: d.key_kind.as_str(),
                ttl_seconds: d.ttl.as_secs(),
                fields: d.fields.iter().cloned().collect(),
            })
            .collect(),
    )
}

// ---- no-proof checks ----

/// A request for a proof.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofRequest {
    /// The holder the proof is about: a USCC or a citizen id, as the proof type says.
    pub holder: String,
}

/// An issued proof.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProofView {
    /// The proof's id (the token's `jti`).
    pub id: String,
    /// The proof type id.
    pub proof_type: String,
    /// Its name, e.g. 无欠税证明.
    pub proof_name: String,
    /// The holder.
    pub holder: String,
    /// The answer.
    pub result: bool,
    /// Issuance time (Unix seconds).
    pub issued_at: i64,
    /// End of validity (at most 24 hours later).
    pub expires_at: i64,
    /// The signed proof: an ES256 JWT with `typ` `certgate-proof+jwt`, verifiable offline
    /// with the gateway key in `/.well-known/jwks.json`.
    pub token: String,
}

/// A proof type as listed to departments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProofTypeView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `uscc` or `citizen-id`.
    pub holder_kind: &'static str,
    /// Lifetime of a proof, in seconds.
    pub validity_seconds: u64,
    /// True when the calling department may ask for it.
    pub may_request: bool,
}

/// The proof types.
#[utoipa::path(get, path = "/v1/proof-types", tag = "proofs", responses((status = 200, body = [ProofTypeView])))]
pub async fn proof_types(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
) -> Json<Vec<ProofTypeView>> {
    Json(
        gw.exchange
            .proof_types()
            .map(|p| ProofTypeView {
                id: p.id.clone(),
                name: p.name.clone(),
                holder_kind: p.holder_kind.as_str(),
                validity_seconds: p.validity.as_secs(),
                may_request: p.departments.contains(&caller.department),
            })
            .collect(),
    )
}

/// Evaluates a proof type's rule for a holder and returns a signed proof of the answer
/// (无证明城市: the department asks the gateway instead of asking the citizen for paper).
#[utoipa::path(post, path = "/v1/proofs/{proof_type}", tag = "proofs", request_body = ProofRequest,
    params(("proof_type" = String, Path, description = "Proof type id"),
        ("X-Purpose" = String, Header, description = "Matter code and/or reason")),
    responses((status = 201, body = ProofView),
        (status = 400, description = "Bad holder (CG-PRF-001) or no purpose (CG-REQ-006)", body = ErrorBody),
        (status = 403, description = "The department may not ask for this proof (CG-PRF-002)", body = ErrorBody),
        (status = 404, description = "Unknown proof type (CG-PRF-003)", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn issue_proof(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    purpose: Purpose,
    Path(proof_type): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(body): JsonBody<ProofRequest>,
) -> Result<(StatusCode, Json<ProofView>), ApiError> {
    let (proof, holder) = gw
        .exchange
        .proof_request(&proof_type, &body.holder)
        .map_err(proof_error)?;
    slot.record(&format!("proof:{}", proof.id), &holder);
    let answer = gw
        .exchange
        .answer_proof(
            proof,
            holder,
            &caller.department,
            purpose.matter.as_deref(),
            |holder, licence_type, now| gw.holds_valid(holder, licence_type, now),
        )
        .await
        .map_err(proof_error)?;
    let (proof, holder, result, now) = (
        answer.proof,
        answer.holder,
        answer.result,
        answer.decided_at,
    );
    let id = format!("proof-{}", hex::encode(random_id()));
    let claims = proofs::claims(
        &proof,
        &id,
        &holder,
        caller.department.as_ref(),
        result,
        now,
    );
    let token = gw
        .licences(move |svc, _| svc.sign_gateway_jwt(PROOF_TYP, &claims))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ProofView {
            id,
            proof_type: proof.id.clone(),
            proof_name: proof.name.clone(),
            holder,
            result,
            issued_at: now,
            expires_at: now + proof.validity.as_secs() as i64,
            token,
        }),
    ))
}

/// The answer to a proof that could not be given.
fn proof_error(e: ProofError<ApiError>) -> ApiError {
    match e {
        ProofError::UnknownType(id) => {
            ApiError::new(Code::NoProofType, format!("no proof type `{id}`"))
        }
        ProofError::BadHolder(why) => {
            ApiError::new(Code::BadProofRequest, format!("holder: {why}"))
        }
        ProofError::NotForDepartment(name) => ApiError::new(
            Code::ProofNotAllowed,
            format!("this department may not ask for {name}"),
        ),
        ProofError::NotForMatter(name) => ApiError::new(
            Code::ProofNotAllowed,
            format!("{name} is not given for the matter stated in X-Purpose"),
        ),
        ProofError::Dataset { dataset, error } => fetch_error(&dataset, &error),
        ProofError::Register(e) => e,
        _ => ApiError::internal(),
    }
}

impl Gateway {
    /// True when `holder` holds a licence of `licence_type` valid at `now` (valid ones come
    /// first in a holder's list, so the first page holds one if any is held).
    async fn holds_valid(
        &self,
        holder: String,
        licence_type: String,
        now: i64,
    ) -> Result<bool, ApiError> {
        let page = self
            .licences(move |svc, _| {
                svc.licences_by_holder(
                    &holder,
                    &licence_type,
                    None,
                    None,
                    cert_store::service::MAX_HOLDER_PAGE,
                )
            })
            .await?;
        Ok(page
            .licences
            .iter()
            .any(|l| l.status == LicenceStatus::Valid && l.not_before <= now && now < l.expires_at))
    }
}

pub(crate) fn random_id() -> [u8; 12] {
    let mut b = [0u8; 12];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        tracing::error!("system random number generator failed");
    }
    b
}

/// A proof to verify. The issued proof may be sent as returned: fields other than `token`
/// are ignored, and nothing but the token is trusted.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct VerifyProof {
    /// The proof token.
    pub token: String,
}

/// The verdict on a proof.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProofVerdict {
    /// True when every check passed.
    pub valid: bool,
    /// Each check with its outcome.
    #[schema(value_type = Vec<Object>)]
    pub checks: Vec<ProofCheck>,
    /// The proof's claims, when its signature verified.
    #[schema(value_type = Option<Object>)]
    pub proof: Option<Map<String, Value>>,
}

/// Verifies a proof: the gateway's signature, a known proof type, the time window.
#[utoipa::path(post, path = "/v1/proofs/verify", tag = "proofs", request_body = VerifyProof,
    responses((status = 200, body = ProofVerdict), (status = 400, body = ErrorBody)))]
pub async fn verify_proof(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    JsonBody(body): JsonBody<VerifyProof>,
) -> Result<Json<ProofVerdict>, ApiError> {
    let token = body.token;
    let signed = gw
        .licences(move |svc, _| Ok(svc.verify_gateway_jwt(token.trim(), PROOF_TYP)))
        .await?;
    let now = crate::state::unix_now();
    let (mut checks, proof) = match signed {
        Ok(claims) => (
            vec![ProofCheck {
                check: "signature",
                ok: true,
                detail: None,
            }],
            Some(claims),
        ),
        Err(reason) => (
            vec![ProofCheck {
                check: "signature",
                ok: false,
                detail: Some(reason),
            }],
            None,
        ),
    };
    if let Some(claims) = &proof {
        checks.extend(proofs::check_claims(
            claims,
            |t| gw.exchange.proof_type(t).is_some(),
            now,
        ));
        // A proof answers the department that asked for it, for its matter; to anyone else
        // it is not a proof they may rely on.
        let audience = format!("urn:certgate:dept:{}", caller.department);
        let aud = claims.get("aud").and_then(serde_json::Value::as_str);
        checks.push(ProofCheck {
            check: "audience",
            ok: aud == Some(audience.as_str()),
            detail: (aud != Some(audience.as_str())).then(|| {
                format!(
                    "issued to {}, not to the department verifying it",
                    aud.map_or_else(|| "no one".to_owned(), crate::error::truncated)
                )
            }),
        });
    }
    Ok(Json(ProofVerdict {
        valid: checks.iter().all(|c| c.ok),
        checks,
        proof,
    }))
}
