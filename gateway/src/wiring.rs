//! Start-up: everything the gateway is made of, opened and connected from a validated
//! configuration ([`gateway`]), and the process around it ([`run_gateway`]: listeners, signals,
//! the shutdown deadline). Handlers never see this module; it sees everything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use arc_swap::ArcSwap;
use cert_store::service::{LicenceService, ServiceError};
use cert_store::store::SqliteStore;
use exchange::Exchange;
use policies::KnowledgeBase;
use storage::bus::{Change, Event, Notice};
use tlog::{AccessLog, LogBackend, LogError, WriterSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server;
use crate::state::{Gateway, SESSION_CACHE_SIZE, StartError, apply, build_live};

/// Builds the gateway's state from a validated configuration: stores, the access log (its
/// stored tree checked against its last checkpoint), the exchange, the knowledge base, the
/// licence service, and — with PostgreSQL — the listener for the other nodes' notices.
pub fn gateway(config: Config) -> Result<Arc<Gateway>, StartError> {
    let resumption = crate::tls::Resumption::new(SESSION_CACHE_SIZE)?;
    let live = build_live(&config, &resumption)?;
    std::fs::create_dir_all(&config.server.data_dir).map_err(|e| StartError::Store {
        path: config.server.data_dir.clone(),
        reason: e.to_string(),
    })?;
    let (store, bus) = open_store(&config)?;
    let log_settings = &config.access_log;
    let log_backend = match &bus {
        Some(pg) => LogBackend::Postgres(pg.clone()),
        None => LogBackend::embedded(&config.server.data_dir),
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
        &crate::upstream::HttpTransport::for_upstream,
        metrics.exchange.clone(),
        Arc::new(storage::SystemClock),
    )?);
    let node_id = hex::encode(crate::state::random_id());
    let policies = Arc::new(
        std::thread::scope(|s| s.spawn(|| open_knowledge_base(&config, bus.clone())).join())
            .map_err(|_| StartError::Policies("the opening thread failed".into()))?
            .map_err(StartError::Policies)?,
    );
    let licences = Arc::new(open_licences(&config, store)?);
    if let Some(pg) = &bus {
        listen_for_other_nodes(
            pg.clone(),
            Arc::downgrade(&exchange),
            Arc::downgrade(&policies),
            Arc::downgrade(&licences),
            node_id.clone(),
        );
    }
    let (max_connections, max_handshakes_per_source) = (
        config.server.max_connections,
        config.server.max_handshakes_per_source,
    );
    Ok(Arc::new(Gateway {
        licences,
        access_log,
        exchange,
        bus,
        node_id,
        policies,
        profile_owner: config.policies.profile_owner.clone(),
        pseudonym_key: aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &config.access_log.pseudonym_key,
        ),
        log_verifier_key,
        settings: config.server,
        metrics,
        config_path: config.path,
        live: ArcSwap::from_pointee(live),
        resumption,
        shutting_down: AtomicBool::new(false),
        rate_limiter: crate::rate_limit::RateLimiter::default(),
        connection_slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        export_slots: Arc::new(tokio::sync::Semaphore::new(crate::audit::MAX_EXPORTS)),
        preauth: crate::preauth::PreAuth::new(
            max_handshakes_per_source,
            config.access_log.refusal_sources,
        ),
        refusal_window: config.access_log.refusal_window,
        views: crate::view_cache::ViewCache::default(),
    }))
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
    let cache_bytes = licensing.cache_bytes;
    std::thread::scope(|s| {
        s.spawn(|| {
            LicenceService::open(
                store,
                kek,
                types,
                &status_base,
                storage::clock::unix_now(),
                cache_bytes,
            )
        })
        .join()
    })
    .map_err(|_| StartError::Licences(ServiceError::Internal("the opening thread failed".into())))?
    .map_err(StartError::Licences)
}

/// Opens the knowledge base of `config`: indexes in the data directory, and the store there
/// too, or in the PostgreSQL schema `shared` all nodes use.
pub fn open_knowledge_base(
    config: &crate::config::Config,
    shared: Option<Arc<storage::PgPool>>,
) -> Result<KnowledgeBase, String> {
    let analyzer = match &config.policies.user_dictionary {
        Some(p) => search::ChineseAnalyzer::with_user_dictionary(p),
        None => search::ChineseAnalyzer::new(),
    }
    .map_err(|e| e.to_string())?;
    let dir = config.server.data_dir.join("policies");
    let opened = match shared {
        None => KnowledgeBase::open(Some(&dir), analyzer),
        Some(pg) => {
            let store = policies::pg_store::PgKbStore::open(pg)
                .map_err(|e| format!("knowledge base store: {e}"))?;
            KnowledgeBase::open_on(Some(&dir), analyzer, Arc::new(store))
        }
    };
    opened.map_err(|e| format!("cannot open the knowledge base: {e}"))
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
/// the gateway is gone; after a gap (a reconnection) it drops the whole exchange cache and the
/// licence and seal records in memory, and catches up with the policy store, since notices
/// were missed.
fn listen_for_other_nodes(
    pg: Arc<storage::PgPool>,
    exchange: std::sync::Weak<Exchange>,
    kb: std::sync::Weak<policies::KnowledgeBase>,
    licences: std::sync::Weak<LicenceService>,
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
                let (Some(exchange), Some(kb), Some(licences)) =
                    (exchange.upgrade(), kb.upgrade(), licences.upgrade())
                else {
                    return false;
                };
                match event {
                    Event::Idle => {}
                    Event::Resync => {
                        exchange.invalidate_all();
                        licences.records().forget_all();
                        refresh_policies(&runtime, kb);
                    }
                    Event::Notice(Notice {
                        change: Change::Policies,
                        ..
                    }) => refresh_policies(&runtime, kb),
                    Event::Notice(notice) if notice.node != node_id => {
                        runtime.spawn(
                            async move { apply(&exchange, &licences, &notice.change).await },
                        );
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

/// What shutdown may take beyond `server.shutdown_grace_ms`: the last checkpoint and the
/// operations listener.
const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Ends the process when shutdown has not finished by `deadline` from now, naming what was
/// still running. A thread of its own, so a stuck runtime cannot hold it up.
fn exit_after_deadline(deadline: std::time::Duration, gateway: std::sync::Weak<Gateway>) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            let left = match gateway.upgrade() {
                Some(g) => g.shutdown_report(),
                None => "the gateway's state is gone, something else still runs".to_owned(),
            };
            tracing::error!(
                deadline_ms = deadline.as_millis() as u64,
                left = %left,
                "shutdown deadline passed; exiting"
            );
            eprintln!("certgate: shutdown deadline passed; exiting with {left}");
            std::process::exit(2);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the shutdown deadline");
    }
}

/// Binds both listeners, calls `on_ready` with the gateway and their addresses, and serves until SIGTERM or
/// SIGINT. SIGHUP reloads the department table, trust anchors and CRLs.
///
/// With `public_url_from_listener`, `licensing.public_url` becomes the address the mTLS
/// listener is bound to (the demo: its licences name the status lists where it serves them,
/// whatever `--listen` said, port 0 included).
pub async fn run_gateway(
    mut config: Config,
    public_url_from_listener: bool,
    on_ready: impl FnOnce(&Gateway, SocketAddr, SocketAddr) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            config.server.data_dir.display()
        )
    })?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let ops_listener = TcpListener::bind(config.server.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.ops_listen))?;
    let (api_addr, ops_addr) = (listener.local_addr()?, ops_listener.local_addr()?);
    if public_url_from_listener {
        config.licensing.public_url = format!("https://{api_addr}");
    }
    let gateway = gateway(config)?;

    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let reloader = gateway.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading configuration");
            let gw = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
        }
    });
    let (stop_ops, ops_stopped) = watch::channel(false);
    let ops = tokio::spawn(server::serve_ops(
        gateway.clone(),
        ops_listener,
        ops_stopped,
    ));
    tracing::info!(%api_addr, %ops_addr, "certgate listening");
    on_ready(&gateway, api_addr, ops_addr)?;
    let grace = gateway.settings.shutdown_grace;
    let watched = Arc::downgrade(&gateway);
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        exit_after_deadline(grace + SHUTDOWN_MARGIN, watched);
    };
    server::serve(Arc::clone(&gateway), listener, shutdown).await;
    if !gateway
        .access_log
        .wait_covered(std::time::Duration::from_secs(3))
        .await
    {
        tracing::warn!(
            "stopping before a checkpoint covers the last leaves; they are stored and the next start continues the tree"
        );
    }
    let _ = stop_ops.send(true);
    // A scraper holding a keep-alive connection to the operations listener would keep its
    // graceful shutdown waiting: it gets a moment, then is dropped with the process.
    if tokio::time::timeout(std::time::Duration::from_secs(2), ops)
        .await
        .is_err()
    {
        tracing::warn!("operations listener still had open connections; closing them");
    }
    Ok(())
}
