//! Verification of presented licences, every check reported by name, and field checks.

use super::*;

/// The key a credential must have been signed with, a note for the chain check, and its seal.
type ResolvedSeal = (Box<dyn JwsVerifier>, String, SealRecord);

/// The verification part of a [`LicenceService`] (`svc.verification()`).
#[derive(Debug, Clone, Copy)]
pub struct Verification<'a> {
    pub(super) svc: &'a LicenceService,
    /// Reads only records already in memory; a miss makes the verdict "store unavailable".
    pub(super) memory_only: bool,
}

impl Verification<'_> {
    /// Verifies from memory alone — no database read, so no blocking — when every record
    /// the verification needs (the seal, the licence's status) is in memory and the seal is
    /// ES256 (an SM2 verification is too slow for an async thread); `None` otherwise, and the
    /// caller verifies with [`Verification::verify`] off the async threads.
    pub fn verify_in_memory(&self, presented: &str, now: i64) -> Option<VerifyReport> {
        let report = Verification {
            svc: self.svc,
            memory_only: true,
        }
        .verify(presented, now);
        (!report.store_unavailable).then_some(report)
    }

    fn seal_record(&self, id: &str) -> Result<Option<SealRecord>, StoreError> {
        if self.memory_only {
            // An SM2 verification takes a third of a millisecond: too long for the async
            // thread the memory-only path runs on, so it goes to the blocking pool.
            return match self.svc.records.cached_seal(id) {
                Some(seal) if seal.alg == JwsAlg::Es256 => Ok(Some(seal)),
                _ => Err(not_in_memory()),
            };
        }
        self.svc.store.seal(id)
    }

    fn licence_record(&self, id: &str) -> Result<Option<Arc<LicenceRecord>>, StoreError> {
        if self.memory_only {
            return self
                .svc
                .records
                .cached_licence(id)
                .map(Some)
                .ok_or_else(not_in_memory);
        }
        Ok(self.svc.store.licence(id)?.map(Arc::new))
    }

    /// The licence's SD-JWT with only the disclosures whose name `keep` accepts.
    pub fn present(
        &self,
        licence: &LicenceRecord,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<String, ServiceError> {
        sdjwt::select(&licence.sd_jwt, keep)
            .map_err(|e| ServiceError::Internal(format!("stored credential: {e}")))
    }

    /// Answers match / no-match per field without disclosing anything else (核验).
    pub fn check_fields(
        &self,
        licence: &LicenceRecord,
        claims: &Map<String, Value>,
    ) -> Result<BTreeMap<String, bool>, ServiceError> {
        if claims.is_empty() {
            return Err(invalid("fields", "name at least one field to check"));
        }
        let licence_type = self
            .svc
            .types
            .get(licence.type_code.as_str())
            .ok_or_else(|| {
                ServiceError::Internal("the licence's type is no longer configured".into())
            })?;
        let mut out = BTreeMap::new();
        for (name, expected) in claims {
            // No field holds such a value: a question that cannot match is refused.
            if let Some(text) = expected.as_str() {
                crate::text::plain(text, 1000).map_err(|e| invalid(name, e))?;
            }
            let actual = match name.as_str() {
                "holder_id" => Some(Value::String(licence.holder.to_string())),
                _ if licence_type.fields.iter().any(|f| &f.name == name) => {
                    licence.fields.get(name).cloned()
                }
                _ => return Err(invalid(name, "not a field of this licence type")),
            };
            out.insert(name.clone(), actual.as_ref() == Some(expected));
        }
        Ok(out)
    }

    /// Verifies a presented SD-JWT VC and reports every check.
    pub fn verify(&self, presented: &str, now: i64) -> VerifyReport {
        let mut report = VerifyReport {
            valid: false,
            checks: Vec::new(),
            licence_id: None,
            status: None,
            claims: Map::new(),
            disclosed: Map::new(),
            store_unavailable: false,
        };
        let unavailable = std::cell::Cell::new(false);
        report.valid = self
            .run_checks(presented, now, &mut report, &unavailable)
            .is_some();
        if unavailable.get() {
            report.valid = false;
            report.store_unavailable = true;
        }
        report
    }

    /// Runs the checks in order, recording each; stops (with `None`) at the first failure.
    fn run_checks(
        &self,
        presented: &str,
        now: i64,
        report: &mut VerifyReport,
        unavailable: &std::cell::Cell<bool>,
    ) -> Option<()> {
        // The seal found while resolving the key is kept for the seal check below, so a
        // verification reads it once.
        let resolved_seal = std::cell::RefCell::new(None);
        // Which check refused the key, when the resolver did.
        let key_refused_by = std::cell::Cell::new(None);
        let resolved = sdjwt::verify(presented, &|parsed: &jws::ParsedJws| match self
            .resolve_seal_key(parsed, now, unavailable)
        {
            Ok((key, note, seal)) => {
                *resolved_seal.borrow_mut() = Some((note, seal));
                Ok(key)
            }
            Err((check, detail)) => {
                key_refused_by.set(Some(check));
                Err(detail)
            }
        });
        let verified = match resolved {
            Ok(v) => v,
            Err(e) => return report.record(check_of(&e, key_refused_by.get()), Err(e.to_string())),
        };
        let Some((chain_note, seal)) = resolved_seal.into_inner() else {
            return report.record(
                CheckName::CertificateChain,
                Err("no seal was resolved".into()),
            );
        };
        report.record(CheckName::Typ, Ok("dc+sd-jwt".into()))?;
        report.record(CheckName::CertificateChain, Ok(chain_note))?;
        let alg = verified.header.alg.name();
        report.record(
            CheckName::Signature,
            Ok(format!("{alg} signature by the seal's key is valid")),
        )?;
        report.licence_id = verified
            .claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let outcome = self.claim_checks(&verified, &seal, now, report, unavailable);
        // Moved, not copied, once the checks that read them are done.
        report.claims = verified.claims;
        report.disclosed = verified.disclosed;
        outcome
    }

    /// The checks of a credential whose signature and seal are verified: its type, the seal's
    /// owner, the disclosures' names, the time window, the status, the digests.
    fn claim_checks(
        &self,
        verified: &sdjwt::VerifiedSdJwt,
        seal: &SealRecord,
        now: i64,
        report: &mut VerifyReport,
        unavailable: &std::cell::Cell<bool>,
    ) -> Option<()> {
        let claim = |name: &str| {
            verified
                .claims
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let vct = claim("vct");
        let licence_type = self.svc.types.get(vct);
        report.record(
            CheckName::Vct,
            licence_type
                .map(|t| format!("{} ({vct})", t.name))
                .ok_or_else(|| format!("unknown licence type `{vct}`")),
        )?;
        let licence_type = licence_type?;

        // The seal must be the claimed issuer's, and that department must issue this type.
        let kid = verified.header.kid.as_deref().unwrap_or_default();
        let iss = claim("iss");
        let seal_check = if iss != format!("urn:certgate:dept:{}", seal.owner) {
            Err(format!(
                "seal {kid} belongs to {}, not to the issuer `{iss}`",
                seal.owner
            ))
        } else if !licence_type.issuers.contains(&seal.owner) {
            Err(format!(
                "department {} may not issue {} ({vct})",
                seal.owner, licence_type.name
            ))
        } else {
            Ok(format!(
                "the seal belongs to the issuer, which may issue {}",
                licence_type.name
            ))
        };
        report.record(CheckName::Seal, seal_check)?;

        if let Some(name) = verified.disclosed.keys().find(|n| {
            !HOLDER_CLAIMS.contains(&n.as_str())
                && !licence_type.fields.iter().any(|f| &f.name == *n)
        }) {
            let detail = format!(
                "disclosure `{name}` is not a field of {}",
                licence_type.name
            );
            return report.record(CheckName::Disclosures, Err(detail));
        }
        report.record(
            CheckName::Time,
            sdjwt::check_time(&verified.claims, now, CLOCK_SKEW_SECONDS)
                .map(|()| {
                    format!("within nbf..exp (allowing {CLOCK_SKEW_SECONDS} s of clock skew)")
                })
                .map_err(|e| format!("{e} (allowing {CLOCK_SKEW_SECONDS} s of clock skew)")),
        )?;
        let status = self.status_of(&verified.claims, kid, unavailable);
        report.status = status.as_ref().ok().copied();
        report.record(
            CheckName::Status,
            status.and_then(|s| match s {
                LicenceStatus::Valid => Ok("licence is valid".to_owned()),
                other => Err(format!("licence is {}", other.as_str())),
            }),
        )?;
        let digests = verified.digests_checked;
        report.record(
            CheckName::Disclosures,
            Ok(format!(
                "{digests} disclosure digest(s) match the signed credential"
            )),
        )
    }

    /// Finds the key that must have signed a credential: the seal named by `kid`, whose
    /// certificate must be the `x5c` leaf, chain to the seal CA and not be revoked.
    fn resolve_seal_key(
        &self,
        parsed: &jws::ParsedJws,
        now: i64,
        unavailable: &std::cell::Cell<bool>,
    ) -> Result<ResolvedSeal, (CheckName, String)> {
        let kid = parsed.header.kid.as_deref().unwrap_or_default();
        let (seal, material) = self
            .chained_seal(parsed, now, unavailable)
            .map_err(|e| (CheckName::CertificateChain, e))?;
        if let Some(revoked_at) = seal.revoked_at
            && revoked_at <= now
        {
            return Err((
                CheckName::Seal,
                format!(
                    "seal revoked at {revoked_at}: {}",
                    seal.revocation_reason.unwrap_or_default()
                ),
            ));
        }
        let note = format!(
            "seal {kid} ({}) chains to the certgate seal CA and is not revoked",
            seal.name
        );
        Ok((Box::new(material.public.clone()), note, seal))
    }

    /// The seal named by `kid` and its material, when the `x5c` leaf is that seal's
    /// certificate, valid at `iat` and chaining to the seal CA.
    fn chained_seal(
        &self,
        parsed: &jws::ParsedJws,
        now: i64,
        unavailable: &std::cell::Cell<bool>,
    ) -> Result<(SealRecord, Arc<SealMaterial>), String> {
        let x5c = parsed.header.x5c.as_deref().unwrap_or_default();
        // The x5c exactly as this gateway writes it for the named seal (the common case)
        // needs no decoding: the leaf's DER is the seal's, and the rest is not read below.
        let as_issued = parsed
            .header
            .kid
            .as_deref()
            .and_then(|kid| self.svc.material_in_memory(kid))
            .filter(|m| m.x5c.as_slice() == x5c);
        let x5c_der = match as_issued {
            Some(m) => vec![m.leaf_der.clone()],
            None => x5c
                .iter()
                .map(|c| {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c)
                        .map_err(|_| "x5c holds a certificate that is not base64".to_owned())
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let Some(leaf_der) = x5c_der.first() else {
            return Err("x5c is missing: the seal certificate is required".into());
        };
        let iat = parsed
            .payload
            .get("iat")
            .and_then(Value::as_i64)
            .unwrap_or(now);
        let kid = parsed.header.kid.as_deref().ok_or("kid is missing")?;
        let seal = self.seal_record(kid).map_err(|e| {
            unavailable.set(matches!(e, StoreError::Database(_)));
            format!("seal lookup failed: {e}")
        })?;
        let material = match &seal {
            Some(seal) => Some(
                self.svc
                    .material(seal)
                    .map_err(|e| format!("seal {kid}: {e}"))?,
            ),
            None => None,
        };
        match &material {
            // The leaf is the very certificate our seal CA issued for this seal: its chain
            // was checked when it was made, only its validity at `iat` is left to check.
            Some(m) if &m.leaf_der == leaf_der => {
                if iat < m.not_before || iat > m.not_after {
                    return Err(format!(
                        "seal certificate does not chain to the seal CA: it is not valid at iat {iat}"
                    ));
                }
            }
            // Anything else gets the full chain check, for its error message, and is then
            // refused as not being the seal's certificate.
            _ => {
                let certs = x5c_der
                    .iter()
                    .map(|der| {
                        X509::from_der(der)
                            .map_err(|_| "x5c holds a certificate that cannot be read".to_owned())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let (leaf, rest) = certs.split_first().ok_or("x5c is missing")?;
                let at = time::OffsetDateTime::from_unix_timestamp(iat)
                    .map_err(|_| "iat is out of range".to_owned())?;
                seal_ca::verify_chain(
                    leaf,
                    rest,
                    std::slice::from_ref(self.svc.seal_ca.certificate()),
                    at,
                )
                .map_err(|e| format!("seal certificate does not chain to the seal CA: {e}"))?;
                return Err(match seal {
                    Some(_) => format!("x5c leaf is not the certificate of seal {kid}"),
                    None => format!("seal {kid} is not known"),
                });
            }
        }
        let (Some(seal), Some(material)) = (seal, material) else {
            return Err(format!("seal {kid} is not known"));
        };
        Ok((seal, material))
    }

    fn status_of(
        &self,
        claims: &Map<String, Value>,
        seal_id: &str,
        unavailable: &std::cell::Cell<bool>,
    ) -> Result<LicenceStatus, String> {
        let entry = claims
            .get("status")
            .and_then(|s| s.get("status_list"))
            .ok_or("the credential carries no status_list entry")?;
        let idx = entry
            .get("idx")
            .and_then(Value::as_u64)
            .ok_or("status_list.idx missing")?;
        let uri = entry
            .get("uri")
            .and_then(Value::as_str)
            .ok_or("status_list.uri missing")?;
        let list: u32 = uri
            .strip_prefix(&format!("{}/", self.svc.status_uri_base))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("status list {uri} is not one of this gateway's"))?;
        let id = claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or("jti missing")?;
        let licence = self
            .licence_record(id)
            .map_err(|e| {
                unavailable.set(matches!(e, StoreError::Database(_)));
                format!("status lookup failed: {e}")
            })?
            .ok_or_else(|| format!("licence {id} is not in this gateway's register"))?;
        if u64::from(licence.status_index) != idx
            || licence.status_list != list
            || licence.seal_id != seal_id
            || claims.get("vct").and_then(Value::as_str) != Some(licence.type_code.as_str())
        {
            return Err("the status entry does not belong to this licence".into());
        }
        Ok(licence.status)
    }
}

/// A record a memory-only verification needs is not in memory.
fn not_in_memory() -> StoreError {
    StoreError::Database("not in memory".into())
}

/// The check a failed SD-JWT verification failed: from the error's variant, and for a refused
/// key from the check that refused it.
fn check_of(e: &sdjwt::SdJwtError, key_refused_by: Option<CheckName>) -> CheckName {
    use jws::JwsError;
    use sdjwt::SdJwtError;
    match e {
        SdJwtError::Jws(JwsError::WrongType { .. }) => CheckName::Typ,
        SdJwtError::Jws(
            JwsError::BadSignature
            | JwsError::BadSignatureLength(_)
            | JwsError::KeyAlgorithmMismatch,
        ) => CheckName::Signature,
        SdJwtError::Jws(_) => CheckName::Format,
        SdJwtError::Key(_) => key_refused_by.unwrap_or(CheckName::CertificateChain),
        _ => CheckName::Disclosures,
    }
}
