//! Caller identity, read once per connection from the verified client certificate.
//!
//! The department comes from the certificate's SAN URI `urn:certgate:dept:<USCC>`; its name,
//! roles and enabled flag come from the department table. Nothing later in the request path
//! looks at the certificate again: handlers receive a [`Caller`].

use std::collections::BTreeSet;

use cert_store::Uscc;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use crate::config::{DepartmentTable, Role};
use crate::tls::RevokedSerials;

/// The SAN URI prefix that names a department in its client certificate.
pub const DEPT_URI_PREFIX: &str = "urn:certgate:dept:";

/// Facts about the client certificate, kept for the response to `/v1/whoami` and for logs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CertificateFacts {
    /// Subject distinguished name (RFC 4514 form).
    pub subject: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub fingerprint_sha256: String,
}

/// An authenticated department system.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Caller {
    /// The department's USCC.
    #[schema(value_type = String, example = "11110100MB0143027D")]
    pub department: Uscc,
    /// The department's name from the department table.
    pub name: String,
    /// The roles granted in the department table.
    #[schema(value_type = Vec<String>)]
    pub roles: BTreeSet<Role>,
    /// The certificate the caller presented.
    pub certificate: CertificateFacts,
}

impl Caller {
    /// True when the department holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a connection's caller is refused after a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No certificate reached the application (cannot happen while certificates are required).
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The certificate's department identity is missing, repeated or not a valid USCC.
    #[error("the client certificate does not name a department: {0}")]
    MalformedIdentity(String),
    /// The department is not in the department table.
    #[error("department {0} is not known to this gateway")]
    UnknownDepartment(Uscc),
    /// The department is in the table but disabled.
    #[error("department {0} is disabled")]
    DepartmentDisabled(Uscc),
    /// The certificate's serial is in a CRL loaded since the session began.
    #[error("the client certificate has been revoked")]
    Revoked,
}

/// The outcome of identifying a connection: facts about the certificate when there is one,
/// and either the caller or the reason for refusing it.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// Facts about the presented certificate, when one could be read.
    pub certificate: Option<CertificateFacts>,
    /// Raw issuer name and raw serial of the certificate, to check against CRLs loaded later.
    pub revocation_key: Option<(Vec<u8>, Vec<u8>)>,
    /// The caller, or why it is refused.
    pub caller: Result<Caller, Refusal>,
}

/// Identifies the peer from its verified certificate chain (leaf first).
pub fn identify(
    chain: Option<&[CertificateDer<'_>]>,
    departments: &DepartmentTable,
    revoked: &RevokedSerials,
) -> PeerIdentity {
    let Some(leaf) = chain.and_then(|c| c.first()) else {
        return PeerIdentity {
            certificate: None,
            revocation_key: None,
            caller: Err(Refusal::NoCertificate),
        };
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return PeerIdentity {
            certificate: None,
            revocation_key: None,
            caller: Err(Refusal::MalformedIdentity(
                "certificate cannot be parsed".into(),
            )),
        };
    };
    let facts = CertificateFacts {
        subject: cert.subject().to_string(),
        serial: hex::encode(cert.raw_serial()),
        fingerprint_sha256: hex::encode(Sha256::digest(leaf.as_ref())),
    };
    let caller = (|| {
        if revoked.contains(cert.issuer().as_raw(), cert.raw_serial()) {
            return Err(Refusal::Revoked);
        }
        let id = department_of(&cert)?;
        let dept = departments
            .get(&id)
            .ok_or_else(|| Refusal::UnknownDepartment(id.clone()))?;
        if !dept.enabled {
            return Err(Refusal::DepartmentDisabled(id));
        }
        Ok(Caller {
            department: id,
            name: dept.name.clone(),
            roles: dept.roles.clone(),
            certificate: facts.clone(),
        })
    })();
    PeerIdentity {
        certificate: Some(facts),
        revocation_key: Some((cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec())),
        caller,
    }
}

/// Reads the one `urn:certgate:dept:<USCC>` SAN URI of the certificate.
fn department_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Uscc, Refusal> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Refusal::MalformedIdentity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| Refusal::MalformedIdentity("no subjectAltName".into()))?;
    let mut found = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(DEPT_URI_PREFIX),
            _ => None,
        });
    let Some(code) = found.next() else {
        return Err(Refusal::MalformedIdentity(format!(
            "no {DEPT_URI_PREFIX}<USCC> URI in subjectAltName"
        )));
    };
    if found.next().is_some() {
        return Err(Refusal::MalformedIdentity(
            "more than one department URI in subjectAltName".into(),
        ));
    }
    code.parse()
        .map_err(|e| Refusal::MalformedIdentity(format!("department code: {e}")))
}
