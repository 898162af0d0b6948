//! The gateway's shared state: fixed settings, the reloadable part (TLS acceptor, department
//! table, revoked serials) behind an atomic pointer, and the metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;
use storage::bus::{Change, Notice};
use tokio_rustls::TlsAcceptor;

use cert_store::service::{LicenceService, ServiceError};

use crate::config::{AccessRule, Config, ConfigError, DepartmentTable, ServerSettings};
use crate::error::{ApiError, Code};
use crate::metrics::Metrics;
use crate::tls::{RevokedSerials, TlsError, TlsMaterial};
use exchange::Exchange;
use tlog::AccessLog;

/// How many TLS sessions the server remembers for resumption.
pub(crate) const SESSION_CACHE_SIZE: usize = 4096;

/// The part of the configuration that a reload replaces. Connections take a snapshot of it
/// when they are accepted; a reload never touches an open connection.
pub struct Live {
    /// Accepts TLS with the current certificate, trust anchors and CRLs.
    pub acceptor: TlsAcceptor,
    /// The current department table.
    pub departments: DepartmentTable,
    /// Serials revoked by the current CRLs.
    pub revoked: RevokedSerials,
    /// Who may read which licence fields for which purposes.
    pub access_rules: Vec<AccessRule>,
    /// What was loaded.
    pub summary: LoadSummary,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// What a (re)load put in force.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoadSummary {
    /// Departments in the table.
    pub departments: usize,
    /// Trust anchors for client certificates.
    pub trust_anchors: usize,
    /// CRLs loaded.
    pub crls: usize,
    /// Serials revoked by those CRLs.
    pub revoked_serials: usize,
    /// The configuration's sections a reload puts in force; every other setting stays as read
    /// at start until a restart.
    pub reloaded: Vec<String>,
}

/// The configuration's sections a reload reads again.
pub const RELOADED: &[&str] = &["departments", "tls", "access_rules"];

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The TLS material is invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The embedded store could not be opened.
    #[error("cannot open the store {path}: {reason}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The access log could not be opened, or does not match its last checkpoint.
    #[error("cannot open the access log: {0}")]
    AccessLog(tlog::LogError),
    /// The licence service could not start (keys could not be loaded or created).
    #[error("cannot start the licence service: {0}")]
    Licences(ServiceError),
    /// The policy knowledge base could not be opened.
    #[error("cannot open the policy knowledge base: {0}")]
    Policies(String),
    /// An upstream source system's client could not be built (bad CA or client certificate).
    #[error("cannot set up the exchange: {0}")]
    Exchange(#[from] exchange::UpstreamError),
}

/// Why a reload failed; the previous configuration stays in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The configuration file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS material it names is invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// State shared by every connection of one gateway process.
#[derive(Debug)]
pub struct Gateway {
    /// Listener addresses, limits and timeouts; fixed until restart.
    pub settings: ServerSettings,
    /// The request metrics.
    pub metrics: Metrics,
    pub(crate) config_path: PathBuf,
    pub(crate) live: ArcSwap<Live>,
    pub(crate) licences: Arc<LicenceService>,
    /// The tamper-evident access log.
    pub access_log: AccessLog,
    /// The shared-data exchange: source systems, cache, proof types.
    pub exchange: Arc<Exchange>,
    /// With a shared PostgreSQL store: tells the other nodes what this one invalidated.
    pub(crate) bus: Option<Arc<storage::PgPool>>,
    /// This process's id in those notifications.
    pub(crate) node_id: String,
    /// The policy knowledge base.
    pub policies: Arc<policies::KnowledgeBase>,
    /// The department that maintains enterprise profiles.
    pub profile_owner: Option<cert_store::Uscc>,
    /// Turns holder ids into the pseudonyms the access log records.
    pub(crate) pseudonym_key: aws_lc_rs::hmac::Key,
    /// The access log's verifier key (`GET /v1/audit/log-key`).
    pub log_verifier_key: String,
    /// TLS session cache and ticket keys, kept across reloads.
    pub(crate) resumption: crate::tls::Resumption,
    pub(crate) shutting_down: AtomicBool,
    /// The departments' request budgets.
    pub(crate) rate_limiter: crate::rate_limit::RateLimiter,
    /// Connection slots of the mTLS listener (`server.max_connections`).
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// Exports streaming now, each on a blocking thread of its own: at most
    /// [`crate::audit::MAX_EXPORTS`], so that slow readers cannot take the blocking pool.
    pub export_slots: Arc<tokio::sync::Semaphore>,
    /// Handshakes pending per source, and the summaries of refused ones.
    pub preauth: crate::preauth::PreAuth,
    /// How long a window of refused handshakes is summarised over.
    pub refusal_window: std::time::Duration,
    /// The JSON bodies of licence views recently answered.
    pub(crate) views: crate::view_cache::ViewCache,
}

impl Gateway {
    /// The configuration in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Reads the configuration file again and puts its department table, trust anchors and
    /// CRLs in force for the next connection. Listener settings need a restart.
    pub fn reload(&self) -> Result<LoadSummary, ReloadError> {
        let result = Config::load(&self.config_path)
            .map_err(ReloadError::from)
            .and_then(|config| Ok(build_live(&config, &self.resumption)?));
        match result {
            Ok(live) => {
                let summary = live.summary.clone();
                self.live.store(Arc::new(live));
                tracing::info!(?summary, "configuration reloaded");
                Ok(summary)
            }
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!(error = %e, "configuration reload failed; previous configuration stays in force");
                Err(e)
            }
        }
    }

    /// The keyed pseudonym of a holder id, as the access log records it.
    pub fn pseudonym(&self, holder: &str) -> String {
        lower_hex(aws_lc_rs::hmac::sign(&self.pseudonym_key, holder.as_bytes()).as_ref())
    }

    /// The licence and seal service.
    pub fn licence_service(&self) -> &LicenceService {
        &self.licences
    }

    /// Runs `f` on the licence service on a blocking thread (SQLite and signatures block),
    /// with the current time.
    pub async fn licences<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LicenceService, i64) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let svc = self.licences.clone();
        tokio::task::spawn_blocking(move || f(&svc, unix_now()))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "licence task failed");
                ApiError::internal()
            })?
            .map_err(ApiError::from)
    }

    /// Applies an invalidation here and tells the other nodes sharing the database.
    pub async fn invalidate(&self, change: Change) {
        apply(&self.exchange, &self.licences, &change).await;
        if let Some(pg) = &self.bus {
            let notice = Notice {
                node: self.node_id.clone(),
                change,
            };
            let pg = pg.clone();
            let sent = tokio::task::spawn_blocking(move || pg.notify(&notice)).await;
            if !matches!(sent, Ok(Ok(()))) {
                // The others resynchronise when they reconnect; a lost notice is logged.
                tracing::error!("cannot notify the other nodes of an invalidation");
            }
        }
    }

    /// Takes one request of `class` from `caller`'s budget (from the current department
    /// table); when it is spent, the 429 answer with `Retry-After`, counted in the metrics.
    pub fn rate_limited(
        &self,
        caller: &crate::identity::Caller,
        class: crate::config::RouteClass,
    ) -> Option<axum::response::Response> {
        let limits = self.live().departments.get(&caller.department)?.rate_limits;
        let wait = self
            .rate_limiter
            .take(
                &caller.department,
                class,
                &limits,
                std::time::Instant::now(),
            )
            .err()?;
        self.metrics
            .rate_limited
            .get_or_create(&crate::metrics::RateLabels {
                department: caller.department.to_string(),
                class: class.as_str(),
            })
            .inc();
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        Some(
            ApiError::new(
                Code::RateLimited,
                format!(
                    "this department's {} budget ({}/s) is spent; retry after {seconds} s",
                    class.as_str(),
                    limits.rate(class)
                ),
            )
            .retry_after(seconds),
        )
    }

    /// Marks the gateway as shutting down: `/readyz` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// What is still running, for the log line of a shutdown that ran out of time.
    pub fn shutdown_report(&self) -> String {
        format!(
            "{} connection(s) open, {} in handshake, access log at {} leaves ({} covered by a checkpoint)",
            self.metrics.open_connections.get(),
            self.metrics.handshaking.get(),
            self.access_log.size(),
            self.access_log.covered()
        )
    }

    /// True when the gateway accepts new work.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Whether the gateway accepts new work, and if not, why: shutting down, the access log
    /// unwritable, or every connection slot taken.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err("shutting down")
        } else if !self.access_log.is_healthy() {
            Err("the access log cannot be written")
        } else if self.connection_slots.available_permits() == 0 {
            Err("every connection slot is taken")
        } else {
            Ok(())
        }
    }
}

/// Applies another node's (or this one's) change to this node's caches. (This node's own
/// licence and seal changes were forgotten as they were made.)
pub(crate) async fn apply(exchange: &Exchange, licences: &LicenceService, change: &Change) {
    match change {
        Change::DataKey { dataset, key } => exchange.invalidate_key(dataset, key).await,
        Change::Dataset { dataset } => exchange.invalidate_dataset(dataset),
        Change::Licence {
            licence_type,
            holder,
            id,
        } => {
            if let Some(id) = id {
                licences.records().forget_licence(id);
            }
            exchange.licence_changed(licence_type, holder).await;
        }
        Change::Seal { id } => licences.records().forget_seal(id),
        // Changes of the knowledge base are caught up from its store; others are not cached.
        _ => {}
    }
}

/// The reloadable part of `config`: TLS material, department table, access rules.
pub(crate) fn build_live(
    config: &Config,
    resumption: &crate::tls::Resumption,
) -> Result<Live, TlsError> {
    let material = TlsMaterial::load(&config.tls, resumption)?;
    let summary = LoadSummary {
        departments: config.departments.len(),
        trust_anchors: material.trust_anchors,
        crls: material.crls,
        revoked_serials: material.revoked.len(),
        reloaded: RELOADED.iter().map(|s| (*s).to_owned()).collect(),
    };
    Ok(Live {
        acceptor: TlsAcceptor::from(material.server_config),
        departments: config.departments.clone(),
        access_rules: config.licensing.access_rules.clone(),
        revoked: material.revoked,
        summary,
    })
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> i64 {
    storage::clock::unix_now()
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn unix_now_ms() -> i64 {
    storage::clock::unix_now_ms()
}

/// 12 random bytes (ids of proofs, of this node in notices).
pub fn random_id() -> [u8; 12] {
    let mut b = [0u8; 12];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        tracing::error!("system random number generator failed");
    }
    b
}

/// `bytes` as lower-case hex, written through a table (request ids and pseudonyms, on every
/// request: `hex::encode`'s iterator costs several times as much).
pub fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn lower_hex_writes_what_hex_encode_writes() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(super::lower_hex(&bytes), hex::encode(&bytes));
        assert_eq!(super::lower_hex(&[]), "");
        assert_eq!(super::lower_hex(&[0x0f, 0xa0]), "0fa0");
    }
}
