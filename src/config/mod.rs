//! Typed gateway configuration: `conf/gateway.toml` plus environment overrides.
//!
//! The whole system reads one typed config. A config is validated completely before it
//! is ever served (see `routing::Runtime::build`); an invalid file on reload
//! keeps the old config serving.

pub mod cors;
pub mod paths;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration compiled into the binary: `loopgate serve` with no `-c` runs on it.
pub const EMBEDDED_CONFIG: &str = include_str!("../../conf/gateway.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Named routing rules (`loopgate-routing-rule` header, key binding, `auto:<name>`).
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Custom models (`[models."<id>"]`): extend or override the catalog (`docs/custom-models.md`).
    #[serde(default)]
    pub models: BTreeMap<String, crate::catalog::CustomModel>,
    /// Fallback chains for concrete models: `"gpt-4o" = ["anthropic/claude-sonnet-4-5", "groq/llama-3.3-70b-versatile"]`.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Storage settings (traces, later feedback and decisions).
    #[serde(default)]
    pub storage: toml::Table,
    /// Feedback-driven routing settings.
    #[serde(default)]
    pub routing: RoutingSettings,
    /// The LLM-as-judge.
    #[serde(default)]
    pub judge: JudgeSettings,
    /// Exact response cache (`docs/cache.md`).
    #[serde(default)]
    pub cache: crate::cache::CacheConfig,
    /// Signed webhook for decision / audit / rollback / experiment / budget events.
    #[serde(default)]
    pub webhook: Option<crate::rollout::webhook::WebhookConfig>,
    /// The LLM firewall (`docs/firewall.md`).
    #[serde(default)]
    pub firewall: crate::firewall::FirewallConfig,
    /// Where virtual keys' rate counters and budget spend live (`docs/keys.md`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Provider API keys added at runtime (`docs/provider-keys.md`): the master key file
    /// and the cooldowns of rejected keys.
    #[serde(default)]
    pub vault: VaultConfig,
    /// OpenTelemetry: one span per model call exported over OTLP (`docs/operations.md`).
    #[serde(default)]
    pub otlp: crate::trace::otel::OtlpConfig,
    /// The built-in operator dashboard at `/ui` (`docs/dashboard.md`).
    #[serde(default)]
    pub ui: UiConfig,
    /// Where this config came from; relative paths resolve against its directory.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Which rule chose `server.state_dir` ([`paths::state_dir`]); empty when none was needed.
    #[serde(skip)]
    pub state_dir_from: &'static str,
}

/// Where rate counters and budget spend of virtual keys live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitsBackend {
    /// In this gateway's memory: per instance.
    #[default]
    Memory,
    /// In Redis: shared by every gateway on the same Redis.
    Redis,
}

/// What a request meets when the shared limits backend does not answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Admit the request unchecked (counted in a metric, logged).
    #[default]
    FailOpen,
    /// Refuse it with 503 `limits_unavailable`.
    FailClosed,
}

/// `[limits]`: the backend of rate limits and budgets, and the limits of projects, teams
/// and users (`docs/keys.md`). The backend settings are read at start (a change applies
/// after a restart); the projects', teams' and users' limits apply on reload.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub backend: LimitsBackend,
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`; env `LOOPGATE_REDIS_URL`.
    pub redis_url: Option<String>,
    /// Longest a request waits for Redis before the failure mode applies.
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
    /// Prefix of every Redis key (several fleets on one Redis).
    pub key_prefix: String,
    /// Rate limits and budgets of projects (`[limits.projects.<name>]`): every request of
    /// the project counts, whatever key it came with. Applies on reload.
    pub projects: BTreeMap<String, GroupLimits>,
    /// Of teams: requests of virtual keys whose `team` is the name.
    pub teams: BTreeMap<String, GroupLimits>,
    /// Of users: requests of virtual keys whose `user` is the name, else requests whose
    /// user id (`<prefix>-user-id` header, body `user`) is.
    pub users: BTreeMap<String, GroupLimits>,
}

/// Budget periods: UTC calendar day and month, or all time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
    Total,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
            BudgetPeriod::Total => "total",
        }
    }
}

/// A spending cap in USD of a project, team or user over one period.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBudget {
    pub period: BudgetPeriod,
    pub usd: f64,
    /// Share of `usd` (0–100) past which a `budget.soft_threshold` event fires.
    #[serde(default)]
    pub soft_pct: Option<f64>,
}

/// Requests and tokens per minute and budgets shared by every request of one project,
/// team or user.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    #[serde(default)]
    pub budgets: Vec<GroupBudget>,
}

impl GroupLimits {
    fn validate(&self, field: &str) -> Result<(), String> {
        let mut seen = [false; 3];
        for (i, b) in self.budgets.iter().enumerate() {
            let at = format!("{field}.budgets[{i}]");
            if !(b.usd.is_finite() && b.usd >= 0.0) {
                return Err(format!("{at}.usd must be a number >= 0, got {}", b.usd));
            }
            if b.soft_pct.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                return Err(format!("{at}.soft_pct must be from 0 to 100"));
            }
            if std::mem::replace(&mut seen[b.period as usize], true) {
                return Err(format!(
                    "{field}.budgets may hold at most one budget per period ({} twice)",
                    b.period.as_str()
                ));
            }
        }
        Ok(())
    }

    /// Neither a rate limit nor a budget.
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.budgets.is_empty()
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: LimitsBackend::Memory,
            redis_url: None,
            timeout_ms: 50,
            failure_mode: FailureMode::FailOpen,
            key_prefix: "loopgate:".into(),
            projects: BTreeMap::new(),
            teams: BTreeMap::new(),
            users: BTreeMap::new(),
        }
    }
}

/// `[ui]`: the operator dashboard served at `/ui`. Read per request (a reload applies at once).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Serve the dashboard's static assets; `false` answers 404 on `/ui`.
    pub enabled: bool,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig { enabled: true }
    }
}

/// `[vault]`: provider API keys added through `/v1/providers/{name}/keys`, stored encrypted.
/// Read at start; a change applies after a restart.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// File holding the master key (32 bytes, base64 or hex); `LOOPGATE_VAULT_KEY` and
    /// `LOOPGATE_VAULT_KEY_FILE` win.
    pub master_key_file: Option<String>,
    /// How long a key the provider answered 401 (or 403) to is left out.
    pub cooldown_unauthorized_secs: u64,
    /// How long a key the provider answered 429 to is left out when no `retry-after` came.
    pub cooldown_rate_limited_secs: u64,
    /// Upper bound of any cooldown (a provider's `retry-after` included).
    pub max_cooldown_secs: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            master_key_file: None,
            cooldown_unauthorized_secs: 300,
            cooldown_rate_limited_secs: 30,
            max_cooldown_secs: 3600,
        }
    }
}

impl VaultConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_cooldown_secs == 0 || self.max_cooldown_secs > 86_400 {
            return Err("vault.max_cooldown_secs must be from 1 to 86400".into());
        }
        for (k, v) in [
            (
                "cooldown_unauthorized_secs",
                self.cooldown_unauthorized_secs,
            ),
            (
                "cooldown_rate_limited_secs",
                self.cooldown_rate_limited_secs,
            ),
        ] {
            if v == 0 || v > self.max_cooldown_secs {
                return Err(format!(
                    "vault.{k} must be from 1 to vault.max_cooldown_secs ({}), got {v}",
                    self.max_cooldown_secs
                ));
            }
        }
        Ok(())
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.timeout_ms) {
            return Err(format!(
                "limits.timeout_ms must be from 1 to 10000, got {}",
                self.timeout_ms
            ));
        }
        if self.key_prefix.len() > 64 || self.key_prefix.contains(['{', '}']) {
            return Err("limits.key_prefix must be at most 64 bytes without '{' or '}'".into());
        }
        for (kind, groups) in [
            ("projects", &self.projects),
            ("teams", &self.teams),
            ("users", &self.users),
        ] {
            for (name, g) in groups {
                if name.is_empty()
                    || name.len() > 256
                    || name.contains(['{', '}'])
                    || name.chars().any(char::is_control)
                {
                    return Err(format!(
                        "limits.{kind}: the name {name:?} must be 1 to 256 bytes without '{{', '}}' or control characters"
                    ));
                }
                g.validate(&format!("limits.{kind}.{name}"))?;
            }
        }
        if self.backend == LimitsBackend::Redis {
            match self.redis_url.as_deref() {
                Some(u)
                    if ["redis://", "redis+unix://", "unix://"]
                        .iter()
                        .any(|p| u.starts_with(p)) => {}
                Some(_) => return Err(
                    "limits.redis_url must start with redis:// or unix:// (TLS is not supported)"
                        .into(),
                ),
                None => {
                    return Err(
                        "limits.backend = \"redis\" needs limits.redis_url (or LOOPGATE_REDIS_URL)"
                            .into(),
                    )
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub metrics_listen: String,
    /// Worker threads for the proxy service.
    pub threads: usize,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Largest non-streamed upstream response read into memory.
    pub max_response_bytes: usize,
    pub connect_timeout_ms: u64,
    /// Per-read upstream timeout for every provider, overriding the profiles' own
    /// (unset: each profile's `read_timeout_secs`, else 120 s). A route may still set its own.
    pub read_timeout_secs: Option<u64>,
    pub write_timeout_secs: u64,
    pub upstream_idle_timeout_secs: u64,
    /// After SIGTERM: how long requests in flight (streams included) may take to finish.
    /// The process exits as soon as they are done and traces are flushed.
    pub grace_period_secs: u64,
    /// Pingora: how long service runtimes get to stop after the grace period.
    pub graceful_shutdown_timeout_secs: u64,
    /// Provider profile directory; unset = the profiles compiled into the binary.
    pub filters_dir: Option<String>,
    /// Model catalog JSON; unset = the catalog compiled into the binary.
    pub catalog: Option<String>,
    /// Reload on file change (SIGHUP always reloads).
    pub watch: bool,
    /// Prefix of the gateway's request and response headers (`loopgate-session-id`, ...).
    pub header_prefix: String,
    /// Directory for the database, spill file, pid file and upgrade socket when their own
    /// keys are unset (see [`paths`]; env `LOOPGATE_STATE_DIR` overrides). After load: the
    /// resolved directory.
    pub state_dir: Option<String>,
    /// Pid file, written once the listeners serve (`loopgate upgrade` reads it).
    /// Env `LOOPGATE_PID_FILE` overrides; unset: `<state_dir>/loopgate.pid`.
    pub pid_file: Option<String>,
    /// Socket a graceful upgrade hands the listeners over. Env `LOOPGATE_UPGRADE_SOCK`
    /// overrides; unset: `<state_dir>/upgrade.sock`.
    pub upgrade_sock: Option<String>,
    /// Optional CORS for browser clients (`[server.cors]`).
    pub cors: Option<cors::CorsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: "127.0.0.1:9091".into(),
            threads: 2,
            max_body_bytes: 32 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            connect_timeout_ms: 5_000,
            read_timeout_secs: None,
            write_timeout_secs: 30,
            upstream_idle_timeout_secs: 60,
            grace_period_secs: 30,
            graceful_shutdown_timeout_secs: 5,
            filters_dir: None,
            catalog: None,
            watch: true,
            header_prefix: "loopgate".into(),
            state_dir: None,
            pid_file: None,
            upgrade_sock: None,
            cors: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub keys: Vec<KeyConfig>,
    /// With no key configured at all, accept unauthenticated requests — only when every
    /// listener is on loopback (a development convenience; never on a public address).
    pub allow_unauthenticated_loopback: bool,
}

/// What a gateway key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Call models (`/v1/chat/completions`, `/v1/embeddings`, ...), send feedback.
    Inference,
    /// Read traces, sessions, analytics, decisions, exports.
    Read,
    /// Change constraints, pins, experiments; admin ratings.
    Admin,
}

/// A gateway key, stored as a hash (`loopgate hash-key`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub id: String,
    /// `sha256:<hex>` of the key.
    pub hash: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    /// Lock the key to a project: its traces always carry this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Lock the key to a routing rule.
    #[serde(default)]
    pub route: Option<String>,
    /// Never store prompt or completion text for this key's requests.
    #[serde(default)]
    pub zero_retention: bool,
    /// Firewall policy for this key's requests (`none`: off); wins over project and route.
    #[serde(default)]
    pub firewall: Option<String>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Inference]
}

/// How a routing rule orders its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Targets in the written order; the next on failure.
    #[default]
    Fallback,
    /// One target drawn by weight first; the rest by weight as fallbacks.
    Weighted,
    /// Lowest recent latency (EWMA) first.
    Latency,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub strategy: Strategy,
    /// Static targets (fallback / weighted / latency rules). Empty for feedback routes.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// Per-read upstream timeout for this rule's targets.
    #[serde(default)]
    pub read_timeout_secs: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
    /// Firewall policy for this route's requests (`none`: off).
    #[serde(default)]
    pub firewall: Option<String>,
    /// Feedback routing: the default model. Setting it makes this a feedback route, whose
    /// model is picked per request by the router (`crate::feedback::router`).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Feedback routing: cheaper models the router may move traffic to.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// `off` (always the baseline), `shadow` (baseline served, pick recorded), `live`.
    #[serde(default)]
    pub mode: crate::feedback::Mode,
    #[serde(default)]
    pub constraints: crate::feedback::Constraints,
    #[serde(default)]
    pub exploration: crate::feedback::router::ExplorationConfig,
    /// Ranking weights of the published score (success / feedback / cost).
    #[serde(default)]
    pub score: crate::feedback::router::ScoreWeights,
    /// Keep per-prompt-context posteriors (task type, length, ...) next to the route's own.
    #[serde(default)]
    pub contextual: bool,
    /// Prompt-level routing from labelled neighbours (`docs/prompt-routing.md`).
    #[serde(default)]
    pub prompt_routing: crate::feedback::prompt::PromptRoutingConfig,
    /// Shadow mode: background calls of the would-have model (sampled, budgeted).
    #[serde(default)]
    pub shadow: ShadowSettings,
    /// LLM-as-judge sampling for this route (the judge model is `[judge].model`).
    #[serde(default)]
    pub judge: RouteJudgeSettings,
    /// Automatic regression rollback of a live route (holdback on the baseline + CUSUM).
    #[serde(default)]
    pub rollback: crate::rollout::monitor::RollbackConfig,
    /// Promotion hysteresis (demotion threshold, switch margin).
    #[serde(default)]
    pub promotion: crate::feedback::router::PromotionConfig,
    /// Token mix used to estimate cost per request until the route has traffic.
    #[serde(default = "default_prompt_tokens")]
    pub expected_prompt_tokens: u64,
    #[serde(default = "default_completion_tokens")]
    pub expected_completion_tokens: u64,
    /// Tenancy: the project that owns this feedback route. Keys locked to it may change the
    /// route's operator state; keys locked to other projects cannot use or see it.
    #[serde(default)]
    pub project: Option<String>,
    /// Whose traffic and feedback train the router: one pool for all (`shared`, default)
    /// or one pool per project (`project`). See docs/tenancy.md.
    #[serde(default)]
    pub learning: Learning,
}

/// `routes.<name>.learning`: the learning pools of a feedback route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Learning {
    /// Every project's feedback trains one set of posteriors.
    #[default]
    Shared,
    /// Each configured project trains its own posteriors, starting from the route's priors;
    /// traffic without a configured project learns in the shared pool.
    Project,
}

impl RouteConfig {
    /// A feedback route (has a baseline) rather than a static rule.
    pub fn is_feedback(&self) -> bool {
        self.baseline.is_some()
    }
}

/// `[routes.<name>.shadow]`
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowSettings {
    /// Share of shadow-mode requests whose would-have model is also called in the background
    /// (only when it differs from the served baseline).
    pub share: f64,
    /// USD per UTC day spent on shadow calls for this route (None: unlimited).
    pub daily_budget: Option<f64>,
}

impl Default for ShadowSettings {
    fn default() -> Self {
        ShadowSettings {
            share: 0.1,
            daily_budget: Some(1.0),
        }
    }
}

/// `[routes.<name>.judge]`
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteJudgeSettings {
    /// Share of this route's requests (served and shadow answers) the judge scores.
    pub share: f64,
    /// USD per UTC day for judge calls on this route (None: unlimited).
    pub daily_budget: Option<f64>,
}

impl Default for RouteJudgeSettings {
    fn default() -> Self {
        RouteJudgeSettings {
            share: 0.0,
            daily_budget: Some(1.0),
        }
    }
}

/// `[judge]`: the LLM-as-judge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSettings {
    /// Model that judges (any model loopgate can serve, e.g. `gpt-4o-mini`); empty: judge off.
    pub model: String,
    /// Rubric file (TOML, format of `conf/judge_rubric.toml`); empty: the embedded rubric.
    pub rubric: String,
    /// Judge calls in flight at once.
    pub concurrency: usize,
    /// Pending judge jobs; beyond it new jobs are dropped (counted), never blocking traffic.
    pub queue: usize,
    pub max_attempts: u32,
    pub timeout_secs: u64,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        JudgeSettings {
            model: String::new(),
            rubric: String::new(),
            concurrency: 2,
            queue: 1000,
            max_attempts: 3,
            timeout_secs: 60,
        }
    }
}

fn default_prompt_tokens() -> u64 {
    500
}
fn default_completion_tokens() -> u64 {
    250
}

/// `[routing]`: settings of feedback-driven routing shared by every feedback route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// Env var holding the HMAC key that signs decision traces. Unset or empty: an
    /// ephemeral random key is generated at start (signatures then only verify until restart).
    pub signing_key_env: String,
    /// Key id written next to each signature (rotate keys by changing it).
    pub signing_key_id: String,
    /// Posterior tunables (half-life, base prior, prior cap, signal weights, reliability).
    pub posterior: crate::feedback::PosteriorConfig,
    /// Total weight of one session's NPS, spread over the session's routed requests.
    pub nps_weight: f64,
    /// Benchmark priors file (TOML, format of `conf/priors.toml`); empty: the embedded one.
    pub priors: String,
    /// How often the aggregator folds new feedback and republishes the routing table.
    pub refresh_ms: u64,
    /// Window for success rate, p95 latency and token mix per (route, model).
    pub stats_window_hours: u64,
    /// How often the aggregator re-reads those traffic stats (token mix, served counts, p95
    /// latency, spend) and re-evaluates canaries and rollback monitors from the store.
    pub stats_refresh_ms: u64,
    /// The realized exploration account of the quality budget counts what each route served
    /// over its last this-many routed requests (its decisions in the store; docs/routing-math.md §3).
    pub realized_window_requests: usize,
    /// How long a session stays on the model it was first served.
    pub sticky_ttl_secs: u64,
    /// Recent routed requests kept in memory so feedback can arrive before the trace is stored.
    pub recent_capacity: usize,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            signing_key_env: "LOOPGATE_DECISION_KEY".into(),
            signing_key_id: "k1".into(),
            posterior: crate::feedback::PosteriorConfig::default(),
            nps_weight: 3.0,
            priors: String::new(),
            refresh_ms: 1000,
            stats_window_hours: 24,
            stats_refresh_ms: 5000,
            realized_window_requests: 500,
            sticky_ttl_secs: 3600,
            recent_capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Model name, optionally `provider/model`.
    pub model: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

impl GatewayConfig {
    pub fn parse(text: &str, origin: &str) -> Result<GatewayConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Load from a file, or the embedded defaults with `None`; then apply env overrides.
    pub fn load(path: Option<&Path>) -> Result<GatewayConfig, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Io {
                    path: p.display().to_string(),
                    source: e,
                })?;
                let mut c = GatewayConfig::parse(&text, &p.display().to_string())?;
                c.source = Some(p.to_path_buf());
                c
            }
            None => {
                let mut c = GatewayConfig::parse(EMBEDDED_CONFIG, "<embedded conf/gateway.toml>")?;
                // The embedded copy has no directory: it uses the embedded profiles and catalog.
                c.server.filters_dir = None;
                c.server.catalog = None;
                c
            }
        };
        cfg.apply_env();
        cfg.apply_state_dir(&|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `LOOPGATE_*` environment overrides, for automation.
    pub fn apply_env(&mut self) {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("LOOPGATE_LISTEN") {
            self.server.listen = v;
        }
        if let Some(v) = var("LOOPGATE_METRICS_LISTEN") {
            self.server.metrics_listen = v;
        }
        if let Some(v) = var("LOOPGATE_FILTERS_DIR") {
            self.server.filters_dir = Some(v);
        }
        if let Some(v) = var("LOOPGATE_CATALOG") {
            self.server.catalog = Some(v);
        }
        if let Some(v) = var("LOOPGATE_REDIS_URL") {
            self.limits.redis_url = Some(v);
        }
        if let Some(v) = var("LOOPGATE_CACHE_REDIS_URL") {
            self.cache.redis_url = Some(v);
        }
        if let Some(v) = var("LOOPGATE_DB") {
            self.storage
                .insert("sqlite_path".into(), toml::Value::String(v));
        }
        if let Some(v) = var("LOOPGATE_PID_FILE") {
            self.server.pid_file = Some(v);
        }
        if let Some(v) = var("LOOPGATE_UPGRADE_SOCK") {
            self.server.upgrade_sock = Some(v);
        }
        if let Some(v) = var("LOOPGATE_POSTGRES_URL") {
            self.storage
                .insert("backend".into(), toml::Value::String("postgres".into()));
            self.storage
                .insert("postgres_url".into(), toml::Value::String(v));
        }
        // Hashed keys from the environment: `id:sha256:<hex>[:scope+scope],...`
        if let Some(v) = var("LOOPGATE_KEYS") {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let mut parts = item.splitn(4, ':');
                let (Some(id), Some(alg), Some(hex)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let scopes = parts
                    .next()
                    .map(|s| {
                        s.split('+')
                            .filter_map(|x| match x {
                                "inference" => Some(Scope::Inference),
                                "read" => Some(Scope::Read),
                                "admin" => Some(Scope::Admin),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_else(default_scopes);
                self.auth.keys.push(KeyConfig {
                    id: id.to_string(),
                    hash: format!("{alg}:{hex}"),
                    scopes,
                    project: None,
                    route: None,
                    zero_retention: false,
                    firewall: None,
                });
            }
        }
        self.otlp.apply_env(&var);
        // LOOPGATE_MASTER_KEY is read by the runtime (hashed there, never stored in config).
    }

    /// Fill the paths left unset (database, spill file, pid file, upgrade socket) with
    /// their defaults under the state directory, and record that directory in
    /// `server.state_dir` (see [`paths`]). Paths set explicitly are kept as written.
    pub fn apply_state_dir(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let unset = |t: &toml::Table, k: &str| {
            t.get(k)
                .and_then(toml::Value::as_str)
                .is_none_or(str::is_empty)
        };
        let need = self.server.pid_file.is_none()
            || self.server.upgrade_sock.is_none()
            || unset(&self.storage, "sqlite_path")
            || unset(&self.storage, "spill_path")
            || self.server.state_dir.is_some();
        if !need {
            return Ok(());
        }
        let configured = self
            .server
            .state_dir
            .as_deref()
            .map(|d| self.resolve_path(d));
        let dir = paths::state_dir(configured, env).map_err(ConfigError::Invalid)?;
        let under = |name: &str| dir.path.join(name).to_string_lossy().into_owned();
        for (key, name) in [
            ("sqlite_path", "loopgate.db"),
            ("spill_path", "loopgate-spill.jsonl"),
        ] {
            if unset(&self.storage, key) {
                self.storage
                    .insert(key.into(), toml::Value::String(under(name)));
            }
        }
        self.server
            .pid_file
            .get_or_insert_with(|| under("loopgate.pid"));
        self.server
            .upgrade_sock
            .get_or_insert_with(|| under("upgrade.sock"));
        self.server.state_dir = Some(dir.path.to_string_lossy().into_owned());
        self.state_dir_from = dir.from;
        Ok(())
    }

    /// Checks that need nothing but the config itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!(
                "server.listen '{}' is not an address:port",
                self.server.listen
            ));
        }
        if self
            .server
            .metrics_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return bad(format!(
                "server.metrics_listen '{}' is not an address:port",
                self.server.metrics_listen
            ));
        }
        if self.server.max_body_bytes == 0 {
            return bad("server.max_body_bytes must be > 0".into());
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        self.cache.validate().map_err(ConfigError::Invalid)?;
        self.cache
            .semantic
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.vault.validate().map_err(ConfigError::Invalid)?;
        self.otlp.validate().map_err(ConfigError::Invalid)?;
        let prefix = &self.server.header_prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return bad(format!(
                "server.header_prefix '{prefix}' must be [A-Za-z0-9-]+"
            ));
        }
        if let Some(sock) = &self.server.upgrade_sock {
            if sock.len() > paths::MAX_SOCKET_PATH {
                return bad(format!(
                    "server.upgrade_sock '{sock}' is {} bytes; a unix socket path holds at most {}: set a shorter server.upgrade_sock or LOOPGATE_UPGRADE_SOCK",
                    sock.len(),
                    paths::MAX_SOCKET_PATH
                ));
            }
        }
        if let Some(cors) = &self.server.cors {
            cors.validate()
                .map_err(|e| ConfigError::Invalid(format!("server.cors: {e}")))?;
        }
        let mut ids = std::collections::HashSet::new();
        for k in &self.auth.keys {
            if !ids.insert(&k.id) {
                return bad(format!("auth.keys: duplicate id '{}'", k.id));
            }
            if parse_key_hash(&k.hash).is_none() {
                return bad(format!(
                    "auth.keys '{}': hash must be sha256:<64 hex> (see `loopgate hash-key`)",
                    k.id
                ));
            }
            if let Some(r) = &k.route {
                if !self.routes.contains_key(r) {
                    return bad(format!(
                        "auth.keys '{}': route '{r}' is not defined in [routes]",
                        k.id
                    ));
                }
            }
        }
        for (name, r) in &self.routes {
            if let Some(b) = &r.baseline {
                if !r.targets.is_empty() {
                    return bad(format!(
                        "routes.{name}: a feedback route (baseline set) takes `candidates`, not `targets`"
                    ));
                }
                if r.candidates.iter().any(|c| c == b) {
                    return bad(format!(
                        "routes.{name}: baseline '{b}' must not be listed in candidates"
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(d) = r.candidates.iter().find(|c| !seen.insert(c.as_str())) {
                    return bad(format!("routes.{name}: candidate '{d}' is listed twice"));
                }
                if let Err(e) = r.constraints.validate() {
                    return bad(format!("routes.{name}.constraints: {e}"));
                }
                // The same checks `PreparedRoute::prepare` applies, reported at load time.
                if let Err(e) = r.exploration.validate() {
                    return bad(format!("routes.{name}: {e}"));
                }
                if let Err(e) = r.score.validate() {
                    return bad(format!("routes.{name}.score: {e}"));
                }
                if r.project.as_deref().is_some_and(str::is_empty) {
                    return bad(format!("routes.{name}.project must not be empty"));
                }
                if let Err(e) = r.promotion.validate(r.constraints.min_confidence) {
                    return bad(format!("routes.{name}: {e}"));
                }
                if let Err(e) = r.prompt_routing.validate() {
                    return bad(format!("routes.{name}.prompt_routing: {e}"));
                }
                continue;
            }
            if r.project.is_some() || r.learning != Learning::Shared {
                return bad(format!(
                    "routes.{name}: `project` and `learning` apply to feedback routes (with a baseline)"
                ));
            }
            if r.targets.is_empty() {
                return bad(format!(
                    "routes.{name}: needs at least one target (or a baseline for feedback routing)"
                ));
            }
            for t in &r.targets {
                if !(t.weight.is_finite() && t.weight >= 0.0) {
                    return bad(format!(
                        "routes.{name}: weight of '{}' must be >= 0",
                        t.model
                    ));
                }
            }
            if r.strategy == Strategy::Weighted && r.targets.iter().all(|t| t.weight == 0.0) {
                return bad(format!(
                    "routes.{name}: weighted strategy needs a positive weight"
                ));
            }
        }
        for (id, m) in &self.models {
            if let Err(e) = m.validate(id) {
                return bad(e);
            }
        }
        let rs = &self.routing;
        if let Err(e) = rs.posterior.validate() {
            return bad(format!("routing.posterior: {e}"));
        }
        if !(rs.nps_weight.is_finite() && rs.nps_weight > 0.0) {
            return bad("routing.nps_weight must be > 0".into());
        }
        if rs.refresh_ms < 50 {
            return bad("routing.refresh_ms must be >= 50".into());
        }
        if rs.stats_refresh_ms < 50 {
            return bad("routing.stats_refresh_ms must be >= 50".into());
        }
        if !(100..=1_000_000).contains(&rs.realized_window_requests) {
            return bad("routing.realized_window_requests must be in 100..=1000000".into());
        }
        if rs.stats_window_hours == 0 {
            return bad("routing.stats_window_hours must be >= 1".into());
        }
        Ok(())
    }

    /// Resolve a path from the config against the config file's directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.source.as_deref().and_then(Path::parent) {
            Some(dir) => dir.join(path),
            None => path.to_path_buf(),
        }
    }

    /// Files whose change should trigger a reload.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(s) = &self.source {
            v.push(s.clone());
        }
        if let Some(f) = &self.server.filters_dir {
            v.push(self.resolve_path(f));
        }
        if let Some(c) = &self.server.catalog {
            v.push(self.resolve_path(c));
        }
        v
    }
}

/// A key hash as configured, `sha256:<64 hex>`, as bytes (`None` if malformed).
pub fn parse_key_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<GatewayConfig, ConfigError> {
        let c = GatewayConfig::parse(extra, "test")?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn stats_refresh_defaults_to_five_seconds_and_is_bounded() {
        let c = parse("").unwrap();
        assert_eq!(c.routing.stats_refresh_ms, 5000);
        let c = parse("[routing]\nstats_refresh_ms = 50\n").unwrap();
        assert_eq!(c.routing.stats_refresh_ms, 50);
        let e = parse("[routing]\nstats_refresh_ms = 10\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("routing.stats_refresh_ms must be >= 50"), "{e}");
    }

    #[test]
    fn custom_models_parse_with_slashes_and_prices() {
        let c = parse(
            r#"
[models."acme/llama-3-70b"]
provider = "openai"
model = "llama-3-70b"
input_cost_per_token = 0.000002
output_cost_per_token = 0.000004
cached_input_cost_per_token = 0.000001
context_window = 8192
mode = "chat"

[models."free/one"]
provider = "ollama"
cost_unknown = true

[routes."team/support"]
baseline = "acme/llama-3-70b"
candidates = ["free/one"]
"#,
        )
        .unwrap();
        let m = &c.models["acme/llama-3-70b"];
        assert_eq!(m.upstream("acme/llama-3-70b"), "llama-3-70b");
        assert_eq!(c.models["free/one"].upstream("free/one"), "free/one");
        let info = m.to_info("acme/llama-3-70b", "openai");
        let usage = crate::dialect::Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cached_tokens: 200,
            ..Default::default()
        };
        // 800 uncached × 2e-6 + 200 cached × 1e-6 + 100 × 4e-6.
        assert!((info.cost(&usage) - 0.0022).abs() < 1e-12);
        assert_eq!(info.max_input_tokens, Some(8192));
        assert!(c.routes.contains_key("team/support"));
    }

    #[test]
    fn custom_model_errors_name_the_entry() {
        let err = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        let e = err("[models.\"acme/x\"]\nprovider = \"openai\"\ninput_cost_per_token = 0.1\n");
        assert!(
            e.contains("models.\"acme/x\"") && e.contains("output_cost_per_token"),
            "{e}"
        );
        assert!(e.contains("cost_unknown"), "{e}");
        let e = err("[models.\"m\"]\nprovider = \"openai\"\n");
        assert!(
            e.contains("input_cost_per_token / output_cost_per_token"),
            "{e}"
        );
        let e = err("[models.\"m\"]\nprovider = \"openai\"\ninput_cost_per_token = -1\noutput_cost_per_token = 0\n");
        assert!(e.contains("input_cost_per_token = -1"), "{e}");
        let e = err("[models.\"m\"]\nprovider = \"\"\ncost_unknown = true\n");
        assert!(e.contains("`provider` is required"), "{e}");
        let e = err("[models.\"m\"]\nprovider = \"openai\"\ncost_unknown = true\ninput_cost_per_token = 1e-6\noutput_cost_per_token = 1e-6\n");
        assert!(e.contains("contradicts"), "{e}");
        // Embeddings bill input only.
        assert!(parse("[models.\"e\"]\nprovider = \"openai\"\nmode = \"embedding\"\ninput_cost_per_token = 1e-8\n").is_ok());
        // Unknown keys are rejected (typos never silently drop a price).
        let e = err("[models.\"m\"]\nprovider = \"openai\"\ninput_price = 1\n");
        assert!(e.contains("input_price"), "{e}");
    }

    #[test]
    fn custom_models_reach_the_runtime_catalog_and_resolution() {
        let mut c = parse(
            r#"
[models."acme/gpt-4o"]
provider = "openai"
model = "gpt-4o"
input_cost_per_token = 0.5
output_cost_per_token = 1.0

[models."nope/x"]
provider = "no-such-provider"
cost_unknown = true
"#,
        )
        .unwrap();
        let err = crate::routing::Runtime::build(c.clone(), 1)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("models.\"nope/x\"") && e.contains("unknown provider")),
            "{err:?}"
        );
        c.models.remove("nope/x");
        let rt = crate::routing::Runtime::build(c, 1).unwrap();
        // The override replaced the catalog's own openai/gpt-4o price.
        let info = rt.catalog.get(&["openai".to_string()], "gpt-4o").unwrap();
        assert_eq!((info.input, info.output), (Some(0.5), Some(1.0)));
        assert_eq!(info.key, "config:models.acme/gpt-4o");
        // The id with a slash resolves through its provider field, not a prefix split (the
        // provider is not active here, so the error names it).
        let e = rt
            .resolve_model("acme/gpt-4o", None)
            .err()
            .map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("openai")), "{e:?}");
    }
}
