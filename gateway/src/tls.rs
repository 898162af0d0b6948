//! TLS material: the server certificate, the trust anchors for department certificates, the
//! CRLs, and the `rustls::ServerConfig` built from them. Rebuilt whole on every reload.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::server::{StoresServerSessions, WebPkiClientVerifier};
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

impl TlsMaterial {
    /// Loads the files named in `settings`. `sessions` is shared across reloads so that a
    /// session resumed after a reload is still checked against the current revocation list.
    pub fn load(
        settings: &TlsSettings,
        sessions: Arc<dyn StoresServerSessions>,
    ) -> Result<TlsMaterial, TlsError> {
        install_crypto_provider();
        let chain = read_certs("tls.cert", &settings.cert)?;
        let key = PrivateKeyDer::from_pem_file(&settings.key)
            .map_err(|e| file_error("tls.key", &settings.key, e))?;

        let mut roots = RootCertStore::empty();
        for (i, path) in settings.client_ca.iter().enumerate() {
            let key = format!("tls.client_ca[{i}]");
            for cert in read_certs(&key, path)? {
                roots.add(cert).map_err(|e| file_error(&key, path, e))?;
            }
        }
        let trust_anchors = roots.len();

        let mut crls = Vec::new();
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
                collect_revoked(crl, &mut revoked).map_err(|e| file_error(&key, path, e))?;
            }
            crls.extend(found);
        }
        let crl_count = crls.len();

        let mut verifier = WebPkiClientVerifier::builder(Arc::new(roots)).with_crls(crls);
        if settings.allow_unknown_revocation_status {
            verifier = verifier.allow_unknown_revocation_status();
        }
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = sessions;
        Ok(TlsMaterial {
            server_config: Arc::new(config),
            revoked,
            trust_anchors,
            crls: crl_count,
        })
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
