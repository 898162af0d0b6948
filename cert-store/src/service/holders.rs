//! What holders allow through their city apps: consents to query their licences and
//! show-codes (一码亮证).

use super::*;

/// The holders part of a [`LicenceService`] (`svc.holders()`).
#[derive(Debug, Clone, Copy)]
pub struct Holders<'a> {
    pub(super) svc: &'a LicenceService,
}

impl Holders<'_> {
    /// Records a holder's consent for `department` to query licences of `types` for
    /// `purpose`, and returns it with its token (an ES256 JWT signed by the gateway).
    #[allow(clippy::too_many_arguments)]
    pub fn create_consent(
        &self,
        app: &Uscc,
        holder: &str,
        department: &Uscc,
        types: &[String],
        purpose: &str,
        ttl_seconds: i64,
        now: i64,
    ) -> Result<(ConsentRecord, String), ServiceError> {
        let holder: HolderId = holder.parse().map_err(|e| invalid("holder_id", e))?;
        if types.is_empty() {
            return Err(invalid("licence_types", "name at least one licence type"));
        }
        for (i, t) in types.iter().enumerate() {
            if !self.svc.types.contains_key(t) {
                return Err(invalid(
                    "licence_types",
                    format!("unknown licence type `{t}`"),
                ));
            }
            // Each known type once: the list is bounded by the type table.
            if types[..i].contains(t) {
                return Err(invalid("licence_types", format!("`{t}` is named twice")));
            }
        }
        let purpose = crate::text::plain(purpose, 200).map_err(|e| invalid("purpose", e))?;
        if ttl_seconds <= 0 || ttl_seconds > MAX_CONSENT_SECONDS {
            return Err(invalid(
                "ttl_seconds",
                "must be between 1 and 86400 (24 hours)",
            ));
        }
        let record = ConsentRecord {
            id: format!(
                "consent-{}",
                hex::encode(crate::crypto::random_bytes::<12>()?)
            ),
            holder: holder.as_str().to_owned(),
            department: department.clone(),
            licence_types: types.to_vec(),
            purpose: purpose.to_owned(),
            created_by: app.clone(),
            expires_at: now + ttl_seconds,
            revoked_at: None,
        };
        self.svc.store.insert_consent(&record)?;
        let claims = json!({
            "iss": "urn:certgate:gateway",
            "jti": record.id,
            "sub": self.holder_pseudonym(holder.as_str())?,
            "aud": format!("urn:certgate:dept:{department}"),
            "licence_types": types,
            "purpose": purpose,
            "iat": now,
            "exp": record.expires_at,
        });
        let token = self.svc.sign_gateway_jwt(CONSENT_TYP, &claims)?;
        Ok((record, token))
    }

    /// A keyed pseudonym of a holder id for tokens that travel outside the gateway: HMAC-SHA256
    /// under a key derived from the gateway's signing key, so it cannot be reversed by hashing
    /// candidate ids.
    pub(super) fn holder_pseudonym(&self, holder: &str) -> Result<String, ServiceError> {
        let internal = |e: openssl::error::ErrorStack| ServiceError::Internal(e.to_string());
        let mut seed = Sha256::new();
        seed.update(b"certgate consent subject v1");
        seed.update(self.svc.signing_key.to_pkcs8_der()?.as_slice());
        let key = openssl::pkey::PKey::hmac(&seed.finalize()).map_err(internal)?;
        let mut mac = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)
            .map_err(internal)?;
        mac.update(holder.as_bytes()).map_err(internal)?;
        Ok(format!(
            "hmac:{}",
            hex::encode(mac.sign_to_vec().map_err(internal)?)
        ))
    }

    /// Checks that `token` is a live consent of `holder` for `department` to query `type_code`.
    pub fn check_consent(
        &self,
        token: &str,
        holder: &str,
        department: &Uscc,
        type_code: &str,
        now: i64,
    ) -> Result<ConsentRecord, ServiceError> {
        self.check_consent_for(token, Some(holder), department, type_code, now)
    }

    /// [`Holders::check_consent`], where `holder` is `None` when no licence has the
    /// identifier the department asked for: every check is made up to the holder's, which then
    /// fails as for another holder's licence, so the answer does not tell whether it exists.
    pub fn check_consent_for(
        &self,
        token: &str,
        holder: Option<&str>,
        department: &Uscc,
        type_code: &str,
        now: i64,
    ) -> Result<ConsentRecord, ServiceError> {
        let refused = |why: &str| ServiceError::Forbidden(format!("consent token refused: {why}"));
        let claims = self
            .svc
            .verify_gateway_jwt(token, CONSENT_TYP)
            .map_err(|why| refused(&why))?;
        if claims.get("aud").and_then(Value::as_str)
            != Some(format!("urn:certgate:dept:{department}").as_str())
        {
            return Err(refused("it was given to another department"));
        }
        let id = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let consent = self
            .svc
            .store
            .consent(id)?
            .ok_or_else(|| refused("unknown consent"))?;
        let holder: Option<HolderId> = holder
            .map(str::parse)
            .transpose()
            .map_err(|e| invalid("holder", e))?;
        if consent.revoked_at.is_some() {
            return Err(ServiceError::Forbidden(
                "the holder revoked this consent".into(),
            ));
        }
        if consent.expires_at <= now {
            return Err(ServiceError::Forbidden("the consent has expired".into()));
        }
        if &consent.department != department {
            return Err(ServiceError::Forbidden(
                "the consent was given to another department".into(),
            ));
        }
        if holder.as_ref().is_none_or(|h| consent.holder != h.as_str()) {
            return Err(ServiceError::Forbidden(
                "the consent was given by another holder".into(),
            ));
        }
        if !consent.licence_types.iter().any(|t| t == type_code) {
            return Err(ServiceError::Forbidden(
                "the consent does not cover this licence type".into(),
            ));
        }
        Ok(consent)
    }

    /// Revokes a consent; only the app that created it may. Returns its id and holder.
    pub fn revoke_consent(
        &self,
        id: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<(String, String), ServiceError> {
        let consent = self
            .svc
            .store
            .consent(id)?
            .ok_or_else(|| ServiceError::NotFound(format!("consent {id}")))?;
        if &consent.created_by != by {
            return Err(ServiceError::Forbidden(
                "only the app that created a consent may revoke it".into(),
            ));
        }
        if !self.svc.store.revoke_consent(id, now)? {
            return Err(ServiceError::Conflict(
                "the consent is already revoked".into(),
            ));
        }
        Ok((consent.id, consent.holder))
    }

    /// Creates a one-use show-code for a licence (valid 5 minutes); returns the code.
    pub fn create_show_code(
        &self,
        app: &Uscc,
        licence_id: &str,
        now: i64,
    ) -> Result<(String, i64), ServiceError> {
        let licence = self.svc.licence(licence_id)?;
        if licence.status != LicenceStatus::Valid {
            return Err(ServiceError::Conflict(format!(
                "the licence is {}",
                licence.status.as_str()
            )));
        }
        if now < licence.not_before || now >= licence.expires_at {
            return Err(ServiceError::Conflict(
                "the licence is not within its validity period".into(),
            ));
        }
        let code = jws::b64url(crate::crypto::random_bytes::<32>()?);
        let expires_at = now + SHOW_CODE_SECONDS;
        // The table holds the codes of the last hour or so, not every code ever shown. Purged
        // first: if that fails, nothing is stored and the app's retry adds nothing either.
        self.svc
            .store
            .purge_show_codes(now - SHOW_CODE_KEPT_SECONDS)?;
        self.svc.store.insert_show_code(&ShowCodeRecord {
            code_sha256: hex::encode(Sha256::digest(code.as_bytes())),
            licence_id: licence.id.to_string(),
            created_by: app.clone(),
            expires_at,
            redeemed_at: None,
            redeemed_by: None,
        })?;
        Ok((code, expires_at))
    }

    /// The licence a show-code shows, without redeeming it: the caller decides whether the
    /// redeemer may see it first, so that a refused redemption does not use the code up.
    pub fn shown_licence(&self, code: &str, now: i64) -> Result<LicenceRecord, ServiceError> {
        let unusable =
            || ServiceError::Forbidden("show-code unknown, expired or already used".into());
        if code.is_empty() || code.len() > 100 {
            return Err(invalid("code", "not a show-code"));
        }
        let hash = hex::encode(Sha256::digest(code.as_bytes()));
        let shown = self.svc.store.show_code(&hash)?.ok_or_else(unusable)?;
        if shown.redeemed_at.is_some() || shown.expires_at <= now {
            return Err(unusable());
        }
        self.svc.licence(&shown.licence_id)
    }

    /// Redeems a show-code once; a second redemption, an unknown or an expired code is refused.
    pub fn redeem_show_code(
        &self,
        code: &str,
        by: &Uscc,
        now: i64,
    ) -> Result<LicenceRecord, ServiceError> {
        if code.is_empty() || code.len() > 100 {
            return Err(invalid("code", "not a show-code"));
        }
        let hash = hex::encode(Sha256::digest(code.as_bytes()));
        let redeemed = self
            .svc
            .store
            .redeem_show_code(&hash, by, now)?
            .ok_or_else(|| {
                ServiceError::Forbidden("show-code unknown, expired or already used".into())
            })?;
        self.svc.licence(&redeemed.licence_id)
    }
}
