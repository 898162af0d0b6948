//! certgate's seal CA: a P-256 certification authority that certifies the public keys of
//! electronic seals, binding each key to the owner's USCC (统一社会信用代码) and the seal's
//! name, plus chain verification at a chosen time.
//!
//! A seal key may be SM2: its certificate then carries the SM2 curve in the
//! SubjectPublicKeyInfo while the CA's own signature stays ECDSA P-256 with SHA-256, so every
//! X.509 stack can check the chain even if it cannot use the seal key itself.

use openssl::asn1::{Asn1Integer, Asn1Time, Asn1Type};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509, X509Builder, X509NameBuilder, X509NameRef, X509Ref, X509StoreContext};
use time::{Duration, OffsetDateTime};

use crate::crypto::{CryptoError, PublicKey, SealKey};
use crate::id::Uscc;
use crate::jws::{JwsAlg, JwsSigner};

/// `O=` of every seal certificate, so they cannot be mistaken for certificates of another
/// purpose issued under a shared root.
const SEAL_ORGANIZATION: &str = "certgate seal";

/// How far back a CA certificate's validity starts, to tolerate clocks of relying parties
/// that run somewhat behind.
const CA_BACKDATE: Duration = Duration::hours(1);

/// The seal CA: its self-signed certificate and its P-256 signing key.
#[derive(Clone)]
pub struct SealCa {
    certificate: X509,
    /// PEM of `certificate`, kept so that exporting it cannot fail.
    certificate_pem: String,
    key: SealKey,
}

impl SealCa {
    /// Creates a new CA with a fresh P-256 key: self-signed, `CN=<common_name>`, valid from an
    /// hour before `now` for `validity_days` days, `basicConstraints` CA:TRUE and `keyUsage`
    /// keyCertSign + cRLSign (both critical), with a subject key identifier.
    pub fn create(
        common_name: &str,
        now: OffsetDateTime,
        validity_days: u32,
    ) -> Result<Self, CryptoError> {
        if common_name.is_empty() {
            return Err(CryptoError::Invalid("empty CA common name".to_owned()));
        }
        if validity_days == 0 {
            return Err(CryptoError::Invalid("CA validity of zero days".to_owned()));
        }
        let key = SealKey::generate(JwsAlg::Es256)?;

        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid_with_type(Nid::COMMONNAME, common_name, Asn1Type::UTF8STRING)?;
        let name = name.build();

        let mut builder = X509Builder::new()?;
        builder.set_version(2)?;
        let serial = random_serial()?;
        let not_before = asn1_time(now - CA_BACKDATE)?;
        let not_after = asn1_time(now + Duration::days(i64::from(validity_days)))?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(key.pkey())?;
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)?;
        builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        builder.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
        builder.append_extension(ski)?;
        builder.sign(key.pkey(), MessageDigest::sha256())?;
        Self::assemble(builder.build(), key)
    }

    /// Reassembles a CA from its stored certificate (PEM) and key. The key must be the
    /// certificate's key and P-256: [`CryptoError::WrongAlgorithm`] for an SM2 key,
    /// [`CryptoError::BadKey`] for a key that does not match.
    pub fn from_parts(cert_pem: &[u8], key: SealKey) -> Result<Self, CryptoError> {
        let certificate = X509::from_pem(cert_pem)
            .map_err(|_| CryptoError::BadKey("CA certificate is not PEM X.509".to_owned()))?;
        if key.alg() != JwsAlg::Es256 {
            return Err(CryptoError::WrongAlgorithm);
        }
        if PublicKey::from_certificate(&certificate)? != *key.public_key() {
            return Err(CryptoError::BadKey(
                "key does not match the CA certificate".to_owned(),
            ));
        }
        Self::assemble(certificate, key)
    }

    fn assemble(certificate: X509, key: SealKey) -> Result<Self, CryptoError> {
        let pem = certificate.to_pem()?;
        let certificate_pem = String::from_utf8(pem)
            .map_err(|_| CryptoError::Openssl("PEM is not UTF-8".to_owned()))?;
        Ok(SealCa {
            certificate,
            certificate_pem,
            key,
        })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &X509 {
        &self.certificate
    }

    /// The CA certificate as PEM, what relying parties configure as their trust anchor.
    pub fn certificate_pem(&self) -> String {
        self.certificate_pem.clone()
    }

    /// The CA key, to be stored (encrypted with a [`crate::crypto::Kek`]) next to the
    /// certificate.
    pub fn key(&self) -> &SealKey {
        &self.key
    }

    /// Certifies a seal key: subject `CN=<seal_name>` (UTF-8), `serialNumber=<owner USCC>`,
    /// `O=certgate seal`; `keyUsage` digitalSignature + nonRepudiation (critical),
    /// `basicConstraints` CA:FALSE, subject and authority key identifiers, a random serial;
    /// signed by the CA with ECDSA P-256 / SHA-256. The owner is a [`Uscc`] rather than a
    /// string so that only a checked code can end up in a certificate.
    pub fn issue_seal_certificate(
        &self,
        subject_key: &PublicKey,
        owner: &Uscc,
        seal_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<X509, CryptoError> {
        if seal_name.trim().is_empty() {
            return Err(CryptoError::Invalid("empty seal name".to_owned()));
        }
        if not_after <= not_before {
            return Err(CryptoError::Invalid(
                "validity ends before it starts".to_owned(),
            ));
        }

        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid_with_type(Nid::COMMONNAME, seal_name, Asn1Type::UTF8STRING)?;
        // X.520 requires serialNumber to be a PrintableString; a USCC is digits and capitals.
        name.append_entry_by_nid_with_type(
            Nid::SERIALNUMBER,
            owner.as_str(),
            Asn1Type::PRINTABLESTRING,
        )?;
        name.append_entry_by_nid_with_type(
            Nid::ORGANIZATIONNAME,
            SEAL_ORGANIZATION,
            Asn1Type::UTF8STRING,
        )?;
        let name = name.build();

        let mut builder = X509Builder::new()?;
        builder.set_version(2)?;
        let serial = random_serial()?;
        let not_before = asn1_time(not_before)?;
        let not_after = asn1_time(not_after)?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(self.certificate.subject_name())?;
        builder.set_pubkey(subject_key.pkey())?;
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)?;
        builder.append_extension(BasicConstraints::new().build()?)?;
        builder.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .non_repudiation()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
        builder.append_extension(ski)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&builder.x509v3_context(Some(&self.certificate), None))?;
        builder.append_extension(aki)?;
        builder.sign(self.key.pkey(), MessageDigest::sha256())?;
        Ok(builder.build())
    }
}

impl std::fmt::Debug for SealCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let subject = self
            .certificate
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok());
        f.debug_struct("SealCa")
            .field("subject_cn", &subject)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A 127-bit random serial with the top bit set: always 16 DER bytes, always positive
/// (RFC 5280 §4.1.2.2 wants positive, at most 20 octets, unpredictable).
fn random_serial() -> Result<Asn1Integer, CryptoError> {
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::ONE, false)?;
    Ok(serial.to_asn1_integer()?)
}

fn asn1_time(t: OffsetDateTime) -> Result<Asn1Time, CryptoError> {
    Ok(Asn1Time::from_unix(t.unix_timestamp())?)
}

/// Why a certificate chain was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// OpenSSL rejected the chain; carries its verify error string, e.g. "certificate has
    /// expired" or "unable to get local issuer certificate".
    #[error("certificate chain rejected: {0}")]
    Rejected(String),
    /// Verification could not be run at all (OpenSSL failed internally).
    #[error("certificate chain could not be checked: {0}")]
    Openssl(String),
}

impl From<openssl::error::ErrorStack> for ChainError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        ChainError::Openssl(e.to_string())
    }
}

/// Verifies `leaf` up to one of `trusted`, through `intermediates`, as of `at` rather than
/// the current time, so that a seal applied in the past can be checked against the validity
/// it had then.
pub fn verify_chain(
    leaf: &X509Ref,
    intermediates: &[X509],
    trusted: &[X509],
    at: OffsetDateTime,
) -> Result<(), ChainError> {
    let mut store = X509StoreBuilder::new()?;
    for anchor in trusted {
        store.add_cert(anchor.clone())?;
    }
    let mut param = X509VerifyParam::new()?;
    param.set_time(at.unix_timestamp());
    store.set_param(&param)?;
    let store = store.build();

    let mut chain = Stack::new()?;
    for cert in intermediates {
        chain.push(cert.clone())?;
    }

    let mut ctx = X509StoreContext::new()?;
    let outcome = ctx.init(&store, leaf, &chain, |c| {
        let ok = c.verify_cert()?;
        Ok((ok, c.error()))
    })?;
    match outcome {
        (true, _) => Ok(()),
        (false, error) => Err(ChainError::Rejected(error.error_string().to_owned())),
    }
}

/// The owner's USCC (from `serialNumber`) and the seal name (from `CN`) of a seal
/// certificate; `None` when either is missing or not text.
pub fn certificate_owner(cert: &X509Ref) -> Option<(String, String)> {
    let subject = cert.subject_name();
    Some((
        first_entry(subject, Nid::SERIALNUMBER)?,
        first_entry(subject, Nid::COMMONNAME)?,
    ))
}

fn first_entry(name: &X509NameRef, nid: Nid) -> Option<String> {
    let entry = name.entries_by_nid(nid).next()?;
    entry.data().to_string().ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::jws::JwsVerifier;

    const USCC: &str = "91110108551385082Q";
    const SEAL_NAME: &str = "北京某某局公章";

    fn owner() -> Uscc {
        USCC.parse().unwrap()
    }

    fn issue(ca: &SealCa, alg: JwsAlg, now: OffsetDateTime) -> (SealKey, X509) {
        let key = SealKey::generate(alg).unwrap();
        let cert = ca
            .issue_seal_certificate(
                key.public_key(),
                &owner(),
                SEAL_NAME,
                now - Duration::minutes(5),
                now + Duration::days(365),
            )
            .unwrap();
        (key, cert)
    }

    fn openssl_verify(dir: &Path, ca: &SealCa, leaf: &X509) -> (bool, String) {
        std::fs::write(dir.join("ca.pem"), ca.certificate_pem()).unwrap();
        std::fs::write(dir.join("leaf.pem"), leaf.to_pem().unwrap()).unwrap();
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(["verify", "-CAfile", "ca.pem", "leaf.pem"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn ca_certificate_has_ca_extensions() {
        let now = storage::clock::now_utc();
        let ca = SealCa::create("certgate 电子印章 CA", now, 3650).unwrap();
        let cert = ca.certificate();
        assert_eq!(JwsSigner::alg(ca.key()), JwsAlg::Es256);
        assert!(cert.subject_key_id().is_some());
        let serial = cert.serial_number().to_bn().unwrap();
        assert_eq!(serial.num_bytes(), 16);
        assert!(!serial.is_negative());
        let start = Asn1Time::from_unix((now - Duration::hours(1)).unix_timestamp()).unwrap();
        assert_eq!(
            cert.not_before().compare(&start).unwrap(),
            std::cmp::Ordering::Equal
        );
        // Self-signed CA verifies against itself.
        verify_chain(cert, &[], std::slice::from_ref(cert), now).unwrap();
        let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    }

    #[test]
    fn seal_certificates_chain_to_the_ca_for_both_algorithms() {
        let now = storage::clock::now_utc();
        let ca = SealCa::create("certgate seal CA", now, 3650).unwrap();
        let trusted = [ca.certificate().clone()];
        for alg in [JwsAlg::Es256, JwsAlg::Sm2Sm3] {
            let (key, cert) = issue(&ca, alg, now);
            verify_chain(&cert, &[], &trusted, now).unwrap();

            // The certified key is the seal key, typed for its algorithm, and still signs.
            let public = PublicKey::from_certificate(&cert).unwrap();
            assert_eq!(&public, key.public_key());
            assert_eq!(JwsVerifier::alg(&public), alg);
            assert!(public.verify(b"seal", &key.sign(b"seal").unwrap()));

            assert_eq!(
                certificate_owner(&cert),
                Some((USCC.to_owned(), SEAL_NAME.to_owned()))
            );
            let text = String::from_utf8(cert.to_text().unwrap()).unwrap();
            assert!(text.contains("CA:FALSE"), "{text}");
            assert!(
                text.contains("Digital Signature, Non Repudiation"),
                "{text}"
            );
            assert!(text.contains("ecdsa-with-SHA256"), "{text}");
            assert_eq!(
                cert.authority_key_id().unwrap().as_slice(),
                ca.certificate().subject_key_id().unwrap().as_slice()
            );
        }
    }

    #[test]
    fn chain_failures_carry_openssl_reasons() {
        let now = storage::clock::now_utc();
        let ca = SealCa::create("certgate seal CA", now, 3650).unwrap();
        let trusted = [ca.certificate().clone()];
        let (_, cert) = issue(&ca, JwsAlg::Sm2Sm3, now);

        let rogue = SealCa::create("rogue CA", now, 3650).unwrap();
        assert_eq!(
            verify_chain(rogue.certificate(), &[], &trusted, now),
            Err(ChainError::Rejected("self-signed certificate".to_owned()))
        );

        let (_, foreign) = issue(&rogue, JwsAlg::Es256, now);
        assert_eq!(
            verify_chain(&foreign, &[], &trusted, now),
            Err(ChainError::Rejected(
                "unable to get local issuer certificate".to_owned()
            ))
        );

        assert_eq!(
            verify_chain(&cert, &[], &trusted, now + Duration::days(366)),
            Err(ChainError::Rejected("certificate has expired".to_owned()))
        );
        assert_eq!(
            verify_chain(&cert, &[], &trusted, now - Duration::days(1)),
            Err(ChainError::Rejected(
                "certificate is not yet valid".to_owned()
            ))
        );
        // Verification happens at `at`, not at the wall clock: a year on it still is fine.
        verify_chain(&cert, &[], &trusted, now + Duration::days(300)).unwrap();
    }

    #[test]
    fn openssl_cli_accepts_both_seal_certificates() {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("openssl CLI not installed; skipping");
            return;
        }
        let now = storage::clock::now_utc();
        let ca = SealCa::create("certgate seal CA", now, 3650).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for alg in [JwsAlg::Es256, JwsAlg::Sm2Sm3] {
            let (_, cert) = issue(&ca, alg, now);
            let (ok, output) = openssl_verify(dir.path(), &ca, &cert);
            assert!(ok, "{alg:?}: {output}");
            assert!(output.contains("leaf.pem: OK"), "{alg:?}: {output}");
        }
        let rogue = SealCa::create("rogue CA", now, 3650).unwrap();
        let (_, foreign) = issue(&rogue, JwsAlg::Es256, now);
        let (ok, output) = openssl_verify(dir.path(), &ca, &foreign);
        assert!(!ok, "{output}");
    }

    #[test]
    fn from_parts_round_trip_and_mismatch() {
        let now = storage::clock::now_utc();
        let ca = SealCa::create("certgate seal CA", now, 30).unwrap();
        let pkcs8 = ca.key().to_pkcs8_der().unwrap();
        let key = SealKey::from_pkcs8_der(JwsAlg::Es256, &pkcs8).unwrap();
        let again = SealCa::from_parts(ca.certificate_pem().as_bytes(), key).unwrap();
        let (_, cert) = issue(&again, JwsAlg::Es256, now);
        verify_chain(&cert, &[], &[ca.certificate().clone()], now).unwrap();

        let other = SealKey::generate(JwsAlg::Es256).unwrap();
        assert!(matches!(
            SealCa::from_parts(ca.certificate_pem().as_bytes(), other),
            Err(CryptoError::BadKey(_))
        ));
        let sm2 = SealKey::generate(JwsAlg::Sm2Sm3).unwrap();
        assert_eq!(
            SealCa::from_parts(ca.certificate_pem().as_bytes(), sm2).unwrap_err(),
            CryptoError::WrongAlgorithm
        );
    }

    #[test]
    fn issuing_refuses_nonsense() {
        let now = storage::clock::now_utc();
        let ca = SealCa::create("certgate seal CA", now, 30).unwrap();
        let key = SealKey::generate(JwsAlg::Es256).unwrap();
        let issue = |name: &str, from, to| {
            ca.issue_seal_certificate(key.public_key(), &owner(), name, from, to)
        };
        assert!(matches!(
            issue(" ", now, now + Duration::days(1)),
            Err(CryptoError::Invalid(_))
        ));
        assert!(matches!(
            issue(SEAL_NAME, now, now),
            Err(CryptoError::Invalid(_))
        ));
        assert!(matches!(
            SealCa::create("", now, 30),
            Err(CryptoError::Invalid(_))
        ));
    }

    #[test]
    fn certificate_owner_needs_both_fields() {
        let now = storage::clock::now_utc();
        let ca = SealCa::create("certgate seal CA", now, 30).unwrap();
        assert_eq!(certificate_owner(ca.certificate()), None);
    }
}
