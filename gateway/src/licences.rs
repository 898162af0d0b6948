//! Routes for e-seals, e-licences, status lists, consents and show-codes. Each handler checks
//! the role, calls one `LicenceService` function on a blocking thread and maps the result.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cert_store::access::{AccessError, Grant, Reader};
use cert_store::jws::JwsAlg;
use cert_store::licence::{LicenceRecord, LicenceStatus, LicenceType, SealRecord};
use cert_store::licence_id::LicenceId;
use cert_store::service::{IssueRequest, Lifecycle, SealOwner, Settled, VerifyReport};
use cert_store::store::StoreError;
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Role;
use crate::error::{ApiError, Code, ErrorBody, field_error, truncated};
use crate::extract::{AccessNote, NoteSlot};
use crate::extract::{ConsentHeader, HolderHeader};
use crate::extract::{JsonBody, QueryParams, require};
use crate::identity::Caller;
use crate::purpose::Purpose;
use crate::state::Gateway;
use crate::view_cache::ViewKey;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::new()
        .routes(routes!(create_seal, list_seals))
        .routes(routes!(seal))
        .routes(routes!(seal_certificate))
        .routes(routes!(revoke_seal))
        .routes(routes!(seal_ca))
        .routes(routes!(jwks))
        .routes(routes!(licence_types))
        .routes(routes!(issue, licences_by_holder))
        .routes(routes!(verify))
        .routes(routes!(licence))
        .routes(routes!(check))
        .routes(routes!(suspend))
        .routes(routes!(resume))
        .routes(routes!(revoke))
        .routes(routes!(renew))
        .routes(routes!(status_list))
        .routes(routes!(create_consent))
        .routes(routes!(revoke_consent))
        .routes(routes!(create_show_code))
        .routes(routes!(redeem_show_code))
}

// ---- seals ----

/// A request to create a seal.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSeal {
    /// The seal kind: 公章, 合同专用章, 财务专用章, 发票专用章, 法定代表人名章, or another
    /// `…专用章` (e.g. 行政审批专用章).
    pub seal_type: String,
    /// The seal's name: optional, and if given exactly the owner's registered name followed
    /// by the kind (e.g. 北京市朝阳区市场监督管理局公章), which is what it gets otherwise.
    pub name: Option<String>,
    /// `ES256` or `SM2SM3`.
    #[schema(value_type = String, example = "SM2SM3")]
    pub alg: JwsAlg,
    /// Optional PNG picture of the seal, base64.
    pub picture_png_base64: Option<String>,
    /// An enterprise's USCC: the seal is made for that enterprise (its free seals at
    /// registration, 云刻章), which uses it through the holder app; absent: the calling
    /// department's own seal.
    pub holder: Option<String>,
    /// Days the seal is valid (1–3650, default 3650).
    pub valid_days: Option<u32>,
}

/// A seal as shown to departments (never its private key).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SealView {
    /// Seal id.
    pub id: String,
    /// Owner USCC.
    pub owner: String,
    /// Seal type.
    pub seal_type: String,
    /// Seal name.
    pub name: String,
    /// `ES256` or `SM2SM3`.
    pub alg: &'static str,
    /// The seal certificate (PEM).
    pub certificate_pem: String,
    /// SHA-256 of the picture, when there is one.
    pub picture_sha256: Option<String>,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// End of the certificate's validity.
    pub not_after: i64,
    /// Revocation time, when revoked.
    pub revoked_at: Option<i64>,
    /// Revocation reason.
    pub revocation_reason: Option<String>,
    /// The owner's registered name, which the seal's name starts with.
    pub owner_name: Option<String>,
}

impl From<SealRecord> for SealView {
    fn from(s: SealRecord) -> Self {
        SealView {
            id: s.id,
            owner: s.owner.to_string(),
            seal_type: s.seal_type,
            name: s.name,
            alg: s.alg.name(),
            certificate_pem: s.certificate_pem,
            picture_sha256: s.picture_sha256,
            created_at: s.created_at,
            not_after: s.not_after,
            revoked_at: s.revoked_at,
            revocation_reason: s.revocation_reason,
            owner_name: s.owner_name,
        }
    }
}

/// A reason for a revocation or status change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why (1–500 characters).
    pub reason: String,
}

/// Creates a seal with a new key pair and seal certificate: the calling department's own
/// (named after its full name in the department table), or, with `holder`, an enterprise's
/// (named after its valid business licence; only a department that issues business licences
/// makes them).
#[utoipa::path(post, path = "/v1/seals", tag = "seals", request_body = CreateSeal,
    responses((status = 201, body = SealView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_seal(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(body): JsonBody<CreateSeal>,
) -> Result<(StatusCode, Json<SealView>), ApiError> {
    require(&caller, Role::Issuer)?;
    let live = gw.live();
    let holder = match body.holder.as_deref().map(str::trim) {
        None => None,
        Some(h) => {
            let h: cert_store::Uscc = h.parse().map_err(|e| field_error("holder", e))?;
            slot.record("seal:new", h.as_str());
            if live.departments.get(&h).is_some() {
                return Err(field_error(
                    "holder",
                    "names a department: a department's seals are its own, made without holder",
                ));
            }
            Some(h)
        }
    };
    let full_name = match &holder {
        Some(_) => String::new(),
        None => live
            .departments
            .get(&caller.department)
            .and_then(|d| d.full_name.clone())
            .ok_or_else(|| {
                ApiError::new(Code::LicenceConflict, "the department table gives this department no full_name: its seals are named after it",
                )
            })?,
    };
    drop(live);
    let picture = match body.picture_png_base64 {
        Some(b64) => Some(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim())
                .map_err(|_| field_error("picture_png_base64", "not base64"))?,
        ),
        None => None,
    };
    let maker = caller.department.clone();
    let seal = gw
        .licences(move |svc, now| {
            let owner = match &holder {
                Some(id) => SealOwner::Enterprise {
                    id,
                    made_by: &maker,
                },
                None => SealOwner::Department {
                    id: &maker,
                    full_name: &full_name,
                },
            };
            svc.seals().create_seal_valid_for(
                owner,
                &body.seal_type,
                body.name.as_deref(),
                body.alg,
                picture,
                body.valid_days.unwrap_or(3650),
                now,
            )
        })
        .await?;
    slot.record_resource(&format!("seal:{}", seal.id));
    if seal.owner != caller.department {
        slot.record(&format!("seal:{}", seal.id), seal.owner.as_str());
    }
    Ok((StatusCode::CREATED, Json(seal.into())))
}

/// `?cursor=&limit=` of a paged list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
    /// Items per page: 1 to 100, default 20.
    pub limit: Option<u32>,
}

/// A page of seals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SealPage {
    /// The seals, newest first.
    pub seals: Vec<SealView>,
    /// Pass as `?cursor=` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// The calling department's seals, newest first, a page at a time (at most 100).
#[utoipa::path(get, path = "/v1/seals", tag = "seals", params(PageQuery),
    responses((status = 200, body = SealPage), (status = 400, body = ErrorBody)))]
pub async fn list_seals(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<SealPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let seals = gw
        .licences(move |svc, _| {
            svc.seals()
                .seals(&caller.department, q.cursor.as_deref(), limit + 1)
        })
        .await?;
    let more = seals.len() > limit as usize;
    let seals: Vec<SealView> = seals
        .into_iter()
        .take(limit as usize)
        .map(SealView::from)
        .collect();
    let next_cursor = more.then(|| seals.last().map(|s| s.id.clone())).flatten();
    Ok(Json(SealPage { seals, next_cursor }))
}

/// The page size of `?limit=`: 1 to 100, default 20.
fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(20) {
        n @ 1..=100 => Ok(n),
        _ => Err(field_error("limit", "must be between 1 and 100")),
    }
}

/// One seal (public information).
#[utoipa::path(get, path = "/v1/seals/{id}", tag = "seals",
    params(("id" = String, Path, description = "Seal id")),
    responses((status = 200, body = SealView), (status = 404, body = ErrorBody)))]
pub async fn seal(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SealView>, ApiError> {
    Ok(Json(
        gw.licences(move |svc, _| svc.seals().seal(&id))
            .await?
            .into(),
    ))
}

/// A seal's certificate (PEM).
#[utoipa::path(get, path = "/v1/seals/{id}/certificate", tag = "seals",
    params(("id" = String, Path, description = "Seal id")),
    responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file"), (status = 404, body = ErrorBody)))]
pub async fn seal_certificate(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let seal = gw.licences(move |svc, _| svc.seals().seal(&id)).await?;
    Ok(pem(seal.certificate_pem))
}

/// Revokes one of the calling department's seals; licences it signed fail verification from now on.
#[utoipa::path(post, path = "/v1/seals/{id}/revoke", tag = "seals", request_body = Reason,
    params(("id" = String, Path, description = "Seal id")),
    responses((status = 200, body = SealView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_seal(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(body): JsonBody<Reason>,
) -> Result<Json<SealView>, ApiError> {
    require(&caller, Role::Issuer)?;
    let seal = gw
        .licences(move |svc, now| {
            svc.seals()
                .revoke_seal(&id, &caller.department, &body.reason, now)
        })
        .await?;
    slot.record(&format!("seal:{}", seal.id), seal.owner.as_str());
    gw.invalidate(storage::bus::Change::Seal {
        id: seal.id.clone(),
    })
    .await;
    Ok(Json(seal.into()))
}

/// The notice of a licence issued or changed: datasets that depend on its type drop the
/// holder, and nodes forget the record (of a renewal: the licence it replaced).
fn licence_changed(record: &LicenceRecord) -> storage::bus::Change {
    storage::bus::Change::Licence {
        licence_type: record.type_code.to_string(),
        holder: record.holder.to_string(),
        id: Some(record.replaces.as_ref().unwrap_or(&record.id).to_string()),
    }
}

/// The certificate of certgate's seal CA (PEM): the trust anchor of every seal certificate.
#[utoipa::path(get, path = "/v1/seal-ca.pem", tag = "seals",
    responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file")))]
pub async fn seal_ca(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    Ok(pem(gw.licence_service().seal_ca_pem()))
}

/// The ES256 public keys: the gateway's own (status lists, consents) and every ES256 seal.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "seals",
    responses((status = 200, description = "JWK set", content_type = "application/jwk-set+json")))]
pub async fn jwks(State(gw): State<Arc<Gateway>>, _caller: Caller) -> Result<Response, ApiError> {
    let set = gw.licences(|svc, _| svc.seals().jwks()).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        Json(set),
    )
        .into_response())
}

fn pem(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], text).into_response()
}

// ---- licence types ----

/// A licence type as configured.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LicenceTypeView {
    /// Type code (the credential's `vct`).
    pub code: String,
    /// Name, e.g. 营业执照.
    pub name: String,
    /// Departments that may issue it.
    pub issuers: Vec<String>,
    /// Field schema: name, kind, required.
    #[schema(value_type = Vec<Object>)]
    pub fields: Value,
    /// Default validity in days.
    pub validity_days: u32,
    /// Whether a query by holder needs the holder's consent.
    pub consent_required: bool,
}

/// The licence types this gateway issues and verifies.
#[utoipa::path(get, path = "/v1/licence-types", tag = "licences", responses((status = 200, body = [LicenceTypeView])))]
pub async fn licence_types(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
) -> Json<Vec<LicenceTypeView>> {
    Json(
        gw.licence_service()
            .types()
            .map(|t| LicenceTypeView {
                code: t.code.to_string(),
                name: t.name.clone(),
                issuers: t.issuers.iter().map(ToString::to_string).collect(),
                fields: serde_json::to_value(&t.fields).unwrap_or_default(),
                validity_days: t.validity_days,
                consent_required: t.consent_required,
            })
            .collect(),
    )
}

// ---- licences ----

/// A request to issue a licence.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueBody {
    /// The licence type code.
    pub licence_type: String,
    /// The holder's USCC or citizen id.
    pub holder_id: String,
    /// The holder's name.
    pub holder_name: String,
    /// One of the issuer's seals.
    pub seal_id: String,
    /// Licence fields per the type's schema.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// Start of validity (Unix seconds); default now.
    pub valid_from: Option<i64>,
    /// End of validity (Unix seconds); default now + the type's validity.
    pub valid_until: Option<i64>,
    /// The issuer's serial (1–32 of 0-9 A-Z); by default one is drawn: the issuance time (9
    /// base-36 characters of Unix milliseconds) and 16 random characters.
    pub serial: Option<String>,
}

/// A licence as a department may see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LicenceView {
    /// The GB/T 36904 identifier.
    pub id: String,
    /// The type code.
    pub licence_type: String,
    /// The issuing department.
    pub issuer: String,
    /// valid, suspended or revoked.
    #[schema(value_type = String)]
    pub status: LicenceStatus,
    /// Why the status last changed (shown to the issuer only).
    pub status_reason: Option<String>,
    /// Issuance time (Unix seconds).
    pub issued_at: i64,
    /// Start of validity.
    pub valid_from: i64,
    /// End of validity.
    pub expires_at: i64,
    /// The licence this renews.
    pub replaces: Option<String>,
    /// The licence that renewed this.
    pub replaced_by: Option<String>,
    /// The SD-JWT VC with only the disclosures this caller may see.
    pub credential: String,
    /// Those disclosed fields, decoded.
    #[schema(value_type = Object)]
    pub disclosed: Map<String, Value>,
}

/// The licence as a reader sees it; the status reason (the issuer's free text) only for the
/// issuer.
fn view(record: &LicenceRecord, credential: String, issuer: bool) -> LicenceView {
    let disclosed = cert_store::service::decode_disclosures(&credential);
    LicenceView {
        id: record.id.to_string(),
        licence_type: record.type_code.to_string(),
        issuer: record.issuer.to_string(),
        status: record.status,
        status_reason: record.status_reason.clone().filter(|_| issuer),
        issued_at: record.issued_at,
        valid_from: record.not_before,
        expires_at: record.expires_at,
        replaces: record.replaces.as_ref().map(ToString::to_string),
        replaced_by: record.replaced_by.as_ref().map(ToString::to_string),
        credential,
        disclosed,
    }
}

/// Issues a licence signed with one of the issuer's seals, as an SD-JWT VC.
#[utoipa::path(post, path = "/v1/licences", tag = "licences", request_body = IssueBody,
    responses((status = 201, body = LicenceView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The holder already holds a licence of a type held once (CG-LIC-005)", body = ErrorBody)))]
pub async fn issue(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(body): JsonBody<IssueBody>,
) -> Result<(StatusCode, Extension<AccessNote>, Json<LicenceView>), ApiError> {
    require(&caller, Role::Issuer)?;
    slot.record(
        &format!("issue:{}", truncated(&body.licence_type)),
        &body.holder_id,
    );
    let req = IssueRequest {
        licence_type: body.licence_type,
        holder_id: body.holder_id,
        holder_name: body.holder_name,
        seal_id: body.seal_id,
        fields: body.fields,
        valid_from: body.valid_from,
        valid_until: body.valid_until,
        serial: body.serial,
    };
    let record = gw.issue_licence(caller.department, req).await?;
    // A new licence changes what datasets that depend on its type say about the holder.
    gw.invalidate(licence_changed(&record)).await;
    let credential = record.sd_jwt.clone();
    Ok((
        StatusCode::CREATED,
        noted(&record),
        Json(view(&record, credential, true)),
    ))
}

/// `?fields=` of a licence query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FieldsQuery {
    /// Comma-separated field names to narrow the disclosures to.
    pub fields: Option<String>,
}

/// A licence by identifier, with the disclosures the caller's access rule allows for the
/// stated purpose (the issuer sees every field). Types that need consent require `X-Consent`
/// from anyone but the issuer. Access is decided from the identifier (its type and issuer)
/// before the licence is looked up: a refusal says nothing about whether it exists.
#[utoipa::path(get, path = "/v1/licences/{id}", tag = "licences",
    params(("id" = String, Path, description = "Licence identifier"), FieldsQuery,
        ("X-Purpose" = String, Header, description = "Matter code and/or reason"),
        ("X-Consent" = Option<String>, Header, description = "The holder's consent token, for types that need it")),
    responses((status = 200, body = LicenceView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn licence(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    purpose: Purpose,
    consent: ConsentHeader,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<FieldsQuery>,
    Extension(slot): Extension<NoteSlot>,
) -> Result<Response, ApiError> {
    let id = parse_licence_id(&id)?;
    let decided = gw.grant_for_id(&caller, &id, &purpose);
    let record = gw.noted_licence(&id, &slot).await;
    let (grant, licence_type) = decided?;
    let visible = grant
        .fields(&licence_type, q.fields.as_deref())
        .map_err(access_error)?;
    let record = gw
        .consented(&caller, &grant, &licence_type, &consent, &purpose, record)
        .await?;
    let note = noted(&record);
    let key = ViewKey::new(&record, visible, grant.is_issuer());
    if let Some(body) = gw.views.get(&key) {
        return Ok((note, json_bytes(body)).into_response());
    }
    let credential = gw
        .licence_service()
        .verification()
        .present(&record, &|n| key.fields.contains(n))?;
    let body = axum::body::Bytes::from(
        serde_json::to_vec(&view(&record, credential, key.issuer))
            .map_err(|_| ApiError::internal())?,
    );
    gw.views.insert(key, body.clone());
    Ok((note, json_bytes(body)).into_response())
}

fn json_bytes(body: axum::body::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `?holder=&type=` of a query by holder.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HolderQuery {
    /// The holder's USCC or citizen id.
    pub holder: String,
    /// The licence type code.
    #[serde(rename = "type")]
    pub licence_type: String,
    /// Comma-separated field names to narrow the disclosures to.
    pub fields: Option<String>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
    /// Licences per page: 1 to 100, default 20.
    pub limit: Option<u32>,
}

/// A page of a holder's licences.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LicencePage {
    /// Valid licences first, then suspended, then revoked; each group newest first.
    pub licences: Vec<LicenceView>,
    /// Pass as `?cursor=` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Licences of a holder and type (免证办), a page at a time (at most 100), valid ones first.
/// Types that need consent require `X-Consent`.
#[utoipa::path(get, path = "/v1/licences", tag = "licences",
    params(HolderQuery,
        ("X-Purpose" = String, Header, description = "Matter code and/or reason"),
        ("X-Consent" = Option<String>, Header, description = "The holder's consent token, for types that need it")),
    responses((status = 200, body = LicencePage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn licences_by_holder(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    purpose: Purpose,
    consent: ConsentHeader,
    Extension(slot): Extension<NoteSlot>,
    QueryParams(q): QueryParams<HolderQuery>,
) -> Result<(Extension<AccessNote>, Json<LicencePage>), ApiError> {
    let resource = format!("holder-query:{}", truncated(&q.licence_type));
    slot.record(&resource, &q.holder);
    let limit = page_limit(q.limit)?;
    let after = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let licence_type = gw
        .licence_service()
        .licence_type(&q.licence_type)
        .ok_or_else(|| field_error("type", "unknown licence type"))?
        .clone();
    // Decided before looking: an empty answer must not tell a department without a rule
    // whether the holder has licences of this type.
    let grant = gw.grant(&caller, &licence_type, None, &purpose)?;
    let visible = grant
        .fields(&licence_type, q.fields.as_deref())
        .map_err(access_error)?;
    if grant.needs_consent(&licence_type) {
        gw.require_consent(&caller, &consent, Some(&q.holder), &licence_type, &purpose)
            .await?;
    }
    // The issuer of the type sees its own licences whole, and only those: the store leaves
    // out the other issuers' so that the page's cursor names none of theirs either.
    let issuer = grant.is_issuer().then(|| caller.department.clone());
    let (holder, t) = (q.holder.clone(), q.licence_type.clone());
    let page = gw
        .licences(move |svc, _| {
            svc.licences_by_holder(&holder, &t, issuer.as_ref(), after.as_ref(), limit)
        })
        .await?;
    let mut out = Vec::with_capacity(page.licences.len());
    for record in page.licences {
        let credential = gw
            .licence_service()
            .verification()
            .present(&record, &|n| visible.contains(n))?;
        out.push(view(&record, credential, grant.is_issuer()));
    }
    let note = AccessNote {
        resource: Some(resource),
        holder: Some(q.holder),
    };
    Ok((
        Extension(note),
        Json(LicencePage {
            licences: out,
            next_cursor: page.next.as_ref().map(format_cursor),
        }),
    ))
}

/// The cursor of a holder page: `<rank>.<issued_at>.<licence id>`.
fn format_cursor(o: &cert_store::store::HolderOrder) -> String {
    format!("{}.{}.{}", o.rank, o.issued_at, o.id)
}

fn parse_cursor(text: &str) -> Result<cert_store::store::HolderOrder, ApiError> {
    let bad = || field_error("cursor", "not a cursor this gateway gave");
    let mut parts = text.splitn(3, '.');
    let rank: u8 = parts
        .next()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r < 3)
        .ok_or_else(bad)?;
    let issued_at: i64 = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    let id = parts
        .next()
        .filter(|id| id.parse::<LicenceId>().is_ok())
        .ok_or_else(bad)?;
    Ok(cert_store::store::HolderOrder {
        rank,
        issued_at,
        id: id.to_owned(),
    })
}

/// A presented credential to verify.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// The SD-JWT VC as presented (`<jwt>~<disclosure>~…~`).
    pub credential: String,
}

/// The verdict and every check.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyView {
    /// True when every check passed.
    pub valid: bool,
    /// Each check: `check`, `ok`, `detail`.
    #[schema(value_type = Vec<Object>)]
    pub checks: Vec<cert_store::service::Check>,
    /// The licence identifier, when readable.
    pub licence_id: Option<String>,
    /// The licence status, when reached.
    pub status: Option<String>,
    /// The signed plain claims.
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
    /// The disclosed fields.
    #[schema(value_type = Object)]
    pub disclosed: Map<String, Value>,
}

impl From<VerifyReport> for VerifyView {
    fn from(r: VerifyReport) -> Self {
        VerifyView {
            valid: r.valid,
            checks: r.checks,
            licence_id: r.licence_id,
            status: r.status.map(|s| s.as_str().to_owned()),
            claims: r.claims,
            disclosed: r.disclosed,
        }
    }
}

/// Verifies a presented licence: signature, seal certificate chain, seal not revoked, `typ`,
/// `vct`, time window, status and every disclosure's digest.
#[utoipa::path(post, path = "/v1/licences/verify", tag = "licences", request_body = VerifyBody,
    responses((status = 200, body = VerifyView), (status = 400, body = ErrorBody),
        (status = 503, description = "The licence store cannot be reached (CG-STO-001)", body = ErrorBody)))]
pub async fn verify(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
    JsonBody(body): JsonBody<VerifyBody>,
) -> Result<Json<VerifyView>, ApiError> {
    // With the seal and the licence in memory the verdict needs no database read, and is
    // reached here, without a hop to the blocking pool.
    if let Some(report) = gw
        .licence_service()
        .verification()
        .verify_in_memory(&body.credential, crate::state::unix_now())
    {
        return Ok(Json(report.into()));
    }
    let report = gw
        .licences(move |svc, now| {
            let report = svc.verification().verify(&body.credential, now);
            if report.store_unavailable {
                // Unknown is not invalid: say the store is down rather than "not valid".
                return Err(cert_store::service::ServiceError::Store(
                    cert_store::store::StoreError::Database(
                        "store unavailable during verification".into(),
                    ),
                ));
            }
            Ok(report)
        })
        .await?;
    Ok(Json(report.into()))
}

/// Field values to check against a licence.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// `{field: value}` pairs.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

/// Match / no-match per field.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckView {
    /// The licence checked.
    pub licence_id: String,
    /// Whether the licence is valid now.
    pub licence_valid: bool,
    /// `match` or `no-match` per field.
    #[schema(value_type = Object)]
    pub results: Map<String, Value>,
}

/// Field check (核验): answers match / no-match per field and discloses nothing else.
#[utoipa::path(post, path = "/v1/licences/{id}/check", tag = "licences", request_body = CheckBody,
    params(("id" = String, Path, description = "Licence identifier"),
        ("X-Purpose" = String, Header, description = "Matter code and/or reason")),
    responses((status = 200, body = CheckView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn check(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    purpose: Purpose,
    consent: ConsentHeader,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(body): JsonBody<CheckBody>,
) -> Result<(Extension<AccessNote>, Json<CheckView>), ApiError> {
    let id = parse_licence_id(&id)?;
    let decided = gw.grant_for_id(&caller, &id, &purpose);
    let record = gw.noted_licence(&id, &slot).await;
    let (grant, licence_type) = decided?;
    let visible = grant.fields(&licence_type, None).map_err(access_error)?;
    let record = gw
        .consented(&caller, &grant, &licence_type, &consent, &purpose, record)
        .await?;
    let note = noted(&record);
    if let Some(name) = body.fields.keys().find(|n| !visible.contains(n.as_str())) {
        return Err(ApiError::new(
            Code::NoAccessRule,
            format!(
                "no access rule lets this department check `{}`",
                truncated(name)
            ),
        ));
    }
    let fields = body.fields;
    let (licence_id, valid, results) = gw
        .licences(move |svc, now| {
            let results = svc.verification().check_fields(&record, &fields)?;
            let valid = record.status == LicenceStatus::Valid
                && record.not_before <= now
                && now < record.expires_at;
            Ok((record.id.to_string(), valid, results))
        })
        .await?;
    Ok((
        note,
        Json(CheckView {
            licence_id,
            licence_valid: valid,
            results: results
                .into_iter()
                .map(|(k, ok)| {
                    (
                        k,
                        Value::String(if ok { "match" } else { "no-match" }.into()),
                    )
                })
                .collect(),
        }),
    ))
}

/// Refuses a caller that is not an issuer, or not the issuer the identifier `id` names:
/// decided before the licence is looked up, so a refusal says nothing about whether it exists.
fn named_issuer_only(caller: &Caller, id: &str) -> Result<(), ApiError> {
    require(caller, Role::Issuer)?;
    let parsed: LicenceId = id.parse().map_err(|e| field_error("id", e))?;
    if parsed.issuer() != &caller.department {
        return Err(ApiError::new(
            Code::LicenceForbidden,
            "only the licence's issuer may change it",
        ));
    }
    Ok(())
}

async fn lifecycle(
    gw: Arc<Gateway>,
    caller: Caller,
    slot: NoteSlot,
    id: String,
    reason: String,
    action: Lifecycle,
) -> Result<(Extension<AccessNote>, Json<LicenceView>), ApiError> {
    named_issuer_only(&caller, &id)?;
    let looked_up = id.clone();
    let before = gw.licences(move |svc, _| svc.licence(&looked_up)).await?;
    slot.record(before.id.as_str(), before.holder.as_str());
    let record = gw
        .licences(move |svc, _| {
            svc.issuance()
                .change_status(&id, &caller.department, action, &reason)
        })
        .await?;
    gw.invalidate(licence_changed(&record)).await;
    let credential = record.sd_jwt.clone();
    Ok((noted(&record), Json(view(&record, credential, true))))
}

/// Suspends a licence (its issuer only).
#[utoipa::path(post, path = "/v1/licences/{id}/suspend", tag = "licences", request_body = Reason,
    params(("id" = String, Path, description = "Licence identifier")),
    responses((status = 200, body = LicenceView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn suspend(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(b): JsonBody<Reason>,
) -> Result<(Extension<AccessNote>, Json<LicenceView>), ApiError> {
    lifecycle(gw, caller, slot, id, b.reason, Lifecycle::Suspend).await
}

/// Resumes a suspended licence (its issuer only).
#[utoipa::path(post, path = "/v1/licences/{id}/resume", tag = "licences", request_body = Reason,
    params(("id" = String, Path, description = "Licence identifier")),
    responses((status = 200, body = LicenceView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(b): JsonBody<Reason>,
) -> Result<(Extension<AccessNote>, Json<LicenceView>), ApiError> {
    lifecycle(gw, caller, slot, id, b.reason, Lifecycle::Resume).await
}

/// Revokes a licence for good (its issuer only; a reason is required).
#[utoipa::path(post, path = "/v1/licences/{id}/revoke", tag = "licences", request_body = Reason,
    params(("id" = String, Path, description = "Licence identifier")),
    responses((status = 200, body = LicenceView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(b): JsonBody<Reason>,
) -> Result<(Extension<AccessNote>, Json<LicenceView>), ApiError> {
    lifecycle(gw, caller, slot, id, b.reason, Lifecycle::Revoke).await
}

/// A renewal.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    /// New field values; default the old licence's.
    #[schema(value_type = Option<Object>)]
    pub fields: Option<Map<String, Value>>,
    /// New end of validity (Unix seconds); default now + the type's validity.
    pub valid_until: Option<i64>,
}

/// Renews a licence: a new identifier (next version) linked to the old one, which is revoked.
#[utoipa::path(post, path = "/v1/licences/{id}/renew", tag = "licences", request_body = RenewBody,
    params(("id" = String, Path, description = "Licence identifier")),
    responses((status = 201, body = LicenceView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn renew(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(b): JsonBody<RenewBody>,
) -> Result<(StatusCode, Extension<AccessNote>, Json<LicenceView>), ApiError> {
    named_issuer_only(&caller, &id)?;
    let looked_up = id.clone();
    if let Ok(before) = gw.licences(move |svc, _| svc.licence(&looked_up)).await {
        slot.record(before.id.as_str(), before.holder.as_str());
    }
    let record = gw
        .licences(move |svc, now| {
            svc.issuance()
                .renew(&id, &caller.department, b.fields, b.valid_until, now)
        })
        .await?;
    gw.invalidate(licence_changed(&record)).await;
    let credential = record.sd_jwt.clone();
    Ok((
        StatusCode::CREATED,
        noted(&record),
        Json(view(&record, credential, true)),
    ))
}

/// A signed Token Status List (`application/statuslist+jwt`): 2 bits per licence,
/// valid / revoked / suspended.
#[utoipa::path(get, path = "/v1/status-lists/{n}", tag = "licences",
    params(("n" = u32, Path, description = "Status list number")),
    responses((status = 200, description = "statuslist+jwt", content_type = "application/statuslist+jwt"), (status = 404, body = ErrorBody)))]
pub async fn status_list(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    let n: u32 = n
        .parse()
        .map_err(|_| field_error("n", "a status list number is a non-negative integer"))?;
    let token = gw
        .licences(move |svc, now| svc.issuance().status_list_token(n, now))
        .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/statuslist+jwt")],
        token,
    )
        .into_response())
}

// ---- consents and show-codes ----

/// A holder's consent, created by a city app acting for the holder.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    /// The holder's USCC or citizen id.
    pub holder_id: String,
    /// The department allowed to query.
    pub department: String,
    /// Licence types covered.
    pub licence_types: Vec<String>,
    /// The purpose consented to.
    pub purpose: String,
    /// Validity in seconds (at most 86400).
    pub ttl_seconds: i64,
}

/// A created consent and its token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsentView {
    /// Consent id.
    pub id: String,
    /// The token the department sends as `X-Consent`.
    pub token: String,
    /// End of validity (Unix seconds).
    pub expires_at: i64,
}

/// Records a holder's consent (用证授权) and returns its token.
#[utoipa::path(post, path = "/v1/consents", tag = "holders", request_body = ConsentBody,
    responses((status = 201, body = ConsentView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_consent(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    acting_for: HolderHeader,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(b): JsonBody<ConsentBody>,
) -> Result<(StatusCode, Json<ConsentView>), ApiError> {
    require(&caller, Role::HolderApp)?;
    slot.record("consent:new", &b.holder_id);
    acting_for.require(&b.holder_id)?;
    let department: cert_store::Uscc = b
        .department
        .parse()
        .map_err(|e| field_error("department", e))?;
    if gw.live().departments.get(&department).is_none() {
        return Err(field_error("department", "not in the department table"));
    }
    let (record, token) = gw
        .licences(move |svc, now| {
            svc.holders().create_consent(
                &caller.department,
                &b.holder_id,
                &department,
                &b.licence_types,
                &b.purpose,
                b.ttl_seconds,
                now,
            )
        })
        .await?;
    slot.record(&format!("consent:{}", record.id), &record.holder);
    Ok((
        StatusCode::CREATED,
        Json(ConsentView {
            id: record.id,
            token,
            expires_at: record.expires_at,
        }),
    ))
}

/// Revokes a consent (the app that created it only).
#[utoipa::path(post, path = "/v1/consents/{id}/revoke", tag = "holders",
    params(("id" = String, Path, description = "Consent id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_consent(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    Extension(slot): Extension<NoteSlot>,
) -> Result<StatusCode, ApiError> {
    require(&caller, Role::HolderApp)?;
    let holder = gw
        .licences(move |svc, now| svc.holders().revoke_consent(&id, &caller.department, now))
        .await?;
    slot.record(&format!("consent:{}", holder.0), &holder.1);
    Ok(StatusCode::NO_CONTENT)
}

/// A request for a show-code.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShowCodeBody {
    /// The licence to show.
    pub licence_id: String,
}

/// A one-use show-code.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShowCodeView {
    /// The code (put it in the QR code).
    pub code: String,
    /// End of validity (Unix seconds), at most 5 minutes away.
    pub expires_at: i64,
}

/// Creates a one-use show-code for a licence (一码亮证), valid 5 minutes: the holder app, for
/// the holder it names in `X-Holder`, and only for that holder's licences.
#[utoipa::path(post, path = "/v1/show-codes", tag = "holders", request_body = ShowCodeBody,
    params(("X-Holder" = String, Header, description = "The holder the app acts for")),
    responses((status = 201, body = ShowCodeView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_show_code(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    acting_for: HolderHeader,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(b): JsonBody<ShowCodeBody>,
) -> Result<(StatusCode, Extension<AccessNote>, Json<ShowCodeView>), ApiError> {
    require(&caller, Role::HolderApp)?;
    let holder = acting_for.required()?;
    slot.record("show-code:new", holder.as_str());
    let record = gw
        .licences(move |svc, _| svc.licence(&b.licence_id))
        .await?;
    slot.record(record.id.as_str(), record.holder.as_str());
    acting_for.require(record.holder.as_str())?;
    let licence_id = record.id.clone();
    let (code, expires_at) = gw
        .licences(move |svc, now| {
            svc.holders()
                .create_show_code(&caller.department, licence_id.as_str(), now)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        noted(&record),
        Json(ShowCodeView { code, expires_at }),
    ))
}

/// A show-code to redeem.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemBody {
    /// The scanned code.
    pub code: String,
}

/// Redeems a show-code once (consumer or issuer, with `X-Purpose`): the licence with the
/// disclosures the redeemer's access rules allow. The holder showing the code is its consent
/// for this one reading. A refused redemption (no rule, another purpose) leaves the code
/// usable by the department it was meant for.
#[utoipa::path(post, path = "/v1/show-codes/redeem", tag = "holders", request_body = RedeemBody,
    params(("X-Purpose" = String, Header, description = "Matter code and/or reason")),
    responses((status = 200, body = LicenceView), (status = 403, body = ErrorBody)))]
pub async fn redeem_show_code(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    purpose: Purpose,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(b): JsonBody<RedeemBody>,
) -> Result<(Extension<AccessNote>, Json<LicenceView>), ApiError> {
    // A shown licence is still read under the reader's access rules and stated purpose,
    // decided before the code is used up.
    if !caller.has(Role::Consumer) && !caller.has(Role::Issuer) {
        return Err(ApiError::missing_role(Role::Consumer));
    }
    let code = b.code.clone();
    let shown = gw
        .licences(move |svc, now| svc.holders().shown_licence(&code, now))
        .await?;
    slot.record(shown.id.as_str(), shown.holder.as_str());
    let licence_type = gw
        .licence_service()
        .licence_type(shown.type_code.as_str())
        .ok_or_else(ApiError::internal)?
        .clone();
    let grant = gw.grant(&caller, &licence_type, Some(&shown.issuer), &purpose)?;
    let visible = grant.fields(&licence_type, None).map_err(access_error)?;
    let redeemer = caller.department.clone();
    let record = gw
        .licences(move |svc, now| svc.holders().redeem_show_code(&b.code, &redeemer, now))
        .await?;
    let credential = gw
        .licence_service()
        .verification()
        .present(&record, &|n| visible.contains(n))?;
    Ok((
        noted(&record),
        Json(view(&record, credential, grant.is_issuer())),
    ))
}

/// The access-log note of a request that touched `record`.
/// A licence identifier from the path; one that does not parse is not looked up.
fn parse_licence_id(id: &str) -> Result<LicenceId, ApiError> {
    id.parse()
        .map_err(|_| field_error("id", "not a licence identifier"))
}

fn noted(record: &LicenceRecord) -> Extension<AccessNote> {
    Extension(AccessNote {
        resource: Some(record.id.to_string()),
        holder: Some(record.holder.to_string()),
    })
}

fn access_error(e: AccessError) -> ApiError {
    match e {
        AccessError::UnknownField { .. } => field_error("fields", e),
        other => ApiError::new(Code::NoAccessRule, other.to_string()),
    }
}

impl Gateway {
    /// Issues a licence without a thread waiting for its commit: the checks, identifier and
    /// signature are made here when they need nothing but memory (otherwise on the blocking
    /// pool), then the insert is queued to the store's writer thread (one commit for every
    /// licence waiting) and awaited. A store without a writer thread of its own (PostgreSQL)
    /// issues on the blocking pool from start to end.
    async fn issue_licence(
        &self,
        issuer: cert_store::id::Uscc,
        req: IssueRequest,
    ) -> Result<LicenceRecord, ApiError> {
        if !self.licence_service().issuance().queues_inserts() {
            return self
                .licences(move |svc, now| svc.issuance().issue(&issuer, &req, now))
                .await;
        }
        let (issuer, req) = (Arc::new(issuer), Arc::new(req));
        for _ in 0..cert_store::service::ISSUE_ATTEMPTS {
            let in_memory = self.licence_service().issuance().prepare_in_memory(
                &issuer,
                &req,
                crate::state::unix_now(),
            )?;
            let prepared = match in_memory {
                Some(prepared) => prepared,
                None => {
                    let (i, r) = (issuer.clone(), req.clone());
                    self.licences(move |svc, now| svc.issuance().prepare(&i, &r, now))
                        .await?
                }
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.licence_service()
                .issuance()
                .queue(prepared, move |prepared, stored| {
                    // The issuance awaits below; if its client has gone, so has the receiver.
                    let _ = tx.send((prepared, stored));
                });
            let Ok((prepared, stored)) = rx.await else {
                tracing::error!("the licence writer dropped an issuance");
                return Err(ApiError::internal());
            };
            // Only a conflict may need a read of the store to settle.
            let settled = if matches!(stored, Err(StoreError::Conflict(_))) {
                self.licences(move |svc, _| svc.issuance().settle(prepared, stored))
                    .await?
            } else {
                self.licence_service().issuance().settle(prepared, stored)?
            };
            if let Settled::Issued(record) = settled {
                return Ok(*record);
            }
        }
        tracing::error!("no free status-list slot found");
        Err(ApiError::internal())
    }

    /// Decides whether `caller` may read licences of `licence_type` for `purpose`, before any
    /// lookup (see [`cert_store::access`]).
    fn grant(
        &self,
        caller: &Caller,
        licence_type: &LicenceType,
        issuer: Option<&cert_store::Uscc>,
        purpose: &Purpose,
    ) -> Result<Grant, ApiError> {
        let reader = Reader {
            department: &caller.department,
            consumer: caller.has(Role::Consumer),
            issuer: caller.has(Role::Issuer),
        };
        cert_store::access::decide(
            reader,
            &self.live().access_rules,
            licence_type,
            issuer,
            purpose.matter.as_deref(),
        )
        .map_err(access_error)
    }

    /// The grant for one licence named by `id`: its type and issuer are read from the
    /// identifier, so the decision needs no lookup.
    fn grant_for_id(
        &self,
        caller: &Caller,
        parsed: &LicenceId,
        purpose: &Purpose,
    ) -> Result<(Grant, Arc<LicenceType>), ApiError> {
        let licence_type = self
            .licence_service()
            .licence_type(parsed.type_code().as_str())
            .ok_or_else(|| {
                ApiError::new(
                    Code::NoAccessRule,
                    "no access rule lets this department read this licence type",
                )
            })?
            .clone();
        let grant = self.grant(caller, &licence_type, Some(parsed.issuer()), purpose)?;
        Ok((grant, licence_type))
    }

    /// The licence `id`, noted in the request's leaf (its identifier and holder) whether or
    /// not the caller may see it: a refused attempt is recorded against the licence and shows
    /// in its holder's view, while the caller's answer does not depend on the lookup.
    async fn noted_licence(
        &self,
        id: &LicenceId,
        slot: &NoteSlot,
    ) -> Result<Arc<LicenceRecord>, ApiError> {
        // A record in memory is answered here; only a miss goes to the blocking pool.
        let record = match self.licence_service().licence_in_memory(id.as_str()) {
            Some(record) => record,
            None => {
                let id = id.as_str().to_owned();
                Arc::new(self.licences(move |svc, _| svc.licence(&id)).await?)
            }
        };
        slot.record(record.id.as_str(), record.holder.as_str());
        Ok(record)
    }

    /// The licence a read looked up (`record`), once the holder's consent is checked when the
    /// caller's grant needs it. Then a licence that does not exist is refused as a consent that
    /// does not cover it: only a department holding the holder's consent learns whether an
    /// identifier is in use.
    async fn consented(
        &self,
        caller: &Caller,
        grant: &Grant,
        licence_type: &LicenceType,
        consent: &ConsentHeader,
        purpose: &Purpose,
        record: Result<Arc<LicenceRecord>, ApiError>,
    ) -> Result<Arc<LicenceRecord>, ApiError> {
        if !grant.needs_consent(licence_type) {
            return record;
        }
        let holder = match &record {
            Ok(r) => Some(r.holder.as_str()),
            Err(e) if e.code == Code::LicenceNotFound => None,
            Err(e) => return Err(e.clone()),
        };
        self.require_consent(caller, consent, holder, licence_type, purpose)
            .await?;
        record
    }

    /// Refuses unless `consent` is a live consent of `holder` for the caller to read
    /// `licence_type`, given for the matter stated in `purpose`. With no holder (no licence
    /// has the identifier asked for) it is refused as another holder's consent is.
    async fn require_consent(
        &self,
        caller: &Caller,
        consent: &ConsentHeader,
        holder: Option<&str>,
        licence_type: &LicenceType,
        purpose: &Purpose,
    ) -> Result<(), ApiError> {
        let token = consent.0.clone().ok_or_else(|| {
            ApiError::new(
                Code::LicenceForbidden,
                format!(
                    "{} is disclosed only with the holder's consent: send X-Consent",
                    licence_type.name
                ),
            )
        })?;
        let (holder, department, t) = (
            holder.map(str::to_owned),
            caller.department.clone(),
            licence_type.code.to_string(),
        );
        let consent = self
            .licences(move |svc, now| {
                svc.holders()
                    .check_consent_for(&token, holder.as_deref(), &department, &t, now)
            })
            .await?;
        // The holder consented for one matter; the stated purpose must be that matter.
        if purpose.matter.as_deref() != Some(consent.purpose.as_str()) {
            return Err(ApiError::new(
                Code::LicenceForbidden,
                "the consent was given for another matter than the one stated in X-Purpose",
            ));
        }
        Ok(())
    }
}
