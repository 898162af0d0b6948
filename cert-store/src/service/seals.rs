//! Seals: making, listing and revoking them, the keys that verify them, and who may.

use super::*;

/// The seals part of a [`LicenceService`] (`svc.seals()`).
#[derive(Debug, Clone, Copy)]
pub struct Seals<'a> {
    pub(super) svc: &'a LicenceService,
}

impl Seals<'_> {
    /// The JWK set of the ES256 keys: the gateway's signing key (status lists, consents,
    /// proofs) and the unrevoked ES256 seals of the departments that issue licences (at most
    /// [`MAX_SEAL_PAGE`] each). Enterprises' seals are not listed: their signatures carry
    /// their certificates (`x5c`).
    pub fn jwks(&self) -> Result<Value, ServiceError> {
        let mut keys = Vec::new();
        let mut gateway_key = self.svc.signing_key.public_key().jwk();
        add_jwk_fields(&mut gateway_key, &self.svc.signing_kid, "gateway");
        keys.push(gateway_key);
        let issuers: std::collections::BTreeSet<&Uscc> = self
            .svc
            .types
            .values()
            .flat_map(|t| t.issuers.iter())
            .collect();
        let mut seals = Vec::new();
        for issuer in issuers {
            seals.extend(self.svc.store.seals(issuer, None, MAX_SEAL_PAGE)?);
        }
        for seal in seals {
            if seal.alg != JwsAlg::Es256 || seal.revoked_at.is_some() {
                continue;
            }
            let cert = X509::from_pem(seal.certificate_pem.as_bytes())
                .map_err(|e| CryptoError::BadKey(e.to_string()))?;
            let mut jwk = PublicKey::from_certificate(&cert)?.jwk();
            add_jwk_fields(&mut jwk, &seal.id, "seal");
            keys.push(jwk);
        }
        Ok(json!({ "keys": keys }))
    }

    /// Creates a seal for `owner` with a new key pair and a seal certificate valid ten years,
    /// named after its owner (see [`LicenceService::create_seal_valid_for`]).
    pub fn create_seal(
        &self,
        owner: SealOwner<'_>,
        seal_type: &str,
        alg: JwsAlg,
        picture: Option<Vec<u8>>,
        now: i64,
    ) -> Result<SealRecord, ServiceError> {
        self.create_seal_valid_for(owner, seal_type, None, alg, picture, 3650, now)
    }

    /// Creates a seal for `owner` valid `days` days (1 to 3650) from now. Its name is the
    /// owner's registered name followed by the seal kind (`北京市朝阳区市场监督管理局公章`,
    /// `小米科技有限责任公司合同专用章`); a `name` given must be exactly that. An enterprise's
    /// seal needs a valid business licence in the register, whose holder name it takes.
    #[allow(clippy::too_many_arguments)]
    pub fn create_seal_valid_for(
        &self,
        owner: SealOwner<'_>,
        seal_type: &str,
        name: Option<&str>,
        alg: JwsAlg,
        picture: Option<Vec<u8>>,
        days: u32,
        now: i64,
    ) -> Result<SealRecord, ServiceError> {
        if !(1..=3650).contains(&days) {
            return Err(invalid("valid_days", "must be between 1 and 3650"));
        }
        let seal_type = seal_kind(seal_type)?;
        let owner_name = match owner {
            SealOwner::Department { full_name, .. } => crate::text::name(full_name, 100)
                .map_err(|e| invalid("owner", format!("the department's full name {e}")))?
                .to_owned(),
            SealOwner::Enterprise { id, made_by } => {
                if !self.is_registrar(made_by) {
                    return Err(ServiceError::Forbidden(
                        "only a department that issues business licences makes enterprises' seals"
                            .into(),
                    ));
                }
                let (name, registrar) = self.registration(id, now)?;
                if &registrar != made_by {
                    return Err(ServiceError::Forbidden(
                        "only the enterprise's own registrar (the issuer of its business licence) makes its seals"
                            .into(),
                    ));
                }
                name
            }
        };
        let expected = format!("{owner_name}{seal_type}");
        if let Some(given) = name
            && given.trim() != expected
        {
            return Err(invalid(
                "name",
                format!(
                    "must be `{expected}`: the owner's registered name followed by the seal kind"
                ),
            ));
        }
        let name = expected.as_str();
        if name.chars().count() > 120 {
            return Err(invalid("name", "must be at most 120 characters"));
        }
        let owner = owner.id();
        if let Some(p) = &picture {
            if !p.starts_with(b"\x89PNG\r\n\x1a\n") {
                return Err(invalid("picture", "must be a PNG image"));
            }
            if p.len() > 512 * 1024 {
                return Err(invalid("picture", "must be at most 512 KiB"));
            }
        }
        let key = SealKey::generate(alg)?;
        let at =
            |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| invalid("now", e));
        let not_after = now + i64::from(days) * 86400;
        let cert = self.svc.seal_ca.issue_seal_certificate(
            key.public_key(),
            owner,
            name,
            at(now - 3600)?,
            at(not_after)?,
        )?;
        let id = format!("seal-{}", hex::encode(crate::crypto::random_bytes::<8>()?));
        let certificate_pem = String::from_utf8(
            cert.to_pem()
                .map_err(|e| CryptoError::Openssl(e.to_string()))?,
        )
        .map_err(|e| CryptoError::Openssl(e.to_string()))?;
        let encrypted_key = self.svc.kek.encrypt(&key.to_pkcs8_der()?, id.as_bytes())?;
        let record = SealRecord {
            picture_sha256: picture.as_ref().map(|p| hex::encode(Sha256::digest(p))),
            picture,
            id,
            owner: owner.clone(),
            seal_type: seal_type.to_owned(),
            name: name.to_owned(),
            alg,
            certificate_pem,
            encrypted_key,
            created_at: now,
            not_after,
            revoked_at: None,
            revocation_reason: None,
            owner_name: Some(owner_name),
        };
        self.svc.store.insert_seal(&record)?;
        Ok(record)
    }

    /// True when `department` issues the business licence (registers market entities): it
    /// makes and revokes enterprises' seals.
    pub fn is_registrar(&self, department: &Uscc) -> bool {
        self.svc
            .types
            .values()
            .any(|t| t.business_licence && t.issuers.contains(department))
    }

    /// The name a market entity is registered under and who registered it: the holder name
    /// and the issuer of its registering licence (see [`Seals::registrar_of_record`]).
    pub fn registration(
        &self,
        enterprise: &Uscc,
        now: i64,
    ) -> Result<(String, Uscc), ServiceError> {
        if !enterprise.is_market_entity() {
            return Err(invalid(
                "holder",
                "an enterprise's seal is made for a market entity (a USCC starting with 9)",
            ));
        }
        let licence_type = self
            .svc.types
            .values()
            .find(|t| t.business_licence)
            .ok_or_else(|| {
                ServiceError::Conflict(
                    "no licence type is marked business_licence: enterprises' seals take their name from it".into(),
                )
            })?;
        self.registering_licence(enterprise, now)?
            .and_then(|l| Some((disclosed_value(&l.sd_jwt, "holder_name")?, l.issuer)))
            .ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "{enterprise} holds no valid {} in the register: its seals are made after it is registered",
                    licence_type.name
                ))
            })
    }

    /// The department that registered a market entity, which makes and revokes its seals: the
    /// issuer of its registering licence at `now`, if it holds one in force.
    pub fn registrar_of_record(
        &self,
        enterprise: &Uscc,
        now: i64,
    ) -> Result<Option<Uscc>, ServiceError> {
        Ok(self.registering_licence(enterprise, now)?.map(|l| l.issuer))
    }

    /// True when `by` answers for the seals of market entity `enterprise` at `now`: it is the
    /// registrar of record or, when the enterprise holds no business licence in force (struck
    /// off, so its seals sign nothing), it issued one of its business licences.
    fn answers_for(&self, enterprise: &Uscc, by: &Uscc, now: i64) -> Result<bool, ServiceError> {
        if !enterprise.is_market_entity() || !self.is_registrar(by) {
            return Ok(false);
        }
        let page = self.business_licences(enterprise)?;
        Ok(match registering(&page, now) {
            Some(registering) => &registering.issuer == by,
            None => page.iter().any(|l| &l.issuer == by),
        })
    }

    /// The business licence a market entity's registration stands on: the oldest of those in
    /// force at `now`, so that a later one from another department does not take the
    /// enterprise over.
    fn registering_licence(
        &self,
        enterprise: &Uscc,
        now: i64,
    ) -> Result<Option<LicenceRecord>, ServiceError> {
        Ok(registering(&self.business_licences(enterprise)?, now).cloned())
    }

    /// A market entity's business licences: valid ones first, then suspended, then revoked,
    /// each newest first (at most [`MAX_HOLDER_PAGE`]).
    pub(crate) fn business_licences(
        &self,
        enterprise: &Uscc,
    ) -> Result<Vec<LicenceRecord>, ServiceError> {
        let Some(licence_type) = self.svc.types.values().find(|t| t.business_licence) else {
            return Ok(Vec::new());
        };
        Ok(self.svc.store.licences_by_holder(
            enterprise.as_str(),
            licence_type.code.as_str(),
            None,
            None,
            MAX_HOLDER_PAGE,
        )?)
    }

    /// Up to `limit` (at most [`MAX_SEAL_PAGE`]) seals of `owner`, newest first, after the
    /// seal `after` (the last id of the previous page).
    pub fn seals(
        &self,
        owner: &Uscc,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SealRecord>, ServiceError> {
        let after = match after {
            Some(id) => {
                let seal = self
                    .svc
                    .store
                    .seal(id)?
                    .filter(|s| &s.owner == owner)
                    .ok_or_else(|| invalid("cursor", "not a seal of this owner"))?;
                Some((seal.created_at, seal.id))
            }
            None => None,
        };
        Ok(self.svc.store.seals(
            owner,
            after.as_ref().map(|(t, id)| (*t, id.as_str())),
            limit.clamp(1, MAX_SEAL_PAGE),
        )?)
    }

    /// A seal by id.
    pub fn seal(&self, id: &str) -> Result<SealRecord, ServiceError> {
        self.svc
            .store
            .seal(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("seal {id}")))
    }

    /// Revokes one of `by`'s seals, or, when `by` registered the enterprise (the registrar of
    /// record; for an enterprise struck off, any department that issued it a business
    /// licence), an enterprise's seal. Licences and documents it signed fail verification from
    /// `now` on.
    pub fn revoke_seal(
        &self,
        id: &str,
        by: &Uscc,
        reason: &str,
        now: i64,
    ) -> Result<SealRecord, ServiceError> {
        let seal = self.seal(id)?;
        let allowed = &seal.owner == by || self.answers_for(&seal.owner, by, now)?;
        if !allowed {
            return Err(ServiceError::Forbidden(
                "only the seal's owner (or, for an enterprise's seal, the department that registered the enterprise) may revoke it"
                    .into(),
            ));
        }
        let reason = required_reason(reason)?;
        if !self.svc.store.revoke_seal(id, now, reason)? {
            return Err(ServiceError::Conflict(format!(
                "seal {id} is already revoked"
            )));
        }
        self.seal(id)
    }
}

/// Of an enterprise's business licences as [`Seals::business_licences`] gives them (valid ones
/// first, each group newest first), the one its registration stands on: the oldest in force.
fn registering(page: &[LicenceRecord], now: i64) -> Option<&LicenceRecord> {
    page.iter().rev().find(|l| in_force(l, now))
}

/// True when `licence` is valid and within its dates at `now`.
fn in_force(licence: &LicenceRecord, now: i64) -> bool {
    licence.status == LicenceStatus::Valid && licence.not_before <= now && now < licence.expires_at
}
