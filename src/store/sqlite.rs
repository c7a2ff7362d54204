//! Embedded SQLite backend: one file, WAL, `synchronous=NORMAL`.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool (`spawn_blocking`),
//! never on an async worker thread. One connection writes, another reads (WAL lets
//! readers proceed while the writer commits). A third connection, on its own thread,
//! checkpoints the WAL into the database file (see [`Checkpointer`]), so the writer never
//! waits on the checkpoint's fsyncs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior,
};

use super::migrations::{Migration, SqlDialect, MIGRATIONS};
use super::query::{
    CacheSavingsRow, Histogram, LogFilter, LogPage, LogQuery, Sql, SqlParam, Stats,
};
use super::routing::{
    assemble_stats, decisions_sql, recent_served_sql, stats_latency_sql, stats_totals_sql, RParam,
    AUDIT_COLS, DECISION_COLS, DECISION_NCOLS, FEEDBACK_COLS, FEEDBACK_NCOLS,
};
use super::{
    rollup_deltas, to_i64, to_u64, AuditAppend, AuditEntry, Cursor, DecisionQuery, DecisionRow,
    FeedbackInsert, FeedbackRow, GroupBy, PendingFeedback, PendingInsert, ProjectSel, PurgeRule,
    RawRow, RollupRow, RouteModelStats, RouteServed, RouteStateRow, ScoredDecision, Store,
    StoreError, ALL_PROJECTS, HOUR_MS, TRACE_COLS,
};
use crate::trace::TraceRecord;

type Conn = Arc<Mutex<Connection>>;

/// The writer's page cache by default, KiB (`storage.sqlite_cache_kib`; SQLite's own default
/// is 2,000). Its pages are allocated with glibc's malloc, which keeps what it freed: the
/// cache's high-water mark stays resident (docs/benchmarks.md, session 18).
pub const WRITER_CACHE_KIB: u32 = 2 * 1024;
/// The WAL file is truncated back to this size after a checkpoint, bytes.
const WAL_SIZE_LIMIT: u64 = 16 * 1024 * 1024;

pub struct SqliteStore {
    writer: Conn,
    reader: Conn,
    checkpointer: Checkpointer,
}

/// Moves the WAL into the database file off the writer's path.
///
/// SQLite's automatic checkpoint runs inside the committing call once the WAL passes 1,000
/// pages, and its two fsyncs were most of the trace writer's wall time under sustained
/// ingest (the writer sat in `walCheckpoint` while records queued up). The writer connection
/// turns it off (`wal_autocheckpoint=0`) and this thread runs a PASSIVE checkpoint — which
/// never blocks the writer or readers — after written batches (at most every
/// [`CHECKPOINT_EVERY`]) and on a timer for every other write. `journal_size_limit` trims
/// the WAL file back after a checkpoint so a burst does not leave it large.
struct Checkpointer {
    nudge: std::sync::mpsc::SyncSender<()>,
}

/// The shortest pause between two checkpoints, and the longest without one.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

impl Checkpointer {
    fn start(path: &str, busy_ms: u64) -> Result<Checkpointer, StoreError> {
        let conn = connect(path, busy_ms)?;
        // One slot: nudges while a checkpoint runs coalesce into the next one.
        let (nudge, rx) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || Checkpointer::run(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("checkpoint thread: {e}")))?;
        Ok(Checkpointer { nudge })
    }

    /// Ask for a checkpoint soon; never blocks (a pending nudge already covers this one).
    fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// Runs until every `SqliteStore` handle is gone (the channel disconnects), then
    /// checkpoints once more so a clean shutdown leaves the data in the database file.
    fn run(conn: Connection, rx: std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let last = matches!(
                rx.recv_timeout(CHECKPOINT_IDLE),
                Err(RecvTimeoutError::Disconnected)
            );
            let r: rusqlite::Result<(i64, i64, i64)> =
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
            if let Err(e) = r {
                // Busy or locked by another process: the next round retries.
                tracing::debug!(error = %e, "sqlite checkpoint skipped");
            }
            if last {
                return;
            }
            std::thread::sleep(CHECKPOINT_EVERY);
        }
    }
}

fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::OperationInterrupted,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Query(e.to_string()),
    }
}

fn connect(path: &str, busy_ms: u64) -> Result<Connection, StoreError> {
    let c =
        Connection::open(path).map_err(|e| StoreError::Unavailable(format!("open {path}: {e}")))?;
    c.busy_timeout(Duration::from_millis(busy_ms))
        .map_err(map_err)?;
    // journal_mode returns a row, so it goes through query_row.
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(map_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path, mode, "sqlite did not switch to WAL");
    }
    c.execute_batch(
        "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY;",
    )
    .map_err(map_err)?;
    Ok(c)
}

fn migrate(c: &mut Connection, list: &[Migration]) -> Result<u32, StoreError> {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)",
    )
    .map_err(map_err)?;
    let mut current = 0;
    for m in list {
        // IMMEDIATE takes the write lock first, so two processes opening the same file
        // cannot both apply a migration.
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let have: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(map_err)?;
        if have >= m.version as i64 {
            current = have as u32;
            continue;
        }
        tx.execute_batch(&m.sql(SqlDialect::Sqlite))
            .map_err(|e| StoreError::Migration {
                version: m.version,
                message: e.to_string(),
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, chrono::Utc::now().timestamp_millis()],
        )
        .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
        current = m.version;
    }
    Ok(current)
}

fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn row_to_record(r: &Row) -> rusqlite::Result<TraceRecord> {
    let props: String = r.get(32)?;
    let attempts: String = r.get(33)?;
    Ok(TraceRecord {
        request_id: r.get(0)?,
        ts_ms: r.get(1)?,
        endpoint: r.get(2)?,
        key_id: r.get(3)?,
        session_id: r.get(4)?,
        session_name: r.get(5)?,
        session_path: r.get(6)?,
        project_id: r.get(7)?,
        user_id: r.get(8)?,
        route: r.get(9)?,
        requested_model: r.get(10)?,
        served_model: r.get(11)?,
        provider: r.get(12)?,
        status: u16::try_from(r.get::<_, i64>(13)?).unwrap_or(0),
        stream: r.get(14)?,
        cancelled: r.get(15)?,
        fallback_used: r.get(16)?,
        prompt_tokens: to_u64(r.get(17)?),
        completion_tokens: to_u64(r.get(18)?),
        cached_tokens: to_u64(r.get(19)?),
        cache_creation_tokens: to_u64(r.get(20)?),
        reasoning_tokens: to_u64(r.get(21)?),
        usage_reported: r.get(22)?,
        cost_usd: r.get(23)?,
        latency_ms: r.get(24)?,
        ttft_ms: r.get(25)?,
        request_bytes: to_u64(r.get(26)?),
        response_bytes: to_u64(r.get(27)?),
        error: r.get(28)?,
        decision_id: r.get(29)?,
        zero_retention: r.get(30)?,
        shadow: r.get(31)?,
        decision: None,
        properties: serde_json::from_str(&props).map_err(json_err)?,
        attempts: serde_json::from_str(&attempts).map_err(json_err)?,
        request_body: r.get(34)?,
        response_body: r.get(35)?,
        cost_unknown: r.get(36)?,
    })
}

fn to_values(p: &[SqlParam]) -> Vec<Value> {
    p.iter()
        .map(|v| match v {
            SqlParam::Int(i) => Value::Integer(*i),
            SqlParam::Text(s) => Value::Text(s.clone()),
        })
        .collect()
}

fn insert_batch(c: &mut Connection, recs: &[TraceRecord]) -> Result<usize, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let mut inserted: Vec<&TraceRecord> = Vec::with_capacity(recs.len());
    {
        let placeholders: Vec<String> = (1..=super::TRACE_NCOLS).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO traces ({TRACE_COLS}) VALUES ({}) ON CONFLICT (request_id) DO NOTHING",
            placeholders.join(",")
        );
        let mut st = tx.prepare_cached(&sql).map_err(map_err)?;
        let mut sp = tx
            .prepare_cached(
                "INSERT INTO trace_properties (name, value, request_id, ts_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .map_err(map_err)?;
        for r in recs {
            let props = serde_json::to_string(&r.properties)
                .map_err(|e| StoreError::Query(e.to_string()))?;
            let attempts =
                serde_json::to_string(&r.attempts).map_err(|e| StoreError::Query(e.to_string()))?;
            let n = st
                .execute(params![
                    r.request_id,
                    r.ts_ms,
                    r.endpoint,
                    r.key_id,
                    r.session_id,
                    r.session_name,
                    r.session_path,
                    r.project_id,
                    r.user_id,
                    r.route,
                    r.requested_model,
                    r.served_model,
                    r.provider,
                    r.status as i64,
                    r.stream,
                    r.cancelled,
                    r.fallback_used,
                    to_i64(r.prompt_tokens),
                    to_i64(r.completion_tokens),
                    to_i64(r.cached_tokens),
                    to_i64(r.cache_creation_tokens),
                    to_i64(r.reasoning_tokens),
                    r.usage_reported,
                    r.cost_usd,
                    r.latency_ms,
                    r.ttft_ms,
                    to_i64(r.request_bytes),
                    to_i64(r.response_bytes),
                    r.error,
                    r.decision_id,
                    r.zero_retention,
                    r.shadow,
                    props,
                    attempts,
                    r.request_body,
                    r.response_body,
                    r.cost_unknown,
                ])
                .map_err(map_err)?;
            if let Some(d) = &r.decision {
                insert_decision(&tx, d)?;
            }
            if n == 1 {
                inserted.push(r);
                for (k, v) in &r.properties {
                    sp.execute(params![k, v, r.request_id, r.ts_ms])
                        .map_err(map_err)?;
                }
            }
        }
        let deltas = rollup_deltas(inserted.iter().copied());
        let mut sel = tx
            .prepare_cached(
                "SELECT requests, errors, prompt_tokens, completion_tokens, cost_usd, latency_sum_ms, hist \
                 FROM rollup_hourly WHERE dim = ?1 AND bucket_ms = ?2 AND value = ?3 AND project_id = ?4",
            )
            .map_err(map_err)?;
        let mut up = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO rollup_hourly (dim, bucket_ms, value, project_id, requests, errors, \
                 prompt_tokens, completion_tokens, cost_usd, latency_sum_ms, hist) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(map_err)?;
        for ((dim, hour, value, project), delta) in deltas {
            let existing = sel
                .query_row(params![dim, hour, value, project], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, f64>(4)?,
                        r.get::<_, f64>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                })
                .optional()
                .map_err(map_err)?;
            let mut s = Stats::default();
            if let Some((rq, er, pt, ct, cost, lat, hist)) = existing {
                s = Stats {
                    requests: to_u64(rq),
                    errors: to_u64(er),
                    prompt_tokens: to_u64(pt),
                    completion_tokens: to_u64(ct),
                    cost_usd: cost,
                    latency_sum_ms: lat,
                    hist: Histogram::from_text(&hist)?,
                };
            }
            s.merge(&delta);
            up.execute(params![
                dim,
                hour,
                value,
                project,
                to_i64(s.requests),
                to_i64(s.errors),
                to_i64(s.prompt_tokens),
                to_i64(s.completion_tokens),
                s.cost_usd,
                s.latency_sum_ms,
                s.hist.to_text(),
            ])
            .map_err(map_err)?;
        }
    }
    let n = inserted.len();
    tx.commit().map_err(map_err)?;
    Ok(n)
}

/// Store a decision unless its request id is already there (retried batches are idempotent).
fn insert_decision(tx: &rusqlite::Transaction<'_>, d: &DecisionRow) -> Result<(), StoreError> {
    let ph: Vec<String> = (1..=DECISION_NCOLS).map(|i| format!("?{i}")).collect();
    let mut st = tx
        .prepare_cached(&format!(
            "INSERT INTO decisions ({DECISION_COLS}) VALUES ({}) ON CONFLICT (request_id) DO NOTHING",
            ph.join(",")
        ))
        .map_err(map_err)?;
    st.execute(params![
        d.request_id,
        d.ts_ms,
        d.route,
        d.mode,
        d.session_id,
        d.chosen,
        d.served,
        d.baseline,
        d.context,
        d.kind,
        d.shadow,
        d.confidence,
        d.quality,
        d.propensity,
        to_i64(d.table_version),
        d.signed,
        d.project,
    ])
    .map_err(map_err)?;
    Ok(())
}

fn row_to_decision(r: &Row) -> rusqlite::Result<DecisionRow> {
    Ok(DecisionRow {
        request_id: r.get(0)?,
        ts_ms: r.get(1)?,
        route: r.get(2)?,
        mode: r.get(3)?,
        session_id: r.get(4)?,
        chosen: r.get(5)?,
        served: r.get(6)?,
        baseline: r.get(7)?,
        context: r.get(8)?,
        kind: r.get(9)?,
        shadow: r.get(10)?,
        confidence: r.get(11)?,
        quality: r.get(12)?,
        propensity: r.get(13)?,
        table_version: to_u64(r.get(14)?),
        signed: r.get(15)?,
        project: r.get(16)?,
        deferred: None,
    })
}

/// Reads `seq, FEEDBACK_COLS`.
fn row_to_feedback(r: &Row) -> rusqlite::Result<FeedbackRow> {
    let targets: String = r.get(11)?;
    Ok(FeedbackRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        dedup_key: r.get(2)?,
        signal: r.get(3)?,
        request_id: r.get(4)?,
        session_id: r.get(5)?,
        route: r.get(6)?,
        model: r.get(7)?,
        context: r.get(8)?,
        value: r.get(9)?,
        scale: r.get(10)?,
        targets: serde_json::from_str(&targets).map_err(json_err)?,
        at_ms: r.get(12)?,
        received_ms: r.get(13)?,
        key_id: r.get(14)?,
        comment: r.get(15)?,
        detail: r.get(16)?,
        project: r.get(17)?,
    })
}

fn row_to_audit(r: &Row) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        ts_ms: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        route: r.get(4)?,
        old: r.get(5)?,
        new: r.get(6)?,
        reason: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

fn rvalues(p: &[RParam]) -> Vec<Value> {
    p.iter()
        .map(|v| match v {
            RParam::Int(i) => Value::Integer(*i),
            RParam::Real(f) => Value::Real(*f),
            RParam::Text(s) => Value::Text(s.clone()),
        })
        .collect()
}

/// Insert unless the dedup key exists. The write transaction (IMMEDIATE) serializes inserts,
/// so sequence numbers become visible in increasing order.
fn insert_feedback_tx(c: &mut Connection, row: &FeedbackRow) -> Result<FeedbackInsert, StoreError> {
    let targets =
        serde_json::to_string(&row.targets).map_err(|e| StoreError::Query(e.to_string()))?;
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let ph: Vec<String> = (1..=FEEDBACK_NCOLS).map(|i| format!("?{i}")).collect();
    let n = tx
        .execute(
            &format!(
                "INSERT INTO feedback ({FEEDBACK_COLS}) VALUES ({}) ON CONFLICT (dedup_key) DO NOTHING",
                ph.join(",")
            ),
            params![
                row.id,
                row.dedup_key,
                row.signal,
                row.request_id,
                row.session_id,
                row.route,
                row.model,
                row.context,
                row.value,
                row.scale,
                targets,
                row.at_ms,
                row.received_ms,
                row.key_id,
                row.comment,
                row.detail,
                row.project,
            ],
        )
        .map_err(map_err)?;
    let out = if n == 1 {
        FeedbackInsert::Inserted(FeedbackRow {
            seq: tx.last_insert_rowid(),
            ..row.clone()
        })
    } else {
        let stored = tx
            .query_row(
                &format!("SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE dedup_key = ?1"),
                [&row.dedup_key],
                row_to_feedback,
            )
            .map_err(map_err)?;
        FeedbackInsert::Duplicate(stored)
    };
    tx.commit().map_err(map_err)?;
    Ok(out)
}

/// Link to the last entry and append, inside one write transaction.
fn append_audit_tx(c: &mut Connection, a: &AuditAppend) -> Result<AuditEntry, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let last: Option<(String, i64)> = tx
        .query_row(
            "SELECT hash, seq FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(map_err)?;
    let e = AuditEntry::next(last.as_ref().map(|(h, s)| (h.as_str(), *s)), a.clone());
    tx.execute(
        &format!(
            "INSERT INTO audit_log ({AUDIT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ),
        params![
            e.seq,
            e.ts_ms,
            e.actor,
            e.action,
            e.route,
            e.old,
            e.new,
            e.reason,
            e.prev_hash,
            e.hash,
        ],
    )
    .map_err(map_err)?;
    tx.commit().map_err(map_err)?;
    Ok(e)
}

fn route_model_stats_sync(
    c: &mut Connection,
    since_ms: i64,
) -> Result<Vec<RouteModelStats>, StoreError> {
    // One read transaction so the totals and the latencies see the same rows.
    let tx = c.transaction().map_err(map_err)?;
    let totals: Vec<RouteModelStats> = {
        let mut st = tx
            .prepare_cached(&stats_totals_sql(false))
            .map_err(map_err)?;
        let rows = st
            .query_map([since_ms], |r| {
                Ok(RouteModelStats {
                    route: r.get(0)?,
                    model: r.get(1)?,
                    requests: to_u64(r.get(2)?),
                    errors: to_u64(r.get(3)?),
                    prompt_tokens: to_u64(r.get(4)?),
                    completion_tokens: to_u64(r.get(5)?),
                    cost_usd: r.get(6)?,
                    p95_latency_ms: None,
                })
            })
            .map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    let mut lat: std::collections::HashMap<(String, String), Vec<f64>> = Default::default();
    {
        let mut st = tx
            .prepare_cached(&stats_latency_sql(false))
            .map_err(map_err)?;
        let mut rows = st.query([since_ms]).map_err(map_err)?;
        while let Some(r) = rows.next().map_err(map_err)? {
            lat.entry((r.get(0).map_err(map_err)?, r.get(1).map_err(map_err)?))
                .or_default()
                .push(r.get(2).map_err(map_err)?);
        }
    }
    tx.commit().map_err(map_err)?;
    Ok(assemble_stats(totals, lat))
}

/// `(condition on column `col`, params)` selecting the purge's projects. `none_as_empty`:
/// the column stores "" for no project (rollups) instead of NULL (traces).
pub(crate) fn project_cond(
    sql: &mut Sql,
    sel: &ProjectSel,
    col: &str,
    none_as_empty: bool,
) -> Option<String> {
    match sel {
        ProjectSel::Only(p) => Some(format!("{col} = {}", sql.text(p))),
        ProjectSel::AllExcept(list) if list.is_empty() => None,
        ProjectSel::AllExcept(list) => {
            let ph: Vec<String> = list.iter().map(|p| sql.text(p)).collect();
            if none_as_empty {
                Some(format!("{col} NOT IN ({})", ph.join(", ")))
            } else {
                Some(format!(
                    "({col} IS NULL OR {col} NOT IN ({}))",
                    ph.join(", ")
                ))
            }
        }
    }
}

const PURGE_CHUNK: usize = 5000;
/// Bounds one purge run (5000 × 20000 = 100M rows); the next run continues.
const PURGE_MAX_ROUNDS: usize = 20_000;

/// The ids of one chunk of expired traces.
fn purge_select_sql(rule: &PurgeRule) -> (String, Sql) {
    let mut sql = Sql::new(false);
    let before = sql.int(rule.before_ms);
    let mut q = format!("SELECT request_id FROM traces WHERE ts_ms < {before}");
    if let Some(pc) = project_cond(&mut sql, &rule.projects, "project_id", false) {
        q.push_str(" AND ");
        q.push_str(&pc);
    }
    q.push_str(&format!(" LIMIT {PURGE_CHUNK}"));
    (q, sql)
}

/// Delete one chunk of expired traces (and their properties); returns how many.
fn purge_chunk(c: &mut Connection, rule: &PurgeRule) -> Result<(usize, u64), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let ids: Vec<String> = {
        let (q, sql) = purge_select_sql(rule);
        let mut st = tx.prepare(&q).map_err(map_err)?;
        let rows = st
            .query_map(params_from_iter(to_values(&sql.params)), |r| {
                r.get::<_, String>(0)
            })
            .map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)?
    };
    let mut deleted = 0u64;
    {
        let mut dt = tx
            .prepare_cached("DELETE FROM traces WHERE request_id = ?1")
            .map_err(map_err)?;
        let mut dp = tx
            .prepare_cached("DELETE FROM trace_properties WHERE request_id = ?1")
            .map_err(map_err)?;
        // A decision lives exactly as long as its trace (retention covers both).
        let mut dd = tx
            .prepare_cached("DELETE FROM decisions WHERE request_id = ?1")
            .map_err(map_err)?;
        for id in &ids {
            dp.execute([id]).map_err(map_err)?;
            dd.execute([id]).map_err(map_err)?;
            deleted += dt.execute([id]).map_err(map_err)? as u64;
        }
    }
    tx.commit().map_err(map_err)?;
    Ok((ids.len(), deleted))
}

fn stats_at(r: &Row, i: usize) -> Result<Stats, StoreError> {
    let hist: String = r.get(i + 6).map_err(map_err)?;
    Ok(Stats {
        requests: to_u64(r.get(i).map_err(map_err)?),
        errors: to_u64(r.get(i + 1).map_err(map_err)?),
        prompt_tokens: to_u64(r.get(i + 2).map_err(map_err)?),
        completion_tokens: to_u64(r.get(i + 3).map_err(map_err)?),
        cost_usd: r.get(i + 4).map_err(map_err)?,
        latency_sum_ms: r.get(i + 5).map_err(map_err)?,
        hist: Histogram::from_text(&hist)?,
    })
}

/// Only whole hours before the cut-off leave the rollup. The per-project rows go; what
/// they held is subtracted from the all-projects rows, which go when they reach zero.
fn purge_rollup(c: &mut Connection, rule: &PurgeRule) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let mut sql = Sql::new(false);
    let before = sql.int(rule.before_ms - HOUR_MS);
    let all = sql.text(ALL_PROJECTS);
    let mut cond = format!("bucket_ms <= {before} AND project_id <> {all}");
    if let Some(pc) = project_cond(&mut sql, &rule.projects, "project_id", true) {
        cond.push_str(" AND ");
        cond.push_str(&pc);
    }
    let mut leaving: BTreeMap<(String, i64, String), Stats> = BTreeMap::new();
    {
        let mut st = tx
            .prepare(&format!(
                "SELECT dim, bucket_ms, value, {ROLLUP_STATS} FROM rollup_hourly WHERE {cond}"
            ))
            .map_err(map_err)?;
        let mut rows = st
            .query(params_from_iter(to_values(&sql.params)))
            .map_err(map_err)?;
        while let Some(r) = rows.next().map_err(map_err)? {
            let key = (
                r.get(0).map_err(map_err)?,
                r.get(1).map_err(map_err)?,
                r.get(2).map_err(map_err)?,
            );
            leaving.entry(key).or_default().merge(&stats_at(r, 3)?);
        }
    }
    {
        let mut sel = tx
            .prepare_cached(&format!(
                "SELECT {ROLLUP_STATS} FROM rollup_hourly \
                 WHERE dim = ?1 AND bucket_ms = ?2 AND value = ?3 AND project_id = ?4"
            ))
            .map_err(map_err)?;
        let mut up = tx.prepare_cached(ROLLUP_UPSERT).map_err(map_err)?;
        let mut del = tx
            .prepare_cached(
                "DELETE FROM rollup_hourly WHERE dim = ?1 AND bucket_ms = ?2 AND value = ?3 AND project_id = ?4",
            )
            .map_err(map_err)?;
        for ((dim, hour, value), gone) in &leaving {
            let mut rows = sel
                .query(params![dim, hour, value, ALL_PROJECTS])
                .map_err(map_err)?;
            let Some(r) = rows.next().map_err(map_err)? else {
                continue;
            };
            let mut s = stats_at(r, 0)?;
            drop(rows);
            s.minus(gone);
            if s.requests == 0 {
                del.execute(params![dim, hour, value, ALL_PROJECTS])
                    .map_err(map_err)?;
            } else {
                up.execute(params![
                    dim,
                    hour,
                    value,
                    ALL_PROJECTS,
                    to_i64(s.requests),
                    to_i64(s.errors),
                    to_i64(s.prompt_tokens),
                    to_i64(s.completion_tokens),
                    s.cost_usd,
                    s.latency_sum_ms,
                    s.hist.to_text(),
                ])
                .map_err(map_err)?;
            }
        }
    }
    tx.execute(
        &format!("DELETE FROM rollup_hourly WHERE {cond}"),
        params_from_iter(to_values(&sql.params)),
    )
    .map_err(map_err)?;
    tx.commit().map_err(map_err)?;
    Ok(())
}

const ROLLUP_STATS: &str =
    "requests, errors, prompt_tokens, completion_tokens, cost_usd, latency_sum_ms, hist";
const ROLLUP_UPSERT: &str =
    "INSERT OR REPLACE INTO rollup_hourly (dim, bucket_ms, value, project_id, requests, errors, \
     prompt_tokens, completion_tokens, cost_usd, latency_sum_ms, hist) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const PENDING_COLS: &str =
    "id, dedup_key, request_id, session_id, received_ms, expires_ms, row_json";

fn row_to_pending(r: &Row) -> rusqlite::Result<PendingFeedback> {
    Ok(PendingFeedback {
        id: r.get(0)?,
        dedup_key: r.get(1)?,
        request_id: r.get(2)?,
        session_id: r.get(3)?,
        received_ms: r.get(4)?,
        expires_ms: r.get(5)?,
        row: r.get(6)?,
    })
}

/// Park an event unless its dedup key is taken by a stored or pending one (one transaction).
fn insert_pending_tx(c: &mut Connection, p: &PendingFeedback) -> Result<PendingInsert, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let stored: Option<String> = tx
        .query_row(
            "SELECT id FROM feedback WHERE dedup_key = ?1",
            [&p.dedup_key],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?;
    let out = if let Some(id) = stored {
        PendingInsert::Duplicate { id, pending: false }
    } else {
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO pending_feedback ({PENDING_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (dedup_key) DO NOTHING"
                ),
                params![
                    p.id,
                    p.dedup_key,
                    p.request_id,
                    p.session_id,
                    p.received_ms,
                    p.expires_ms,
                    p.row
                ],
            )
            .map_err(map_err)?;
        if n == 1 {
            PendingInsert::Inserted
        } else {
            let id: String = tx
                .query_row(
                    "SELECT id FROM pending_feedback WHERE dedup_key = ?1",
                    [&p.dedup_key],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            PendingInsert::Duplicate { id, pending: true }
        }
    };
    tx.commit().map_err(map_err)?;
    Ok(out)
}

impl SqliteStore {
    /// Open (creating the file if needed) and migrate, with the default writer page cache.
    pub async fn open(path: &str, busy_timeout_ms: u64) -> Result<SqliteStore, StoreError> {
        Self::open_with_cache(path, busy_timeout_ms, WRITER_CACHE_KIB).await
    }

    /// [`SqliteStore::open`] with the writer's page cache set to `cache_kib` KiB.
    pub async fn open_with_cache(
        path: &str,
        busy_timeout_ms: u64,
        cache_kib: u32,
    ) -> Result<SqliteStore, StoreError> {
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            let mut w = connect(&path, busy_timeout_ms)?;
            migrate(&mut w, MIGRATIONS)?;
            // Checkpoints are the checkpointer thread's job; a larger page cache keeps the
            // indexes' hot pages across batches instead of spilling them mid-transaction.
            w.execute_batch(&format!(
                "PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={WAL_SIZE_LIMIT}; \
                 PRAGMA cache_size=-{cache_kib};"
            ))
            .map_err(map_err)?;
            let r = connect(&path, busy_timeout_ms)?;
            let checkpointer = Checkpointer::start(&path, busy_timeout_ms)?;
            Ok(SqliteStore {
                writer: Arc::new(Mutex::new(w)),
                reader: Arc::new(Mutex::new(r)),
                checkpointer,
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite open task: {e}")))?
    }

    async fn run<R, F>(conn: &Conn, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let c = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = c
                .lock()
                .map_err(|_| StoreError::Unavailable("sqlite connection lock poisoned".into()))?;
            f(&mut g)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite task: {e}")))?
    }
}

const HOLDER_SPEND_SQLITE: &str = "SELECT key_id, project_id, user_id, \
     COALESCE(SUM(CASE WHEN ts_ms >= ?1 THEN cost_usd ELSE 0 END), 0), \
     COALESCE(SUM(CASE WHEN ts_ms >= ?2 THEN cost_usd ELSE 0 END), 0), \
     COALESCE(SUM(cost_usd), 0) \
     FROM traces WHERE ts_ms < ?3 AND cost_usd > 0 GROUP BY key_id, project_id, user_id";

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn health(&self) -> Result<(), StoreError> {
        Self::run(&self.reader, |c| {
            c.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err)
        })
        .await
    }

    async fn schema_version(&self) -> Result<u32, StoreError> {
        Self::run(&self.reader, |c| {
            c.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u32)
            .map_err(map_err)
        })
        .await
    }

    async fn insert_traces(&self, recs: &[TraceRecord]) -> Result<usize, StoreError> {
        if recs.is_empty() {
            return Ok(0);
        }
        let recs = recs.to_vec();
        let n = Self::run(&self.writer, move |c| insert_batch(c, &recs)).await;
        self.checkpointer.nudge();
        n
    }

    async fn get_trace(&self, request_id: &str) -> Result<Option<TraceRecord>, StoreError> {
        let id = request_id.to_string();
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {TRACE_COLS} FROM traces WHERE request_id = ?1"
                ))
                .map_err(map_err)?;
            st.query_row([id], row_to_record)
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn query_logs(&self, q: &LogQuery) -> Result<LogPage, StoreError> {
        let mut sql = Sql::new(false);
        let text = sql.logs_query(TRACE_COLS, q);
        let limit = q.limit;
        Self::run(&self.reader, move |c| {
            let mut st = c.prepare_cached(&text).map_err(map_err)?;
            let rows = st
                .query_map(params_from_iter(to_values(&sql.params)), row_to_record)
                .map_err(map_err)?;
            let mut records: Vec<TraceRecord> = rows.collect::<Result<_, _>>().map_err(map_err)?;
            Ok(page(&mut records, limit))
        })
        .await
    }

    async fn rollup_rows(
        &self,
        dim: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        project: Option<&str>,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let mut sql = Sql::new(false);
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
        Self::run(&self.reader, move |c| {
            let mut st = c.prepare_cached(&q).map_err(map_err)?;
            let mut rows = st
                .query(params_from_iter(to_values(&sql.params)))
                .map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(map_err)? {
                let hist: String = r.get(8).map_err(map_err)?;
                out.push(RollupRow {
                    bucket_ms: r.get(0).map_err(map_err)?,
                    value: r.get(1).map_err(map_err)?,
                    stats: Stats {
                        requests: to_u64(r.get(2).map_err(map_err)?),
                        errors: to_u64(r.get(3).map_err(map_err)?),
                        prompt_tokens: to_u64(r.get(4).map_err(map_err)?),
                        completion_tokens: to_u64(r.get(5).map_err(map_err)?),
                        cost_usd: r.get(6).map_err(map_err)?,
                        latency_sum_ms: r.get(7).map_err(map_err)?,
                        hist: Histogram::from_text(&hist)?,
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    async fn raw_rows(
        &self,
        filter: &LogFilter,
        group: &GroupBy,
    ) -> Result<Vec<RawRow>, StoreError> {
        let mut sql = Sql::new(false);
        let q = sql.raw_rows_query(filter, group);
        Self::run(&self.reader, move |c| {
            let mut st = c.prepare_cached(&q).map_err(map_err)?;
            let rows = st
                .query_map(params_from_iter(to_values(&sql.params)), |r| {
                    Ok(RawRow {
                        group: r.get(0)?,
                        ts_ms: r.get(1)?,
                        is_error: r.get::<_, i64>(2)? != 0,
                        prompt_tokens: to_u64(r.get(3)?),
                        completion_tokens: to_u64(r.get(4)?),
                        cost_usd: r.get(5)?,
                        latency_ms: r.get(6)?,
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn cache_savings(
        &self,
        filter: &LogFilter,
        group: &GroupBy,
    ) -> Result<Vec<CacheSavingsRow>, StoreError> {
        let mut sql = Sql::new(false);
        let q = sql.cache_savings_query(filter, group);
        Self::run(&self.reader, move |c| {
            let mut st = c.prepare_cached(&q).map_err(map_err)?;
            let rows = st
                .query_map(params_from_iter(to_values(&sql.params)), |r| {
                    Ok(CacheSavingsRow {
                        group: r.get(0)?,
                        hour_ms: r.get(1)?,
                        hits: to_u64(r.get(2)?),
                        saved_usd: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                        saved_ms: r.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn purge(&self, rule: &PurgeRule) -> Result<u64, StoreError> {
        // One chunk per lock hold, so inserts interleave with a long purge.
        let mut total = 0;
        for _ in 0..PURGE_MAX_ROUNDS {
            let r = rule.clone();
            let (seen, deleted) = Self::run(&self.writer, move |c| purge_chunk(c, &r)).await?;
            total += deleted;
            if seen < PURGE_CHUNK {
                break;
            }
        }
        let r = rule.clone();
        Self::run(&self.writer, move |c| purge_rollup(c, &r)).await?;
        Ok(total)
    }

    async fn count_traces(&self) -> Result<u64, StoreError> {
        Self::run(&self.reader, |c| {
            c.query_row("SELECT COUNT(*) FROM traces", [], |r| r.get::<_, i64>(0))
                .map(to_u64)
                .map_err(map_err)
        })
        .await
    }

    async fn get_decision(&self, request_id: &str) -> Result<Option<DecisionRow>, StoreError> {
        let id = request_id.to_string();
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {DECISION_COLS} FROM decisions WHERE request_id = ?1"
                ))
                .map_err(map_err)?;
            st.query_row([id], row_to_decision)
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn scored_decisions(
        &self,
        route: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<ScoredDecision>, StoreError> {
        let route = route.to_string();
        let limit = limit.min(1_000_000) as i64;
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached("SELECT * FROM (SELECT f.seq, d.request_id, d.ts_ms, d.kind, d.served, d.baseline, f.signal, f.value, f.scale FROM feedback f JOIN decisions d ON d.request_id = f.request_id WHERE d.route = ?1 AND d.ts_ms >= ?2 AND f.signal IN ('feedback', 'judge', 'admin') ORDER BY f.seq DESC LIMIT ?3) t ORDER BY seq ASC")
                .map_err(map_err)?;
            let rows = st
                .query_map(rusqlite::params![route, since_ms, limit], |r| {
                    Ok(ScoredDecision {
                        seq: r.get(0)?,
                        request_id: r.get(1)?,
                        ts_ms: r.get(2)?,
                        kind: r.get(3)?,
                        served: r.get(4)?,
                        baseline: r.get(5)?,
                        signal: r.get(6)?,
                        value: r.get(7)?,
                        scale: r.get(8)?,
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn query_decisions(&self, q: &DecisionQuery) -> Result<Vec<DecisionRow>, StoreError> {
        let (sql, ps) = decisions_sql(q, false);
        Self::run(&self.reader, move |c| {
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            let rows = st
                .query_map(params_from_iter(rvalues(&ps)), row_to_decision)
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn insert_feedback(&self, row: &FeedbackRow) -> Result<FeedbackInsert, StoreError> {
        let row = row.clone();
        Self::run(&self.writer, move |c| insert_feedback_tx(c, &row)).await
    }

    async fn feedback_since(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<FeedbackRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                ))
                .map_err(map_err)?;
            let rows = st
                .query_map(params![after_seq, limit], row_to_feedback)
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn feedback_for_request(&self, request_id: &str) -> Result<Vec<FeedbackRow>, StoreError> {
        let id = request_id.to_string();
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE request_id = ?1 ORDER BY seq LIMIT 1000"
                ))
                .map_err(map_err)?;
            let rows = st.query_map(params![id], row_to_feedback).map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn append_audit(&self, a: &AuditAppend) -> Result<AuditEntry, StoreError> {
        let a = a.clone();
        Self::run(&self.writer, move |c| append_audit_tx(c, &a)).await
    }

    async fn list_audit(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {AUDIT_COLS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                ))
                .map_err(map_err)?;
            let rows = st
                .query_map(params![after_seq, limit], row_to_audit)
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn put_route_state(
        &self,
        route: &str,
        key: &str,
        value: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (route, key) = (route.to_string(), key.to_string());
        let value = value.map(str::to_string);
        Self::run(&self.writer, move |c| {
            match value {
                Some(v) => c.execute(
                    "INSERT INTO route_state (route, key, value, updated_ms) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (route, key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                    params![route, key, v, now_ms],
                ),
                None => c.execute(
                    "DELETE FROM route_state WHERE route = ?1 AND key = ?2",
                    params![route, key],
                ),
            }
            .map(|_| ())
            .map_err(map_err)
        })
        .await
    }

    async fn put_virtual_key(&self, row: &super::VirtualKeyRow) -> Result<(), StoreError> {
        let r = row.clone();
        Self::run(&self.writer, move |c| {
            c.execute(
                "INSERT INTO virtual_keys (id, hash, project, spec, created_ms, updated_ms, revoked_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO UPDATE SET \
                 project = excluded.project, spec = excluded.spec, updated_ms = excluded.updated_ms, \
                 revoked_ms = excluded.revoked_ms",
                params![r.id, r.hash, r.project, r.spec, r.created_ms, r.updated_ms, r.revoked_ms],
            )
            .map(|_| ())
            .map_err(map_err)
        })
        .await
    }

    async fn virtual_keys(&self) -> Result<Vec<super::VirtualKeyRow>, StoreError> {
        Self::run(&self.reader, |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, hash, project, spec, created_ms, updated_ms, revoked_ms \
                     FROM virtual_keys ORDER BY created_ms, id",
                )
                .map_err(map_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(super::VirtualKeyRow {
                        id: r.get(0)?,
                        hash: r.get(1)?,
                        project: r.get(2)?,
                        spec: r.get(3)?,
                        created_ms: r.get(4)?,
                        updated_ms: r.get(5)?,
                        revoked_ms: r.get(6)?,
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn put_provider_key(&self, row: &super::ProviderKeyRow) -> Result<(), StoreError> {
        let r = row.clone();
        Self::run(&self.writer, move |c| {
            c.execute(
                "INSERT INTO provider_keys (id, provider, label, weight, last4, kid, secret, created_ms, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO UPDATE SET \
                 label = excluded.label, weight = excluded.weight, kid = excluded.kid, \
                 secret = excluded.secret, updated_ms = excluded.updated_ms",
                params![
                    r.id,
                    r.provider,
                    r.label,
                    r.weight,
                    r.last4,
                    r.kid,
                    r.secret,
                    r.created_ms,
                    r.updated_ms
                ],
            )
            .map(|_| ())
            .map_err(map_err)
        })
        .await
    }

    async fn provider_keys(&self) -> Result<Vec<super::ProviderKeyRow>, StoreError> {
        Self::run(&self.reader, |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, provider, label, weight, last4, kid, secret, created_ms, updated_ms \
                     FROM provider_keys ORDER BY created_ms, id",
                )
                .map_err(map_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(super::ProviderKeyRow {
                        id: r.get(0)?,
                        provider: r.get(1)?,
                        label: r.get(2)?,
                        weight: r.get(3)?,
                        last4: r.get(4)?,
                        kid: r.get(5)?,
                        secret: r.get(6)?,
                        created_ms: r.get(7)?,
                        updated_ms: r.get(8)?,
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn delete_provider_key(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        Self::run(&self.writer, move |c| {
            c.execute("DELETE FROM provider_keys WHERE id = ?1", params![id])
                .map(|n| n > 0)
                .map_err(map_err)
        })
        .await
    }

    async fn insert_mcp_token(&self, row: &super::McpTokenRow) -> Result<(), StoreError> {
        let r = row.clone();
        Self::run(&self.writer, move |c| {
            c.execute(
                "INSERT INTO mcp_tokens (id, hash, project, spec, created_ms, expires_ms, revoked_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![r.id, r.hash, r.project, r.spec, r.created_ms, r.expires_ms, r.revoked_ms],
            )
            .map(|_| ())
            .map_err(map_err)
        })
        .await
    }

    async fn mcp_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<super::McpTokenRow>, StoreError> {
        let h = hash.to_string();
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, hash, project, spec, created_ms, expires_ms, revoked_ms \
                     FROM mcp_tokens WHERE hash = ?1",
                )
                .map_err(map_err)?;
            let mut rows = st.query_map(params![h], mcp_token_row).map_err(map_err)?;
            rows.next().transpose().map_err(map_err)
        })
        .await
    }

    async fn mcp_tokens(&self) -> Result<Vec<super::McpTokenRow>, StoreError> {
        Self::run(&self.reader, |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, hash, project, spec, created_ms, expires_ms, revoked_ms \
                     FROM mcp_tokens ORDER BY created_ms, id",
                )
                .map_err(map_err)?;
            let rows = st.query_map([], mcp_token_row).map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn holder_spend(
        &self,
        day_ms: i64,
        month_ms: i64,
        before_ms: i64,
    ) -> Result<Vec<super::HolderSpend>, StoreError> {
        Self::run(&self.reader, move |c| {
            let mut st = c.prepare_cached(HOLDER_SPEND_SQLITE).map_err(map_err)?;
            let rows = st
                .query_map(rusqlite::params![day_ms, month_ms, before_ms], |r| {
                    Ok(super::HolderSpend {
                        key_id: r.get(0)?,
                        project_id: r.get(1)?,
                        user_id: r.get(2)?,
                        usd: [r.get(3)?, r.get(4)?, r.get(5)?],
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn revoke_mcp_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        Self::run(&self.writer, move |c| {
            c.execute(
                "UPDATE mcp_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms],
            )
            .map(|n| n > 0)
            .map_err(map_err)
        })
        .await
    }

    async fn purge_mcp_tokens(&self, before_ms: i64) -> Result<u64, StoreError> {
        Self::run(&self.writer, move |c| {
            c.execute(
                "DELETE FROM mcp_tokens WHERE expires_ms < ?1 OR revoked_ms < ?1",
                params![before_ms],
            )
            .map(|n| n as u64)
            .map_err(map_err)
        })
        .await
    }

    async fn route_states(&self) -> Result<Vec<RouteStateRow>, StoreError> {
        Self::run(&self.reader, |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT route, key, value, updated_ms FROM route_state ORDER BY route, key",
                )
                .map_err(map_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok(RouteStateRow {
                        route: r.get(0)?,
                        key: r.get(1)?,
                        value: r.get(2)?,
                        updated_ms: r.get(3)?,
                    })
                })
                .map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn get_feedback(&self, id: &str) -> Result<Option<FeedbackRow>, StoreError> {
        let id = id.to_string();
        Self::run(&self.reader, move |c| {
            c.query_row(
                &format!("SELECT seq, {FEEDBACK_COLS} FROM feedback WHERE id = ?1"),
                [&id],
                row_to_feedback,
            )
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn insert_pending_feedback(
        &self,
        p: &PendingFeedback,
    ) -> Result<PendingInsert, StoreError> {
        let p = p.clone();
        Self::run(&self.writer, move |c| insert_pending_tx(c, &p)).await
    }

    async fn pending_feedback(&self, limit: usize) -> Result<Vec<PendingFeedback>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Self::run(&self.reader, move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {PENDING_COLS} FROM pending_feedback ORDER BY received_ms LIMIT ?1"
                ))
                .map_err(map_err)?;
            let rows = st.query_map([limit], row_to_pending).map_err(map_err)?;
            rows.collect::<Result<_, _>>().map_err(map_err)
        })
        .await
    }

    async fn get_pending_feedback(&self, id: &str) -> Result<Option<PendingFeedback>, StoreError> {
        let id = id.to_string();
        Self::run(&self.reader, move |c| {
            c.query_row(
                &format!("SELECT {PENDING_COLS} FROM pending_feedback WHERE id = ?1"),
                [&id],
                row_to_pending,
            )
            .optional()
            .map_err(map_err)
        })
        .await
    }

    async fn delete_pending_feedback(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        Self::run(&self.writer, move |c| {
            c.execute("DELETE FROM pending_feedback WHERE id = ?1", [&id])
                .map(|n| n == 1)
                .map_err(map_err)
        })
        .await
    }

    async fn route_model_stats(&self, since_ms: i64) -> Result<Vec<RouteModelStats>, StoreError> {
        Self::run(&self.reader, move |c| route_model_stats_sync(c, since_ms)).await
    }

    async fn recent_served(
        &self,
        routes: &[String],
        last: usize,
    ) -> Result<Vec<RouteServed>, StoreError> {
        let routes = routes.to_vec();
        let last = last.min(crate::store::routing::MAX_RECENT_SERVED) as i64;
        Self::run(&self.reader, move |c| {
            // One read transaction so every route is counted from the same snapshot.
            let tx = c.transaction().map_err(map_err)?;
            let mut out = Vec::new();
            {
                let mut st = tx
                    .prepare_cached(&recent_served_sql(false))
                    .map_err(map_err)?;
                for route in &routes {
                    let rows = st
                        .query_map(rusqlite::params![route, last], |r| {
                            Ok(RouteServed {
                                route: route.clone(),
                                model: r.get(0)?,
                                requests: to_u64(r.get(1)?),
                            })
                        })
                        .map_err(map_err)?;
                    for row in rows {
                        out.push(row.map_err(map_err)?);
                    }
                }
            }
            tx.commit().map_err(map_err)?;
            Ok(out)
        })
        .await
    }
}

/// Cut a `limit + 1` result to `limit` and derive the next cursor.
pub(crate) fn page(records: &mut Vec<TraceRecord>, limit: usize) -> LogPage {
    let more = records.len() > limit;
    records.truncate(limit);
    let next = if more {
        records.last().map(|r| Cursor {
            ts_ms: r.ts_ms,
            request_id: r.request_id.clone(),
        })
    } else {
        None
    };
    LogPage {
        records: std::mem::take(records),
        next,
    }
}

fn mcp_token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<super::McpTokenRow> {
    Ok(super::McpTokenRow {
        id: r.get(0)?,
        hash: r.get(1)?,
        project: r.get(2)?,
        spec: r.get(3)?,
        created_ms: r.get(4)?,
        expires_ms: r.get(5)?,
        revoked_ms: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::query::StatusFilter;

    /// Every statement shape that reads `traces` (or deletes from it by id): its SQL and
    /// parameters, built by the same code the store runs.
    fn trace_query_shapes() -> Vec<(String, String, Vec<SqlParam>, &'static [&'static str])> {
        let t0 = 1_767_225_600_000;
        let f = |g: &dyn Fn(&mut LogFilter)| {
            let mut f = LogFilter::default();
            g(&mut f);
            f
        };
        let filters: Vec<(&str, LogFilter, &[&str])> = vec![
            ("none", LogFilter::default(), &[]),
            (
                "window",
                f(&|f| {
                    f.start_ms = Some(t0);
                    f.end_ms = Some(t0 + HOUR_MS);
                }),
                &[],
            ),
            (
                "project",
                f(&|f| f.project = Some("p".into())),
                &["traces_project_ts"],
            ),
            (
                "project+window",
                f(&|f| {
                    f.project = Some("p".into());
                    f.start_ms = Some(t0);
                    f.end_ms = Some(t0 + HOUR_MS);
                }),
                &["traces_project_ts", "traces_ts"],
            ),
            (
                "session",
                f(&|f| f.session = Some("s".into())),
                &["traces_session_ts"],
            ),
            (
                "session+project",
                f(&|f| {
                    f.session = Some("s".into());
                    f.project = Some("p".into());
                }),
                &["traces_session_ts", "traces_project_ts"],
            ),
            (
                "session+window",
                f(&|f| {
                    f.session = Some("s".into());
                    f.start_ms = Some(t0);
                }),
                &["traces_session_ts", "traces_ts"],
            ),
            (
                "user",
                f(&|f| f.user = Some("u".into())),
                &["traces_user_ts"],
            ),
            (
                "user+window",
                f(&|f| {
                    f.user = Some("u".into());
                    f.start_ms = Some(t0);
                    f.end_ms = Some(t0 + HOUR_MS);
                }),
                &["traces_user_ts", "traces_ts"],
            ),
            (
                "user+project",
                f(&|f| {
                    f.user = Some("u".into());
                    f.project = Some("p".into());
                }),
                &["traces_user_ts", "traces_project_ts"],
            ),
            (
                "model",
                f(&|f| f.model = Some("m".into())),
                &["traces_served_model_ts"],
            ),
            (
                "model+window",
                f(&|f| {
                    f.model = Some("m".into());
                    f.start_ms = Some(t0);
                }),
                &["traces_served_model_ts"],
            ),
            (
                "provider",
                f(&|f| f.provider = Some("openai".into())),
                &["traces_provider_ts"],
            ),
            ("route", f(&|f| f.route = Some("r".into())), &[]),
            (
                "status=error",
                f(&|f| f.status = Some(StatusFilter::Error)),
                &[],
            ),
            (
                "status=5xx+window",
                f(&|f| {
                    f.status = Some(StatusFilter::Class(5));
                    f.start_ms = Some(t0);
                }),
                &[],
            ),
            (
                "property",
                f(&|f| f.properties = vec![("env".into(), "prod".into())]),
                &[],
            ),
            (
                "property+project",
                f(&|f| {
                    f.properties = vec![("env".into(), "prod".into())];
                    f.project = Some("p".into());
                }),
                &[],
            ),
        ];
        let after = Cursor {
            ts_ms: t0,
            request_id: "chatcmpl-x".into(),
        };
        let mut out = Vec::new();
        for (name, filter, want) in &filters {
            for cursor in [None, Some(after.clone())] {
                let mut sql = Sql::new(false);
                let q = LogQuery {
                    filter: filter.clone(),
                    limit: 50,
                    after: cursor.clone(),
                };
                let text = sql.logs_query(TRACE_COLS, &q);
                let c = if cursor.is_some() { "+cursor" } else { "" };
                out.push((format!("logs {name}{c}"), text, sql.params, *want));
            }
            for g in [
                GroupBy::Model,
                GroupBy::User,
                GroupBy::Project,
                GroupBy::Property("env".into()),
            ] {
                let mut sql = Sql::new(false);
                let text = sql.raw_rows_query(filter, &g);
                // A property grouping drives the join from `trace_properties`.
                let w: &[&str] = match g {
                    GroupBy::Property(_) => &[],
                    _ => want,
                };
                out.push((format!("raw rows {name} by {g:?}"), text, sql.params, w));
                let mut sql = Sql::new(false);
                let text = sql.cache_savings_query(filter, &g);
                out.push((
                    format!("cache savings {name} by {g:?}"),
                    text,
                    sql.params,
                    &[],
                ));
            }
        }
        for projects in [
            ProjectSel::Only("p".into()),
            ProjectSel::AllExcept(vec![]),
            ProjectSel::AllExcept(vec!["a".into(), "b".into()]),
        ] {
            let rule = PurgeRule {
                before_ms: t0,
                projects: projects.clone(),
            };
            let want: &[&str] = match projects {
                ProjectSel::Only(_) => &["traces_project_ts", "traces_ts"],
                ProjectSel::AllExcept(_) => &["traces_ts"],
            };
            let (text, sql) = purge_select_sql(&rule);
            out.push((format!("purge {projects:?}"), text, sql.params, want));
        }
        let id = || vec![SqlParam::Text("chatcmpl-x".into())];
        out.push((
            "get trace".into(),
            format!("SELECT {TRACE_COLS} FROM traces WHERE request_id = ?1"),
            id(),
            &["sqlite_autoindex_traces_1"],
        ));
        for t in ["traces", "trace_properties", "decisions"] {
            out.push((
                format!("purge delete {t}"),
                format!("DELETE FROM {t} WHERE request_id = ?1"),
                id(),
                &[],
            ));
        }
        let since = || vec![SqlParam::Int(t0)];
        out.push((
            "route stats totals".into(),
            stats_totals_sql(false),
            since(),
            &["traces_ts"],
        ));
        out.push((
            "route stats latency".into(),
            stats_latency_sql(false),
            since(),
            &["traces_ts"],
        ));
        out.push((
            "holder spend".into(),
            HOLDER_SPEND_SQLITE.into(),
            vec![SqlParam::Int(t0), SqlParam::Int(t0), SqlParam::Int(t0)],
            &["traces_ts"],
        ));
        out
    }

    /// `EXPLAIN QUERY PLAN` of one statement, one detail line per step.
    fn plan(c: &Connection, sql: &str, params: &[SqlParam]) -> Vec<String> {
        let mut st = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
        let rows = st
            .query_map(params_from_iter(to_values(params)), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// Migration 9 made the project, session and user indexes partial and dropped the
    /// `decision_id` one. Every statement that reads `traces` keeps the plan it had on the
    /// version 8 schema (so nothing that used an index falls back to a scan), and the
    /// project, session and user filters still search their (now partial) index.
    #[test]
    fn trace_query_plans_survive_the_partial_indexes() {
        let c = Connection::open_in_memory().unwrap();
        let v9 = MIGRATIONS
            .iter()
            .position(|m| m.name == "traces_partial_indexes")
            .unwrap();
        for m in &MIGRATIONS[..v9] {
            c.execute_batch(&m.sql(SqlDialect::Sqlite)).unwrap();
        }
        let shapes = trace_query_shapes();
        let before: Vec<Vec<String>> = shapes.iter().map(|(_, q, p, _)| plan(&c, q, p)).collect();
        for m in &MIGRATIONS[v9..] {
            c.execute_batch(&m.sql(SqlDialect::Sqlite)).unwrap();
        }
        let partial: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'traces' \
                 AND sql LIKE '%WHERE%IS NOT NULL'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(partial, 3, "project, session and user indexes are partial");
        for ((name, q, p, want), old) in shapes.iter().zip(&before) {
            let new = plan(&c, q, p);
            eprintln!("{name}: {new:?}");
            assert_eq!(&new, old, "{name}: plan changed\n{q}");
            // The filter's own index, where it has one (any of `want`; the planner
            // picks between two equally usable ones by its heuristics).
            assert!(
                want.is_empty() || new.iter().any(|l| want.iter().any(|i| l.contains(i))),
                "{name}: none of {want:?} used: {new:?}\n{q}"
            );
        }
    }

    fn rec(i: usize) -> TraceRecord {
        TraceRecord {
            request_id: format!("ckpt-{i:08}"),
            ts_ms: 1_767_225_600_000 + i as i64,
            requested_model: "gpt-4o-mini".into(),
            user_id: Some(format!("u{}", i % 97)),
            status: 200,
            request_body: Some("x".repeat(512)),
            ..Default::default()
        }
    }

    /// With the automatic checkpoint off on the writer, the data must still reach the
    /// database file (the checkpointer thread's work), or the WAL would grow for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpointer_moves_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(path.to_str().unwrap(), 2000)
            .await
            .unwrap();
        let db_len = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let before = db_len();
        for chunk in (0..4000).collect::<Vec<_>>().chunks(1000) {
            let recs: Vec<TraceRecord> = chunk.iter().map(|&i| rec(i)).collect();
            assert_eq!(store.insert_traces(&recs).await.unwrap(), 1000);
        }
        // 4,000 records with 512-byte bodies: about 2 MiB of rows alone.
        let t0 = std::time::Instant::now();
        while db_len() < before + 2 * 1024 * 1024 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "database file still {} bytes (from {before}): nothing checkpointed",
                db_len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(store.count_traces().await.unwrap(), 4000);
    }

    /// `storage.sqlite_cache_kib` reaches the writer connection, and only it; `open` keeps
    /// the default.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_page_cache_is_the_configured_size() {
        let dir = tempfile::tempdir().unwrap();
        let cache_size = |c: &Conn| -> i64 {
            c.lock()
                .unwrap()
                .query_row("PRAGMA cache_size", [], |r| r.get(0))
                .unwrap()
        };
        let path = dir.path().join("a.db");
        let store = SqliteStore::open_with_cache(path.to_str().unwrap(), 2000, 1234)
            .await
            .unwrap();
        assert_eq!(cache_size(&store.writer), -1234);
        assert_eq!(
            cache_size(&store.reader),
            -2000,
            "the reader keeps SQLite's default"
        );
        let path = dir.path().join("b.db");
        let store = SqliteStore::open(path.to_str().unwrap(), 2000)
            .await
            .unwrap();
        assert_eq!(cache_size(&store.writer), -(WRITER_CACHE_KIB as i64));
    }
}
