//! Trace storage: one [`Store`] seam, two backends.
//!
//! - [`sqlite`]: embedded, the default. One file, WAL, created and migrated on open.
//! - [`postgres`]: shared by a fleet of gateways; reconnects when the connection drops.
//!
//! Both keep the same schema (see [`migrations`]): a `traces` table, a `trace_properties`
//! side table (so `name=value` filters use an index), and `rollup_hourly`, a per-hour,
//! per-dimension aggregate maintained at insert time so `/v1/analytics` never scans a
//! million raw rows. Analytics percentiles come from a log-bucket latency histogram
//! (4% buckets, so p50/p95 are within 2% of the exact value), computed the same way on
//! every path so both backends return identical numbers for identical data.

pub mod migrations;
pub mod pending;
pub mod postgres;
pub mod query;
pub mod routing;
pub mod scoped;
pub mod sqlite;
/// The trace writer: the bounded channel from the request path into the store (batches,
/// retries, spill, retention purge) and the slot the admin API finds the store in.
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::trace::TraceRecord;
pub use routing::{
    AuditAppend, AuditEntry, DecisionQuery, DecisionRow, FeedbackInsert, FeedbackRow,
    RouteModelStats, RouteServed, RouteStateRow, ScoredDecision,
};

pub use pending::{PendingFeedback, PendingInsert};
pub use query::{
    AnalyticsQuery, AnalyticsRow, Bucket, CacheSavings, CacheSavingsRow, Cursor, GroupBy,
    Histogram, LogFilter, LogPage, LogQuery, Stats, StatusFilter,
};

/// Which backend stores traces.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    Postgres,
    /// No trace storage at all: records are not even built (benchmarks, stateless edges).
    None,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::None => "none",
        }
    }
}

/// The `[storage]` table of `conf/gateway.toml`.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite` (default) or `postgres`.
    pub backend: Backend,
    /// SQLite database file (env `LOOPGATE_DB` overrides).
    pub sqlite_path: String,
    /// How long a SQLite write waits on a lock before failing (the writer then buffers/spills).
    pub sqlite_busy_timeout_ms: u64,
    /// The SQLite writer connection's page cache, KiB (`PRAGMA cache_size=-N`).
    pub sqlite_cache_kib: u32,
    /// libpq-style connection string (env `LOOPGATE_POSTGRES_URL` overrides). No TLS.
    pub postgres_url: Option<String>,
    /// PostgreSQL: write trace batches with binary `COPY` (a batch holding an already stored
    /// id goes through `INSERT ... ON CONFLICT` instead); `false`: multi-row `INSERT` always.
    pub postgres_copy: bool,
    /// Bounded channel between the request path and the writer.
    pub channel_capacity: usize,
    /// Records per insert transaction.
    pub batch_size: usize,
    /// A partial batch is written after this long.
    pub flush_interval_ms: u64,
    /// Records kept in memory while the store is unavailable; beyond this they spill to disk.
    pub buffer_max: usize,
    /// Append-only JSONL spill file, replayed (then truncated) when the store is back.
    pub spill_path: String,
    /// An insert taking longer than this counts as a failure (the batch is retried; inserts are idempotent).
    pub write_timeout_ms: u64,
    /// First delay before retrying an unavailable store; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Default retention in days (`None`: keep forever).
    pub retention_days: Option<u32>,
    /// Per-project retention overrides.
    pub project_retention_days: BTreeMap<String, u32>,
    /// How often the retention purge runs.
    pub purge_interval_secs: u64,
    /// Store prompt and completion bodies (off by default).
    pub capture_bodies: bool,
    /// Projects whose prompt/completion text is never stored, whatever `capture_bodies` says.
    pub zero_retention_projects: Vec<String>,
    /// Maximum time the writer spends draining on shutdown.
    pub shutdown_drain_ms: u64,
    /// Feedback for a request id not stored yet (served by another instance whose writer has
    /// not flushed) is accepted as pending this long, then dropped; 0 rejects it at once.
    pub pending_feedback_secs: u64,
}

impl StorageConfig {
    /// Whether a trace of `project` started at `ts_ms` is past its retention at `now_ms`
    /// (the per-project override, else `retention_days`; never without one). The purge
    /// deletes such traces only every `purge_interval_secs`; readers that must honour the
    /// retention exactly (continuing a stored response) check this too.
    pub fn past_retention(&self, project: Option<&str>, ts_ms: i64, now_ms: i64) -> bool {
        let days = project
            .and_then(|p| self.project_retention_days.get(p))
            .copied()
            .or(self.retention_days);
        days.is_some_and(|d| ts_ms < now_ms - d as i64 * 86_400_000)
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Sqlite,
            sqlite_path: "loopgate.db".into(),
            sqlite_busy_timeout_ms: 2000,
            sqlite_cache_kib: sqlite::WRITER_CACHE_KIB,
            postgres_url: None,
            postgres_copy: true,
            channel_capacity: 65536,
            batch_size: 4096,
            flush_interval_ms: 200,
            buffer_max: 100_000,
            spill_path: "loopgate-spill.jsonl".into(),
            write_timeout_ms: 10_000,
            retry_initial_ms: 250,
            retry_max_ms: 5_000,
            retention_days: None,
            project_retention_days: BTreeMap::new(),
            purge_interval_secs: 3600,
            capture_bodies: false,
            zero_retention_projects: Vec::new(),
            shutdown_drain_ms: 5_000,
            pending_feedback_secs: 60,
        }
    }
}

impl StorageConfig {
    /// Check values that would make the writer misbehave.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.channel_capacity == 0 || self.batch_size == 0 {
            return Err(StoreError::Config(
                "channel_capacity and batch_size must be > 0".into(),
            ));
        }
        if self.flush_interval_ms == 0 {
            return Err(StoreError::Config("flush_interval_ms must be > 0".into()));
        }
        if self.sqlite_cache_kib == 0 {
            return Err(StoreError::Config(
                "storage.sqlite_cache_kib must be > 0".into(),
            ));
        }
        if self.backend == Backend::Postgres
            && self.postgres_url.as_deref().is_none_or(str::is_empty)
        {
            return Err(StoreError::Config(
                "storage.backend = \"postgres\" needs storage.postgres_url (or LOOPGATE_POSTGRES_URL)".into(),
            ));
        }
        if self.spill_path.is_empty() {
            return Err(StoreError::Config(
                "storage.spill_path must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// Whether a record's prompt/completion text may be stored.
    pub fn keeps_bodies(&self, rec: &TraceRecord) -> bool {
        self.capture_bodies
            && !rec.zero_retention
            && !rec
                .project_id
                .as_ref()
                .is_some_and(|p| self.zero_retention_projects.iter().any(|z| z == p))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage config: {0}")]
    Config(String),
    /// The store could not be reached or the connection dropped; retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store query failed: {0}")]
    Query(String),
    #[error("migration {version} failed: {message}")]
    Migration { version: u32, message: String },
    #[error("store timed out after {0} ms")]
    Timeout(u64),
    #[error("bad stored data: {0}")]
    Corrupt(String),
}

/// Which traces a purge deletes, besides the age cut-off.
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectSel {
    /// Only this project.
    Only(String),
    /// Every trace (including those with no project) except these projects.
    AllExcept(Vec<String>),
}

/// Delete traces (and their properties and whole rollup hours) older than `before_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct PurgeRule {
    pub before_ms: i64,
    pub projects: ProjectSel,
}

/// One aggregated rollup row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    pub bucket_ms: i64,
    pub value: String,
    pub stats: Stats,
}

/// One raw row for analytics (group value already extracted).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub group: Option<String>,
    pub ts_ms: i64,
    pub is_error: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: f64,
}

/// One virtual (API-created) gateway key as stored: the secret only as its SHA-256 hash,
/// the policy as JSON owned by `auth::virtual_keys`.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualKeyRow {
    pub id: String,
    /// `sha256:<hex>` of the secret.
    pub hash: String,
    pub project: Option<String>,
    pub spec: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// One provider API key added at runtime (`auth::provider_keys`) as stored: the secret
/// only as AEAD ciphertext under the master key `kid` names.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderKeyRow {
    pub id: String,
    /// The provider profile's name.
    pub provider: String,
    pub label: Option<String>,
    pub weight: i64,
    /// The secret's last four characters (shown in listings).
    pub last4: String,
    /// Which master key encrypted `secret` (a short fingerprint, never the key).
    pub kid: String,
    /// `v1.<base64url(nonce || ciphertext)>`.
    pub secret: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One MCP token (`mcp::tokens`) as stored: the secret only as its SHA-256 hash, its grant
/// (scope, route and tag filter) as JSON owned by `mcp::tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTokenRow {
    pub id: String,
    /// `sha256:<hex>` of the secret.
    pub hash: String,
    pub project: Option<String>,
    pub spec: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// The spend in USD since the start of the day, of the month, and in total of the traces
/// of one (key id, project, user id): what an in-process limiter reloads at start for the
/// budgets of virtual keys, projects, teams and users.
#[derive(Debug, Clone, PartialEq)]
pub struct HolderSpend {
    pub key_id: Option<String>,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    pub usd: [f64; 3],
}

/// The storage seam. Inserts are idempotent on `request_id`, so a batch may be retried
/// (after a timeout or a replayed spill file) without duplicates.
///
/// Later tables (feedback, decisions, audit, config state) arrive as new migrations and
/// new methods with default bodies, so existing backends keep compiling.
#[async_trait]
pub trait Store: Send + Sync {
    /// `sqlite` or `postgres` (the metrics label).
    fn backend(&self) -> &'static str;
    /// Cheap liveness check (reconnects if needed).
    async fn health(&self) -> Result<(), StoreError>;
    /// Highest applied migration.
    async fn schema_version(&self) -> Result<u32, StoreError>;
    /// Store records in one transaction; already-stored request ids are skipped.
    /// Returns how many were new.
    async fn insert_traces(&self, recs: &[TraceRecord]) -> Result<usize, StoreError>;
    async fn get_trace(&self, request_id: &str) -> Result<Option<TraceRecord>, StoreError>;
    /// One page, ordered by `(ts_ms desc, request_id desc)`.
    async fn query_logs(&self, q: &LogQuery) -> Result<LogPage, StoreError>;
    /// Hourly rollup rows of one dimension for hours in `[from_ms, to_ms)` (hour-aligned bounds).
    async fn rollup_rows(
        &self,
        dim: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        project: Option<&str>,
    ) -> Result<Vec<RollupRow>, StoreError>;
    /// Raw rows matching a filter, with the group value for `group`.
    async fn raw_rows(
        &self,
        filter: &LogFilter,
        group: &GroupBy,
    ) -> Result<Vec<RawRow>, StoreError>;
    /// Exact-cache hits and their savings (`cache_saved_usd` / `cache_saved_ms` trace
    /// properties) matching a filter, per group and hour.
    async fn cache_savings(
        &self,
        _filter: &LogFilter,
        _group: &GroupBy,
    ) -> Result<Vec<CacheSavingsRow>, StoreError> {
        Err(unsupported(self.backend(), "cache savings"))
    }
    /// Retention purge; returns traces deleted.
    async fn purge(&self, rule: &PurgeRule) -> Result<u64, StoreError>;
    /// Total stored traces (tests, `loopgate` tools).
    async fn count_traces(&self) -> Result<u64, StoreError>;

    /// Tokens, cost, requests, errors and latency percentiles per group (and time bucket).
    async fn analytics(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        query::run_analytics(self, q).await
    }

    // ---- feedback-driven routing (migration 2, see `routing`) ----

    /// The decision of one request.
    async fn get_decision(&self, _request_id: &str) -> Result<Option<DecisionRow>, StoreError> {
        Err(unsupported(self.backend(), "decisions"))
    }
    /// Decisions matching a filter, newest first.
    async fn query_decisions(&self, _q: &DecisionQuery) -> Result<Vec<DecisionRow>, StoreError> {
        Err(unsupported(self.backend(), "decisions"))
    }
    /// Insert a feedback event unless one with the same `dedup_key` exists.
    async fn insert_feedback(&self, _row: &FeedbackRow) -> Result<FeedbackInsert, StoreError> {
        Err(unsupported(self.backend(), "feedback"))
    }
    /// Feedback events with `seq > after_seq`, ascending, at most `limit`.
    async fn feedback_since(
        &self,
        _after_seq: i64,
        _limit: usize,
    ) -> Result<Vec<FeedbackRow>, StoreError> {
        Err(unsupported(self.backend(), "feedback"))
    }
    /// Every feedback event about one request (judge scores, user scores, admin ratings).
    async fn feedback_for_request(
        &self,
        _request_id: &str,
    ) -> Result<Vec<FeedbackRow>, StoreError> {
        Err(unsupported(self.backend(), "feedback"))
    }
    /// Append to the hash-chained audit log (atomically links to the current last entry).
    async fn append_audit(&self, _a: &AuditAppend) -> Result<AuditEntry, StoreError> {
        Err(unsupported(self.backend(), "audit"))
    }
    /// Audit entries with `seq > after_seq`, ascending, at most `limit`.
    async fn list_audit(
        &self,
        _after_seq: i64,
        _limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Err(unsupported(self.backend(), "audit"))
    }
    /// Insert or replace (by id) a virtual key; the hash and creation time of an existing
    /// row never change.
    async fn put_virtual_key(&self, _row: &VirtualKeyRow) -> Result<(), StoreError> {
        Err(unsupported(self.backend(), "virtual keys"))
    }
    /// Every virtual key, revoked ones included, oldest first.
    async fn virtual_keys(&self) -> Result<Vec<VirtualKeyRow>, StoreError> {
        Err(unsupported(self.backend(), "virtual keys"))
    }
    /// Insert or replace (by id) a provider key (re-encryption replaces `kid` and `secret`).
    async fn put_provider_key(&self, _row: &ProviderKeyRow) -> Result<(), StoreError> {
        Err(unsupported(self.backend(), "provider keys"))
    }
    /// Every provider key, oldest first.
    async fn provider_keys(&self) -> Result<Vec<ProviderKeyRow>, StoreError> {
        Err(unsupported(self.backend(), "provider keys"))
    }
    /// Remove a provider key; `false` when there was none with that id.
    async fn delete_provider_key(&self, _id: &str) -> Result<bool, StoreError> {
        Err(unsupported(self.backend(), "provider keys"))
    }
    /// Store a new MCP token (ids and hashes are unique).
    async fn insert_mcp_token(&self, _row: &McpTokenRow) -> Result<(), StoreError> {
        Err(unsupported(self.backend(), "MCP tokens"))
    }
    /// The MCP token whose secret hashes to `hash` (`sha256:<hex>`), revoked or expired too.
    async fn mcp_token_by_hash(&self, _hash: &str) -> Result<Option<McpTokenRow>, StoreError> {
        Err(unsupported(self.backend(), "MCP tokens"))
    }
    /// Every stored MCP token (revoked and expired ones until purged), oldest first.
    async fn mcp_tokens(&self) -> Result<Vec<McpTokenRow>, StoreError> {
        Err(unsupported(self.backend(), "MCP tokens"))
    }
    /// Mark a token revoked at `now_ms`; `false` when there is no such unrevoked token.
    async fn revoke_mcp_token(&self, _id: &str, _now_ms: i64) -> Result<bool, StoreError> {
        Err(unsupported(self.backend(), "MCP tokens"))
    }
    /// Delete the tokens expired (or revoked) before `before_ms`; returns how many.
    async fn purge_mcp_tokens(&self, _before_ms: i64) -> Result<u64, StoreError> {
        Err(unsupported(self.backend(), "MCP tokens"))
    }

    /// Spend (`cost_usd`) per virtual key (`key_id` starting `vk_`) of the traces that
    /// started before `before_ms`: since `day_ms`, since `month_ms` and in total.
    async fn holder_spend(
        &self,
        _day_ms: i64,
        _month_ms: i64,
        _before_ms: i64,
    ) -> Result<Vec<HolderSpend>, StoreError> {
        Err(unsupported(self.backend(), "holder spend"))
    }
    /// Set (Some) or clear (None) one operator state value of a route.
    async fn put_route_state(
        &self,
        _route: &str,
        _key: &str,
        _value: Option<&str>,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        Err(unsupported(self.backend(), "route state"))
    }
    /// Every stored route state value.
    async fn route_states(&self) -> Result<Vec<RouteStateRow>, StoreError> {
        Err(unsupported(self.backend(), "route state"))
    }
    /// Per-request scores (not session NPS) of `route`'s decisions made at or after `since_ms`,
    /// joined with their decision, in feedback order; at most `limit` (the newest are kept).
    async fn scored_decisions(
        &self,
        _route: &str,
        _since_ms: i64,
        _limit: usize,
    ) -> Result<Vec<ScoredDecision>, StoreError> {
        Err(unsupported(self.backend(), "scored decisions"))
    }
    /// Served-traffic aggregates per (route, served model) since `since_ms`.
    async fn route_model_stats(&self, _since_ms: i64) -> Result<Vec<RouteModelStats>, StoreError> {
        Err(unsupported(self.backend(), "route stats"))
    }
    /// Per route of `routes`: how many of its last `last` decisions (newest by `ts_ms`) each
    /// model served. Routes without decisions yield no rows.
    async fn recent_served(
        &self,
        _routes: &[String],
        _last: usize,
    ) -> Result<Vec<RouteServed>, StoreError> {
        Err(unsupported(self.backend(), "recent served counts"))
    }

    // ---- pending feedback (see `pending`) ----

    /// One feedback event by its public id.
    async fn get_feedback(&self, _id: &str) -> Result<Option<FeedbackRow>, StoreError> {
        Err(unsupported(self.backend(), "feedback"))
    }
    /// Park feedback whose target is not stored yet, unless an event (stored or pending) with
    /// the same `dedup_key` exists.
    async fn insert_pending_feedback(
        &self,
        _p: &PendingFeedback,
    ) -> Result<PendingInsert, StoreError> {
        Err(unsupported(self.backend(), "pending feedback"))
    }
    /// The oldest pending events, at most `limit`.
    async fn pending_feedback(&self, _limit: usize) -> Result<Vec<PendingFeedback>, StoreError> {
        Err(unsupported(self.backend(), "pending feedback"))
    }
    async fn get_pending_feedback(&self, _id: &str) -> Result<Option<PendingFeedback>, StoreError> {
        Err(unsupported(self.backend(), "pending feedback"))
    }
    /// Remove a pending event; false when another instance removed it first.
    async fn delete_pending_feedback(&self, _id: &str) -> Result<bool, StoreError> {
        Err(unsupported(self.backend(), "pending feedback"))
    }
}

fn unsupported(backend: &str, what: &str) -> StoreError {
    StoreError::Config(format!("the {backend} store does not support {what} yet"))
}

/// Open (create and migrate) the configured backend.
pub async fn open(cfg: &StorageConfig) -> Result<Arc<dyn Store>, StoreError> {
    cfg.validate()?;
    match cfg.backend {
        Backend::Sqlite => Ok(Arc::new(
            sqlite::SqliteStore::open_with_cache(
                &cfg.sqlite_path,
                cfg.sqlite_busy_timeout_ms,
                cfg.sqlite_cache_kib,
            )
            .await?,
        )),
        Backend::Postgres => {
            let url = cfg.postgres_url.as_deref().unwrap_or_default();
            Ok(Arc::new(
                postgres::PgStore::open(url, cfg.postgres_copy).await?,
            ))
        }
        Backend::None => Err(StoreError::Config(
            "storage is disabled (backend = \"none\")".into(),
        )),
    }
}

/// The rollup dimension name for a group.
pub(crate) fn dim_name(g: &GroupBy) -> String {
    match g {
        GroupBy::Model => "model".into(),
        GroupBy::Provider => "provider".into(),
        GroupBy::Project => "project".into(),
        GroupBy::User => "user".into(),
        GroupBy::Route => "route".into(),
        GroupBy::Key => "key".into(),
        GroupBy::Property(n) => format!("property:{n}"),
    }
}

/// Column order shared by both backends' `traces` reads and writes.
pub(crate) const TRACE_COLS: &str = "request_id, ts_ms, endpoint, key_id, session_id, session_name, session_path, \
project_id, user_id, route, requested_model, served_model, provider, status, stream, cancelled, fallback_used, \
prompt_tokens, completion_tokens, cached_tokens, cache_creation_tokens, reasoning_tokens, usage_reported, cost_usd, \
latency_ms, ttft_ms, request_bytes, response_bytes, error, decision_id, zero_retention, shadow, properties, attempts, \
request_body, response_body, cost_unknown";
pub(crate) const TRACE_NCOLS: usize = 37;

/// Clamp a counter into a signed 64-bit column.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether a record counts as an error in logs filters and analytics.
pub fn is_error(rec: &TraceRecord) -> bool {
    rec.status >= 400 || rec.error.is_some()
}

/// `project_id` of the rollup rows that aggregate every project. A control character can
/// never arrive in a project header, so it cannot collide with a real project id.
pub const ALL_PROJECTS: &str = "\u{1}all";

/// Rollup key: (dimension, hour, value, project); empty strings stand for "none".
pub(crate) type RollupKey = (String, i64, String, String);

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// Fold freshly inserted records into rollup deltas (sorted keys: a stable lock order for PostgreSQL).
pub(crate) fn rollup_deltas<'a>(
    recs: impl Iterator<Item = &'a TraceRecord>,
) -> BTreeMap<RollupKey, Stats> {
    /// A dimension name without building it: a batch folds 8+ keys per record into a
    /// handful of rows, so keys borrow from the records and become strings once per row.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Dim<'a> {
        Fixed(&'static str),
        Property(&'a str),
    }
    let mut acc: BTreeMap<(Dim<'a>, i64, &'a str, &'a str), Stats> = BTreeMap::new();
    for r in recs {
        let hour = r.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let project = r.project_id.as_deref().unwrap_or_default();
        let model = r.served_model.as_deref().unwrap_or(&r.requested_model);
        let fixed = [
            ("model", model),
            ("provider", r.provider.as_deref().unwrap_or_default()),
            ("project", project),
            ("route", r.route.as_deref().unwrap_or_default()),
        ];
        let dims = fixed.into_iter().map(|(d, v)| (Dim::Fixed(d), v)).chain(
            r.properties
                .iter()
                .map(|(n, v)| (Dim::Property(n.as_str()), v.as_str())),
        );
        let error = is_error(r);
        let bucket = Histogram::index(r.latency_ms);
        for (dim, value) in dims {
            // Per project, and once more across all projects so unfiltered queries read
            // one row per (hour, value) instead of one per project.
            for p in [project, ALL_PROJECTS] {
                acc.entry((dim, hour, value, p)).or_default().add_in(
                    error,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.cost_usd,
                    r.latency_ms,
                    bucket,
                );
            }
        }
    }
    acc.into_iter()
        .map(|((dim, hour, value, p), s)| {
            let dim = match dim {
                Dim::Fixed(d) => d.to_string(),
                Dim::Property(n) => format!("property:{n}"),
            };
            ((dim, hour, value.to_string(), p.to_string()), s)
        })
        .collect()
}

/// Prepare a record for storage: drop bodies unless capture is on and zero-retention is off.
pub fn sanitize_for_storage(cfg: &StorageConfig, rec: &mut TraceRecord) {
    if !cfg.keeps_bodies(rec) {
        rec.request_body = None;
        rec.response_body = None;
    }
    if rec
        .project_id
        .as_ref()
        .is_some_and(|p| cfg.zero_retention_projects.iter().any(|z| z == p))
    {
        rec.zero_retention = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_cache_kib_is_read_and_checked() {
        let cfg: StorageConfig = toml::from_str("sqlite_cache_kib = 512").unwrap();
        assert_eq!(cfg.sqlite_cache_kib, 512);
        assert!(cfg.validate().is_ok());
        assert_eq!(
            StorageConfig::default().sqlite_cache_kib,
            sqlite::WRITER_CACHE_KIB
        );
        let zero: StorageConfig = toml::from_str("sqlite_cache_kib = 0").unwrap();
        assert!(zero.validate().is_err(), "a zero page cache is refused");
    }

    #[test]
    fn past_retention_uses_the_project_override_then_the_default() {
        let day = 86_400_000i64;
        let now = 100 * day;
        let mut cfg = StorageConfig::default();
        assert!(
            !cfg.past_retention(None, 0, now),
            "no retention: kept forever"
        );
        cfg.retention_days = Some(30);
        cfg.project_retention_days.insert("short".into(), 1);
        assert!(!cfg.past_retention(None, now - 29 * day, now));
        assert!(cfg.past_retention(None, now - 31 * day, now));
        assert!(!cfg.past_retention(Some("other"), now - 2 * day, now));
        assert!(cfg.past_retention(Some("short"), now - 2 * day, now));
        assert!(!cfg.past_retention(Some("short"), now - day + 1, now));
    }

    #[test]
    fn bodies_kept_only_with_capture_and_without_zero_retention() {
        let mut cfg = StorageConfig::default();
        let mut r = TraceRecord {
            request_body: Some("p".into()),
            response_body: Some("c".into()),
            project_id: Some("zr".into()),
            ..Default::default()
        };
        let mut a = r.clone();
        sanitize_for_storage(&cfg, &mut a);
        assert!(a.request_body.is_none() && a.response_body.is_none());
        cfg.capture_bodies = true;
        let mut b = r.clone();
        sanitize_for_storage(&cfg, &mut b);
        assert_eq!(b.request_body.as_deref(), Some("p"));
        cfg.zero_retention_projects = vec!["zr".into()];
        let mut c = r.clone();
        sanitize_for_storage(&cfg, &mut c);
        assert!(c.request_body.is_none() && c.zero_retention);
        r.project_id = None;
        r.zero_retention = true;
        sanitize_for_storage(&cfg, &mut r);
        assert!(r.response_body.is_none());
    }

    #[test]
    fn config_defaults_parse_and_validate() {
        let c: StorageConfig = toml::from_str("").unwrap_or_default();
        assert_eq!(c.backend, Backend::Sqlite);
        assert!(c.validate().is_ok());
        let c: Result<StorageConfig, _> = toml::from_str("backend = \"postgres\"\nbogus = 1");
        assert!(c.is_err());
        let c: StorageConfig = toml::from_str("backend = \"postgres\"").unwrap_or_default();
        assert!(c.validate().is_err());
    }

    #[test]
    fn rollup_deltas_cover_every_dimension() {
        let r = TraceRecord {
            ts_ms: HOUR_MS * 5 + 10,
            requested_model: "auto".into(),
            served_model: Some("gpt-4o".into()),
            project_id: Some("p".into()),
            properties: vec![("env".into(), "prod".into())],
            status: 500,
            ..Default::default()
        };
        let d = rollup_deltas(std::iter::once(&r));
        assert_eq!(d.len(), 10);
        assert!(d.contains_key(&(
            "model".to_string(),
            HOUR_MS * 5,
            "gpt-4o".to_string(),
            ALL_PROJECTS.to_string()
        )));
        let s = &d[&(
            "model".to_string(),
            HOUR_MS * 5,
            "gpt-4o".to_string(),
            "p".to_string(),
        )];
        assert_eq!((s.requests, s.errors), (1, 1));
        assert!(d.contains_key(&(
            "property:env".to_string(),
            HOUR_MS * 5,
            "prod".to_string(),
            "p".to_string()
        )));
    }
}
