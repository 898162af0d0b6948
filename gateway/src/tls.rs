//! TLS material: the server certificate, the trust anchors for department certificates, the
//! CRLs, and the `rustls::ServerConfig` built from them. Rebuilt whole on every reload.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::CertificateError;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::TlsSettings;

/// An error loading TLS material, naming the configuration key of the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("configuration key `{key}` ({path}): {reason}")]
    File {
        /// The configuration key that names the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the assembled configuration (for example, key and certificate differ).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// The serials listed in the configured CRLs, by issuer, checked on every connection so that
/// a resumed TLS session cannot outlive a revocation.
#[derive(Debug, Default, Clone)]
pub struct RevokedSerials {
    /// Raw serials by raw issuer name.
    by_issuer: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
}

impl RevokedSerials {
    /// True when a CRL of the issuer with this raw name was loaded.
    pub fn covers(&self, issuer_raw: &[u8]) -> bool {
        self.by_issuer.contains_key(issuer_raw)
    }

    /// True when the certificate with this raw issuer name and raw serial is revoked.
    pub fn contains(&self, issuer_raw: &[u8], serial_raw: &[u8]) -> bool {
        self.by_issuer
            .get(issuer_raw)
            .is_some_and(|serials| serials.contains(serial_raw))
    }

    /// Number of revoked serials known.
    pub fn len(&self) -> usize {
        self.by_issuer.values().map(HashSet::len).sum()
    }

    /// True when no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything TLS needs for one generation of configuration.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The rustls configuration for the mTLS listener.
    pub server_config: Arc<ServerConfig>,
    /// Serials revoked by the configured CRLs.
    pub revoked: RevokedSerials,
    /// Number of trust anchors loaded.
    pub trust_anchors: usize,
    /// Number of CRLs loaded.
    pub crls: usize,
}

/// Installs the process's one crypto provider (aws-lc-rs). Safe to call more than once.
pub fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means another provider is already installed, which is what we want anyway.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// What lets a department resume a TLS session instead of a full handshake, kept across
/// configuration reloads: the server's session cache, and the keys of session tickets (TLS 1.3
/// stateless resumption; a new key every 6 hours, a ticket accepted for 12). A resumed
/// connection carries the certificate of the handshake it resumes, and every request on it is
/// checked against the revocation list in force then, as on any connection.
#[derive(Clone)]
pub struct Resumption {
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn ProducesTickets>,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("tickets", &self.tickets.enabled())
            .finish_non_exhaustive()
    }
}

impl Resumption {
    /// A cache of `sessions` sessions and a fresh ticket key.
    pub fn new(sessions: usize) -> Result<Resumption, TlsError> {
        install_crypto_provider();
        Ok(Resumption {
            sessions: rustls::server::ServerSessionMemoryCache::new(sessions),
            tickets: rustls::crypto::aws_lc_rs::Ticketer::new()
                .map_err(|e| TlsError::Config(format!("session ticket keys: {e}")))?,
        })
    }
}

impl TlsMaterial {
    /// Loads the files named in `settings`, with `resumption` shared across reloads.
    pub fn load(settings: &TlsSettings, resumption: &Resumption) -> Result<TlsMaterial, TlsError> {
        install_crypto_provider();
        let chain = read_certs("tls.cert", &settings.cert)?;
        let key = PrivateKeyDer::from_pem_file(&settings.key)
            .map_err(|e| file_error("tls.key", &settings.key, e))?;

        let mut roots = RootCertStore::empty();
        let mut ca_certs = Vec::new();
        for (i, path) in settings.client_ca.iter().enumerate() {
            let key = format!("tls.client_ca[{i}]");
            for cert in read_certs(&key, path)? {
                ca_certs.push(
                    openssl::x509::X509::from_der(cert.as_ref())
                        .map_err(|e| file_error(&key, path, e))?,
                );
                roots.add(cert).map_err(|e| file_error(&key, path, e))?;
            }
        }
        let trust_anchors = roots.len();

        let mut crls = 0;
        let mut revoked = RevokedSerials::default();
        for (i, path) in settings.crls.iter().enumerate() {
            let key = format!("tls.crls[{i}]");
            let found: Vec<CertificateRevocationListDer<'static>> =
                CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|e| file_error(&key, path, e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| file_error(&key, path, e))?;
            if found.is_empty() {
                return Err(file_error(&key, path, "no X509 CRL in the file"));
            }
            for crl in &found {
                verify_crl(crl, &ca_certs).map_err(|e| file_error(&key, path, e))?;
                collect_revoked(crl, &mut revoked).map_err(|e| file_error(&key, path, e))?;
            }
            crls += found.len();
        }
        let crl_count = crls;

        // The chain is checked by webpki; revocation against the CRLs verified above, once,
        // rather than verifying every CRL's signature again in every handshake.
        let chain_verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(RevocationChecked {
            chain: chain_verifier,
            revoked: revoked.clone(),
            allow_unknown: settings.allow_unknown_revocation_status,
        });
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = resumption.sessions.clone();
        config.ticketer = resumption.tickets.clone();
        Ok(TlsMaterial {
            server_config: Arc::new(config),
            revoked,
            trust_anchors,
            crls: crl_count,
        })
    }
}

/// Checks that `crl` is signed by one of the trust anchors (the one that issued it).
fn verify_crl(
    crl: &CertificateRevocationListDer<'_>,
    cas: &[openssl::x509::X509],
) -> Result<(), String> {
    let crl = openssl::x509::X509Crl::from_der(crl.as_ref()).map_err(|e| e.to_string())?;
    let issuer = crl.issuer_name().to_der().map_err(|e| e.to_string())?;
    for ca in cas {
        if ca.subject_name().to_der().ok().as_deref() != Some(issuer.as_slice()) {
            continue;
        }
        let key = ca.public_key().map_err(|e| e.to_string())?;
        if crl.verify(&key).map_err(|e| e.to_string())? {
            return Ok(());
        }
    }
    Err("the CRL is not signed by any configured client CA".into())
}

/// Client certificates: the chain checked by webpki, revocation against the CRLs loaded (and
/// verified) at start or reload — the presented certificates' serials looked up by issuer.
#[derive(Debug)]
struct RevocationChecked {
    chain: Arc<dyn ClientCertVerifier>,
    revoked: RevokedSerials,
    allow_unknown: bool,
}

impl ClientCertVerifier for RevocationChecked {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        for (i, cert) in std::iter::once(end_entity).chain(intermediates).enumerate() {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            // webpki checks the clientAuth purpose only when the certificate has an EKU
            // extension at all; a department certificate must carry it.
            if i == 0
                && !parsed
                    .extended_key_usage()
                    .ok()
                    .flatten()
                    .is_some_and(|eku| eku.value.client_auth)
            {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose,
                ));
            }
            let issuer = parsed.tbs_certificate.issuer.as_raw();
            if self
                .revoked
                .contains(issuer, parsed.tbs_certificate.raw_serial())
            {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
            if !self.allow_unknown && !self.revoked.covers(issuer) {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownRevocationStatus,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn collect_revoked(
    crl: &CertificateRevocationListDer<'_>,
    into: &mut RevokedSerials,
) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| e.to_string())?;
    let serials = into
        .by_issuer
        .entry(parsed.tbs_cert_list.issuer.as_raw().to_vec())
        .or_default();
    for entry in parsed.iter_revoked_certificates() {
        serials.insert(entry.raw_serial().to_vec());
    }
    Ok(())
}

fn file_error(key: &str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key: key.to_owned(),
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsSettings;
    use crate::pki::DevCa;

    fn settings(ca_dir: &Path, crl: &Path) -> TlsSettings {
        TlsSettings {
            cert: ca_dir.join("server.pem"),
            key: ca_dir.join("server.key"),
            client_ca: vec![ca_dir.join("ca.pem")],
            crls: vec![crl.to_owned()],
            allow_unknown_revocation_status: false,
        }
    }

    #[test]
    fn a_crl_not_signed_by_a_client_ca_is_refused_at_load() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let now = storage::clock::now_utc();
        DevCa::init(a.path(), now).unwrap();
        DevCa::init(b.path(), now).unwrap();
        let sessions = || Resumption::new(16).unwrap();
        let own = TlsMaterial::load(&settings(a.path(), &a.path().join("crl.pem")), &sessions());
        assert!(own.is_ok(), "{own:?}");
        let foreign =
            TlsMaterial::load(&settings(a.path(), &b.path().join("crl.pem")), &sessions());
        match foreign {
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("tls.crls[0]"), "{text}");
                assert!(
                    text.contains("not signed by any configured client CA"),
                    "{text}"
                );
            }
            Ok(_) => panic!("a CRL of another CA was accepted"),
        }
    }
}
