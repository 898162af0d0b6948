//! Thin handlers for sealing documents and verifying sealed documents (GB/T 38540-2020
//! `SES_Signature`), over `cert_store::document_seal`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cert_store::document_seal::{Document, SealVerdict};
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::error::{ApiError, Code, ErrorBody};
use crate::error::{field_error, truncated};
use crate::extract::HolderHeader;
use crate::extract::NoteSlot;
use crate::extract::{JsonBody, require};
use crate::identity::Caller;
use crate::state::Gateway;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::new()
        .routes(routes!(sign))
        .routes(routes!(verify))
        .routes(routes!(seal_cas))
        .routes(routes!(add_seal_ca))
        .routes(routes!(remove_seal_ca))
}

/// The document to seal: its bytes, or its digest with the algorithm named (`sm3` for SM2
/// seals, `sha256` for P-256 seals).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignDocument {
    /// The document, base64.
    pub document_base64: Option<String>,
    /// Or its digest, hex.
    pub digest_hex: Option<String>,
    /// The digest's algorithm: `sm3` or `sha256`.
    pub digest_alg: Option<String>,
    /// The document's name (ASCII), recorded as `propertyInfo`.
    pub name: String,
}

/// A sealed document's signature.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SealedView {
    /// The GB/T 38540 `SES_Signature`, DER, base64.
    pub ses_signature_base64: String,
    /// The same seal as a detached compact JWS (`header..signature`, `typ`
    /// `certgate-seal+jws`, `kid` the seal, `x5c` its certificate chain, `iat`), for systems
    /// that speak JOSE; its payload is `{"digest":"<base64url>","digest_alg":"sm3|sha256"}`.
    pub jws_detached: String,
    /// The digest signed, hex.
    pub data_hash_hex: String,
    /// `timeInfo`, Unix seconds.
    pub sealed_at: i64,
}

/// A sealed document to verify.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyDocument {
    /// The document, base64.
    pub document_base64: Option<String>,
    /// Or its digest, hex.
    pub digest_hex: Option<String>,
    /// The digest's algorithm: `sm3` or `sha256`.
    pub digest_alg: Option<String>,
    /// The `SES_Signature`, DER, base64 (or `jws`).
    pub ses_signature_base64: Option<String>,
    /// The detached JWS (or `ses_signature_base64`).
    pub jws: Option<String>,
}

/// One check of a sealed-document verification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SealCheckView {
    /// `format`, `document_digest`, `signature`, `signer_in_seal`, `seal_maker_signature`,
    /// `certificate_chain`, `seal_validity`, `seal_status`.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// The reason, in words.
    pub detail: String,
}

/// The verdict on a sealed document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SealVerdictView {
    /// True only when every check passed.
    pub valid: bool,
    /// The seal's id (`esID`), as the signature says.
    pub seal_id: Option<String>,
    /// The seal's name.
    pub seal_name: Option<String>,
    /// Who the seal belongs to: `uscc` and registered `name`.
    #[schema(value_type = Option<Object>)]
    pub owner: Option<cert_store::document_seal::SealOwnerFacts>,
    /// The authority that made the seal (the seal maker certificate's common name).
    pub authority: Option<String>,
    /// When the document was sealed (`timeInfo`, Unix seconds).
    pub sealed_at: Option<i64>,
    /// Every check, in order.
    pub checks: Vec<SealCheckView>,
}

impl From<SealVerdict> for SealVerdictView {
    fn from(v: SealVerdict) -> Self {
        SealVerdictView {
            valid: v.valid,
            seal_id: v.seal_id,
            seal_name: v.seal_name,
            owner: v.owner,
            authority: v.authority,
            sealed_at: v.sealed_at,
            checks: v
                .checks
                .into_iter()
                .map(|c| SealCheckView {
                    check: c.check.to_owned(),
                    ok: c.ok,
                    detail: c.detail,
                })
                .collect(),
        }
    }
}

/// The document or digest of a request, decoded.
enum Input {
    Bytes(Vec<u8>),
    Digest(String, Vec<u8>),
}

impl Input {
    fn read(
        document: Option<String>,
        digest: Option<String>,
        alg: Option<String>,
    ) -> Result<Input, ApiError> {
        match (document, digest, alg) {
            (Some(d), None, None) => B64
                .decode(d.trim())
                .map(Input::Bytes)
                .map_err(|_| field_error("document_base64", "not base64")),
            (None, Some(h), Some(a)) => hex::decode(h.trim())
                .map(|v| Input::Digest(a, v))
                .map_err(|_| field_error("digest_hex", "not hex")),
            (None, Some(_), None) => Err(field_error("digest_alg", "required with digest_hex")),
            _ => Err(field_error(
                "document_base64",
                "give the document, or digest_hex with digest_alg",
            )),
        }
    }

    fn document(&self) -> Document<'_> {
        match self {
            Input::Bytes(b) => Document::Bytes(b),
            Input::Digest(alg, v) => Document::Digest {
                alg,
                value: v.clone(),
            },
        }
    }
}

/// Seals a document with one of the calling department's seals, or — for the holder app with
/// `X-Holder: <USCC>` — one of that enterprise's seals: a detached GB/T 38540-2020
/// `SES_Signature` (SM2 with SM3, or ECDSA P-256 with SHA-256, as the seal is) and the same
/// as a detached JWS. Nobody signs with a seal that is not theirs (403).
#[utoipa::path(post, path = "/v1/seals/{id}/sign", tag = "seals", request_body = SignDocument,
    params(("id" = String, Path, description = "Seal id"),
        ("X-Holder" = Option<String>, Header, description = "The enterprise the holder app acts for")),
    responses((status = 200, body = SealedView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn sign(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    acting_for: HolderHeader,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(body): JsonBody<SignDocument>,
) -> Result<Json<SealedView>, ApiError> {
    let resource = format!("seal:{}", truncated(&id));
    slot.record_resource(&resource);
    // The holder app acts for the enterprise it names, and signs only with that enterprise's
    // seals; a department signs with its own seals, as itself.
    let signer = match acting_for.holder() {
        None => {
            require(&caller, Role::Issuer)?;
            caller.department.clone()
        }
        Some(holder) => {
            require(&caller, Role::HolderApp)?;
            slot.record(&resource, holder.as_str());
            let enterprise = holder
                .as_uscc()
                .filter(|u| u.is_market_entity())
                .ok_or_else(|| {
                    field_error(
                        "X-Holder",
                        "the holder app seals for a market entity (a USCC starting with 9)",
                    )
                })?;
            if gw.live().departments.get(enterprise).is_some() {
                return Err(ApiError::new(
                    Code::LicenceForbidden,
                    "X-Holder names a department: a department's seal is used by that department alone",
                ));
            }
            enterprise.clone()
        }
    };
    let input = Input::read(body.document_base64, body.digest_hex, body.digest_alg)?;
    let name = body.name;
    let sealed = gw
        .licences(move |svc, now| {
            svc.seals()
                .seal_document(&id, &signer, &input.document(), &name, now)
        })
        .await?;
    Ok(Json(SealedView {
        ses_signature_base64: B64.encode(&sealed.ses_signature),
        jws_detached: sealed.jws,
        data_hash_hex: hex::encode(&sealed.data_hash),
        sealed_at: sealed.time,
    }))
}

/// Verifies a sealed document: the verdict and every check (digest, signature, signer in the
/// seal, seal maker's signature, certificate chain, seal validity and revocation at the time
/// of sealing), with the seal and the authority that made it.
#[utoipa::path(post, path = "/v1/seals/verify", tag = "seals", request_body = VerifyDocument,
    responses((status = 200, body = SealVerdictView), (status = 400, body = ErrorBody)))]
pub async fn verify(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
    Extension(slot): Extension<NoteSlot>,
    JsonBody(body): JsonBody<VerifyDocument>,
) -> Result<Json<SealVerdictView>, ApiError> {
    let input = Input::read(body.document_base64, body.digest_hex, body.digest_alg)?;
    let verdict = match (body.ses_signature_base64, body.jws) {
        (Some(ses), None) => {
            let der = B64
                .decode(ses.trim())
                .map_err(|_| field_error("ses_signature_base64", "not base64"))?;
            gw.licences(move |svc, _| svc.seals().verify_sealed_document(&input.document(), &der))
                .await?
        }
        (None, Some(jws)) => {
            gw.licences(move |svc, _| svc.seals().verify_sealed_jws(&input.document(), &jws))
                .await?
        }
        _ => {
            return Err(field_error(
                "ses_signature_base64",
                "give the signature in one form: ses_signature_base64 or jws",
            ));
        }
    };
    if let Some(seal) = &verdict.seal_id {
        slot.record_resource(&format!("seal:{}", truncated(seal)));
    }
    Ok(Json(verdict.into()))
}

/// A seal CA of another region's seal system to trust (电子印章互通互认).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSealCa {
    /// The authority, e.g. 广东省电子印章系统.
    pub name: String,
    /// Its region (GB/T 2260 code or name).
    pub region: String,
    /// Its self-signed CA certificate (PEM).
    pub certificate_pem: String,
}

/// A trusted seal CA.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SealCaView {
    /// Its id.
    pub id: String,
    /// The authority.
    pub name: String,
    /// Its region.
    pub region: String,
    /// The CA certificate (PEM).
    pub certificate_pem: String,
    /// When it was added (Unix seconds).
    pub added_at: i64,
    /// From when it is no longer trusted (Unix seconds), if removed.
    pub removed_at: Option<i64>,
}

impl From<cert_store::licence::TrustedSealCa> for SealCaView {
    fn from(c: cert_store::licence::TrustedSealCa) -> Self {
        SealCaView {
            id: c.id,
            name: c.name,
            region: c.region,
            certificate_pem: c.certificate_pem,
            added_at: c.added_at,
            removed_at: c.removed_at,
        }
    }
}

/// Adds another region's seal CA to the trust list: seals it made verify here, naming it.
#[utoipa::path(post, path = "/v1/admin/seal-cas", tag = "admin", request_body = AddSealCa,
    responses((status = 201, body = SealCaView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_seal_ca(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    JsonBody(body): JsonBody<AddSealCa>,
) -> Result<(http::StatusCode, Json<SealCaView>), ApiError> {
    crate::extract::require(&caller, crate::config::Role::Admin)?;
    let ca = gw
        .licences(move |svc, now| {
            svc.seals()
                .add_seal_ca(&body.certificate_pem, &body.name, &body.region, now)
        })
        .await?;
    Ok((http::StatusCode::CREATED, Json(ca.into())))
}

/// Removes a seal CA from the trust list from now on: its seals used after now are refused,
/// those used before still verify. The entry stays, with the time of removal.
#[utoipa::path(delete, path = "/v1/admin/seal-cas/{id}", tag = "admin",
    params(("id" = String, Path, description = "Trusted seal CA id")),
    responses((status = 200, body = SealCaView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_seal_ca(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SealCaView>, ApiError> {
    crate::extract::require(&caller, crate::config::Role::Admin)?;
    let ca = gw
        .licences(move |svc, now| svc.seals().remove_seal_ca(&id, now))
        .await?;
    Ok(Json(ca.into()))
}

/// The trust list of other regions' seal CAs, removed entries included.
#[utoipa::path(get, path = "/v1/seal-cas", tag = "seals",
    responses((status = 200, body = [SealCaView])))]
pub async fn seal_cas(
    State(gw): State<Arc<Gateway>>,
    _caller: Caller,
) -> Result<Json<Vec<SealCaView>>, ApiError> {
    let cas = gw.licences(move |svc, _| svc.seals().seal_cas()).await?;
    Ok(Json(cas.into_iter().map(SealCaView::from).collect()))
}
