//! Query types shared by both backends: log filters, cursors, analytics, the latency
//! histogram, and the SQL `WHERE` builder (placeholders differ: `?N` vs `$N`).

use std::collections::BTreeMap;

use base64::Engine;
use serde::Serialize;

use super::{dim_name, RawRow, Store, StoreError, DAY_MS, HOUR_MS};

/// `status=` filter.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusFilter {
    Exact(u16),
    /// `4xx` / `5xx` (the hundreds digit).
    Class(u16),
    /// Status >= 400 or an error recorded (streams that failed after the 200).
    Error,
    /// The opposite of `Error`.
    Ok,
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<StatusFilter> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "error" | "errors" => Some(StatusFilter::Error),
            "ok" | "success" => Some(StatusFilter::Ok),
            _ if s.len() == 3 && s.ends_with("xx") => {
                let d = s[..1].parse::<u16>().ok()?;
                (1..=5).contains(&d).then_some(StatusFilter::Class(d))
            }
            _ => {
                let n = s.parse::<u16>().ok()?;
                (100..=599).contains(&n).then_some(StatusFilter::Exact(n))
            }
        }
    }
}

/// Filters shared by logs, sessions, analytics and export. Time window is `[start_ms, end_ms)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogFilter {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub project: Option<String>,
    pub session: Option<String>,
    pub user: Option<String>,
    /// Matches the served or the requested model.
    pub model: Option<String>,
    pub provider: Option<String>,
    pub route: Option<String>,
    pub status: Option<StatusFilter>,
    /// All must match (`name`, `value`).
    pub properties: Vec<(String, String)>,
}

impl LogFilter {
    /// True when only the time window and project are set (the rollup can answer).
    pub fn rollup_eligible(&self) -> bool {
        self.session.is_none()
            && self.user.is_none()
            && self.model.is_none()
            && self.provider.is_none()
            && self.route.is_none()
            && self.status.is_none()
            && self.properties.is_empty()
    }

    /// Parse the filter query parameters. Unknown parameters are left to the caller.
    /// Errors are `(message, param)`.
    pub fn from_query(q: &[(String, String)]) -> Result<LogFilter, (String, String)> {
        let mut f = LogFilter::default();
        for (k, v) in q {
            let k = k.as_str();
            let nonempty = |p: &str| -> Result<String, (String, String)> {
                if v.is_empty() {
                    Err((format!("'{p}' must not be empty"), p.to_string()))
                } else {
                    Ok(v.clone())
                }
            };
            match k {
                "start" | "from" => f.start_ms = Some(parse_time(v).ok_or_else(|| bad_time(k))?),
                "end" | "to" => f.end_ms = Some(parse_time(v).ok_or_else(|| bad_time(k))?),
                "project" | "project_id" => f.project = Some(nonempty(k)?),
                "session" | "session_id" => f.session = Some(nonempty(k)?),
                "user" | "user_id" => f.user = Some(nonempty(k)?),
                "model" => f.model = Some(nonempty(k)?),
                "provider" => f.provider = Some(nonempty(k)?),
                "route" => f.route = Some(nonempty(k)?),
                "status" => {
                    f.status = Some(StatusFilter::parse(v).ok_or_else(|| {
                        (
                            "'status' must be a status code, '4xx', '5xx', 'error' or 'ok'"
                                .to_string(),
                            "status".to_string(),
                        )
                    })?)
                }
                "property" => {
                    let (n, val) =
                        v.split_once(':')
                            .or_else(|| v.split_once('='))
                            .ok_or_else(|| {
                                (
                                    "'property' must be 'name:value'".to_string(),
                                    "property".to_string(),
                                )
                            })?;
                    if n.is_empty() {
                        return Err(("property name must not be empty".into(), "property".into()));
                    }
                    f.properties.push((n.to_ascii_lowercase(), val.to_string()));
                }
                _ => {
                    if let Some(n) = k.strip_prefix("property.") {
                        if n.is_empty() {
                            return Err(("property name must not be empty".into(), k.to_string()));
                        }
                        f.properties.push((n.to_ascii_lowercase(), v.clone()));
                    }
                }
            }
        }
        if let (Some(s), Some(e)) = (f.start_ms, f.end_ms) {
            if e < s {
                return Err(("'end' is before 'start'".into(), "end".into()));
            }
        }
        Ok(f)
    }
}

fn bad_time(p: &str) -> (String, String) {
    (
        format!("'{p}' must be an RFC 3339 time or unix milliseconds"),
        p.to_string(),
    )
}

/// RFC 3339 (`2026-05-01T00:00:00Z`) or unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Position after the last row of a page: `(ts_ms, request_id)`, encoded opaquely.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub ts_ms: i64,
    pub request_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}|{}", self.ts_ms, self.request_id))
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (ts, id) = raw.split_once('|')?;
        Some(Cursor {
            ts_ms: ts.parse().ok()?,
            request_id: id.to_string(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    pub filter: LogFilter,
    pub limit: usize,
    pub after: Option<Cursor>,
}

#[derive(Debug, Clone, Default)]
pub struct LogPage {
    pub records: Vec<crate::trace::TraceRecord>,
    /// Set when more rows may follow.
    pub next: Option<Cursor>,
}

/// Analytics grouping.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupBy {
    /// Served model, or the requested one when nothing was served.
    Model,
    Provider,
    Project,
    User,
    Route,
    /// The virtual (or gateway) key id the request authenticated with.
    Key,
    Property(String),
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "model" => GroupBy::Model,
            "provider" => GroupBy::Provider,
            "project" => GroupBy::Project,
            "user" => GroupBy::User,
            "route" => GroupBy::Route,
            "key" => GroupBy::Key,
            _ => {
                let n = s
                    .strip_prefix("property:")
                    .or_else(|| s.strip_prefix("property."))?;
                if n.is_empty() {
                    return None;
                }
                GroupBy::Property(n.to_ascii_lowercase())
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    None,
    Hour,
    Day,
}

impl Bucket {
    pub fn parse(s: &str) -> Option<Bucket> {
        match s {
            "none" | "" => Some(Bucket::None),
            "hour" => Some(Bucket::Hour),
            "day" => Some(Bucket::Day),
            _ => None,
        }
    }

    fn floor(self, ts: i64) -> Option<i64> {
        match self {
            Bucket::None => None,
            Bucket::Hour => Some(ts.div_euclid(HOUR_MS) * HOUR_MS),
            Bucket::Day => Some(ts.div_euclid(DAY_MS) * DAY_MS),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsQuery {
    pub filter: LogFilter,
    pub group_by: GroupBy,
    pub bucket: Bucket,
}

/// Exact-cache hits of one group in one hour (see [`Sql::cache_savings_query`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSavingsRow {
    pub group: Option<String>,
    pub hour_ms: i64,
    pub hits: u64,
    pub saved_usd: f64,
    pub saved_ms: f64,
}

/// Cache hits and what they saved, per group (and time bucket) of an analytics query.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheSavings {
    pub cache_hits: u64,
    pub cache_saved_usd: f64,
    pub cache_saved_ms: f64,
}

/// Fold hourly savings rows into the query's buckets: `(bucket start, group) -> savings`.
pub fn fold_cache_savings(
    rows: Vec<CacheSavingsRow>,
    bucket: Bucket,
) -> BTreeMap<(Option<i64>, Option<String>), CacheSavings> {
    let mut out: BTreeMap<(Option<i64>, Option<String>), CacheSavings> = BTreeMap::new();
    for r in rows {
        let group = r.group.filter(|g| !g.is_empty());
        let s = out.entry((bucket.floor(r.hour_ms), group)).or_default();
        s.cache_hits += r.hits;
        s.cache_saved_usd += r.saved_usd;
        s.cache_saved_ms += r.saved_ms;
    }
    out
}

/// One result row of `/v1/analytics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyticsRow {
    /// Group value (`null` when the trace had none).
    pub group: Option<String>,
    /// Bucket start (unix ms), absent with `bucket=none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_start_ms: Option<i64>,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    pub avg_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
}

/// Log-bucket latency histogram: bucket 0 holds <= 0.1 ms, bucket i holds
/// (0.1·1.04^(i-1), 0.1·1.04^i] ms. 480 buckets reach ~1.5e7 ms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    /// Sparse: bucket index -> count.
    pub counts: BTreeMap<u16, u64>,
}

pub const HIST_BUCKETS: usize = 480;
const HIST_BASE_MS: f64 = 0.1;
const HIST_FACTOR: f64 = 1.04;

impl Histogram {
    pub fn index(v: f64) -> u16 {
        if v.is_nan() || v <= HIST_BASE_MS {
            return 0;
        }
        let i = ((v / HIST_BASE_MS).ln() / HIST_FACTOR.ln()).ceil();
        (i.max(0.0) as usize).min(HIST_BUCKETS - 1) as u16
    }

    /// Geometric midpoint of a bucket (relative error < 2%).
    pub fn value_of(i: u16) -> f64 {
        if i == 0 {
            return HIST_BASE_MS;
        }
        HIST_BASE_MS * HIST_FACTOR.powf(i as f64 - 0.5)
    }

    pub fn record(&mut self, v: f64) {
        *self.counts.entry(Self::index(v)).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (k, c) in &o.counts {
            *self.counts.entry(*k).or_default() += c;
        }
    }

    /// Nearest-rank quantile, `q` in (0, 1].
    pub fn quantile(&self, q: f64) -> f64 {
        let n: u64 = self.counts.values().sum();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (k, c) in &self.counts {
            seen += c;
            if seen >= rank {
                // round to microseconds so both backends print the same number
                return (Self::value_of(*k) * 1000.0).round() / 1000.0;
            }
        }
        0.0
    }

    /// Compact text form `i:c,i:c` (SQLite column).
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.counts.len() * 8);
        for (i, (k, c)) in self.counts.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&k.to_string());
            s.push(':');
            s.push_str(&c.to_string());
        }
        s
    }

    pub fn from_text(s: &str) -> Result<Histogram, StoreError> {
        let mut h = Histogram::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, c) = part
                .split_once(':')
                .ok_or_else(|| StoreError::Corrupt(format!("histogram entry '{part}'")))?;
            let k: u16 = k
                .parse()
                .map_err(|_| StoreError::Corrupt("histogram index".into()))?;
            let c: u64 = c
                .parse()
                .map_err(|_| StoreError::Corrupt("histogram count".into()))?;
            *h.counts.entry(k.min(HIST_BUCKETS as u16 - 1)).or_default() += c;
        }
        Ok(h)
    }

    /// Dense form (one count per bucket).
    pub fn to_dense(&self) -> Vec<i64> {
        let mut v = vec![0i64; HIST_BUCKETS];
        for (k, c) in &self.counts {
            if let Some(slot) = v.get_mut(*k as usize) {
                *slot = *c as i64;
            }
        }
        v
    }

    pub fn from_dense(v: &[i64]) -> Histogram {
        let mut h = Histogram::default();
        for (i, c) in v.iter().enumerate().take(HIST_BUCKETS) {
            if *c > 0 {
                h.counts.insert(i as u16, *c as u64);
            }
        }
        h
    }
}

/// Additive aggregate of traces.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency_sum_ms: f64,
    pub hist: Histogram,
}

impl Stats {
    pub fn add(&mut self, error: bool, prompt: u64, completion: u64, cost: f64, latency: f64) {
        self.add_in(
            error,
            prompt,
            completion,
            cost,
            latency,
            Histogram::index(latency),
        );
    }

    /// [`Stats::add`] with the latency's histogram bucket already computed (a record folds
    /// into several rollup rows; the bucket costs two logarithms).
    pub fn add_in(
        &mut self,
        error: bool,
        prompt: u64,
        completion: u64,
        cost: f64,
        latency: f64,
        bucket: u16,
    ) {
        self.requests += 1;
        self.errors += error as u64;
        self.prompt_tokens += prompt;
        self.completion_tokens += completion;
        self.cost_usd += cost;
        self.latency_sum_ms += latency;
        *self.hist.counts.entry(bucket).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost_usd += o.cost_usd;
        self.latency_sum_ms += o.latency_sum_ms;
        self.hist.merge(&o.hist);
    }

    /// Remove `o` (a part previously merged in), saturating at zero.
    pub fn minus(&mut self, o: &Stats) {
        self.requests = self.requests.saturating_sub(o.requests);
        self.errors = self.errors.saturating_sub(o.errors);
        self.prompt_tokens = self.prompt_tokens.saturating_sub(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_sub(o.completion_tokens);
        self.cost_usd -= o.cost_usd;
        self.latency_sum_ms -= o.latency_sum_ms;
        for (k, c) in &o.hist.counts {
            if let Some(v) = self.hist.counts.get_mut(k) {
                *v = v.saturating_sub(*c);
                if *v == 0 {
                    self.hist.counts.remove(k);
                }
            }
        }
    }

    fn row(&self, group: Option<String>, bucket_start_ms: Option<i64>) -> AnalyticsRow {
        let n = self.requests.max(1) as f64;
        AnalyticsRow {
            group,
            bucket_start_ms,
            requests: self.requests,
            errors: self.errors,
            error_rate: round6(self.errors as f64 / n),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens + self.completion_tokens,
            cost_usd: round9(self.cost_usd),
            avg_latency_ms: round3(self.latency_sum_ms / n),
            p50_latency_ms: self.hist.quantile(0.5),
            p95_latency_ms: self.hist.quantile(0.95),
        }
    }
}

// Rounding hides float summation-order differences between the rollup and raw paths.
fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}
fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}
fn round9(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

/// A parameter value for generated SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Int(i64),
    Text(String),
}

/// A SQL fragment with its parameters; `pg` selects `$N` placeholders instead of `?N`.
#[derive(Debug, Clone)]
pub struct Sql {
    pub pg: bool,
    pub params: Vec<SqlParam>,
}

impl Sql {
    pub fn new(pg: bool) -> Sql {
        Sql {
            pg,
            params: Vec::new(),
        }
    }

    /// Add a parameter, returning its placeholder.
    pub fn p(&mut self, v: SqlParam) -> String {
        self.params.push(v);
        if self.pg {
            format!("${}", self.params.len())
        } else {
            format!("?{}", self.params.len())
        }
    }

    pub fn text(&mut self, s: &str) -> String {
        self.p(SqlParam::Text(s.to_string()))
    }

    pub fn int(&mut self, v: i64) -> String {
        self.p(SqlParam::Int(v))
    }

    /// `AND`-joined conditions for a filter on table alias `t` (empty string = no condition).
    pub fn filter_conds(&mut self, f: &LogFilter, after: Option<&Cursor>) -> Vec<String> {
        let mut c = Vec::new();
        if let Some(s) = f.start_ms {
            c.push(format!("t.ts_ms >= {}", self.int(s)));
        }
        if let Some(e) = f.end_ms {
            c.push(format!("t.ts_ms < {}", self.int(e)));
        }
        if let Some(p) = &f.project {
            c.push(format!("t.project_id = {}", self.text(p)));
        }
        if let Some(s) = &f.session {
            c.push(format!("t.session_id = {}", self.text(s)));
        }
        if let Some(u) = &f.user {
            c.push(format!("t.user_id = {}", self.text(u)));
        }
        if let Some(m) = &f.model {
            let a = self.text(m);
            c.push(format!("(t.served_model = {a} OR t.requested_model = {a})"));
        }
        if let Some(p) = &f.provider {
            c.push(format!("t.provider = {}", self.text(p)));
        }
        if let Some(r) = &f.route {
            c.push(format!("t.route = {}", self.text(r)));
        }
        match &f.status {
            None => {}
            Some(StatusFilter::Exact(n)) => c.push(format!("t.status = {}", self.int(*n as i64))),
            Some(StatusFilter::Class(d)) => {
                let lo = self.int(*d as i64 * 100);
                let hi = self.int(*d as i64 * 100 + 100);
                c.push(format!("t.status >= {lo} AND t.status < {hi}"));
            }
            Some(StatusFilter::Error) => c.push("(t.status >= 400 OR t.error IS NOT NULL)".into()),
            Some(StatusFilter::Ok) => c.push("(t.status < 400 AND t.error IS NULL)".into()),
        }
        for (n, v) in &f.properties {
            let n = self.text(n);
            let v = self.text(v);
            c.push(format!(
                "t.request_id IN (SELECT p.request_id FROM trace_properties p WHERE p.name = {n} AND p.value = {v})"
            ));
        }
        if let Some(cur) = after {
            let ts = self.int(cur.ts_ms);
            let id = self.text(&cur.request_id);
            c.push(format!("(t.ts_ms, t.request_id) < ({ts}, {id})"));
        }
        c
    }

    /// The group expression and the join it needs.
    fn group_sql(&mut self, g: &GroupBy) -> (String, String) {
        match g {
            GroupBy::Model => (
                "COALESCE(t.served_model, t.requested_model)".to_string(),
                String::new(),
            ),
            GroupBy::Provider => ("t.provider".into(), String::new()),
            GroupBy::Project => ("t.project_id".into(), String::new()),
            GroupBy::User => ("t.user_id".into(), String::new()),
            GroupBy::Route => ("t.route".into(), String::new()),
            GroupBy::Key => ("t.key_id".into(), String::new()),
            GroupBy::Property(n) => {
                let n = self.text(n);
                (
                    "gp.value".into(),
                    format!(" JOIN trace_properties gp ON gp.request_id = t.request_id AND gp.name = {n}"),
                )
            }
        }
    }

    /// Exact-cache hits per group and hour: `group, hour_ms, hits, saved_usd, saved_ms`,
    /// read from the `cache` = `hit`, `cache_saved_usd` and `cache_saved_ms` properties.
    pub fn cache_savings_query(&mut self, f: &LogFilter, g: &GroupBy) -> String {
        let (group_expr, join) = self.group_sql(g);
        // PostgreSQL's CAST fails on a value that is not a number; SQLite's gives 0.
        let num = |col: &str, pg: bool| {
            if pg {
                format!("CASE WHEN {col} ~ '^[0-9]{{1,15}}(\\.[0-9]{{1,12}})?$' THEN CAST({col} AS DOUBLE PRECISION) ELSE 0 END")
            } else {
                format!("CAST({col} AS DOUBLE PRECISION)")
            }
        };
        let (usd, ms) = (num("cs.value", self.pg), num("cm.value", self.pg));
        // Driven by the hits (`cache` = `hit`, a primary-key range of the side table), not
        // by a scan of every trace in the window.
        let mut conds = vec![
            "ch.name = 'cache'".to_string(),
            "ch.value = 'hit'".to_string(),
        ];
        if let Some(s) = f.start_ms {
            conds.push(format!("ch.ts_ms >= {}", self.int(s)));
        }
        if let Some(e) = f.end_ms {
            conds.push(format!("ch.ts_ms < {}", self.int(e)));
        }
        conds.extend(self.filter_conds(f, None));
        let mut q = format!(
            "SELECT {group_expr}, (t.ts_ms / {HOUR_MS}) * {HOUR_MS}, COUNT(*), SUM({usd}), COALESCE(SUM({ms}), 0.0) \
             FROM trace_properties ch JOIN traces t ON t.request_id = ch.request_id{join} \
             JOIN trace_properties cs ON cs.request_id = t.request_id AND cs.name = 'cache_saved_usd' \
             LEFT JOIN trace_properties cm ON cm.request_id = t.request_id AND cm.name = 'cache_saved_ms'"
        );
        q.push_str(" WHERE ");
        q.push_str(&conds.join(" AND "));
        q.push_str(" GROUP BY 1, 2");
        q
    }

    /// Raw analytics query: `group, ts_ms, is_error, prompt, completion, cost, latency`.
    pub fn raw_rows_query(&mut self, f: &LogFilter, g: &GroupBy) -> String {
        let (group_expr, join) = self.group_sql(g);
        let conds = self.filter_conds(f, None);
        let mut q = format!(
            "SELECT {group_expr}, t.ts_ms, CASE WHEN t.status >= 400 OR t.error IS NOT NULL THEN 1 ELSE 0 END, \
             t.prompt_tokens, t.completion_tokens, t.cost_usd, t.latency_ms FROM traces t{join}"
        );
        if !conds.is_empty() {
            q.push_str(" WHERE ");
            q.push_str(&conds.join(" AND "));
        }
        q
    }

    /// Page of logs: `SELECT <cols> ... ORDER BY ts_ms DESC, request_id DESC LIMIT n`.
    pub fn logs_query(&mut self, cols: &str, q: &LogQuery) -> String {
        let conds = self.filter_conds(&q.filter, q.after.as_ref());
        let mut s = format!("SELECT {cols} FROM traces t");
        if !conds.is_empty() {
            s.push_str(" WHERE ");
            s.push_str(&conds.join(" AND "));
        }
        let lim = self.int(q.limit as i64 + 1);
        s.push_str(&format!(
            " ORDER BY t.ts_ms DESC, t.request_id DESC LIMIT {lim}"
        ));
        s
    }
}

fn floor_hour(ts: i64) -> i64 {
    ts.div_euclid(HOUR_MS) * HOUR_MS
}
fn ceil_hour(ts: i64) -> i64 {
    -((-ts).div_euclid(HOUR_MS) * HOUR_MS)
}

/// Analytics over the rollup where it can answer (whole hours, project-only filter) and
/// raw rows for the partial hours at the window edges or for any other filter.
pub(crate) async fn run_analytics<S: Store + ?Sized>(
    store: &S,
    q: &AnalyticsQuery,
) -> Result<Vec<AnalyticsRow>, StoreError> {
    let mut acc: BTreeMap<(Option<i64>, Option<String>), Stats> = BTreeMap::new();
    let f = &q.filter;
    let mut raw_windows: Vec<LogFilter> = Vec::new();
    // Users and keys are high-cardinality: an hourly rollup barely compresses them (and
    // would slow every insert), so user and key groupings read raw rows through the
    // (ts_ms) / (project_id, ts_ms) indexes.
    if f.rollup_eligible() && !matches!(q.group_by, GroupBy::User | GroupBy::Key) {
        let full_from = f.start_ms.map(ceil_hour);
        let full_to = f.end_ms.map(floor_hour);
        let has_full = match (full_from, full_to) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        };
        if has_full {
            let dim = dim_name(&q.group_by);
            let project = f.project.as_deref().unwrap_or(super::ALL_PROJECTS);
            let rows = store
                .rollup_rows(&dim, full_from, full_to, Some(project))
                .await?;
            for r in rows {
                let group = (!r.value.is_empty()).then_some(r.value);
                acc.entry((q.bucket.floor(r.bucket_ms), group))
                    .or_default()
                    .merge(&r.stats);
            }
            if let (Some(s), Some(a)) = (f.start_ms, full_from) {
                if s < a {
                    raw_windows.push(LogFilter {
                        end_ms: Some(a),
                        ..f.clone()
                    });
                }
            }
            if let (Some(e), Some(b)) = (f.end_ms, full_to) {
                if b < e {
                    raw_windows.push(LogFilter {
                        start_ms: Some(b),
                        ..f.clone()
                    });
                }
            }
        } else {
            raw_windows.push(f.clone());
        }
    } else {
        raw_windows.push(f.clone());
    }
    for w in raw_windows {
        for r in store.raw_rows(&w, &q.group_by).await? {
            add_raw(&mut acc, q.bucket, r);
        }
    }
    let mut out: Vec<AnalyticsRow> = acc.into_iter().map(|((b, g), s)| s.row(g, b)).collect();
    out.sort_by(|a, b| {
        a.bucket_start_ms
            .cmp(&b.bucket_start_ms)
            .then(b.requests.cmp(&a.requests))
            .then(a.group.cmp(&b.group))
    });
    Ok(out)
}

fn add_raw(acc: &mut BTreeMap<(Option<i64>, Option<String>), Stats>, bucket: Bucket, r: RawRow) {
    let group = r.group.filter(|g| !g.is_empty());
    acc.entry((bucket.floor(r.ts_ms), group)).or_default().add(
        r.is_error,
        r.prompt_tokens,
        r.completion_tokens,
        r.cost_usd,
        r.latency_ms,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse() {
        let f = LogFilter::from_query(&q(&[
            ("start", "2026-01-01T00:00:00Z"),
            ("end", "1767229200000"),
            ("status", "5xx"),
            ("property", "env:prod"),
            ("property.Team", "a:b"),
            ("limit", "3"),
        ]))
        .unwrap_or_default();
        assert_eq!(f.start_ms, Some(1_767_225_600_000));
        assert_eq!(f.end_ms, Some(1_767_229_200_000));
        assert_eq!(f.status, Some(StatusFilter::Class(5)));
        assert_eq!(
            f.properties,
            vec![("env".into(), "prod".into()), ("team".into(), "a:b".into())]
        );
        assert!(LogFilter::from_query(&q(&[("status", "7xx")])).is_err());
        assert!(LogFilter::from_query(&q(&[("start", "yesterday")])).is_err());
        assert!(LogFilter::from_query(&q(&[("start", "10"), ("end", "5")])).is_err());
        assert!(LogFilter::from_query(&q(&[("property", "novalue")])).is_err());
    }

    #[test]
    fn cursor_roundtrip_and_garbage() {
        let c = Cursor {
            ts_ms: 42,
            request_id: "req|x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("!!!"), None);
        assert_eq!(Cursor::decode(""), None);
    }

    #[test]
    fn histogram_quantiles_within_two_percent() {
        let mut h = Histogram::default();
        for i in 1..=1000 {
            h.record(i as f64);
        }
        let p50 = h.quantile(0.5);
        let p95 = h.quantile(0.95);
        assert!((p50 - 500.0).abs() / 500.0 < 0.02, "{p50}");
        assert!((p95 - 950.0).abs() / 950.0 < 0.02, "{p95}");
        let t = Histogram::from_text(&h.to_text()).unwrap_or_default();
        assert_eq!(t, h);
        assert_eq!(Histogram::from_dense(&h.to_dense()), h);
        assert!(Histogram::from_text("x").is_err());
        assert_eq!(Histogram::index(f64::NAN), 0);
        assert_eq!(Histogram::index(1e12) as usize, HIST_BUCKETS - 1);
    }

    #[test]
    fn hour_rounding() {
        assert_eq!(ceil_hour(1), HOUR_MS);
        assert_eq!(ceil_hour(HOUR_MS), HOUR_MS);
        assert_eq!(floor_hour(HOUR_MS + 5), HOUR_MS);
        assert_eq!(ceil_hour(-5), 0);
    }

    #[test]
    fn sql_placeholders() {
        let mut s = Sql::new(true);
        let f = LogFilter {
            model: Some("m".into()),
            properties: vec![("a".into(), "b".into())],
            ..Default::default()
        };
        let c = s.filter_conds(&f, None).join(" AND ");
        assert!(c.contains("$1") && c.contains("$3"), "{c}");
        let mut s = Sql::new(false);
        let c = s.filter_conds(&f, None).join(" AND ");
        assert!(c.contains("?2"), "{c}");
    }
}
