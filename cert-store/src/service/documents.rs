#![allow(deprecated)] // Asn1StringRef::as_utf8: names here hold no NUL
//! Sealed documents and the trust list of other regions' seal CAs: sealing a document with a
//! stored seal (GB/T 38540 SES_Signature or a detached JWS) and verifying sealed documents
//! check by check. The format itself is [`crate::ses`]; the verdict types are
//! [`crate::document_seal`].

use time::OffsetDateTime;

use super::*;
use crate::document_seal::*;
use crate::jws::JwsSigner;
use crate::seal_ca;
use crate::ses::{Seal, SealInfo, SesAlg, SesSignature, ToSign};

impl Seals<'_> {
    /// Adds another region's seal CA to the trust list (admin). The certificate must be a
    /// self-signed CA certificate, valid now, not already listed.
    pub fn add_seal_ca(
        &self,
        certificate_pem: &str,
        name: &str,
        region: &str,
        now: i64,
    ) -> Result<crate::licence::TrustedSealCa, ServiceError> {
        let invalid = |field: &str, reason: &str| ServiceError::Invalid {
            field: field.into(),
            reason: reason.into(),
        };
        let (name, region) = (name.trim(), region.trim());
        if name.is_empty() || name.chars().count() > 100 {
            return Err(invalid("name", "must be 1 to 100 characters"));
        }
        if region.is_empty() || region.chars().count() > 50 {
            return Err(invalid("region", "must be 1 to 50 characters"));
        }
        let cert = openssl::x509::X509::from_pem(certificate_pem.as_bytes())
            .map_err(|_| invalid("certificate_pem", "not a PEM certificate"))?;
        let self_signed = cert
            .public_key()
            .ok()
            .and_then(|k| cert.verify(&k).ok())
            .unwrap_or(false);
        if !self_signed {
            return Err(invalid(
                "certificate_pem",
                "must be the seal system's self-signed CA certificate",
            ));
        }
        let now_asn1 = openssl::asn1::Asn1Time::from_unix(now)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        if cert.not_after() < now_asn1 || cert.not_before() > now_asn1 {
            return Err(invalid(
                "certificate_pem",
                "the certificate is not valid now",
            ));
        }
        let der = cert
            .to_der()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        if self.anchors()?.iter().any(|a| a.der == der) {
            return Err(ServiceError::Conflict(
                "this seal CA is already trusted".into(),
            ));
        }
        let pem = String::from_utf8(
            cert.to_pem()
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
        )
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let ca = crate::licence::TrustedSealCa {
            id: format!(
                "sealca-{}",
                hex::encode(crate::crypto::random_bytes::<8>()?)
            ),
            name: name.to_owned(),
            region: region.to_owned(),
            certificate_pem: pem,
            added_at: now,
            removed_at: None,
        };
        self.svc.store_ref().insert_trusted_ca(&ca)?;
        Ok(ca)
    }

    /// Marks a trusted seal CA untrusted from `now` on: seals it made that are used after
    /// this are refused; signatures made before still verify.
    pub fn remove_seal_ca(
        &self,
        id: &str,
        now: i64,
    ) -> Result<crate::licence::TrustedSealCa, ServiceError> {
        if !self.svc.store_ref().remove_trusted_ca(id, now)? {
            return match self.seal_cas()?.into_iter().find(|c| c.id == id) {
                Some(_) => Err(ServiceError::Conflict(format!("{id} is already removed"))),
                None => Err(ServiceError::NotFound(format!("seal CA {id}"))),
            };
        }
        self.seal_cas()?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| ServiceError::NotFound(format!("seal CA {id}")))
    }

    /// The trust list (removed entries included, with the time of removal).
    pub fn seal_cas(&self) -> Result<Vec<crate::licence::TrustedSealCa>, ServiceError> {
        Ok(self.svc.store_ref().trusted_cas()?)
    }

    /// The seal CAs trusted at `at` (all ever listed when `None`): certgate's own and the
    /// foreign ones not removed by then.
    fn anchors_at(&self, at: Option<i64>) -> Result<Vec<Anchor>, ServiceError> {
        let own = self.svc.seal_ca_certificate().to_owned();
        let cn = |c: &openssl::x509::X509| {
            c.subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()
                .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
                .unwrap_or_default()
        };
        let mut out = vec![Anchor {
            der: own
                .to_der()
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            authority: cn(&own),
            cert: own,
            foreign: false,
        }];
        for ca in self.seal_cas()? {
            if let (Some(at), Some(removed)) = (at, ca.removed_at)
                && removed <= at
            {
                continue;
            }
            let Ok(cert) = openssl::x509::X509::from_pem(ca.certificate_pem.as_bytes()) else {
                continue;
            };
            out.push(Anchor {
                der: cert
                    .to_der()
                    .map_err(|e| ServiceError::Internal(e.to_string()))?,
                authority: format!("{} ({})", ca.name, ca.region),
                cert,
                foreign: true,
            });
        }
        Ok(out)
    }

    fn anchors(&self) -> Result<Vec<Anchor>, ServiceError> {
        self.anchors_at(None)
    }

    /// Verifies a document sealed in the detached JWS form: the digest, the signature by the
    /// `x5c` leaf, that leaf being the certificate of the seal `kid`, the chain to the seal CA,
    /// the seal's validity and revocation at `iat`.
    pub fn verify_sealed_jws(
        &self,
        document: &Document<'_>,
        jws: &str,
    ) -> Result<SealVerdict, ServiceError> {
        let mut checks = Vec::new();
        let mut verdict = SealVerdict::default();
        let fail_format = |checks: &mut Vec<SealCheck>, why: String| {
            check(checks, "format", false, why);
        };
        let parts: Vec<&str> = jws.trim().split('.').collect();
        let (header_part, signature_part) = match parts.as_slice() {
            [h, "", s] if !h.is_empty() && !s.is_empty() => (*h, *s),
            _ => {
                fail_format(
                    &mut checks,
                    "not a detached compact JWS (header..signature)".into(),
                );
                verdict.checks = checks;
                return Ok(verdict);
            }
        };
        // The algorithm decides the digest: read it from the header first.
        let alg = crate::jws::b64url_decode(header_part)
            .ok()
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .and_then(|h| h["alg"].as_str().and_then(crate::jws::JwsAlg::from_name))
            .map(SesAlg::of);
        let Some(alg) = alg else {
            fail_format(&mut checks, "the header has no alg ES256 or SM2SM3".into());
            verdict.checks = checks;
            return Ok(verdict);
        };
        let digest = document.digest(alg);
        let payload = match &digest {
            Ok(d) => jws_payload(alg, d),
            Err(e) => {
                check(&mut checks, "document_digest", false, e.to_string());
                verdict.checks = checks;
                return Ok(verdict);
            }
        };
        let compact = format!(
            "{header_part}.{}.{signature_part}",
            crate::jws::b64url(&payload)
        );
        let parsed = match crate::jws::parse_compact(&compact, Some(JWS_TYP)) {
            Ok(p) => p,
            Err(e) => {
                fail_format(&mut checks, e.to_string());
                verdict.checks = checks;
                return Ok(verdict);
            }
        };
        check(
            &mut checks,
            "format",
            true,
            "a detached JWS of a sealed document",
        );
        let iat = parsed
            .header_json
            .get("iat")
            .and_then(serde_json::Value::as_i64);
        verdict.sealed_at = iat;
        let leaf = parsed
            .header
            .x5c
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c).ok()
            })
            .and_then(|der| openssl::x509::X509::from_der(&der).ok());
        let key = leaf
            .as_ref()
            .and_then(|c| PublicKey::from_certificate(c).ok());
        // The payload was rebuilt from this document: a signature that holds over it is a
        // signature over this document's digest.
        let holds = key.as_ref().is_some_and(|k| parsed.verify(k).is_ok());
        check(
            &mut checks,
            "signature",
            holds,
            "the seal's signature over the header and this document's digest",
        );
        let seal = match &parsed.header.kid {
            Some(kid) => self.svc.store_seal(kid)?,
            None => None,
        };
        verdict.seal_id = parsed.header.kid.clone();
        verdict.seal_name = seal.as_ref().map(|s| s.name.clone());
        verdict.owner = seal.as_ref().map(SealOwnerFacts::of_record);
        let leaf_der = leaf.as_ref().and_then(|c| c.to_der().ok());
        let in_seal = seal
            .as_ref()
            .and_then(|s| der_of(&s.certificate_pem).ok())
            .is_some_and(|d| Some(d) == leaf_der);
        check(
            &mut checks,
            "signer_in_seal",
            in_seal,
            "the x5c certificate is the certificate of the seal named by kid",
        );
        let when = iat.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
        let trusted = [self.svc.seal_ca_certificate().to_owned()];
        let chained = match (&leaf, when) {
            (Some(c), Some(t)) => seal_ca::verify_chain(c, &[], &trusted, t).is_ok(),
            _ => false,
        };
        check(
            &mut checks,
            "certificate_chain",
            chained,
            "the seal's certificate chains to a trusted seal CA at iat",
        );
        verdict.authority = self
            .anchors_at(iat)?
            .into_iter()
            .find(|a| !a.foreign)
            .map(|a| a.authority);
        let valid_then = match (&seal, iat) {
            (Some(s), Some(t)) => s.created_at <= t.saturating_add(3600) && t <= s.not_after,
            _ => false,
        };
        check(
            &mut checks,
            "seal_validity",
            valid_then,
            "the seal was valid at iat",
        );
        let status = match (&seal, iat) {
            (None, _) => (false, "the seal is not in this register".to_owned()),
            (_, None) => (false, "no iat: the time of sealing is unknown".to_owned()),
            (Some(s), Some(t)) => revocation_at(s.revoked_at, t),
        };
        check(&mut checks, "seal_status", status.0, status.1);
        verdict.valid = checks.iter().all(|c| c.ok);
        verdict.checks = checks;
        Ok(verdict)
    }

    /// Seals a document with seal `seal_id`, which `by` must own and which must be valid and
    /// not revoked now (an enterprise's, only while it holds a valid business licence).
    /// Returns the GB/T 38540 `SES_Signature`.
    pub fn seal_document(
        &self,
        seal_id: &str,
        by: &Uscc,
        document: &Document<'_>,
        property: &str,
        now: i64,
    ) -> Result<SealedDocument, ServiceError> {
        let seal = self.seal(seal_id)?;
        if &seal.owner != by {
            return Err(ServiceError::Forbidden(
                "only the seal's owner may seal with it".into(),
            ));
        }
        if seal.revoked_at.is_some() {
            return Err(ServiceError::Conflict(format!("seal {seal_id} is revoked")));
        }
        if now >= seal.not_after {
            return Err(ServiceError::Conflict(format!(
                "seal {seal_id} has expired"
            )));
        }
        // An enterprise seals only while it is registered: its business licence suspended or
        // revoked, its seals sign nothing (they are not revoked: a licence resumed or
        // renewed brings them back).
        if seal.owner.is_market_entity() {
            self.registration(&seal.owner, now)?;
        }
        let property = property.trim();
        if property.is_empty()
            || property.len() > 200
            || !property.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(ServiceError::Invalid {
                field: "name".into(),
                reason: "the document's name: 1 to 200 printable ASCII characters".into(),
            });
        }
        let signer = self.svc.seal_signing_key(&seal)?;
        let alg = SesAlg::of(seal.alg);
        let data_hash = document.digest(alg)?;
        let seal_cert = der_of(&seal.certificate_pem)?;
        let info = SealInfo {
            vid: VENDOR_ID.into(),
            es_id: seal.id.clone(),
            seal_type: 1,
            name: seal.name.clone(),
            certs: vec![seal_cert.clone()],
            created: at(seal.created_at)?,
            valid_start: at(seal.created_at)?,
            valid_end: at(seal.not_after)?,
            picture_type: "png".into(),
            picture: seal.picture.clone().unwrap_or_default(),
            width: 40,
            height: 40,
        };
        let maker_cert = self
            .svc
            .seal_ca_certificate()
            .to_der()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let made = Seal::make(info, maker_cert, self.svc.seal_ca_key())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let to_sign = ToSign {
            seal: made,
            time: at(now)?,
            data_hash: data_hash.clone(),
            property: property.to_owned(),
        };
        let ca_der = self
            .svc
            .seal_ca_certificate()
            .to_der()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let b64 = |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, d);
        let header = serde_json::json!({
            "alg": seal.alg.name(),
            "typ": JWS_TYP,
            "kid": seal.id,
            "x5c": [b64(&seal_cert), b64(&ca_der)],
            "iat": now,
        });
        let input = format!(
            "{}.{}",
            crate::jws::b64url(header.to_string()),
            crate::jws::b64url(jws_payload(alg, &data_hash))
        );
        let raw = signer
            .sign(input.as_bytes())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let header_part = input.split('.').next().unwrap_or_default();
        let jws = format!("{header_part}..{}", crate::jws::b64url(raw));
        let signature = SesSignature::sign(to_sign, seal_cert, &signer)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(SealedDocument {
            ses_signature: signature.to_der(),
            jws,
            data_hash,
            time: now,
        })
    }

    /// Verifies a sealed document: the `SES_Signature` `der` over `document`. Every check is
    /// reported; `valid` only when all pass. Malformed input is a verdict with the `format`
    /// check failed, not an error.
    pub fn verify_sealed_document(
        &self,
        document: &Document<'_>,
        der: &[u8],
    ) -> Result<SealVerdict, ServiceError> {
        let mut checks = Vec::new();
        let mut verdict = SealVerdict::default();
        let sig = match SesSignature::parse(der) {
            Ok(s) => s,
            Err(e) => {
                check(&mut checks, "format", false, e.to_string());
                verdict.checks = checks;
                return Ok(verdict);
            }
        };
        check(
            &mut checks,
            "format",
            true,
            "a GB/T 38540-2020 SES_Signature",
        );
        let ts = &sig.to_sign;
        let info = &ts.seal.info;
        verdict.seal_id = Some(info.es_id.clone());
        verdict.seal_name = Some(info.name.clone());
        verdict.sealed_at = Some(ts.time.unix_timestamp());

        // 1. The document.
        match document.digest(sig.alg) {
            Ok(d) if d == ts.data_hash => check(
                &mut checks,
                "document_digest",
                true,
                "the document's digest is the one signed",
            ),
            Ok(_) => check(
                &mut checks,
                "document_digest",
                false,
                "the document is not the one that was sealed",
            ),
            Err(e) => check(&mut checks, "document_digest", false, e.to_string()),
        }
        // 2. The signer's signature over TBS_Sign.
        let signer = openssl::x509::X509::from_der(&sig.signer_cert).ok();
        let signer_key = signer
            .as_ref()
            .and_then(|c| PublicKey::from_certificate(c).ok());
        check(
            &mut checks,
            "signature",
            signer_key.as_ref().is_some_and(|k| sig.signature_holds(k)),
            "the signer's signature over TBS_Sign",
        );
        // 3. The signer is one the seal allows.
        check(
            &mut checks,
            "signer_in_seal",
            info.certs.contains(&sig.signer_cert),
            "the signer's certificate is in the seal's certificate list",
        );
        // 4. The seal maker's signature on the seal.
        let maker = openssl::x509::X509::from_der(&ts.seal.maker_cert).ok();
        let maker_key = maker
            .as_ref()
            .and_then(|c| PublicKey::from_certificate(c).ok());
        check(
            &mut checks,
            "seal_maker_signature",
            maker_key
                .as_ref()
                .is_some_and(|k| ts.seal.maker_signature_holds(k)),
            "the seal maker's signature over the seal's information, picture and validity",
        );
        // 5. The seal maker is a seal CA trusted when the document was sealed, and the signer's
        // certificate chains to it.
        let anchors = self.anchors_at(Some(ts.time.unix_timestamp()))?;
        let maker_anchor = anchors.iter().find(|a| a.der == ts.seal.maker_cert);
        let chained = match (maker_anchor, &signer) {
            (Some(a), Some(c)) => {
                seal_ca::verify_chain(c, &[], std::slice::from_ref(&a.cert), ts.time).is_ok()
            }
            _ => false,
        };
        check(
            &mut checks,
            "certificate_chain",
            chained,
            match maker_anchor {
                Some(a) => format!(
                    "the seal maker is {}, a trusted seal CA; the signer's certificate chains to it",
                    a.authority
                ),
                None => "the seal maker is not a seal CA trusted at the time of sealing".into(),
            },
        );
        verdict.authority = maker_anchor.map(|a| a.authority.clone()).or_else(|| {
            maker.as_ref().and_then(|m| {
                m.subject_name()
                    .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                    .next()
                    .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
            })
        });
        // 6. The seal was valid when the document was sealed.
        let in_window = info.valid_start <= ts.time && ts.time <= info.valid_end;
        check(
            &mut checks,
            "seal_validity",
            in_window,
            format!(
                "the seal is valid from {} to {}; the document was sealed at {}",
                info.valid_start, info.valid_end, ts.time
            ),
        );
        // 7. Not revoked before the document was sealed.
        // The register speaks for seals certgate's own seal CA made, and only when the signer
        // is the very certificate it holds for that seal: a foreign seal that borrows a local
        // seal's id gets nothing of it.
        let record = match maker_anchor {
            Some(a) if !a.foreign => self
                .svc
                .store_seal(&info.es_id)?
                .filter(|rec| der_of(&rec.certificate_pem).ok().as_ref() == Some(&sig.signer_cert)),
            _ => None,
        };
        verdict.owner = match (&record, &signer) {
            (Some(rec), _) => Some(SealOwnerFacts::of_record(rec)),
            (None, Some(cert)) => Some(SealOwnerFacts::of_certificate(cert)),
            (None, None) => None,
        };
        let status = match record {
            None if maker_anchor.is_some_and(|a| a.foreign) => {
                let authority = verdict.authority.as_deref().unwrap_or_default();
                let owner = verdict.owner.as_ref().and_then(|o| o.uscc.as_deref());
                if self.svc.store_seal(&info.es_id)?.is_some() {
                    (
                        false,
                        format!(
                            "a seal of {authority} that gives the id of a seal of this register"
                        ),
                    )
                } else if let Some(o) = owner
                    && self.is_local_owner(o)?
                {
                    (
                        false,
                        format!(
                            "a seal of {authority} for an owner whose seals this register makes"
                        ),
                    )
                } else {
                    (
                        true,
                        format!(
                            "a seal of {authority}: its revocation is published by that system"
                        ),
                    )
                }
            }
            None => (false, "the seal is not in this register".to_owned()),
            Some(rec) => revocation_at(rec.revoked_at, ts.time.unix_timestamp()),
        };
        check(&mut checks, "seal_status", status.0, status.1);
        verdict.valid = checks.iter().all(|c| c.ok);
        verdict.checks = checks;
        Ok(verdict)
    }
}

impl Seals<'_> {
    /// True when `owner` (a USCC) has seals in this register or is registered here (holds a
    /// business licence of it): its seals are this register's to make, and another region's
    /// seal CA does not speak for it.
    fn is_local_owner(&self, owner: &str) -> Result<bool, ServiceError> {
        let Ok(owner) = owner.parse::<Uscc>() else {
            return Ok(false);
        };
        Ok(!self.svc.store.seals(&owner, None, 1)?.is_empty()
            || !self.business_licences(&owner)?.is_empty())
    }
}

impl Document<'_> {
    /// The digest a signature of `alg` carries.
    fn digest(&self, alg: SesAlg) -> Result<Vec<u8>, ServiceError> {
        let want = match alg {
            SesAlg::Sm2Sm3 => "sm3",
            SesAlg::EcdsaSha256 => "sha256",
        };
        match self {
            Document::Bytes(b) => alg
                .digest(b)
                .map_err(|e| ServiceError::Internal(e.to_string())),
            Document::Digest { alg: given, value } => {
                if !given.eq_ignore_ascii_case(want) {
                    return Err(ServiceError::Invalid {
                        field: "digest_alg".into(),
                        reason: format!("this seal signs {want} digests"),
                    });
                }
                if value.len() != 32 {
                    return Err(ServiceError::Invalid {
                        field: "digest".into(),
                        reason: "must be 32 bytes".into(),
                    });
                }
                Ok(value.clone())
            }
        }
    }
}

fn at(t: i64) -> Result<OffsetDateTime, ServiceError> {
    OffsetDateTime::from_unix_timestamp(t).map_err(|e| ServiceError::Internal(e.to_string()))
}

fn der_of(pem: &str) -> Result<Vec<u8>, ServiceError> {
    openssl::x509::X509::from_pem(pem.as_bytes())
        .and_then(|c| c.to_der())
        .map_err(|e| ServiceError::Internal(format!("stored seal certificate: {e}")))
}
