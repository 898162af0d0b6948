//! The gateway's shared state: fixed settings, the reloadable part (TLS acceptor, department
//! table, revoked serials) behind an atomic pointer, and the metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use serde::Serialize;
use storage::bus::{Change, Event, Notice};
use tokio_rustls::TlsAcceptor;

use cert_store::service::{LicenceService, ServiceError};
use cert_store::store::SqliteStore;

use crate::config::{AccessRule, Config, ConfigError, DepartmentTable, ServerSettings};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::tls::{RevokedSerials, TlsError, TlsMaterial};
use exchange::Exchange;
use tlog::{AccessLog, LogBackend, LogError, WriterSettings};

/// How many TLS sessions the server remembers for resumption.
const SESSION_CACHE_SIZE: usize = 4096;

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
}

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
    config_path: PathBuf,
    live: ArcSwap<Live>,
    licences: Arc<LicenceService>,
    /// The tamper-evident access log.
    pub access_log: AccessLog,
    /// The shared-data exchange: source systems, cache, proof types.
    pub exchange: Arc<Exchange>,
    /// With a shared PostgreSQL store: tells the other nodes what this one invalidated.
    bus: Option<Arc<storage::PgPool>>,
    /// This process's id in those notifications.
    node_id: String,
    /// The policy knowledge base.
    pub policies: Arc<policies::KnowledgeBase>,
    /// The department that maintains enterprise profiles.
    pub profile_owner: Option<cert_store::Uscc>,
    /// Turns holder ids into the pseudonyms the access log records.
    pseudonym_key: [u8; 32],
    /// The access log's verifier key (`GET /v1/audit/log-key`).
    pub log_verifier_key: String,
    sessions: Arc<dyn StoresServerSessions>,
    shutting_down: AtomicBool,
    /// The departments' request budgets.
    rate_limiter: crate::rate_limit::RateLimiter,
    /// Connection slots of the mTLS listener (`server.max_connections`).
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// Handshakes pending per source, and the summaries of refused ones.
    pub preauth: crate::preauth::PreAuth,
    /// How long a window of refused handshakes is summarised over.
    pub refusal_window: std::time::Duration,
}

impl Gateway {
    /// Builds the gateway's state from a validated configuration.
    pub fn new(config: Config) -> Result<Arc<Gateway>, StartError> {
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let live = build_live(&config, sessions.clone())?;
        std::fs::create_dir_all(&config.server.data_dir).map_err(|e| StartError::Store {
            path: config.server.data_dir.clone(),
            reason: e.to_string(),
        })?;
        let (store, bus) = open_store(&config)?;
        let log_settings = &config.access_log;
        let log_backend = match &bus {
            Some(pg) => LogBackend::Postgres(pg.clone()),
            None => LogBackend::Sqlite(config.server.data_dir.join("access-log.db")),
        };
        let writer_settings = WriterSettings {
            queue_capacity: log_settings.queue_capacity,
            max_batch: log_settings.max_batch,
            checkpoint_interval: std::time::Duration::from_secs(1),
            origin: log_settings.origin.clone(),
            group_commit_wait: log_settings.group_commit_wait,
            max_db_pages: log_settings.max_db_pages,
            clock: Arc::new(storage::SystemClock),
        };
        // Opening checks the stored tree; a PostgreSQL client must not block a thread that
        // drives async tasks (see below).
        let key = log_settings.key.clone();
        let access_log = std::thread::scope(|s| {
            s.spawn(|| AccessLog::open(log_backend, key, writer_settings))
                .join()
        })
        .map_err(|_| StartError::AccessLog(LogError::Store("the opening thread failed".into())))?
        .map_err(StartError::AccessLog)?;
        let log_verifier_key = log_settings.key.verifier_key();
        // Kept beside the log so that `certgate audit verify --data-dir` needs nothing else.
        let _ = std::fs::write(
            config.server.data_dir.join("access-log.vkey"),
            &log_verifier_key,
        );
        let metrics = Metrics::default();
        let exchange = Arc::new(Exchange::new(
            config.exchange.clone(),
            &crate::upstream::HttpTransport::new,
            metrics.exchange.clone(),
            Arc::new(storage::SystemClock),
        )?);
        let node_id = hex::encode(crate::data::random_id());
        let policies = Arc::new(
            std::thread::scope(|s| {
                s.spawn(|| crate::matching::open_knowledge_base(&config, bus.clone()))
                    .join()
            })
            .map_err(|_| StartError::Policies("the opening thread failed".into()))?
            .map_err(StartError::Policies)?,
        );
        if let Some(pg) = &bus {
            listen_for_other_nodes(
                pg.clone(),
                Arc::downgrade(&exchange),
                Arc::downgrade(&policies),
                node_id.clone(),
            );
        }
        let licences = open_licences(&config, store)?;
        let (max_connections, max_handshakes_per_source) = (
            config.server.max_connections,
            config.server.max_handshakes_per_source,
        );
        Ok(Arc::new(Gateway {
            licences: Arc::new(licences),
            access_log,
            exchange,
            bus,
            node_id,
            policies,
            profile_owner: config.policies.profile_owner.clone(),
            pseudonym_key: config.access_log.pseudonym_key,
            log_verifier_key,
            settings: config.server,
            metrics,
            config_path: config.path,
            live: ArcSwap::from_pointee(live),
            sessions,
            shutting_down: AtomicBool::new(false),
            rate_limiter: crate::rate_limit::RateLimiter::default(),
            connection_slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            preauth: crate::preauth::PreAuth::new(
                max_handshakes_per_source,
                config.access_log.refusal_sources,
            ),
            refusal_window: config.access_log.refusal_window,
        }))
    }

    /// The configuration in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Reads the configuration file again and puts its department table, trust anchors and
    /// CRLs in force for the next connection. Listener settings need a restart.
    pub fn reload(&self) -> Result<LoadSummary, ReloadError> {
        let result = Config::load(&self.config_path)
            .map_err(ReloadError::from)
            .and_then(|config| Ok(build_live(&config, self.sessions.clone())?));
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
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.pseudonym_key);
        hex::encode(aws_lc_rs::hmac::sign(&key, holder.as_bytes()))
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
        apply(&self.exchange, &change).await;
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
        use axum::response::IntoResponse;
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
        let mut response = ApiError::new(
            http::StatusCode::TOO_MANY_REQUESTS,
            "CG-REQ-009",
            format!(
                "this department's {} budget ({}/s) is spent; retry after {seconds} s",
                class.as_str(),
                limits.rate(class)
            ),
        )
        .into_response();
        if let Ok(v) = http::HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        Some(response)
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

/// The store of seals and licences, and the PostgreSQL pool when that is where it is (shared
/// with the other nodes: the access log, the knowledge base and notifications use it too).
pub type Stores = (
    Arc<dyn cert_store::store::Store>,
    Option<Arc<storage::PgPool>>,
);

/// The stores of `config`: the SQLite file in the data directory, or the PostgreSQL schema.
pub fn open_store(config: &Config) -> Result<Stores, StartError> {
    Ok(match &config.server.storage {
        crate::config::Storage::Embedded => {
            let db = config.server.data_dir.join("certgate.db");
            let store = SqliteStore::open(&db).map_err(|e| StartError::Store {
                path: db.clone(),
                reason: e.to_string(),
            })?;
            (Arc::new(store), None)
        }
        crate::config::Storage::Postgres(pg) => {
            let failed = |reason: String| StartError::Store {
                path: PathBuf::from(format!("PostgreSQL schema {}", pg.schema)),
                reason,
            };
            let pool =
                Arc::new(storage::PgPool::new(pg.clone()).map_err(|e| failed(e.to_string()))?);
            let store = cert_store::pg_store::PgStore::open(pool.clone())
                .map_err(|e| failed(e.to_string()))?;
            (Arc::new(store), Some(pool))
        }
    })
}

/// The licence service of `config` on `store`: its keys are read (or made) there.
pub fn open_licences(
    config: &Config,
    store: Arc<dyn cert_store::store::Store>,
) -> Result<LicenceService, StartError> {
    let licensing = &config.licensing;
    // Opening reads the keys from the store; a PostgreSQL client must not block a thread
    // that drives async tasks, and the gateway may be built from one.
    let status_base = format!("{}/v1/status-lists", licensing.public_url);
    let (kek, types) = (licensing.kek.clone(), licensing.licence_types.clone());
    std::thread::scope(|s| {
        s.spawn(|| LicenceService::open(store, kek, types, &status_base, unix_now()))
            .join()
    })
    .map_err(|_| StartError::Licences(ServiceError::Internal("the opening thread failed".into())))?
    .map_err(StartError::Licences)
}

async fn apply(exchange: &Exchange, change: &Change) {
    match change {
        Change::DataKey { dataset, key } => exchange.invalidate_key(dataset, key).await,
        Change::Dataset { dataset } => exchange.invalidate_dataset(dataset),
        Change::Licence {
            licence_type,
            holder,
        } => exchange.licence_changed(licence_type, holder).await,
        // Changes of the knowledge base are caught up from its store; others are not cached.
        _ => {}
    }
}

/// Brings this node's knowledge base up to the shared store, off the async threads.
fn refresh_policies(runtime: &tokio::runtime::Handle, kb: Arc<policies::KnowledgeBase>) {
    runtime.spawn_blocking(move || {
        if let Err(e) = kb.refresh() {
            tracing::error!(error = %e, "cannot catch up with the other nodes' policy changes");
        }
    });
}

/// Listens for the other nodes' invalidations and policy changes on a thread of its own until
/// the gateway is gone; after a gap (a reconnection) it drops the whole exchange cache and
/// catches up with the policy store, since notices were missed.
fn listen_for_other_nodes(
    pg: Arc<storage::PgPool>,
    exchange: std::sync::Weak<Exchange>,
    kb: std::sync::Weak<policies::KnowledgeBase>,
    node_id: String,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("no async runtime: invalidations of other nodes will not be heard");
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("certgate-listen".into())
        .spawn(move || {
            pg.listen(|event| {
                let (Some(exchange), Some(kb)) = (exchange.upgrade(), kb.upgrade()) else {
                    return false;
                };
                match event {
                    Event::Idle => {}
                    Event::Resync => {
                        exchange.invalidate_all();
                        refresh_policies(&runtime, kb);
                    }
                    Event::Notice(Notice {
                        change: Change::Policies,
                        ..
                    }) => refresh_policies(&runtime, kb),
                    Event::Notice(notice) if notice.node != node_id => {
                        runtime.spawn(async move { apply(&exchange, &notice.change).await });
                    }
                    Event::Notice(_) => {}
                    Event::Unreadable(payload) => tracing::warn!(
                        payload = %payload.chars().take(200).collect::<String>(),
                        "unreadable notice from another node"
                    ),
                }
                true
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the listener for other nodes");
    }
}

fn build_live(config: &Config, sessions: Arc<dyn StoresServerSessions>) -> Result<Live, TlsError> {
    let material = TlsMaterial::load(&config.tls, sessions)?;
    let summary = LoadSummary {
        departments: config.departments.len(),
        trust_anchors: material.trust_anchors,
        crls: material.crls,
        revoked_serials: material.revoked.len(),
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
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
