//! PostgreSQL backend (tokio-postgres, no TLS): many gateways share one database.
//!
//! Two connections (writer, reader), each re-established on the next call after it drops.
//! Migrations run under an advisory lock so gateways starting together do not race.
//! Rollup rows are read-modify-written under row locks taken in sorted key order,
//! so concurrent writers neither lose counts nor deadlock.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use super::migrations::{SqlDialect, MIGRATIONS};
use super::query::{
    CacheSavingsRow, Histogram, LogFilter, LogPage, LogQuery, Sql, SqlParam, Stats,
};
use super::routing::{
    assemble_stats, decisions_sql, recent_served_sql, stats_latency_sql, stats_totals_sql, RParam,
    AUDIT_COLS, DECISION_COLS, DECISION_NCOLS, FEEDBACK_COLS, FEEDBACK_NCOLS,
};
use super::sqlite::{page, project_cond};
use super::{
    rollup_deltas, to_i64, to_u64, AuditAppend, AuditEntry, DecisionQuery, DecisionRow,
    FeedbackInsert, FeedbackRow, GroupBy, PendingFeedback, PendingInsert, PurgeRule, RawRow,
    RollupKey, RollupRow, RouteModelStats, RouteServed, RouteStateRow, ScoredDecision, Store,
    StoreError, ALL_PROJECTS, HOUR_MS, TRACE_COLS, TRACE_NCOLS,
};
use crate::trace::TraceRecord;

/// Arbitrary constant naming loopgate's migration advisory lock.
const MIGRATION_LOCK: i64 = 0x6c6f_6f70_6761_7465;
/// Rows per multi-row INSERT (TRACE_NCOLS parameters each; PostgreSQL allows 65535 per statement).
const INSERT_CHUNK: usize = 500;
const ROLLUP_CHUNK: usize = 2000;
const PURGE_CHUNK: i64 = 5000;
const PURGE_MAX_ROUNDS: usize = 20_000;
/// Transaction-level advisory lock serializing feedback inserts across gateways (see
/// `insert_feedback_pg`).
const FEEDBACK_LOCK: i64 = MIGRATION_LOCK + 1;
/// Transaction-level advisory lock serializing audit appends, so the chain cannot fork.
const AUDIT_LOCK: i64 = MIGRATION_LOCK + 2;

type Param = Box<dyn ToSql + Sync + Send>;

pub struct PgStore {
    config: tokio_postgres::Config,
    /// Trace batches go through binary `COPY` (`storage.postgres_copy`).
    copy: bool,
    writer: Mutex<Option<Client>>,
    reader: Mutex<Option<Client>>,
}

/// Open a connection and drive it on a task of the current runtime. The connection task lives
/// on the runtime of whoever connected; if that runtime goes away the client reports closed
/// and the next call reconnects.
async fn connect_to(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    let (client, conn) = config.connect(NoTls).await.map_err(pg_err)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(e.to_string());
    }
    match e.code() {
        None => StoreError::Unavailable(e.to_string()),
        Some(code) => {
            let c = code.code();
            // connection exceptions, shutdown, resources, serialization/deadlock: retryable
            if c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c == "40001"
                || c == "40P01"
            {
                StoreError::Unavailable(format!("{e} ({c})"))
            } else {
                let detail = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                StoreError::Query(format!("{e}: {detail} ({c})"))
            }
        }
    }
}

fn params_of(p: &[SqlParam]) -> Vec<Param> {
    p.iter()
        .map(|v| -> Param {
            match v {
                SqlParam::Int(i) => Box::new(*i),
                SqlParam::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

fn refs(p: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn row_to_record(r: &Row) -> Result<TraceRecord, StoreError> {
    let q = |e: tokio_postgres::Error| StoreError::Corrupt(e.to_string());
    let props: String = r.try_get(32).map_err(q)?;
    let attempts: String = r.try_get(33).map_err(q)?;
    Ok(TraceRecord {
        request_id: r.try_get(0).map_err(q)?,
        ts_ms: r.try_get(1).map_err(q)?,
        endpoint: r.try_get(2).map_err(q)?,
        key_id: r.try_get(3).map_err(q)?,
        session_id: r.try_get(4).map_err(q)?,
        session_name: r.try_get(5).map_err(q)?,
        session_path: r.try_get(6).map_err(q)?,
        project_id: r.try_get(7).map_err(q)?,
        user_id: r.try_get(8).map_err(q)?,
        route: r.try_get(9).map_err(q)?,
        requested_model: r.try_get(10).map_err(q)?,
        served_model: r.try_get(11).map_err(q)?,
        provider: r.try_get(12).map_err(q)?,
        status: u16::try_from(r.try_get::<_, i64>(13).map_err(q)?).unwrap_or(0),
        stream: r.try_get(14).map_err(q)?,
        cancelled: r.try_get(15).map_err(q)?,
        fallback_used: r.try_get(16).map_err(q)?,
        prompt_tokens: to_u64(r.try_get(17).map_err(q)?),
        completion_tokens: to_u64(r.try_get(18).map_err(q)?),
        cached_tokens: to_u64(r.try_get(19).map_err(q)?),
        cache_creation_tokens: to_u64(r.try_get(20).map_err(q)?),
        reasoning_tokens: to_u64(r.try_get(21).map_err(q)?),
        usage_reported: r.try_get(22).map_err(q)?,
        cost_usd: r.try_get(23).map_err(q)?,
        latency_ms: r.try_get(24).map_err(q)?,
        ttft_ms: r.try_get(25).map_err(q)?,
        request_bytes: to_u64(r.try_get(26).map_err(q)?),
        response_bytes: to_u64(r.try_get(27).map_err(q)?),
        error: r.try_get(28).map_err(q)?,
        decision_id: r.try_get(29).map_err(q)?,
        zero_retention: r.try_get(30).map_err(q)?,
        shadow: r.try_get(31).map_err(q)?,
        decision: None,
        properties: serde_json::from_str(&props).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        attempts: serde_json::from_str(&attempts)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        request_body: r.try_get(34).map_err(q)?,
        response_body: r.try_get(35).map_err(q)?,
        cost_unknown: r.try_get(36).map_err(q)?,
    })
}

fn record_params(r: &TraceRecord, out: &mut Vec<Param>) -> Result<(), StoreError> {
    let props =
        serde_json::to_string(&r.properties).map_err(|e| StoreError::Query(e.to_string()))?;
    let attempts =
        serde_json::to_string(&r.attempts).map_err(|e| StoreError::Query(e.to_string()))?;
    out.push(Box::new(r.request_id.clone()));
    out.push(Box::new(r.ts_ms));
    out.push(Box::new(r.endpoint.clone()));
    out.push(Box::new(r.key_id.clone()));
    out.push(Box::new(r.session_id.clone()));
    out.push(Box::new(r.session_name.clone()));
    out.push(Box::new(r.session_path.clone()));
    out.push(Box::new(r.project_id.clone()));
    out.push(Box::new(r.user_id.clone()));
    out.push(Box::new(r.route.clone()));
    out.push(Box::new(r.requested_model.clone()));
    out.push(Box::new(r.served_model.clone()));
    out.push(Box::new(r.provider.clone()));
    out.push(Box::new(r.status as i64));
    out.push(Box::new(r.stream));
    out.push(Box::new(r.cancelled));
    out.push(Box::new(r.fallback_used));
    out.push(Box::new(to_i64(r.prompt_tokens)));
    out.push(Box::new(to_i64(r.completion_tokens)));
    out.push(Box::new(to_i64(r.cached_tokens)));
    out.push(Box::new(to_i64(r.cache_creation_tokens)));
    out.push(Box::new(to_i64(r.reasoning_tokens)));
    out.push(Box::new(r.usage_reported));
    out.push(Box::new(r.cost_usd));
    out.push(Box::new(r.latency_ms));
    out.push(Box::new(r.ttft_ms));
    out.push(Box::new(to_i64(r.request_bytes)));
    out.push(Box::new(to_i64(r.response_bytes)));
    out.push(Box::new(r.error.clone()));
    out.push(Box::new(r.decision_id.clone()));
    out.push(Box::new(r.zero_retention));
    out.push(Box::new(r.shadow));
    out.push(Box::new(props));
    out.push(Box::new(attempts));
    out.push(Box::new(r.request_body.clone()));
    out.push(Box::new(r.response_body.clone()));
    out.push(Box::new(r.cost_unknown));
    Ok(())
}

/// `($1, ..., $n), ($n+1, ...)` for `rows` rows of `cols` columns.
fn values_list(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            s.push('$');
            s.push_str(&(r * cols + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// Column types of `TRACE_COLS`, in order, for binary `COPY` (the PostgreSQL forms of
/// the migrations' `{INT}`, `{REAL}` and `{BOOL}`).
const TRACE_TYPES: [Type; TRACE_NCOLS] = [
    Type::TEXT,   // request_id
    Type::INT8,   // ts_ms
    Type::TEXT,   // endpoint
    Type::TEXT,   // key_id
    Type::TEXT,   // session_id
    Type::TEXT,   // session_name
    Type::TEXT,   // session_path
    Type::TEXT,   // project_id
    Type::TEXT,   // user_id
    Type::TEXT,   // route
    Type::TEXT,   // requested_model
    Type::TEXT,   // served_model
    Type::TEXT,   // provider
    Type::INT8,   // status
    Type::BOOL,   // stream
    Type::BOOL,   // cancelled
    Type::BOOL,   // fallback_used
    Type::INT8,   // prompt_tokens
    Type::INT8,   // completion_tokens
    Type::INT8,   // cached_tokens
    Type::INT8,   // cache_creation_tokens
    Type::INT8,   // reasoning_tokens
    Type::BOOL,   // usage_reported
    Type::FLOAT8, // cost_usd
    Type::FLOAT8, // latency_ms
    Type::FLOAT8, // ttft_ms
    Type::INT8,   // request_bytes
    Type::INT8,   // response_bytes
    Type::TEXT,   // error
    Type::TEXT,   // decision_id
    Type::BOOL,   // zero_retention
    Type::BOOL,   // shadow
    Type::TEXT,   // properties
    Type::TEXT,   // attempts
    Type::TEXT,   // request_body
    Type::TEXT,   // response_body
    Type::BOOL,   // cost_unknown
];

/// Why the `COPY` path gave the batch back.
enum CopyOutcome {
    /// Written and committed; this many traces were new.
    Done(usize),
    /// A row already exists (a retried batch, or another gateway wrote the same id): the
    /// transaction was rolled back and the batch goes through the `INSERT ... ON CONFLICT`
    /// path, which skips existing rows.
    Conflict,
}

/// Write a batch of traces in one transaction: the traces, their properties, their
/// decisions and the rollup deltas of the traces that were new.
///
/// The bulk path is binary `COPY ... FROM STDIN` into `traces` and `trace_properties`
/// (no statement text or parameters to parse per row); `COPY` cannot skip existing rows,
/// so when one already exists the whole transaction is rolled back and the batch is
/// written again with multi-row `INSERT ... ON CONFLICT DO NOTHING` — a retried batch
/// (e.g. after the server restarted mid-commit) is never counted twice.
async fn insert_batch(c: &mut Client, recs: &[TraceRecord]) -> Result<usize, StoreError> {
    match copy_batch(c, recs).await? {
        CopyOutcome::Done(n) => Ok(n),
        CopyOutcome::Conflict => insert_batch_rows(c, recs).await,
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// One trace as the binary `COPY` row of `TRACE_COLS`.
async fn copy_trace_row(
    w: std::pin::Pin<&mut BinaryCopyInWriter>,
    r: &TraceRecord,
) -> Result<(), tokio_postgres::Error> {
    // Serialising a Vec of strings / plain structs cannot fail; an empty list is the
    // harmless fallback all the same.
    let props = serde_json::to_string(&r.properties).unwrap_or_else(|_| "[]".into());
    let attempts = serde_json::to_string(&r.attempts).unwrap_or_else(|_| "[]".into());
    let status = r.status as i64;
    let (pt, ct, cached, creation, reasoning) = (
        to_i64(r.prompt_tokens),
        to_i64(r.completion_tokens),
        to_i64(r.cached_tokens),
        to_i64(r.cache_creation_tokens),
        to_i64(r.reasoning_tokens),
    );
    let (req_bytes, resp_bytes) = (to_i64(r.request_bytes), to_i64(r.response_bytes));
    let row: [&(dyn ToSql + Sync); TRACE_NCOLS] = [
        &r.request_id,
        &r.ts_ms,
        &r.endpoint,
        &r.key_id,
        &r.session_id,
        &r.session_name,
        &r.session_path,
        &r.project_id,
        &r.user_id,
        &r.route,
        &r.requested_model,
        &r.served_model,
        &r.provider,
        &status,
        &r.stream,
        &r.cancelled,
        &r.fallback_used,
        &pt,
        &ct,
        &cached,
        &creation,
        &reasoning,
        &r.usage_reported,
        &r.cost_usd,
        &r.latency_ms,
        &r.ttft_ms,
        &req_bytes,
        &resp_bytes,
        &r.error,
        &r.decision_id,
        &r.zero_retention,
        &r.shadow,
        &props,
        &attempts,
        &r.request_body,
        &r.response_body,
        &r.cost_unknown,
    ];
    w.write(&row).await
}

/// The `COPY` path of `insert_batch`.
async fn copy_batch(c: &mut Client, recs: &[TraceRecord]) -> Result<CopyOutcome, StoreError> {
    // First occurrence of each id (a batch may carry the same id twice; COPY would refuse).
    let mut seen: HashSet<&str> = HashSet::with_capacity(recs.len());
    let unique: Vec<&TraceRecord> = recs
        .iter()
        .filter(|r| seen.insert(r.request_id.as_str()))
        .collect();
    let tx = c.transaction().await.map_err(pg_err)?;
    let copied = async {
        let sink = tx
            .copy_in(&format!(
                "COPY traces ({TRACE_COLS}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        let w = BinaryCopyInWriter::new(sink, &TRACE_TYPES);
        tokio::pin!(w);
        for r in &unique {
            copy_trace_row(w.as_mut(), r).await?;
        }
        w.as_mut().finish().await?;
        // Properties of the new traces; (name, value, request_id) is the key, so a
        // repeated pair in one record is written once.
        let mut pairs: HashSet<(&str, &str, &str)> = HashSet::new();
        let sink = tx
            .copy_in(
                "COPY trace_properties (name, value, request_id, ts_ms) FROM STDIN (FORMAT binary)",
            )
            .await?;
        let w = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8]);
        tokio::pin!(w);
        for r in &unique {
            for (k, v) in &r.properties {
                if pairs.insert((k.as_str(), v.as_str(), r.request_id.as_str())) {
                    let row: [&(dyn ToSql + Sync); 4] = [k, v, &r.request_id, &r.ts_ms];
                    w.as_mut().write(&row).await?;
                }
            }
        }
        w.as_mut().finish().await?;
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    match copied {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            // The transaction is aborted; roll it back explicitly before the INSERT path.
            tx.rollback().await.map_err(pg_err)?;
            return Ok(CopyOutcome::Conflict);
        }
        Err(e) => return Err(pg_err(e)),
    }
    let decisions: Vec<&DecisionRow> = recs.iter().filter_map(|r| r.decision.as_deref()).collect();
    insert_decisions(&tx, &decisions).await?;
    let deltas: Vec<_> = rollup_deltas(unique.iter().copied()).into_iter().collect();
    apply_rollup(&tx, &deltas, true).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(CopyOutcome::Done(unique.len()))
}

/// Decisions ride with their trace: same transaction, idempotent on request id (a
/// decision may already be stored, so this stays an `INSERT ... ON CONFLICT`).
async fn insert_decisions(
    tx: &tokio_postgres::Transaction<'_>,
    decisions: &[&DecisionRow],
) -> Result<(), StoreError> {
    for chunk in decisions.chunks(INSERT_CHUNK) {
        let mut ps: Vec<Param> = Vec::with_capacity(chunk.len() * DECISION_NCOLS);
        for d in chunk {
            decision_params(d, &mut ps);
        }
        let sql = format!(
            "INSERT INTO decisions ({DECISION_COLS}) VALUES {} ON CONFLICT (request_id) DO NOTHING",
            values_list(chunk.len(), DECISION_NCOLS)
        );
        tx.execute(&sql, &refs(&ps)).await.map_err(pg_err)?;
    }
    Ok(())
}

/// The `INSERT ... ON CONFLICT DO NOTHING` path of `insert_batch`: skips traces that
/// already exist and counts only the new ones in the rollup.
async fn insert_batch_rows(c: &mut Client, recs: &[TraceRecord]) -> Result<usize, StoreError> {
    let tx = c.transaction().await.map_err(pg_err)?;
    let mut new_ids: HashSet<String> = HashSet::with_capacity(recs.len());
    for chunk in recs.chunks(INSERT_CHUNK) {
        let mut ps: Vec<Param> = Vec::with_capacity(chunk.len() * TRACE_NCOLS);
        for r in chunk {
            record_params(r, &mut ps)?;
        }
        let sql = format!(
            "INSERT INTO traces ({TRACE_COLS}) VALUES {} ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            values_list(chunk.len(), TRACE_NCOLS)
        );
        for row in tx.query(&sql, &refs(&ps)).await.map_err(pg_err)? {
            new_ids.insert(row.try_get(0).map_err(pg_err)?);
        }
    }
    // First occurrence of each new id (a batch may carry the same id twice).
    let mut seen: HashSet<&str> = HashSet::with_capacity(new_ids.len());
    let inserted: Vec<&TraceRecord> = recs
        .iter()
        .filter(|r| new_ids.contains(&r.request_id) && seen.insert(r.request_id.as_str()))
        .collect();
    let props: Vec<(&str, &str, &str, i64)> = inserted
        .iter()
        .flat_map(|r| {
            r.properties
                .iter()
                .map(move |(k, v)| (k.as_str(), v.as_str(), r.request_id.as_str(), r.ts_ms))
        })
        .collect();
    for chunk in props.chunks(INSERT_CHUNK * 4) {
        let mut ps: Vec<Param> = Vec::with_capacity(chunk.len() * 4);
        for (k, v, id, ts) in chunk {
            ps.push(Box::new(k.to_string()));
            ps.push(Box::new(v.to_string()));
            ps.push(Box::new(id.to_string()));
            ps.push(Box::new(*ts));
        }
        let sql = format!(
            "INSERT INTO trace_properties (name, value, request_id, ts_ms) VALUES {} ON CONFLICT DO NOTHING",
            values_list(chunk.len(), 4)
        );
        tx.execute(&sql, &refs(&ps)).await.map_err(pg_err)?;
    }
    let decisions: Vec<&DecisionRow> = recs.iter().filter_map(|r| r.decision.as_deref()).collect();
    insert_decisions(&tx, &decisions).await?;
    let deltas: Vec<_> = rollup_deltas(inserted.iter().copied())
        .into_iter()
        .collect();
    apply_rollup(&tx, &deltas, true).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(inserted.len())
}

fn decision_params(d: &DecisionRow, out: &mut Vec<Param>) {
    out.push(Box::new(d.request_id.clone()));
    out.push(Box::new(d.ts_ms));
    out.push(Box::new(d.route.clone()));
    out.push(Box::new(d.mode.clone()));
    out.push(Box::new(d.session_id.clone()));
    out.push(Box::new(d.chosen.clone()));
    out.push(Box::new(d.served.clone()));
    out.push(Box::new(d.baseline.clone()));
    out.push(Box::new(d.context.clone()));
    out.push(Box::new(d.kind.clone()));
    out.push(Box::new(d.shadow));
    out.push(Box::new(d.confidence));
    out.push(Box::new(d.quality));
    out.push(Box::new(d.propensity));
    out.push(Box::new(to_i64(d.table_version)));
    out.push(Box::new(d.signed.clone()));
    out.push(Box::new(d.project.clone()));
}

fn row_to_decision(r: &Row) -> Result<DecisionRow, StoreError> {
    Ok(DecisionRow {
        request_id: r.try_get(0).map_err(pg_err)?,
        ts_ms: r.try_get(1).map_err(pg_err)?,
        route: r.try_get(2).map_err(pg_err)?,
        mode: r.try_get(3).map_err(pg_err)?,
        session_id: r.try_get(4).map_err(pg_err)?,
        chosen: r.try_get(5).map_err(pg_err)?,
        served: r.try_get(6).map_err(pg_err)?,
        baseline: r.try_get(7).map_err(pg_err)?,
        context: r.try_get(8).map_err(pg_err)?,
        kind: r.try_get(9).map_err(pg_err)?,
        shadow: r.try_get(10).map_err(pg_err)?,
        confidence: r.try_get(11).map_err(pg_err)?,
        quality: r.try_get(12).map_err(pg_err)?,
        propensity: r.try_get(13).map_err(pg_err)?,
        table_version: to_u64(r.try_get(14).map_err(pg_err)?),
        signed: r.try_get(15).map_err(pg_err)?,
        project: r.try_get(16).map_err(pg_err)?,
        deferred: None,
    })
}

/// Reads `seq, FEEDBACK_COLS`.
fn row_to_feedback(r: &Row) -> Result<FeedbackRow, StoreError> {
    let targets: String = r.try_get(11).map_err(pg_err)?;
    Ok(FeedbackRow {
        seq: r.try_get(0).map_err(pg_err)?,
        id: r.try_get(1).map_err(pg_err)?,
        dedup_key: r.try_get(2).map_err(pg_err)?,
        signal: r.try_get(3).map_err(pg_err)?,
        request_id: r.try_get(4).map_err(pg_err)?,
        session_id: r.try_get(5).map_err(pg_err)?,
        route: r.try_get(6).map_err(pg_err)?,
        model: r.try_get(7).map_err(pg_err)?,
        context: r.try_get(8).map_err(pg_err)?,
        value: r.try_get(9).map_err(pg_err)?,
        scale: r.try_get(10).map_err(pg_err)?,
        targets: serde_json::from_str(&targets).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        at_ms: r.try_get(12).map_err(pg_err)?,
        received_ms: r.try_get(13).map_err(pg_err)?,
        key_id: r.try_get(14).map_err(pg_err)?,
        comment: r.try_get(15).map_err(pg_err)?,
        detail: r.try_get(16).map_err(pg_err)?,
        project: r.try_get(17).map_err(pg_err)?,
    })
}

fn row_to_audit(r: &Row) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: r.try_get(0).map_err(pg_err)?,
        ts_ms: r.try_get(1).map_err(pg_err)?,
        actor: r.try_get(2).map_err(pg_err)?,
        action: r.try_get(3).map_err(pg_err)?,
        route: r.try_get(4).map_err(pg_err)?,
        old: r.try_get(5).map_err(pg_err)?,
        new: r.try_get(6).map_err(pg_err)?,
        reason: r.try_get(7).map_err(pg_err)?,
        prev_hash: r.try_get(8).map_err(pg_err)?,
        hash: r.try_get(9).map_err(pg_err)?,
    })
}

fn rparams(p: &[RParam]) -> Vec<Param> {
    p.iter()
        .map(|v| -> Param {
            match v {
                RParam::Int(i) => Box::new(*i),
                RParam::Real(f) => Box::new(*f),
                RParam::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

/// Insert unless the dedup key exists.
///
/// Why the lock: `seq` comes from a sequence, and with concurrent transactions a higher
/// value can commit (become visible) before a lower one. An aggregator that had already
/// read past the higher value would then skip the lower one forever. Holding one
/// transaction-level advisory lock from `nextval` until commit makes every gateway's
/// inserts commit in `seq` order, so `feedback_since(cursor)` never skips a row.
/// Readers are not blocked; feedback inserts are rare next to traces.
async fn insert_feedback_pg(
    c: &mut Client,
    row: &FeedbackRow,
) -> Result<FeedbackInsert, StoreError> {
    let targets =
        serde_json::to_string(&row.targets).map_err(|e| StoreError::Query(e.to_string()))?;
    let tx = c.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEEDBACK_LOCK])
        .await
        .map_err(pg_err)?;
    let ps: Vec<Param> = vec![
        Box::new(row.id.clone()),
        Box::new(row.dedup_key.clone()),
        Box::new(row.signal.clone()),
        Box::new(row.request_id.clone()),
        Box::new(row.session_id.clone()),
        Box::new(row.route.clone()),
        Box::new(row.model.clone()),
        Box::new(row.context.clone()),
        Box::new(row.value),
        Box::new(row.scale.clone()),
        Box::new(targets),
        Box::new(row.at_ms),
        Box::new(row.received_ms),
        Box::new(row.key_id.clone()),
        Box::new(row.comment.clone()),
        Box::new(row.detail.clone()),
        Box::new(row.project.clone()),
    ];
    let sql = format!(
        "INSERT INTO feedback ({FEEDBACK_COLS}) VALUES {} ON CONFLICT (dedup_key) DO NOTHING RETURNING seq",
        values_list(1, FEEDBACK_NCOLS)
    );
    let rows = tx.query(&sql, &refs(&ps)).await.map_err(pg_err)?;
    let out = match rows.first() {
        Some(r) => FeedbackInsert::Inserted(FeedbackRow {
            seq: r.try_get(0).map_err(pg_err)?,
            ..row.clone()
        }),
        None => {
            // Under the lock the conflicting row is committed, so this statement sees it.
            let r = tx
                .query_one(
                    &format!("SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE dedup_key = $1"),
                    &[&row.dedup_key],
                )
                .await
                .map_err(pg_err)?;
            FeedbackInsert::Duplicate(row_to_feedback(&r)?)
        }
    };
    tx.commit().await.map_err(pg_err)?;
    Ok(out)
}

/// Read the last entry and append its successor under one lock, so two gateways cannot both
/// link to the same predecessor (the `seq` primary key would reject the second anyway).
async fn append_audit_pg(c: &mut Client, a: &AuditAppend) -> Result<AuditEntry, StoreError> {
    let tx = c.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
        .await
        .map_err(pg_err)?;
    let last = tx
        .query_opt(
            "SELECT hash, seq FROM audit_log ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let last: Option<(String, i64)> = match last {
        Some(r) => Some((r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?)),
        None => None,
    };
    let e = AuditEntry::next(last.as_ref().map(|(h, s)| (h.as_str(), *s)), a.clone());
    tx.execute(
        &format!(
            "INSERT INTO audit_log ({AUDIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ),
        &[
            &e.seq,
            &e.ts_ms,
            &e.actor,
            &e.action,
            &e.route,
            &e.old,
            &e.new,
            &e.reason,
            &e.prev_hash,
            &e.hash,
        ],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(e)
}

async fn put_route_state_pg(
    c: &mut Client,
    route: &str,
    key: &str,
    value: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    match value {
        Some(v) => c
            .execute(
                "INSERT INTO route_state (route, key, value, updated_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (route, key) DO UPDATE SET value = EXCLUDED.value, updated_ms = EXCLUDED.updated_ms",
                &[&route, &key, &v, &now_ms],
            )
            .await,
        None => {
            c.execute(
                "DELETE FROM route_state WHERE route = $1 AND key = $2",
                &[&route, &key],
            )
            .await
        }
    }
    .map(|_| ())
    .map_err(pg_err)
}

/// Totals and latencies in one REPEATABLE READ snapshot, so both see the same rows.
async fn route_model_stats_pg(
    c: &mut Client,
    since_ms: i64,
) -> Result<Vec<RouteModelStats>, StoreError> {
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)?;
    let totals = tx
        .query(&stats_totals_sql(true), &[&since_ms])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| {
            Ok(RouteModelStats {
                route: r.try_get(0).map_err(pg_err)?,
                model: r.try_get(1).map_err(pg_err)?,
                requests: to_u64(r.try_get(2).map_err(pg_err)?),
                errors: to_u64(r.try_get(3).map_err(pg_err)?),
                prompt_tokens: to_u64(r.try_get(4).map_err(pg_err)?),
                completion_tokens: to_u64(r.try_get(5).map_err(pg_err)?),
                cost_usd: r.try_get(6).map_err(pg_err)?,
                p95_latency_ms: None,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut lat: std::collections::HashMap<(String, String), Vec<f64>> = Default::default();
    for r in tx
        .query(&stats_latency_sql(true), &[&since_ms])
        .await
        .map_err(pg_err)?
    {
        lat.entry((r.try_get(0).map_err(pg_err)?, r.try_get(1).map_err(pg_err)?))
            .or_default()
            .push(r.try_get(2).map_err(pg_err)?);
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(assemble_stats(totals, lat))
}

/// Add (`add`) or subtract deltas to rollup rows: read-modify-write under row locks.
/// Rows are created first (so two gateways creating the same row cannot lose counts),
/// then locked in key order (so concurrent writers cannot deadlock), merged here, and
/// written back. Subtraction deletes rows that reach zero requests.
async fn apply_rollup(
    tx: &tokio_postgres::Transaction<'_>,
    deltas: &[(RollupKey, Stats)],
    add: bool,
) -> Result<(), StoreError> {
    for chunk in deltas.chunks(ROLLUP_CHUNK) {
        let mut keys: Vec<Param> = Vec::with_capacity(chunk.len() * 4);
        for ((dim, hour, value, project), _) in chunk {
            keys.push(Box::new(dim.clone()));
            keys.push(Box::new(*hour));
            keys.push(Box::new(value.clone()));
            keys.push(Box::new(project.clone()));
        }
        if add {
            let mut vals = Vec::with_capacity(chunk.len());
            for i in 0..chunk.len() {
                let b = i * 4;
                vals.push(format!(
                    "(${}, ${}, ${}, ${}, 0, 0, 0, 0, 0, 0, '')",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4
                ));
            }
            let q = format!(
                "INSERT INTO rollup_hourly (dim, bucket_ms, value, project_id, requests, errors, prompt_tokens, \
                 completion_tokens, cost_usd, latency_sum_ms, hist) VALUES {} ON CONFLICT DO NOTHING",
                vals.join(", ")
            );
            tx.execute(&q, &refs(&keys)).await.map_err(pg_err)?;
        }
        let q = format!(
            "SELECT dim, bucket_ms, value, project_id, requests, errors, prompt_tokens, completion_tokens, \
             cost_usd, latency_sum_ms, hist FROM rollup_hourly WHERE (dim, bucket_ms, value, project_id) IN ({}) \
             ORDER BY dim, bucket_ms, value, project_id FOR UPDATE",
            values_list(chunk.len(), 4)
        );
        let mut current: BTreeMap<RollupKey, Stats> = BTreeMap::new();
        for r in tx.query(&q, &refs(&keys)).await.map_err(pg_err)? {
            let hist: String = r.try_get(10).map_err(pg_err)?;
            current.insert(
                (
                    r.try_get(0).map_err(pg_err)?,
                    r.try_get(1).map_err(pg_err)?,
                    r.try_get(2).map_err(pg_err)?,
                    r.try_get(3).map_err(pg_err)?,
                ),
                Stats {
                    requests: to_u64(r.try_get(4).map_err(pg_err)?),
                    errors: to_u64(r.try_get(5).map_err(pg_err)?),
                    prompt_tokens: to_u64(r.try_get(6).map_err(pg_err)?),
                    completion_tokens: to_u64(r.try_get(7).map_err(pg_err)?),
                    cost_usd: r.try_get(8).map_err(pg_err)?,
                    latency_sum_ms: r.try_get(9).map_err(pg_err)?,
                    hist: Histogram::from_text(&hist)?,
                },
            );
        }
        let mut ps: Vec<Param> = Vec::with_capacity(chunk.len() * 11);
        let mut vals = Vec::with_capacity(chunk.len());
        for (key, delta) in chunk {
            let Some(mut s) = current.remove(key) else {
                continue; // subtracting from a row that is already gone
            };
            if add {
                s.merge(delta);
            } else {
                s.minus(delta);
            }
            let b = ps.len();
            vals.push(format!(
                "(${}::TEXT, ${}::BIGINT, ${}::TEXT, ${}::TEXT, ${}::BIGINT, ${}::BIGINT, ${}::BIGINT, ${}::BIGINT, \
                 ${}::DOUBLE PRECISION, ${}::DOUBLE PRECISION, ${}::TEXT)",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10,
                b + 11
            ));
            ps.push(Box::new(key.0.clone()));
            ps.push(Box::new(key.1));
            ps.push(Box::new(key.2.clone()));
            ps.push(Box::new(key.3.clone()));
            ps.push(Box::new(to_i64(s.requests)));
            ps.push(Box::new(to_i64(s.errors)));
            ps.push(Box::new(to_i64(s.prompt_tokens)));
            ps.push(Box::new(to_i64(s.completion_tokens)));
            ps.push(Box::new(s.cost_usd));
            ps.push(Box::new(s.latency_sum_ms));
            ps.push(Box::new(s.hist.to_text()));
        }
        if vals.is_empty() {
            continue;
        }
        let q = format!(
            "UPDATE rollup_hourly AS r SET requests = v.requests, errors = v.errors, prompt_tokens = v.pt, \
             completion_tokens = v.ct, cost_usd = v.cost, latency_sum_ms = v.lat, hist = v.hist \
             FROM (VALUES {}) AS v(dim, bucket_ms, value, project_id, requests, errors, pt, ct, cost, lat, hist) \
             WHERE r.dim = v.dim AND r.bucket_ms = v.bucket_ms AND r.value = v.value AND r.project_id = v.project_id",
            vals.join(", ")
        );
        tx.execute(&q, &refs(&ps)).await.map_err(pg_err)?;
    }
    if !add {
        tx.execute("DELETE FROM rollup_hourly WHERE requests <= 0", &[])
            .await
            .map_err(pg_err)?;
    }
    Ok(())
}

async fn migrate(c: &mut Client) -> Result<u32, StoreError> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let res = migrate_locked(c).await;
    // Unlock even after a failed migration; the session ending would release it too.
    let _ = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    res
}

async fn migrate_locked(c: &mut Client) -> Result<u32, StoreError> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
    )
    .await
    .map_err(pg_err)?;
    let mut current = 0u32;
    for m in MIGRATIONS {
        let tx = c.transaction().await.map_err(pg_err)?;
        let have: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        if have >= m.version as i64 {
            current = have as u32;
            continue;
        }
        tx.batch_execute(&m.sql(SqlDialect::Postgres))
            .await
            .map_err(|e| StoreError::Migration {
                version: m.version,
                message: pg_err(e).to_string(),
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
            &[
                &(m.version as i64),
                &m.name,
                &chrono::Utc::now().timestamp_millis(),
            ],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        current = m.version;
    }
    Ok(current)
}

const PENDING_COLS: &str =
    "id, dedup_key, request_id, session_id, received_ms, expires_ms, row_json";

fn row_to_pending(r: &Row) -> Result<PendingFeedback, StoreError> {
    Ok(PendingFeedback {
        id: r.try_get(0).map_err(pg_err)?,
        dedup_key: r.try_get(1).map_err(pg_err)?,
        request_id: r.try_get(2).map_err(pg_err)?,
        session_id: r.try_get(3).map_err(pg_err)?,
        received_ms: r.try_get(4).map_err(pg_err)?,
        expires_ms: r.try_get(5).map_err(pg_err)?,
        row: r.try_get(6).map_err(pg_err)?,
    })
}

/// Park an event unless its dedup key is taken, under the feedback lock (so a concurrent
/// `insert_feedback` of the same key is seen).
async fn insert_pending_pg(
    c: &mut Client,
    p: &PendingFeedback,
) -> Result<PendingInsert, StoreError> {
    let tx = c.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FEEDBACK_LOCK])
        .await
        .map_err(pg_err)?;
    let stored = tx
        .query_opt(
            "SELECT id FROM feedback WHERE dedup_key = $1",
            &[&p.dedup_key],
        )
        .await
        .map_err(pg_err)?;
    let out = if let Some(r) = stored {
        PendingInsert::Duplicate {
            id: r.try_get(0).map_err(pg_err)?,
            pending: false,
        }
    } else {
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO pending_feedback ({PENDING_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (dedup_key) DO NOTHING"
                ),
                &[
                    &p.id,
                    &p.dedup_key,
                    &p.request_id,
                    &p.session_id,
                    &p.received_ms,
                    &p.expires_ms,
                    &p.row,
                ],
            )
            .await
            .map_err(pg_err)?;
        if n == 1 {
            PendingInsert::Inserted
        } else {
            let r = tx
                .query_one(
                    "SELECT id FROM pending_feedback WHERE dedup_key = $1",
                    &[&p.dedup_key],
                )
                .await
                .map_err(pg_err)?;
            PendingInsert::Duplicate {
                id: r.try_get(0).map_err(pg_err)?,
                pending: true,
            }
        }
    };
    tx.commit().await.map_err(pg_err)?;
    Ok(out)
}

impl PgStore {
    /// Connect, migrate, and keep the connection string for reconnects.
    pub async fn open(url: &str, copy: bool) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Config(format!("postgres_url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("loopgate");
        }
        // Migrations run on a task and a connection of their own: if the caller stops
        // waiting (the trace writer bounds an open by `write_timeout_ms`), a long migration
        // (say, rebuilding an index over a large `traces`) still commits, and the next open
        // waits for its advisory lock and finds it applied, instead of each attempt being
        // rolled back when its connection goes and starting over.
        let cfg = config.clone();
        tokio::spawn(async move {
            let mut client = connect_to(&cfg).await?;
            migrate(&mut client).await
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("postgres migration task: {e}")))??;
        Ok(PgStore {
            config,
            copy,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        connect_to(&self.config).await
    }

    /// Lock a connection slot, (re)connecting if it is empty or closed.
    async fn lock<'a>(
        &self,
        slot: &'a Mutex<Option<Client>>,
    ) -> Result<MutexGuard<'a, Option<Client>>, StoreError> {
        let mut g = slot.lock().await;
        if g.as_ref().is_none_or(|c| c.is_closed()) {
            *g = None;
            *g = Some(self.connect().await?);
        }
        Ok(g)
    }

    /// Drop a connection that failed in a way that may have broken it.
    fn settle<T>(g: &mut MutexGuard<'_, Option<Client>>, res: &Result<T, StoreError>) {
        if let Err(StoreError::Unavailable(_)) = res {
            if g.as_ref().is_none_or(|c| c.is_closed()) {
                **g = None;
            }
        }
    }

    /// A query on the reader connection with already boxed parameters.
    async fn read_boxed(&self, sql: &str, ps: &[Param]) -> Result<Vec<Row>, StoreError> {
        let mut g = self.lock(&self.reader).await?;
        let res = match g.as_ref() {
            Some(c) => c.query(sql, &refs(ps)).await.map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn read_rows(&self, sql: &str, params: &[SqlParam]) -> Result<Vec<Row>, StoreError> {
        let mut g = self.lock(&self.reader).await?;
        let ps = params_of(params);
        let res = match g.as_ref() {
            Some(c) => c.query(sql, &refs(&ps)).await.map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.read_rows("SELECT 1", &[]).await.map(|_| ())
    }

    async fn schema_version(&self) -> Result<u32, StoreError> {
        let rows = self
            .read_rows(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?;
        let v: i64 = rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_err)?
            .unwrap_or(0);
        Ok(v as u32)
    }

    async fn insert_traces(&self, recs: &[TraceRecord]) -> Result<usize, StoreError> {
        if recs.is_empty() {
            return Ok(0);
        }
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) if self.copy => insert_batch(c, recs).await,
            Some(c) => insert_batch_rows(c, recs).await,
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn get_trace(&self, request_id: &str) -> Result<Option<TraceRecord>, StoreError> {
        let rows = self
            .read_rows(
                &format!("SELECT {TRACE_COLS} FROM traces WHERE request_id = $1"),
                &[SqlParam::Text(request_id.to_string())],
            )
            .await?;
        rows.first().map(row_to_record).transpose()
    }

    async fn query_logs(&self, q: &LogQuery) -> Result<LogPage, StoreError> {
        let mut sql = Sql::new(true);
        let text = sql.logs_query(TRACE_COLS, q);
        let rows = self.read_rows(&text, &sql.params).await?;
        let mut records = rows
            .iter()
            .map(row_to_record)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(&mut records, q.limit))
    }

    async fn rollup_rows(
        &self,
        dim: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        project: Option<&str>,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let mut sql = Sql::new(true);
        let mut q = format!(
            "SELECT bucket_ms, value, requests, errors, prompt_tokens, completion_tokens, cost_usd, latency_sum_ms, hist \
             FROM rollup_hourly WHERE dim = {}",
            sql.text(dim)
        );
        if let Some(f) = from_ms {
            q.push_str(&format!(" AND bucket_ms >= {}", sql.int(f)));
        }
        if let Some(t) = to_ms {
            q.push_str(&format!(" AND bucket_ms < {}", sql.int(t)));
        }
        if let Some(p) = project {
            q.push_str(&format!(" AND project_id = {}", sql.text(p)));
        }
        let rows = self.read_rows(&q, &sql.params).await?;
        rows.iter()
            .map(|r| {
                let hist: String = r.try_get(8).map_err(pg_err)?;
                Ok(RollupRow {
                    bucket_ms: r.try_get(0).map_err(pg_err)?,
                    value: r.try_get(1).map_err(pg_err)?,
                    stats: Stats {
                        requests: to_u64(r.try_get(2).map_err(pg_err)?),
                        errors: to_u64(r.try_get(3).map_err(pg_err)?),
                        prompt_tokens: to_u64(r.try_get(4).map_err(pg_err)?),
                        completion_tokens: to_u64(r.try_get(5).map_err(pg_err)?),
                        cost_usd: r.try_get(6).map_err(pg_err)?,
                        latency_sum_ms: r.try_get(7).map_err(pg_err)?,
                        hist: Histogram::from_text(&hist)?,
                    },
                })
            })
            .collect()
    }

    async fn raw_rows(
        &self,
        filter: &LogFilter,
        group: &GroupBy,
    ) -> Result<Vec<RawRow>, StoreError> {
        let mut sql = Sql::new(true);
        let q = sql.raw_rows_query(filter, group);
        let rows = self.read_rows(&q, &sql.params).await?;
        rows.iter()
            .map(|r| {
                Ok(RawRow {
                    group: r.try_get(0).map_err(pg_err)?,
                    ts_ms: r.try_get(1).map_err(pg_err)?,
                    is_error: r.try_get::<_, i32>(2).map_err(pg_err)? != 0,
                    prompt_tokens: to_u64(r.try_get(3).map_err(pg_err)?),
                    completion_tokens: to_u64(r.try_get(4).map_err(pg_err)?),
                    cost_usd: r.try_get(5).map_err(pg_err)?,
                    latency_ms: r.try_get(6).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn cache_savings(
        &self,
        filter: &LogFilter,
        group: &GroupBy,
    ) -> Result<Vec<CacheSavingsRow>, StoreError> {
        let mut sql = Sql::new(true);
        let q = sql.cache_savings_query(filter, group);
        let rows = self.read_rows(&q, &sql.params).await?;
        rows.iter()
            .map(|r| {
                Ok(CacheSavingsRow {
                    group: r.try_get(0).map_err(pg_err)?,
                    hour_ms: r.try_get(1).map_err(pg_err)?,
                    hits: to_u64(r.try_get(2).map_err(pg_err)?),
                    saved_usd: r
                        .try_get::<_, Option<f64>>(3)
                        .map_err(pg_err)?
                        .unwrap_or(0.0),
                    saved_ms: r
                        .try_get::<_, Option<f64>>(4)
                        .map_err(pg_err)?
                        .unwrap_or(0.0),
                })
            })
            .collect()
    }

    async fn purge(&self, rule: &PurgeRule) -> Result<u64, StoreError> {
        // One chunk per lock hold, so inserts interleave with a long purge.
        let mut total = 0;
        for _ in 0..PURGE_MAX_ROUNDS {
            let (seen, deleted) = {
                let mut g = self.lock(&self.writer).await?;
                let res = match g.as_mut() {
                    Some(c) => purge_chunk(c, rule).await,
                    None => Err(StoreError::Unavailable("no connection".into())),
                };
                Self::settle(&mut g, &res);
                res?
            };
            total += deleted;
            if (seen as i64) < PURGE_CHUNK {
                break;
            }
        }
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => purge_rollup(c, rule).await,
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res?;
        Ok(total)
    }

    async fn count_traces(&self) -> Result<u64, StoreError> {
        let rows = self
            .read_rows("SELECT COUNT(*)::BIGINT FROM traces", &[])
            .await?;
        let n: i64 = rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_err)?
            .unwrap_or(0);
        Ok(to_u64(n))
    }

    async fn get_decision(&self, request_id: &str) -> Result<Option<DecisionRow>, StoreError> {
        let rows = self
            .read_rows(
                &format!("SELECT {DECISION_COLS} FROM decisions WHERE request_id = $1"),
                &[SqlParam::Text(request_id.to_string())],
            )
            .await?;
        rows.first().map(row_to_decision).transpose()
    }

    async fn scored_decisions(
        &self,
        route: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<ScoredDecision>, StoreError> {
        let rows = self
            .read_rows(
                "SELECT * FROM (SELECT f.seq, d.request_id, d.ts_ms, d.kind, d.served, d.baseline, f.signal, f.value, f.scale FROM feedback f JOIN decisions d ON d.request_id = f.request_id WHERE d.route = $1 AND d.ts_ms >= $2 AND f.signal IN ('feedback', 'judge', 'admin') ORDER BY f.seq DESC LIMIT $3) t ORDER BY seq ASC",
                &[
                    SqlParam::Text(route.to_string()),
                    SqlParam::Int(since_ms),
                    SqlParam::Int(limit.min(1_000_000) as i64),
                ],
            )
            .await?;
        let q = |e: tokio_postgres::Error| StoreError::Corrupt(e.to_string());
        rows.iter()
            .map(|r| {
                Ok(ScoredDecision {
                    seq: r.try_get(0).map_err(q)?,
                    request_id: r.try_get(1).map_err(q)?,
                    ts_ms: r.try_get(2).map_err(q)?,
                    kind: r.try_get(3).map_err(q)?,
                    served: r.try_get(4).map_err(q)?,
                    baseline: r.try_get(5).map_err(q)?,
                    signal: r.try_get(6).map_err(q)?,
                    value: r.try_get(7).map_err(q)?,
                    scale: r.try_get(8).map_err(q)?,
                })
            })
            .collect()
    }

    async fn query_decisions(&self, q: &DecisionQuery) -> Result<Vec<DecisionRow>, StoreError> {
        let (sql, ps) = decisions_sql(q, true);
        let rows = self.read_boxed(&sql, &rparams(&ps)).await?;
        rows.iter().map(row_to_decision).collect()
    }

    async fn insert_feedback(&self, row: &FeedbackRow) -> Result<FeedbackInsert, StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => insert_feedback_pg(c, row).await,
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn feedback_for_request(&self, request_id: &str) -> Result<Vec<FeedbackRow>, StoreError> {
        let rows = self
            .read_rows(
                &format!(
                    "SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE request_id = $1 ORDER BY seq LIMIT 1000"
                ),
                &[SqlParam::Text(request_id.to_string())],
            )
            .await?;
        rows.iter().map(row_to_feedback).collect()
    }

    async fn feedback_since(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<FeedbackRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read_rows(
                &format!(
                    "SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE seq > $1 ORDER BY seq LIMIT $2"
                ),
                &[SqlParam::Int(after_seq), SqlParam::Int(limit)],
            )
            .await?;
        rows.iter().map(row_to_feedback).collect()
    }

    async fn append_audit(&self, a: &AuditAppend) -> Result<AuditEntry, StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => append_audit_pg(c, a).await,
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn list_audit(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read_rows(
                &format!("SELECT {AUDIT_COLS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"),
                &[SqlParam::Int(after_seq), SqlParam::Int(limit)],
            )
            .await?;
        rows.iter().map(row_to_audit).collect()
    }

    async fn put_route_state(
        &self,
        route: &str,
        key: &str,
        value: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => put_route_state_pg(c, route, key, value, now_ms).await,
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn put_virtual_key(&self, row: &super::VirtualKeyRow) -> Result<(), StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => c
                .execute(
                    "INSERT INTO virtual_keys (id, hash, project, spec, created_ms, updated_ms, revoked_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
                     project = EXCLUDED.project, spec = EXCLUDED.spec, updated_ms = EXCLUDED.updated_ms, \
                     revoked_ms = EXCLUDED.revoked_ms",
                    &[
                        &row.id,
                        &row.hash,
                        &row.project,
                        &row.spec,
                        &row.created_ms,
                        &row.updated_ms,
                        &row.revoked_ms,
                    ],
                )
                .await
                .map(|_| ())
                .map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn virtual_keys(&self) -> Result<Vec<super::VirtualKeyRow>, StoreError> {
        let rows = self
            .read_rows(
                "SELECT id, hash, project, spec, created_ms, updated_ms, revoked_ms \
                 FROM virtual_keys ORDER BY created_ms, id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(super::VirtualKeyRow {
                    id: r.try_get(0).map_err(pg_err)?,
                    hash: r.try_get(1).map_err(pg_err)?,
                    project: r.try_get(2).map_err(pg_err)?,
                    spec: r.try_get(3).map_err(pg_err)?,
                    created_ms: r.try_get(4).map_err(pg_err)?,
                    updated_ms: r.try_get(5).map_err(pg_err)?,
                    revoked_ms: r.try_get(6).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn put_provider_key(&self, row: &super::ProviderKeyRow) -> Result<(), StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => c
                .execute(
                    "INSERT INTO provider_keys (id, provider, label, weight, last4, kid, secret, created_ms, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO UPDATE SET \
                     label = EXCLUDED.label, weight = EXCLUDED.weight, kid = EXCLUDED.kid, \
                     secret = EXCLUDED.secret, updated_ms = EXCLUDED.updated_ms",
                    &[
                        &row.id,
                        &row.provider,
                        &row.label,
                        &row.weight,
                        &row.last4,
                        &row.kid,
                        &row.secret,
                        &row.created_ms,
                        &row.updated_ms,
                    ],
                )
                .await
                .map(|_| ())
                .map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn provider_keys(&self) -> Result<Vec<super::ProviderKeyRow>, StoreError> {
        let rows = self
            .read_rows(
                "SELECT id, provider, label, weight, last4, kid, secret, created_ms, updated_ms \
                 FROM provider_keys ORDER BY created_ms, id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(super::ProviderKeyRow {
                    id: r.try_get(0).map_err(pg_err)?,
                    provider: r.try_get(1).map_err(pg_err)?,
                    label: r.try_get(2).map_err(pg_err)?,
                    weight: r.try_get(3).map_err(pg_err)?,
                    last4: r.try_get(4).map_err(pg_err)?,
                    kid: r.try_get(5).map_err(pg_err)?,
                    secret: r.try_get(6).map_err(pg_err)?,
                    created_ms: r.try_get(7).map_err(pg_err)?,
                    updated_ms: r.try_get(8).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn delete_provider_key(&self, id: &str) -> Result<bool, StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => c
                .execute("DELETE FROM provider_keys WHERE id = $1", &[&id])
                .await
                .map(|n| n > 0)
                .map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn insert_mcp_token(&self, row: &super::McpTokenRow) -> Result<(), StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => c
                .execute(
                    "INSERT INTO mcp_tokens (id, hash, project, spec, created_ms, expires_ms, revoked_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &row.id,
                        &row.hash,
                        &row.project,
                        &row.spec,
                        &row.created_ms,
                        &row.expires_ms,
                        &row.revoked_ms,
                    ],
                )
                .await
                .map(|_| ())
                .map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn mcp_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<super::McpTokenRow>, StoreError> {
        let rows = self
            .read_rows(
                "SELECT id, hash, project, spec, created_ms, expires_ms, revoked_ms \
                 FROM mcp_tokens WHERE hash = $1",
                &[SqlParam::Text(hash.to_string())],
            )
            .await?;
        rows.first().map(mcp_token_row).transpose()
    }

    async fn mcp_tokens(&self) -> Result<Vec<super::McpTokenRow>, StoreError> {
        let rows = self
            .read_rows(
                "SELECT id, hash, project, spec, created_ms, expires_ms, revoked_ms \
                 FROM mcp_tokens ORDER BY created_ms, id",
                &[],
            )
            .await?;
        rows.iter().map(mcp_token_row).collect()
    }

    async fn revoke_mcp_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => c
                .execute(
                    "UPDATE mcp_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                    &[&id, &now_ms],
                )
                .await
                .map(|n| n > 0)
                .map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn purge_mcp_tokens(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => c
                .execute(
                    "DELETE FROM mcp_tokens WHERE expires_ms < $1 OR revoked_ms < $1",
                    &[&before_ms],
                )
                .await
                .map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn holder_spend(
        &self,
        day_ms: i64,
        month_ms: i64,
        before_ms: i64,
    ) -> Result<Vec<super::HolderSpend>, StoreError> {
        let rows = self
            .read_rows(
                "SELECT key_id, project_id, user_id, \
                 COALESCE(SUM(CASE WHEN ts_ms >= $1 THEN cost_usd ELSE 0 END), 0)::DOUBLE PRECISION, \
                 COALESCE(SUM(CASE WHEN ts_ms >= $2 THEN cost_usd ELSE 0 END), 0)::DOUBLE PRECISION, \
                 COALESCE(SUM(cost_usd), 0)::DOUBLE PRECISION \
                 FROM traces WHERE ts_ms < $3 AND cost_usd > 0 GROUP BY key_id, project_id, user_id",
                &[
                    SqlParam::Int(day_ms),
                    SqlParam::Int(month_ms),
                    SqlParam::Int(before_ms),
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(super::HolderSpend {
                    key_id: r.try_get(0).map_err(pg_err)?,
                    project_id: r.try_get(1).map_err(pg_err)?,
                    user_id: r.try_get(2).map_err(pg_err)?,
                    usd: [
                        r.try_get(3).map_err(pg_err)?,
                        r.try_get(4).map_err(pg_err)?,
                        r.try_get(5).map_err(pg_err)?,
                    ],
                })
            })
            .collect()
    }

    async fn route_states(&self) -> Result<Vec<RouteStateRow>, StoreError> {
        let rows = self
            .read_rows(
                "SELECT route, key, value, updated_ms FROM route_state ORDER BY route, key",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RouteStateRow {
                    route: r.try_get(0).map_err(pg_err)?,
                    key: r.try_get(1).map_err(pg_err)?,
                    value: r.try_get(2).map_err(pg_err)?,
                    updated_ms: r.try_get(3).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn get_feedback(&self, id: &str) -> Result<Option<FeedbackRow>, StoreError> {
        let rows = self
            .read_rows(
                &format!("SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE id = $1"),
                &[SqlParam::Text(id.to_string())],
            )
            .await?;
        rows.first().map(row_to_feedback).transpose()
    }

    async fn insert_pending_feedback(
        &self,
        p: &PendingFeedback,
    ) -> Result<PendingInsert, StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_mut() {
            Some(c) => insert_pending_pg(c, p).await,
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn pending_feedback(&self, limit: usize) -> Result<Vec<PendingFeedback>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read_rows(
                &format!(
                    "SELECT {PENDING_COLS} FROM pending_feedback ORDER BY received_ms LIMIT $1"
                ),
                &[SqlParam::Int(limit)],
            )
            .await?;
        rows.iter().map(row_to_pending).collect()
    }

    async fn get_pending_feedback(&self, id: &str) -> Result<Option<PendingFeedback>, StoreError> {
        let rows = self
            .read_rows(
                &format!("SELECT {PENDING_COLS} FROM pending_feedback WHERE id = $1"),
                &[SqlParam::Text(id.to_string())],
            )
            .await?;
        rows.first().map(row_to_pending).transpose()
    }

    async fn delete_pending_feedback(&self, id: &str) -> Result<bool, StoreError> {
        let mut g = self.lock(&self.writer).await?;
        let res = match g.as_ref() {
            Some(c) => c
                .execute("DELETE FROM pending_feedback WHERE id = $1", &[&id])
                .await
                .map(|n| n == 1)
                .map_err(pg_err),
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn route_model_stats(&self, since_ms: i64) -> Result<Vec<RouteModelStats>, StoreError> {
        let mut g = self.lock(&self.reader).await?;
        let res = match g.as_mut() {
            Some(c) => route_model_stats_pg(c, since_ms).await,
            None => Err(StoreError::Unavailable("no connection".into())),
        };
        Self::settle(&mut g, &res);
        res
    }

    async fn recent_served(
        &self,
        routes: &[String],
        last: usize,
    ) -> Result<Vec<RouteServed>, StoreError> {
        let last = last.min(crate::store::routing::MAX_RECENT_SERVED) as i64;
        let sql = recent_served_sql(true);
        let mut out = Vec::new();
        for route in routes {
            let rows = self
                .read_rows(&sql, &[SqlParam::Text(route.clone()), SqlParam::Int(last)])
                .await?;
            for r in &rows {
                out.push(RouteServed {
                    route: route.clone(),
                    model: r.try_get(0).map_err(pg_err)?,
                    requests: to_u64(r.try_get(1).map_err(pg_err)?),
                });
            }
        }
        Ok(out)
    }
}

/// Delete one chunk of expired traces; returns (ids seen, traces deleted).
async fn purge_chunk(c: &mut Client, rule: &PurgeRule) -> Result<(usize, u64), StoreError> {
    let mut sql = Sql::new(true);
    let before = sql.int(rule.before_ms);
    let mut q = format!("SELECT request_id FROM traces WHERE ts_ms < {before}");
    if let Some(pc) = project_cond(&mut sql, &rule.projects, "project_id", false) {
        q.push_str(" AND ");
        q.push_str(&pc);
    }
    let lim = sql.int(PURGE_CHUNK);
    q.push_str(&format!(" LIMIT {lim}"));
    let tx = c.transaction().await.map_err(pg_err)?;
    let ps = params_of(&sql.params);
    let ids: Vec<String> = tx
        .query(&q, &refs(&ps))
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(pg_err)?;
    tx.execute(
        "DELETE FROM trace_properties WHERE request_id = ANY($1)",
        &[&ids],
    )
    .await
    .map_err(pg_err)?;
    // A decision lives exactly as long as its trace (retention covers both).
    tx.execute("DELETE FROM decisions WHERE request_id = ANY($1)", &[&ids])
        .await
        .map_err(pg_err)?;
    let deleted = tx
        .execute("DELETE FROM traces WHERE request_id = ANY($1)", &[&ids])
        .await
        .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok((ids.len(), deleted))
}

/// Only whole hours before the cut-off leave the rollup. The per-project rows go; what
/// they held is subtracted from the all-projects rows, which go when they reach zero.
async fn purge_rollup(c: &mut Client, rule: &PurgeRule) -> Result<(), StoreError> {
    let mut sql = Sql::new(true);
    let before = sql.int(rule.before_ms - HOUR_MS);
    let all = sql.text(ALL_PROJECTS);
    let mut cond = format!("bucket_ms <= {before} AND project_id <> {all}");
    if let Some(pc) = project_cond(&mut sql, &rule.projects, "project_id", true) {
        cond.push_str(" AND ");
        cond.push_str(&pc);
    }
    let tx = c.transaction().await.map_err(pg_err)?;
    let ps = params_of(&sql.params);
    let rows = tx
        .query(
            &format!(
                "SELECT dim, bucket_ms, value, requests, errors, prompt_tokens, completion_tokens, \
                 cost_usd, latency_sum_ms, hist FROM rollup_hourly WHERE {cond}"
            ),
            &refs(&ps),
        )
        .await
        .map_err(pg_err)?;
    let mut leaving: BTreeMap<RollupKey, Stats> = BTreeMap::new();
    for r in &rows {
        let hist: String = r.try_get(9).map_err(pg_err)?;
        let s = Stats {
            requests: to_u64(r.try_get(3).map_err(pg_err)?),
            errors: to_u64(r.try_get(4).map_err(pg_err)?),
            prompt_tokens: to_u64(r.try_get(5).map_err(pg_err)?),
            completion_tokens: to_u64(r.try_get(6).map_err(pg_err)?),
            cost_usd: r.try_get(7).map_err(pg_err)?,
            latency_sum_ms: r.try_get(8).map_err(pg_err)?,
            hist: Histogram::from_text(&hist)?,
        };
        let key = (
            r.try_get(0).map_err(pg_err)?,
            r.try_get(1).map_err(pg_err)?,
            r.try_get(2).map_err(pg_err)?,
            ALL_PROJECTS.to_string(),
        );
        leaving.entry(key).or_default().merge(&s);
    }
    let leaving: Vec<_> = leaving.into_iter().collect();
    tx.execute(
        &format!("DELETE FROM rollup_hourly WHERE {cond}"),
        &refs(&ps),
    )
    .await
    .map_err(pg_err)?;
    apply_rollup(&tx, &leaving, false).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(())
}

fn mcp_token_row(r: &Row) -> Result<super::McpTokenRow, StoreError> {
    Ok(super::McpTokenRow {
        id: r.try_get(0).map_err(pg_err)?,
        hash: r.try_get(1).map_err(pg_err)?,
        project: r.try_get(2).map_err(pg_err)?,
        spec: r.try_get(3).map_err(pg_err)?,
        created_ms: r.try_get(4).map_err(pg_err)?,
        expires_ms: r.try_get(5).map_err(pg_err)?,
        revoked_ms: r.try_get(6).map_err(pg_err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_list_numbers_params() {
        assert_eq!(values_list(2, 2), "($1,$2), ($3,$4)");
    }
}
