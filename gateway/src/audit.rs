//! Routes for auditors (queries, checkpoints, proofs) and for the holder's own view of who used
//! their data. Everything an auditor does is itself logged, like every request.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::header;
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::error::{ApiError, Code, ErrorBody};
use crate::extract::HolderHeader;
use crate::extract::NoteSlot;
use crate::extract::{QueryParams, require};
use crate::identity::Caller;
use crate::state::Gateway;
use tlog::{EntryFilter, Leaf, LogDb, LogError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module, each with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<Gateway>> {
    OpenApiRouter::new()
        .routes(routes!(log_key))
        .routes(routes!(checkpoint))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
        .routes(routes!(entries))
        .routes(routes!(holder_view))
        .routes(routes!(export))
}

/// Most entries one page returns.
pub const MAX_PAGE: u32 = 1000;

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::OutOfRange(m) => ApiError::new(Code::AuditOutOfRange, m),
            other => {
                tracing::error!(error = %other, "access log read failed");
                ApiError::log_unavailable()
            }
        }
    }
}

/// Runs a read of the log on a blocking thread with its own connection.
async fn read<T: Send + 'static>(
    gw: &Gateway,
    f: impl FnOnce(&mut dyn LogDb) -> Result<T, LogError> + Send + 'static,
) -> Result<T, ApiError> {
    let log = gw.access_log.clone();
    tokio::task::spawn_blocking(move || f(log.reader()?.as_mut()))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::from)
}

/// The log's verifier key (`<origin>+<key id>+<base64 key>`), for checking checkpoints offline.
#[utoipa::path(get, path = "/v1/audit/log-key", tag = "audit",
    responses((status = 200, description = "C2SP note verifier key", content_type = "text/plain")))]
pub async fn log_key(State(gw): State<Arc<Gateway>>, _caller: Caller) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", gw.log_verifier_key),
    )
        .into_response()
}

/// The latest signed checkpoint (C2SP signed note).
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, description = "Signed note", content_type = "text/plain"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn checkpoint(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    require(&caller, Role::Auditor)?;
    let latest = read(&gw, tlog::latest_checkpoint).await?;
    let (_, note) = latest.ok_or_else(|| ApiError::new(Code::NoCheckpoint, "no checkpoint yet"))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

/// `?index=&size=` of an inclusion proof.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The leaf's position.
    pub index: u64,
    /// The tree size (take it from a signed checkpoint).
    pub size: u64,
}

/// An inclusion proof with the leaf it proves.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InclusionView {
    /// The leaf's position.
    pub index: u64,
    /// The tree size.
    pub size: u64,
    /// The leaf's canonical bytes, base64.
    pub leaf_bytes: String,
    /// The leaf, decoded.
    #[schema(value_type = Object)]
    pub leaf: Leaf,
    /// The audit path, base64 hashes.
    pub proof: Vec<String>,
}

/// An RFC 9162 inclusion proof for one leaf in the tree of `size` leaves.
#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit", params(InclusionQuery),
    responses((status = 200, body = InclusionView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn inclusion(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    QueryParams(q): QueryParams<InclusionQuery>,
) -> Result<Json<InclusionView>, ApiError> {
    require(&caller, Role::Auditor)?;
    let view = read(&gw, move |c| {
        let stored = c.size()?;
        if q.size > stored || q.index >= q.size {
            return Err(LogError::OutOfRange(format!(
                "need index < size <= {stored}; got index {} and size {}",
                q.index, q.size
            )));
        }
        let bytes = c
            .leaf(q.index)?
            .ok_or_else(|| LogError::Store(format!("leaf {} is missing", q.index)))?;
        let leaf: Leaf =
            serde_json::from_slice(&bytes).map_err(|e| LogError::Store(e.to_string()))?;
        let proof = tlog::inclusion_proof(c, q.index, q.size)?;
        Ok(InclusionView {
            index: q.index,
            size: q.size,
            leaf_bytes: B64.encode(&bytes),
            leaf,
            proof: proof.iter().map(|h| B64.encode(h)).collect(),
        })
    })
    .await?;
    Ok(Json(view))
}

/// `?from=&to=` of a consistency proof.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree size.
    pub from: u64,
    /// The newer tree size.
    pub to: u64,
}

/// A consistency proof.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsistencyView {
    /// The older size.
    pub from: u64,
    /// The newer size.
    pub to: u64,
    /// The proof, base64 hashes.
    pub proof: Vec<String>,
}

/// An RFC 9162 consistency proof between two tree sizes.
#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn consistency(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    QueryParams(q): QueryParams<ConsistencyQuery>,
) -> Result<Json<ConsistencyView>, ApiError> {
    require(&caller, Role::Auditor)?;
    let proof = read(&gw, move |c| {
        let stored = c.size()?;
        // RFC 9162 defines consistency between two non-empty trees only.
        if q.from == 0 || q.from > q.to || q.to > stored {
            return Err(LogError::OutOfRange(format!(
                "need 0 < from <= to <= {stored}"
            )));
        }
        tlog::consistency_proof(c, q.from, q.to)
    })
    .await?;
    Ok(Json(ConsistencyView {
        from: q.from,
        to: q.to,
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
    }))
}

/// Filters of an entries query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// The calling department's USCC.
    pub department: Option<String>,
    /// A holder id; the server turns it into the pseudonym the log records.
    pub holder: Option<String>,
    /// A licence identifier (or other resource).
    pub resource: Option<String>,
    /// A route pattern, e.g. `/v1/licences/{id}`.
    pub route: Option<String>,
    /// `allowed`, `denied` or `error`.
    #[param(value_type = Option<String>)]
    pub outcome: Option<tlog::Outcome>,
    /// From this time (Unix milliseconds, inclusive).
    pub from_ms: Option<i64>,
    /// Until this time (Unix milliseconds, exclusive).
    pub to_ms: Option<i64>,
    /// Continue after this position (the previous page's `next_cursor`).
    pub cursor: Option<u64>,
    /// Entries per page (1–1000, default 100).
    pub limit: Option<u32>,
}

/// A page of entries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntriesView {
    /// The matching leaves, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Leaf>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<u64>,
}

fn query_entries(
    c: &mut dyn LogDb,
    q: &EntriesQuery,
    holder: Option<String>,
) -> Result<EntriesView, LogError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(LogError::OutOfRange(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let filter = EntryFilter {
        after: q.cursor.map_or(-1, |c| c.min(i64::MAX as u64) as i64),
        department: q.department.clone(),
        holder,
        resource: q.resource.clone(),
        route: q.route.clone(),
        outcome: q.outcome,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
    };
    let rows = c.entries(&filter, limit + 1)?;
    let more = rows.len() > limit as usize;
    let entries = rows
        .iter()
        .take(limit as usize)
        .map(|data| {
            serde_json::from_slice::<Leaf>(data).map_err(|e| LogError::Store(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = more.then(|| entries.last().map(|l| l.seq)).flatten();
    Ok(EntriesView {
        entries,
        next_cursor,
    })
}

/// Who accessed what, when and why: entries filtered by department, holder, resource, route,
/// outcome and time, with cursor paging.
#[utoipa::path(get, path = "/v1/audit/entries", tag = "audit", params(EntriesQuery),
    responses((status = 200, body = EntriesView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn entries(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    QueryParams(q): QueryParams<EntriesQuery>,
) -> Result<Json<EntriesView>, ApiError> {
    require(&caller, Role::Auditor)?;
    let holder = q.holder.as_deref().map(|h| gw.pseudonym(h.trim()));
    Ok(Json(
        read(&gw, move |c| query_entries(c, &q, holder)).await?,
    ))
}

/// `?holder=` of the holder's own view.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HolderViewQuery {
    /// The holder's USCC or citizen id.
    pub holder: String,
    /// Continue after this position.
    pub cursor: Option<u64>,
}

/// A page of a holder's view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HolderView {
    /// Uses of the holder's data, oldest first.
    pub uses: Vec<HolderUse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<u64>,
}

/// One use of a holder's data, as the holder may see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HolderUse {
    /// Position in the access log.
    pub seq: u64,
    /// When (Unix milliseconds).
    pub time_ms: i64,
    /// Which department.
    pub department: Option<String>,
    /// What it did (route pattern).
    pub route: Option<String>,
    /// Which licence or data.
    pub resource: Option<String>,
    /// The stated matter.
    pub matter: Option<String>,
    /// The stated reason.
    pub reason: Option<String>,
    /// Whether it was allowed: `allowed`, `denied` or `error`.
    pub outcome: &'static str,
}

/// The holder's "who used my data" page, for the city app acting for that holder.
#[utoipa::path(get, path = "/v1/audit/holder-view", tag = "audit", params(HolderViewQuery),
    responses((status = 200, body = HolderView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn holder_view(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    acting_for: HolderHeader,
    Extension(slot): Extension<NoteSlot>,
    QueryParams(q): QueryParams<HolderViewQuery>,
) -> Result<Json<HolderView>, ApiError> {
    require(&caller, Role::HolderApp)?;
    let holder: cert_store::HolderId = q
        .holder
        .parse()
        .map_err(|e| ApiError::new(Code::AuditOutOfRange, format!("holder: {e}")))?;
    slot.record("holder-view", holder.as_str());
    // The app reads the view of the holder it acts for, and no one else's.
    acting_for.require(holder.as_str())?;
    let pseudonym = gw.pseudonym(holder.as_str());
    let filter = EntriesQuery {
        cursor: q.cursor,
        limit: Some(200),
        ..EntriesQuery::default()
    };
    let page = read(&gw, move |c| query_entries(c, &filter, Some(pseudonym))).await?;
    Ok(Json(HolderView {
        next_cursor: page.next_cursor,
        uses: page
            .entries
            .into_iter()
            .map(|l| HolderUse {
                seq: l.seq,
                time_ms: l.time_ms,
                department: l.department,
                route: l.route,
                resource: l.resource,
                matter: l.matter,
                reason: l.reason,
                outcome: l.outcome.as_str(),
            })
            .collect(),
    }))
}

/// `?format=` of an export.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `ndjson` (the canonical leaf bytes, one per line: verifiable offline with
    /// `certgate audit verify --export`) or `csv`.
    pub format: String,
    /// Export leaves `0..size` (default: all stored now).
    pub size: Option<u64>,
}

const CSV_HEADER: &str = "seq,time_ms,kind,request_id,department,cert_sha256,peer,method,route,resource,holder,matter,reason,case_id,outcome,status,code,latency_us\n";

fn csv_field(out: &mut String, value: Option<&str>) {
    let raw = value.unwrap_or_default();
    // Leaves written today hold no control or bidi characters; older ones might, and a
    // spreadsheet would show them or run a cell starting with = + - @ (after a tab or CR,
    // too) as a formula: escape the first, guard the second.
    let escaped: String = raw
        .chars()
        .map(|c| {
            if c.is_control() || cert_store::text::is_bidi_control(c) {
                format!("\\u{{{:04X}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect();
    let guarded;
    let v = if raw.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{escaped}");
        guarded.as_str()
    } else {
        escaped.as_str()
    };
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn csv_row(l: &Leaf) -> String {
    let mut out = format!("{},{},", l.seq, l.time_ms);
    for v in [
        Some(l.kind.as_str()),
        l.request_id.as_deref(),
        l.department.as_deref(),
        l.cert_sha256.as_deref(),
        l.peer.as_deref(),
        l.method.as_deref(),
        l.route.as_deref(),
        l.resource.as_deref(),
        l.holder.as_deref(),
        l.matter.as_deref(),
        l.reason.as_deref(),
        l.case_id.as_deref(),
        Some(l.outcome.as_str()),
    ] {
        csv_field(&mut out, v);
        out.push(',');
    }
    out.push_str(&format!("{},", l.status));
    csv_field(&mut out, l.code.as_deref());
    out.push_str(&format!(",{}\n", l.latency_us));
    out
}

/// Exports streaming at once, gateway-wide.
pub const MAX_EXPORTS: usize = 4;

/// Streams the log as NDJSON or CSV in constant memory, whatever its size; at most
/// [`MAX_EXPORTS`] at once.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", params(ExportQuery),
    responses((status = 200, description = "NDJSON or CSV stream"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, description = "as many exports as stream at once are running (CG-AUD-003); retry after `Retry-After`", body = ErrorBody)))]
pub async fn export(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    QueryParams(q): QueryParams<ExportQuery>,
) -> Result<Response, ApiError> {
    require(&caller, Role::Auditor)?;
    let csv = match q.format.as_str() {
        "ndjson" => false,
        "csv" => true,
        _ => {
            return Err(ApiError::new(
                Code::AuditOutOfRange,
                "format must be ndjson or csv",
            ));
        }
    };
    let Ok(slot) = gw.export_slots.clone().try_acquire_owned() else {
        return Ok(ApiError::new(
            Code::ExportsBusy,
            format!("{MAX_EXPORTS} exports are streaming now: retry when one has ended"),
        )
        .retry_after(60));
    };
    let log = gw.access_log.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        // Held until the export ends, however it ends.
        let _slot = slot;
        // A reader that stops reading for this long loses the export: the read snapshot it
        // holds would otherwise keep the log's WAL growing.
        const STALL: std::time::Duration = std::time::Duration::from_secs(60);
        let send = |chunk: std::io::Result<bytes::Bytes>| -> bool {
            let mut pending = chunk;
            let started = std::time::Instant::now();
            loop {
                match tx.try_send(pending) {
                    Ok(()) => return true,
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                        if started.elapsed() > STALL {
                            return false;
                        }
                        pending = back;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        };
        let result = (|| -> Result<(), LogError> {
            let mut db = log.reader()?;
            // All leaves stored now (with a shared log, other nodes' too), or the first `size`.
            let stored = db.size()?;
            let size = q.size.map_or(stored, |s| s.min(stored));
            let mut chunk = if csv {
                CSV_HEADER.to_owned().into_bytes()
            } else {
                Vec::new()
            };
            let (mut failure, mut gone) = (None, false);
            db.scan(size, &mut |row| {
                let data = row.data.unwrap_or_default();
                if csv {
                    match serde_json::from_slice::<Leaf>(data) {
                        Ok(leaf) => chunk.extend_from_slice(csv_row(&leaf).as_bytes()),
                        Err(e) => {
                            failure = Some(LogError::Store(e.to_string()));
                            return false;
                        }
                    }
                } else {
                    chunk.extend_from_slice(data);
                    chunk.push(b'\n');
                }
                if chunk.len() >= 64 * 1024 && !send(Ok(std::mem::take(&mut chunk).into())) {
                    gone = true; // the client went away or stalled
                }
                !gone
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            if !gone {
                send(Ok(chunk.into()));
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "export stopped");
            // Abort the body, so the client sees a broken transfer rather than a short file.
            send(Err(std::io::Error::other("export stopped")));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
