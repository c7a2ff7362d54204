//! The router under test **through the real gateway over HTTP**: the built `loopgate` binary
//! runs as a child process (`loopgate serve -c <temp config>`) in front of the library's
//! SIMULATED provider fleet (`loopgate::demo::sim::SimFleet`, answering with each prompt's
//! recorded outcome); the driver sends `model: "auto"` chat requests with a session header,
//! posts judge scores, admin ratings and session NPS to `POST /v1/feedback`, and reads the
//! published routing table from `GET /v1/routing`. Every statistic is the gateway's own.
//!
//! `cargo build --release` must precede `cargo bench --bench replay -- --http` (the binary is
//! looked up next to the bench executable, or in `$LOOPGATE_BIN`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopgate::demo::http::Client;
use loopgate::demo::sim::{self as fleet, Responder, SimFleet};
use loopgate::feedback::context::ContextKey;
use serde_json::{json, Value};

use super::sim::{Feedback, Request, Routed, RouterUnderTest, UnitState};

const MASTER: &str = "lg-replay-master-key";
const BASELINE: &str = "gpt-4-1106-preview";
const CANDIDATE: &str = "together/mistralai/Mixtral-8x7B-Instruct-v0.1";
/// Bounds of the waits (gateway start, table refresh).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const REFRESH_TIMEOUT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(10);

/// The built gateway binary: `$LOOPGATE_BIN`, else `loopgate` next to the bench executable
/// (`target/<profile>/deps/replay-*` → `target/<profile>/loopgate`).
pub fn gateway_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LOOPGATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    for dir in exe.ancestors().skip(1).take(3) {
        let c = dir.join("loopgate");
        if c.is_file() {
            return Ok(c);
        }
    }
    Err("the gateway binary was not found next to the bench executable: run `cargo build --release` first (or set LOOPGATE_BIN)".into())
}

/// Shared by all HTTP runs: the runtime, the simulated fleet and the binary.
pub struct HttpEnv {
    rt: tokio::runtime::Runtime,
    fleet: SimFleet,
    bin: PathBuf,
}

impl HttpEnv {
    /// The RouteLLM replay fleet (`loopgate::demo::sim`, the embedded replay set).
    pub fn new() -> Result<HttpEnv, String> {
        let rows = Arc::new(loopgate::demo::data::embedded()?);
        Self::start(|| SimFleet::start(rows, 0))
    }

    /// A fleet answering with `responder` (the RouterBench replay brings its own).
    pub fn with_responder(responder: Arc<dyn Responder>) -> Result<HttpEnv, String> {
        Self::start(|| SimFleet::start_with(responder, 0))
    }

    fn start<F, Fut>(fleet: F) -> Result<HttpEnv, String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<SimFleet>>,
    {
        let bin = gateway_binary()?;
        // One worker: the fleet keeps answering while the driver's thread blocks on a call.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let fleet = rt
            .block_on(fleet())
            .map_err(|e| format!("simulated fleet: {e}"))?;
        Ok(HttpEnv { rt, fleet, bin })
    }

    pub fn binary(&self) -> &Path {
        &self.bin
    }
}

#[derive(Clone, Copy, Debug)]
pub struct HttpConfig {
    pub contextual: bool,
    pub max_regression: f64,
    /// `[routes.default.rollback] holdback_share` (0 disables the rollback monitor).
    pub holdback_share: f64,
    pub seed: u64,
}

/// Counters of one run's HTTP traffic (reported next to the metrics).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct HttpStats {
    pub requests: u64,
    pub request_errors: u64,
    pub holdback: u64,
    pub feedback_accepted: u64,
    pub feedback_duplicate: u64,
    pub feedback_rejected: u64,
    pub feedback_skipped: u64,
    pub refreshes: u64,
    pub refresh_timeouts: u64,
    pub wall_s: f64,
}

/// One gateway child process (fresh temp dir and SQLite store) and a client to it: what every
/// HTTP replay (RouteLLM and RouterBench) drives.
pub struct Gateway<'a> {
    env: &'a HttpEnv,
    child: Child,
    dir: tempfile::TempDir,
    client: Client,
    /// Events the aggregator never folded (rejected), so refresh stops waiting for them.
    fold_deficit: u64,
    pub stats: HttpStats,
}

impl HttpStats {
    /// Sum of runs.
    pub fn add(&mut self, o: &HttpStats) {
        self.requests += o.requests;
        self.request_errors += o.request_errors;
        self.holdback += o.holdback;
        self.feedback_accepted += o.feedback_accepted;
        self.feedback_duplicate += o.feedback_duplicate;
        self.feedback_rejected += o.feedback_rejected;
        self.feedback_skipped += o.feedback_skipped;
        self.refreshes += o.refreshes;
        self.refresh_timeouts += o.refresh_timeouts;
        self.wall_s += o.wall_s;
    }
}

pub struct Http<'a> {
    pub gw: Gateway<'a>,
    cfg: HttpConfig,
    /// Response id per stream position (empty: the request failed).
    ids: Vec<String>,
    /// Exploit pick per bucket at the last refresh (for the `explored` estimate).
    promoted: [bool; 11],
    pinned_at: Option<u64>,
    started: Instant,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn config(cfg: &HttpConfig, dir: &Path, port: u16, mport: u16) -> String {
    format!(
        r#"# Generated by the replay benchmark (benches/replay/http.rs). SIMULATED providers.
[server]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{mport}"
threads = 2
watch = false
pid_file = "{dir}/loopgate.pid"
upgrade_sock = "{dir}/loopgate.sock"

[storage]
backend = "sqlite"
sqlite_path = "{dir}/replay.db"
spill_path = "{dir}/spill.jsonl"
flush_interval_ms = 50

[routes.default]
baseline = "{BASELINE}"
candidates = ["{CANDIDATE}"]
mode = "live"
contextual = {ctx}
[routes.default.constraints]
max_regression = {dr}
[routes.default.exploration]
seed = {seed}
[routes.default.rollback]
holdback_share = {hold}
threshold = {dr}

[routing]
refresh_ms = 50
nps_weight = 1.0
"#,
        dir = dir.display(),
        ctx = cfg.contextual,
        dr = cfg.max_regression,
        seed = cfg.seed,
        hold = cfg.holdback_share,
    )
}

impl<'a> Http<'a> {
    /// Start a fresh gateway (fresh store) for one run.
    pub fn new(env: &'a HttpEnv, cfg: HttpConfig) -> Result<Http<'a>, String> {
        let gw = Gateway::start(env, |dir, port, mport| config(&cfg, dir, port, mport))?;
        Ok(Http {
            gw,
            cfg,
            ids: Vec::with_capacity(16_384),
            promoted: [false; 11],
            pinned_at: None,
            started: Instant::now(),
        })
    }
}

impl<'a> Gateway<'a> {
    /// Start `loopgate serve` with the config `config(dir, port, metrics_port)` writes, in
    /// front of the env's simulated fleet, and wait (bounded) until it answers.
    pub fn start(
        env: &'a HttpEnv,
        config: impl FnOnce(&Path, u16, u16) -> String,
    ) -> Result<Gateway<'a>, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port()?;
        let mport = free_port()?;
        let cfg_path = dir.path().join("gateway.toml");
        std::fs::write(&cfg_path, config(dir.path(), port, mport))
            .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let log = std::fs::File::create(dir.path().join("gateway.log"))
            .map_err(|e| format!("log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let base = env.fleet.base_url();
        let child = Command::new(&env.bin)
            .args(["serve", "-c"])
            .arg(&cfg_path)
            .env("OPENAI_API_KEY", "simulated")
            .env("OPENAI_BASE_URL", &base)
            .env("TOGETHER_API_KEY", "simulated")
            .env("TOGETHER_BASE_URL", &base)
            .env("LOOPGATE_MASTER_KEY", MASTER)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("start {}: {e}", env.bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut me = Gateway {
            env,
            child,
            dir,
            client: Client::new(addr, MASTER),
            fold_deficit: 0,
            stats: HttpStats::default(),
        };
        me.wait_ready()?;
        Ok(me)
    }

    /// The last 2,000 bytes of the gateway's log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default();
        let start = s.len().saturating_sub(2_000);
        let mut i = start;
        while !s.is_char_boundary(i) {
            i += 1;
        }
        s[i..].to_string()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("the gateway exited ({st}):\n{}", self.log_tail()));
            }
            let ok = self
                .env
                .rt
                .block_on(self.client.send("GET", "/v1/routing", None, &[]))
                .is_ok_and(|r| {
                    r.status == 200 && r.json()["routes"].as_array().is_some_and(|a| !a.is_empty())
                });
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the gateway did not come up in {START_TIMEOUT:?}:\n{}",
            self.log_tail()
        ))
    }

    /// One call: (status, JSON body with the served model as `__served`, holdback header).
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Option<(u16, Value, bool)> {
        let r = self
            .env
            .rt
            .block_on(self.client.send(method, path, body, headers))
            .ok()?;
        let holdback = r.header("loopgate-holdback").is_some();
        let model = r.header("loopgate-model").map(str::to_string);
        let mut v = r.json();
        if let (Some(m), Value::Object(o)) = (model, &mut v) {
            o.insert("__served".into(), Value::String(m));
        }
        Some((r.status, v, holdback))
    }

    pub fn post_feedback(&mut self, body: Value) {
        match self.call("POST", "/v1/feedback", Some(&body), &[]) {
            Some((201 | 200, _, _)) => self.stats.feedback_accepted += 1,
            Some((409, _, _)) => self.stats.feedback_duplicate += 1,
            Some((status, v, _)) => {
                if self.stats.feedback_rejected < 3 {
                    eprintln!("replay-http: feedback answered {status}: {v}");
                }
                self.stats.feedback_rejected += 1;
            }
            None => self.stats.feedback_rejected += 1,
        }
    }

    /// Wait (bounded) until the published table has folded the accepted feedback; `path` is
    /// `/v1/routing` or a filtered form of it (`/v1/routing?route=...`).
    pub fn table_at(&mut self, path: &str) -> Value {
        let target = self
            .stats
            .feedback_accepted
            .saturating_sub(self.fold_deficit);
        let deadline = Instant::now() + REFRESH_TIMEOUT;
        let mut last = Value::Null;
        loop {
            if let Some((200, v, _)) = self.call("GET", path, None, &[]) {
                let folded = v["events_folded"].as_u64().unwrap_or(0);
                last = v;
                if folded >= target {
                    return last;
                }
                if Instant::now() >= deadline {
                    self.stats.refresh_timeouts += 1;
                    self.fold_deficit = self.stats.feedback_accepted.saturating_sub(folded);
                    return last;
                }
            } else if Instant::now() >= deadline {
                self.stats.refresh_timeouts += 1;
                return last;
            }
            std::thread::sleep(POLL);
        }
    }

    fn table(&mut self) -> Value {
        self.table_at("/v1/routing")
    }
}

impl Drop for Gateway<'_> {
    fn drop(&mut self) {
        // Only the child this run started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key_of(name: &str) -> Option<ContextKey> {
    ContextKey::ALL.iter().copied().find(|k| k.as_str() == name)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

impl RouterUnderTest for Http<'_> {
    fn route(&mut self, req: &Request<'_>) -> Routed {
        let session = format!("s{}", req.session);
        let body = json!({"model": "auto", "messages": req.row.messages});
        self.gw.stats.requests += 1;
        let (model, id, holdback) = match self.gw.call(
            "POST",
            "/v1/chat/completions",
            Some(&body),
            &[("loopgate-session-id", session.as_str())],
        ) {
            Some((200, v, holdback)) => {
                let served = v["__served"].as_str().unwrap_or_default();
                let m = usize::from(fleet::model_of(served) == Some(loopgate::demo::data::CHEAP));
                (
                    m,
                    v["id"].as_str().unwrap_or_default().to_string(),
                    holdback,
                )
            }
            other => {
                if self.gw.stats.request_errors < 3 {
                    eprintln!(
                        "replay-http: request {} failed: {:?}",
                        req.seq,
                        other.map(|(s, v, _)| (s, v))
                    );
                }
                self.gw.stats.request_errors += 1;
                (0, String::new(), false)
            }
        };
        self.gw.stats.holdback += u64::from(holdback);
        debug_assert_eq!(self.ids.len() as u64, req.seq);
        self.ids.push(id);
        // Estimate: served against the bucket's exploit pick at the last refresh.
        let promoted = self.promoted[req.row.key.index()];
        Routed {
            model,
            explored: !holdback && ((model == 1) != promoted),
        }
    }

    fn feedback(&mut self, fb: &Feedback, _at_ms: i64, _now_seq: u64) {
        let id_of =
            |me: &Self, seq: u64| me.ids.get(seq as usize).filter(|s| !s.is_empty()).cloned();
        let body = match fb {
            Feedback::Judge { seq, value } => id_of(self, *seq)
                .map(|id| json!({"id": id, "score": value, "scale": "unit", "signal": "judge"})),
            Feedback::Admin { seq, value } => id_of(self, *seq).map(
                |id| json!({"id": id, "score": value, "scale": "zero_to_ten", "signal": "admin"}),
            ),
            Feedback::SessionNps { session, nps, .. } => {
                Some(json!({"session_id": format!("s{session}"), "nps": nps}))
            }
        };
        match body {
            Some(b) => self.gw.post_feedback(b),
            None => self.gw.stats.feedback_skipped += 1,
        }
    }

    fn refresh(&mut self, now_seq: u64) -> Vec<UnitState> {
        self.gw.stats.refreshes += 1;
        let t = self.gw.table();
        self.gw.stats.wall_s = self.started.elapsed().as_secs_f64();
        let r = &t["routes"][0];
        let pinned = !r["pinned"].is_null();
        if pinned && self.pinned_at.is_none() {
            self.pinned_at = Some(now_seq);
        }
        let models = r["models"].as_array().cloned().unwrap_or_default();
        let base = models.iter().find(|m| m["baseline"] == true);
        let cand = models.iter().find(|m| m["baseline"] != true);
        let samples = |m: Option<&Value>| m.map_or(0, |m| m["samples"].as_u64().unwrap_or(0));
        // Route level: the model the gateway serves outside exploration (`exploit`).
        let route_promoted = !pinned && r["exploit"].as_str().is_some_and(|e| e != BASELINE);
        let route_unit = |members: Vec<ContextKey>| UnitState {
            name: "route".into(),
            members,
            promoted: route_promoted,
            confidence: cand.map_or(0.0, |c| f(&c["confidence"])),
            samples: [samples(base), samples(cand)],
            pinned,
        };
        let mut units = Vec::new();
        if !self.cfg.contextual {
            units.push(route_unit(ContextKey::ALL.to_vec()));
        } else {
            let mut covered = Vec::new();
            for c in r["contexts"].as_array().into_iter().flatten() {
                let Some(k) = c["context"].as_str().and_then(key_of) else {
                    continue;
                };
                covered.push(k);
                let ms = c["models"].as_array().cloned().unwrap_or_default();
                let find = |name: &str| ms.iter().find(|m| m["model"] == name).cloned();
                let (b, cm) = (find(BASELINE), find(CANDIDATE));
                units.push(UnitState {
                    name: k.as_str().to_string(),
                    members: vec![k],
                    promoted: !pinned && c["exploit"].as_str().is_some_and(|e| e != BASELINE),
                    confidence: cm.as_ref().map_or(0.0, |m| f(&m["confidence"])),
                    samples: [samples(b.as_ref()), samples(cm.as_ref())],
                    pinned,
                });
            }
            let rest: Vec<ContextKey> = ContextKey::ALL
                .iter()
                .copied()
                .filter(|k| !covered.contains(k))
                .collect();
            if !rest.is_empty() {
                units.push(route_unit(rest));
            }
        }
        self.promoted = [false; 11];
        for u in &units {
            for k in &u.members {
                self.promoted[k.index()] = u.promoted;
            }
        }
        units
    }

    fn alarms(&self) -> Vec<(Vec<ContextKey>, u64)> {
        // The gateway's rollback monitor pins the whole route to the baseline.
        self.pinned_at
            .map(|at| vec![(ContextKey::ALL.to_vec(), at)])
            .unwrap_or_default()
    }
}
