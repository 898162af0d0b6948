//! A development PKI for running and testing certgate: a root CA, a server certificate for
//! localhost, department client certificates and a CRL. Production deployments use their own
//! CA; certgate only needs its certificates and CRLs in PEM files.
//!
//! Layout of a PKI directory: `ca.pem`, `ca.key`, `server.pem`, `server.key`, `crl.pem`,
//! `<name>.pem` / `<name>.key` per client, and `pki-state.json` (CRL number, revoked serials).
//! Private keys are written with mode 0600.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use cert_store::Uscc;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::identity::DEPT_URI_PREFIX;

/// An error of the development PKI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `pki init` on a directory that already holds a CA.
    #[error("{0} already holds a CA (ca.pem); refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    /// A command that needs a CA on a directory without one.
    #[error("{0} holds no CA (ca.pem / ca.key); run `certgate pki init --dir {0}` first")]
    NotInitialised(PathBuf),
    /// A client name that is not a safe file stem.
    #[error(
        "`{0}` is not a valid certificate name: use 1-64 of A-Z a-z 0-9 _ - (not ca, server or crl)"
    )]
    BadName(String),
    /// A client certificate of that name already exists.
    #[error("a certificate named `{0}` already exists")]
    Exists(String),
    /// No client certificate of that name.
    #[error("no certificate named `{0}` in the PKI directory")]
    UnknownCertificate(String),
    /// The certificate is already in the CRL.
    #[error("certificate `{0}` is already revoked")]
    AlreadyRevoked(String),
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Certificate(String),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Certificate(e.to_string())
    }
}

/// Validity of the development root CA.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of server and client certificates.
const LEAF_VALIDITY: Duration = Duration::days(825);
/// How long a CRL is current.
const CRL_VALIDITY: Duration = Duration::days(30);

/// What to put in a client certificate. Tests use the odd settings to build certificates
/// that the gateway must refuse.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// File stem of `<name>.pem` / `<name>.key`.
    pub name: String,
    /// Subject common name.
    pub common_name: String,
    /// SAN URIs; a department certificate has exactly one `urn:certgate:dept:<USCC>`.
    pub san_uris: Vec<String>,
    /// Include EKU clientAuth (department certificates must).
    pub client_auth: bool,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl ClientSpec {
    /// A department client certificate valid from `now`.
    pub fn department(name: &str, dept: &Uscc, now: OffsetDateTime) -> ClientSpec {
        ClientSpec {
            name: name.to_owned(),
            common_name: name.to_owned(),
            san_uris: vec![format!("{DEPT_URI_PREFIX}{dept}")],
            client_auth: true,
            not_before: now - Duration::hours(1),
            not_after: now + LEAF_VALIDITY,
        }
    }
}

/// Paths of one issued client certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (mode 0600).
    pub key: PathBuf,
    /// The serial, lower-case hex.
    pub serial: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PkiState {
    crl_number: u64,
    revoked: Vec<RevokedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RevokedEntry {
    name: String,
    serial: String,
    revoked_at: i64,
}

/// An open development CA.
pub struct DevCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    state: PkiState,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the CA key.
        f.debug_struct("DevCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Creates a CA, a server certificate for localhost, 127.0.0.1 and ::1, and an empty CRL.
    pub fn init(dir: &Path, now: OffsetDateTime) -> Result<DevCa, PkiError> {
        if dir.join("ca.pem").exists() {
            return Err(PkiError::AlreadyInitialised(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;

        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        // A distinct name per CA, so that a certificate from another development PKI is
        // refused as coming from an unknown CA rather than matched to ours by name.
        let mut tag = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut tag);
        params.distinguished_name = name(&format!(
            "certgate development root CA {}",
            hex::encode(tag)
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let ca = CertifiedIssuer::self_signed(params, ca_key)?;
        write_private(&dir.join("ca.key"), &ca.key().serialize_pem())?;
        write_public(&dir.join("ca.pem"), &ca.pem())?;

        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("localhost");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let server = params.signed_by(&server_key, &ca)?;
        write_private(&dir.join("server.key"), &server_key.serialize_pem())?;
        write_public(&dir.join("server.pem"), &server.pem())?;

        let mut ca = DevCa::open(dir)?;
        ca.write_crl(now)?;
        Ok(ca)
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<DevCa, PkiError> {
        let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !ca_pem.exists() || !ca_key.exists() {
            return Err(PkiError::NotInitialised(dir.to_owned()));
        }
        let key = KeyPair::from_pem(&read(&ca_key)?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(&ca_pem)?, key)?;
        let state_path = dir.join("pki-state.json");
        let state = if state_path.exists() {
            serde_json::from_str(&read(&state_path)?)
                .map_err(|e| PkiError::Certificate(format!("{}: {e}", state_path.display())))?
        } else {
            PkiState::default()
        };
        Ok(DevCa {
            dir: dir.to_owned(),
            issuer,
            state,
        })
    }

    /// Opens the CA in `dir`, creating it first when the directory holds none.
    pub fn open_or_init(dir: &Path, now: OffsetDateTime) -> Result<DevCa, PkiError> {
        if dir.join("ca.pem").exists() {
            DevCa::open(dir)
        } else {
            DevCa::init(dir, now)
        }
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a client certificate and writes `<name>.pem` and `<name>.key`.
    pub fn issue_client(&self, spec: &ClientSpec) -> Result<Issued, PkiError> {
        check_name(&spec.name)?;
        let cert_path = self.dir.join(format!("{}.pem", spec.name));
        if cert_path.exists() {
            return Err(PkiError::Exists(spec.name.clone()));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&spec.common_name);
        params.subject_alt_names = spec
            .san_uris
            .iter()
            .map(|u| Ok(SanType::URI(u.as_str().try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = if spec.client_auth {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_path = self.dir.join(format!("{}.key", spec.name));
        write_private(&key_path, &key.serialize_pem())?;
        write_public(&cert_path, &cert.pem())?;
        Ok(Issued {
            cert: cert_path,
            key: key_path,
            serial: hex::encode(serial.to_bytes()),
        })
    }

    /// Adds the certificate `<name>.pem` to the CRL and writes a new `crl.pem`.
    pub fn revoke(&mut self, name: &str, now: OffsetDateTime) -> Result<String, PkiError> {
        check_name(name)?;
        let path = self.dir.join(format!("{name}.pem"));
        if !path.exists() {
            return Err(PkiError::UnknownCertificate(name.to_owned()));
        }
        let pem = read(&path)?;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| PkiError::Certificate(format!("{}: {e}", path.display())))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| PkiError::Certificate(format!("{}: {e}", path.display())))?;
        let serial = hex::encode(cert.raw_serial());
        if self.state.revoked.iter().any(|r| r.serial == serial) {
            return Err(PkiError::AlreadyRevoked(name.to_owned()));
        }
        self.state.revoked.push(RevokedEntry {
            name: name.to_owned(),
            serial: serial.clone(),
            revoked_at: now.unix_timestamp(),
        });
        if let Err(e) = self.write_crl(now) {
            self.state.revoked.pop();
            return Err(e);
        }
        Ok(serial)
    }

    /// Signs a CRL of every revoked serial with the next CRL number and writes it atomically,
    /// then records the number in `pki-state.json`.
    fn write_crl(&mut self, now: OffsetDateTime) -> Result<(), PkiError> {
        let number = self.state.crl_number + 1;
        let revoked_certs = self
            .state
            .revoked
            .iter()
            .map(|r| {
                let bytes = hex::decode(&r.serial)
                    .map_err(|e| PkiError::Certificate(format!("serial {}: {e}", r.serial)))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at)
                        .unwrap_or(now),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)?;
        write_public(&self.dir.join("crl.pem"), &crl.pem()?)?;
        self.state.crl_number = number;
        let json = serde_json::to_string_pretty(&self.state)
            .map_err(|e| PkiError::Certificate(e.to_string()))?;
        write_public(&self.dir.join("pki-state.json"), &json)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certgate");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A random positive 16-byte serial whose first byte is never zero, so its DER encoding is
/// exactly these bytes.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        tracing::error!("system random number generator failed");
    }
    bytes[0] = 0x40 | (bytes[0] & 0x3f);
    SerialNumber::from_slice(&bytes)
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !["ca", "server", "crl", "pki-state"].contains(&name);
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_owned()))
    }
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| io(path, source))
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o644)
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o600)
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file. The
/// temporary file has a random name and is created new (never an existing file or a link
/// someone left there), with its mode set on the open file.
fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| {
        io(
            path,
            std::io::Error::other("no randomness for a temporary name"),
        )
    })?;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(suffix)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|source| io(&tmp, source))?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&tmp, source))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|source| io(path, source)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_issue_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let now = storage::clock::now_utc();
        let mut ca = DevCa::init(dir.path(), now).unwrap();
        assert!(matches!(
            DevCa::init(dir.path(), now),
            Err(PkiError::AlreadyInitialised(_))
        ));
        let dept: Uscc = "11110105MB0000001C".parse().unwrap();
        let issued = ca
            .issue_client(&ClientSpec::department("approval", &dept, now))
            .unwrap();
        for key in ["ca.key", "server.key", "approval.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        assert!(matches!(
            ca.issue_client(&ClientSpec::department("approval", &dept, now)),
            Err(PkiError::Exists(_))
        ));
        let serial = ca.revoke("approval", now).unwrap();
        assert_eq!(serial, issued.serial);
        assert!(matches!(
            ca.revoke("approval", now),
            Err(PkiError::AlreadyRevoked(_))
        ));
        assert!(matches!(
            ca.revoke("nobody", now),
            Err(PkiError::UnknownCertificate(_))
        ));

        let crl = std::fs::read(dir.path().join("crl.pem")).unwrap();
        let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&crl).unwrap();
        let (_, parsed) = x509_parser::parse_x509_crl(der.as_ref()).unwrap();
        let serials: Vec<String> = parsed
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![serial]);
        assert_eq!(
            parsed.crl_number().map(|n| n.to_string()),
            Some("2".to_owned())
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = storage::clock::now_utc();
        let ca = DevCa::init(dir.path(), now).unwrap();
        let dept: Uscc = "11110105MB0000001C".parse().unwrap();
        for bad in [
            "",
            "../escape",
            "a/b",
            "ca",
            "server",
            "x.pem",
            "名字",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(
                    ca.issue_client(&ClientSpec::department(bad, &dept, now)),
                    Err(PkiError::BadName(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            DevCa::open(&dir.path().join("missing")),
            Err(PkiError::NotInitialised(_))
        ));
    }
}
