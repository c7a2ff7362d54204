//! Offline replay benchmark of feedback-driven routing on real outcomes (issue 7).
//!
//! 15,488 uncontaminated prompts with recorded outcomes of GPT-4-1106 (the route's baseline) and
//! Mixtral-8x7B (the cheap candidate) are replayed as production traffic on route `default`. The
//! router learns online from simulated judge scores, delayed session NPS and rare admin ratings;
//! the metrics compare what it served with the baselines, the hindsight choices and the
//! per-prompt oracle. See `benches/data/README.md` ("Replay benchmark").
//!
//! ```sh
//! cargo bench --bench replay -- --seeds 5          # full run, ~1 min in release
//! cargo bench --bench replay -- --quick            # CI smoke run: subset, 2 seeds, < 60 s
//! cargo build --release && cargo bench --bench replay -- --http --seeds 3   # headline: real gateway
//! ```
//! `--http` runs every request and every feedback event through the real gateway binary
//! (`target/release/loopgate serve`, started per run with a fresh SQLite store) in front of the
//! simulated fleet; it defaults to one pass (`--epochs 1`), 3 seeds and `--deltas 0.1,0.2`.
//! Flags: `--seeds N`, `--quick`, `--out DIR` (default `target/bench-results`), `--data FILE`,
//! `--epochs N` (passes over the data, default 4), `--judge-share X` (default 0.2), `--no-reliability` (diagnostic), `--prior-baseline SCORE:N0`, `--prior-candidate SCORE:N0` (default: neutral priors).
//! `--http`, `--deltas A,B,..` (swept max_regression values), `--holdback X` (HTTP: the rollback
//! monitor's holdback share, default 0.05).
//! Output: `replay.json`, `replay.md`, `replay_cost_quality.svg`, `replay_timeline.svg`
//! (`replay_http.*` with `--http`).

use std::path::PathBuf;
use std::time::Instant;

use loopgate::feedback::constraints::Constraints;
use loopgate::feedback::context::{self, ContextKey};
use loopgate::feedback::posterior::PosteriorConfig;
use loopgate::feedback::router::{ExplorationConfig, ScoreWeights};
use loopgate::feedback::sequential::MonitorConfig;

#[path = "replay/data.rs"]
mod data;
#[path = "replay/http.rs"]
mod http;
#[path = "replay/inproc.rs"]
mod inproc;
#[path = "replay/report.rs"]
mod report;
#[path = "replay/routerbench.rs"]
mod routerbench;
#[path = "replay/routerbench_http.rs"]
mod routerbench_http;
#[path = "replay/sim.rs"]
mod sim;

use data::{Dataset, Row};
use inproc::{InProc, InProcConfig, PriorSpec};
use sim::{RunResult, RunSpec, SimConfig, Totals, Truth};

/// Command-line options.
#[derive(Clone, Debug)]
pub struct Args {
    pub seeds: u64,
    pub quick: bool,
    pub out: PathBuf,
    pub data: PathBuf,
    pub priors: PriorSpec,
    pub epochs: usize,
    pub judge_share: f64,
    /// `PosteriorConfig::reliability` (diagnostic switch; the library default is on).
    pub reliability: bool,
    /// Through the real gateway over HTTP (see `replay/http.rs`).
    pub http: bool,
    /// HTTP mode: `[routes.default.rollback] holdback_share`.
    pub holdback: f64,
    /// The swept max_regression values (default depends on the mode).
    pub deltas: Option<Vec<f64>>,
}

impl Args {
    /// Output file stem: HTTP and in-process results live side by side.
    pub fn stem(&self) -> &'static str {
        if self.http {
            "replay_http"
        } else {
            "replay"
        }
    }
    /// Which transport produced the rows.
    pub fn transport(&self) -> &'static str {
        if self.http {
            "HTTP, real gateway"
        } else {
            "in-process"
        }
    }
}

fn parse_prior(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("prior {s:?}: expected SCORE:N0"))?;
    let score: f64 = a.parse().map_err(|_| format!("prior score {a:?}"))?;
    let n0: f64 = b.parse().map_err(|_| format!("prior n0 {b:?}"))?;
    if !(0.0..=1.0).contains(&score) || n0 < 0.0 {
        return Err(format!("prior {s:?}: score in [0, 1], n0 >= 0"));
    }
    Ok((score, n0))
}

fn parse_args() -> Result<Args, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        seeds: 5,
        quick: false,
        out: root.join("target/bench-results"),
        data: root.join("benches/data/replay.jsonl.gz"),
        priors: PriorSpec::default(),
        epochs: SimConfig::default().epochs,
        judge_share: SimConfig::default().judge_share,
        reliability: PosteriorConfig::default().reliability,
        http: false,
        holdback: 0.05,
        deltas: None,
    };
    let mut seeds_set = false;
    let mut epochs_set = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seeds" => {
                a.seeds = val("--seeds")?
                    .parse()
                    .map_err(|_| "--seeds: a number".to_string())?;
                seeds_set = true;
            }
            "--quick" => a.quick = true,
            "--http" => a.http = true,
            "--holdback" => {
                a.holdback = val("--holdback")?
                    .parse()
                    .map_err(|_| "--holdback: a number".to_string())?;
                if !(0.0..=0.5).contains(&a.holdback) {
                    return Err("--holdback must be in [0, 0.5]".into());
                }
            }
            "--deltas" => {
                let v: Result<Vec<f64>, _> = val("--deltas")?
                    .split(',')
                    .map(|x| x.trim().parse::<f64>())
                    .collect();
                let v = v.map_err(|_| "--deltas: comma-separated numbers".to_string())?;
                if v.is_empty() || v.iter().any(|x| !(0.0..=1.0).contains(x)) {
                    return Err("--deltas: values in [0, 1]".into());
                }
                a.deltas = Some(v);
            }
            "--no-reliability" => a.reliability = false,
            "--judge-share" => {
                a.judge_share = val("--judge-share")?
                    .parse()
                    .map_err(|_| "--judge-share: a number".to_string())?;
                if !(0.0..=1.0).contains(&a.judge_share) {
                    return Err("--judge-share must be in [0, 1]".into());
                }
            }
            "--epochs" => {
                a.epochs = val("--epochs")?
                    .parse()
                    .map_err(|_| "--epochs: a number".to_string())?;
                epochs_set = true;
            }
            "--out" => a.out = PathBuf::from(val("--out")?),
            "--data" => a.data = PathBuf::from(val("--data")?),
            "--prior-baseline" => a.priors.baseline = Some(parse_prior(&val("--prior-baseline")?)?),
            "--prior-candidate" => {
                a.priors.candidate = Some(parse_prior(&val("--prior-candidate")?)?)
            }
            // cargo bench passes --bench; criterion-style filters are ignored.
            "--bench" | "--nocapture" => {}
            other => eprintln!("replay: ignoring argument {other:?}"),
        }
    }
    if a.quick && !seeds_set {
        a.seeds = 2;
    }
    if a.http && !seeds_set {
        a.seeds = 3;
    }
    if a.http && !epochs_set {
        a.epochs = 1;
    }
    a.seeds = a.seeds.clamp(1, 100);
    a.epochs = a.epochs.clamp(1, 100);
    Ok(a)
}

/// A routing mode of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterMode {
    PerRoute,
    Contextual,
}

impl RouterMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RouterMode::PerRoute => "per-route",
            RouterMode::Contextual => "contextual",
        }
    }
    /// The row label, marked when the rows come from the real gateway.
    pub fn label(self, http: bool) -> &'static str {
        match (self, http) {
            (RouterMode::PerRoute, false) => "per-route",
            (RouterMode::Contextual, false) => "contextual",
            (RouterMode::PerRoute, true) => "per-route (HTTP)",
            (RouterMode::Contextual, true) => "contextual (HTTP)",
        }
    }
}

/// Defaults of the router under test: the library's, except the swept `max_regression`.
fn router_config(
    mode: RouterMode,
    max_regression: f64,
    seed: u64,
    costs: [f64; 2],
    priors: PriorSpec,
    reliability: bool,
) -> InProcConfig {
    let constraints = Constraints {
        max_regression,
        ..Constraints::default()
    };
    InProcConfig {
        contextual: mode == RouterMode::Contextual,
        constraints,
        exploration: ExplorationConfig::default(),
        weights: ScoreWeights::default(),
        posterior: PosteriorConfig {
            reliability,
            ..PosteriorConfig::default()
        },
        nps_weight: 1.0,
        priors,
        sticky: true,
        monitor: Some(MonitorConfig {
            threshold: max_regression,
            ..MonitorConfig::default()
        }),
        share_window: 1_000,
        costs,
        seed,
    }
}

/// One (mode, max_regression) cell over all seeds.
pub struct Cell {
    pub mode: RouterMode,
    pub max_regression: f64,
    pub clean: Vec<RunResult>,
    pub regressed: Vec<RunResult>,
}

/// Static comparison policies (no learning).
pub struct StaticRow {
    pub name: String,
    pub max_regression: Option<f64>,
    pub overall: Totals,
    pub per_dataset: [Totals; 3],
}

fn static_policy(
    name: &str,
    rows: &[Row],
    dr: Option<f64>,
    pick: impl Fn(&Row) -> usize,
) -> StaticRow {
    let mut r = StaticRow {
        name: name.to_string(),
        max_regression: dr,
        overall: Totals::default(),
        per_dataset: [Totals::default(); 3],
    };
    for row in rows {
        let m = pick(row).min(1);
        r.overall.add(m, row.quality, row.cost);
        r.per_dataset[row.dataset.index()].add(m, row.quality, row.cost);
    }
    r
}

/// Deterministic subset for `--quick`: every 5th single prompt, all MT-Bench conversations.
fn quick_subset(rows: Vec<Row>) -> Vec<Row> {
    rows.into_iter()
        .enumerate()
        .filter(|(i, r)| r.dataset == Dataset::MtBench || i % 5 == 0)
        .map(|(_, r)| r)
        .collect()
}

/// Nanoseconds per `context_key` call over all prompts, warm: (mean, p50, p99).
fn time_features(rows: &[Row]) -> (f64, f64, f64) {
    let mut sink = 0usize;
    for r in rows {
        sink += context::context_key(&r.messages).index();
    }
    let t = Instant::now();
    for _ in 0..3 {
        for r in rows {
            sink += context::context_key(std::hint::black_box(&r.messages)).index();
        }
    }
    let mean = t.elapsed().as_nanos() as f64 / (3 * rows.len()).max(1) as f64;
    let mut each: Vec<f64> = Vec::with_capacity(rows.len());
    for r in rows {
        let t = Instant::now();
        sink += context::context_key(std::hint::black_box(&r.messages)).index();
        each.push(t.elapsed().as_nanos() as f64);
    }
    std::hint::black_box(sink);
    each.sort_by(f64::total_cmp);
    let q = |p: f64| {
        each.get(((each.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    (mean, q(0.5), q(0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--routerbench") {
        routerbench::main();
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("replay: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut rows = match data::load(&args.data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("replay: {e}");
            std::process::exit(1);
        }
    };
    if args.quick {
        rows = quick_subset(rows);
    }
    let truth = Truth::new(&rows);
    let mut costs = [0.0; 2];
    for r in &rows {
        costs[0] += r.cost[0];
        costs[1] += r.cost[1];
    }
    let n = rows.len().max(1) as f64;
    costs = [costs[0] / n, costs[1] / n];
    let features_ns = time_features(&rows);
    eprintln!(
        "replay: {} rows, features {:.0} ns/prompt mean (p50 {:.0}, p99 {:.0})",
        rows.len(),
        features_ns.0,
        features_ns.1,
        features_ns.2
    );

    let deltas: Vec<f64> = if let Some(d) = &args.deltas {
        d.clone()
    } else if args.quick {
        vec![0.02, 0.1]
    } else if args.http {
        vec![0.1, 0.2]
    } else {
        vec![0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2]
    };
    let http_env = if args.http {
        match http::HttpEnv::new() {
            Ok(e) => {
                eprintln!(
                    "replay: HTTP mode, gateway binary {}, simulated fleet up",
                    e.binary().display()
                );
                Some(e)
            }
            Err(e) => {
                eprintln!("replay: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let mut http_runs: Vec<serde_json::Value> = Vec::new();
    let sim_cfg = SimConfig {
        epochs: args.epochs,
        judge_share: args.judge_share,
        ..SimConfig::default()
    };
    let reg_cfg = SimConfig {
        regression_after_promotion: Some(2_000),
        ..sim_cfg.clone()
    };
    let min_samples = Constraints::default().min_samples;
    // The timeline shows the loosest limit of the sweep (where promotions happen at all).
    let timeline_delta = deltas.last().copied().unwrap_or(0.05);
    let mut cells = Vec::new();
    for mode in [RouterMode::PerRoute, RouterMode::Contextual] {
        for &dr in &deltas {
            let mut cell = Cell {
                mode,
                max_regression: dr,
                clean: Vec::new(),
                regressed: Vec::new(),
            };
            for seed in 0..args.seeds {
                for (cfg, out) in [(&sim_cfg, 0), (&reg_cfg, 1)] {
                    let spec = RunSpec {
                        rows: &rows,
                        truth: &truth,
                        max_regression: dr,
                        min_samples,
                        seed,
                        sim: cfg,
                        keep_timeline: out == 0,
                    };
                    let res = if let Some(env) = &http_env {
                        // A regressed run only measures something once the clean run of the
                        // same seed promoted; otherwise reuse the clean run (no regression).
                        if out == 1 {
                            if let Some(clean) = cell.clean.last() {
                                if clean.first_promotion.is_none() {
                                    cell.regressed.push(clean.clone());
                                    continue;
                                }
                            }
                        }
                        let hc = http::HttpConfig {
                            contextual: mode == RouterMode::Contextual,
                            max_regression: dr,
                            holdback_share: args.holdback,
                            seed,
                        };
                        let mut router = match http::Http::new(env, hc) {
                            Ok(r) => r,
                            Err(e) => {
                                eprintln!("replay: gateway: {e}");
                                std::process::exit(1);
                            }
                        };
                        let t = Instant::now();
                        let res = sim::run(&spec, &mut router);
                        router.gw.stats.wall_s = t.elapsed().as_secs_f64();
                        let st = router.gw.stats;
                        eprintln!(
                            "replay:   http {} {:.2} seed {seed} {}: {} requests ({} failed, {} holdback), feedback {} accepted / {} duplicate / {} rejected, {} refresh timeouts, {:.1}s ({:.0} req/s)",
                            mode.as_str(),
                            dr,
                            if out == 0 { "clean" } else { "regressed" },
                            st.requests,
                            st.request_errors,
                            st.holdback,
                            st.feedback_accepted,
                            st.feedback_duplicate,
                            st.feedback_rejected,
                            st.refresh_timeouts,
                            st.wall_s,
                            st.requests as f64 / st.wall_s.max(1e-9)
                        );
                        http_runs.push(serde_json::json!({
                            "router": mode.as_str(), "max_regression": dr, "seed": seed,
                            "regressed": out == 1, "stats": st,
                        }));
                        res
                    } else {
                        let rc =
                            router_config(mode, dr, seed, costs, args.priors, args.reliability);
                        let mut router = match InProc::new(rc) {
                            Ok(r) => r,
                            Err(e) => {
                                eprintln!("replay: router config: {e}");
                                std::process::exit(1);
                            }
                        };
                        sim::run(&spec, &mut router)
                    };
                    if out == 0 {
                        cell.clean.push(res);
                    } else {
                        cell.regressed.push(res);
                    }
                }
            }
            let s = report::CellSummary::of(&cell);
            eprintln!(
                "replay: {:<10} max_regression {:.2}: cost {:5.1}% quality {:5.1}% promotions {} (bad {}) [{:.1}s]",
                mode.as_str(),
                dr,
                s.cost_pct.0,
                s.quality_pct.0,
                s.promotions,
                s.bad_promotions,
                started.elapsed().as_secs_f64()
            );
            cells.push(cell);
        }
    }

    // Static comparison rows.
    let mut statics = vec![
        static_policy("always-baseline (GPT-4)", &rows, None, |_| 0),
        static_policy("always-cheapest (Mixtral)", &rows, None, |_| 1),
        static_policy("per-prompt oracle", &rows, None, |r| {
            usize::from(r.quality[1] >= r.quality[0])
        }),
    ];
    let all_gap = truth.gap(&ContextKey::ALL);
    for &dr in &deltas {
        statics.push(static_policy(
            "best static per route (hindsight)",
            &rows,
            Some(dr),
            |_| usize::from(all_gap <= dr + 1e-12),
        ));
        statics.push(static_policy(
            "best static per bucket (hindsight)",
            &rows,
            Some(dr),
            |r| usize::from(truth.gap(&[r.key]) <= dr + 1e-12),
        ));
    }
    let summary_path = args.data.with_file_name("summary.json");
    let routellm = std::fs::read_to_string(&summary_path)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("routellm_reference").cloned());

    let ctx = report::ReportInput {
        args: &args,
        rows: &rows,
        truth: &truth,
        cells: &cells,
        statics: &statics,
        routellm: routellm.as_ref(),
        sim: &sim_cfg,
        reg_sim: &reg_cfg,
        costs,
        features_ns,
        timeline_delta,
        elapsed_s: started.elapsed().as_secs_f64(),
        http_runs: &http_runs,
    };
    if let Err(e) = report::write_all(&ctx) {
        eprintln!("replay: writing results: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "replay: wrote {}/{}.{{json,md}} and SVG plots in {:.1}s",
        args.out.display(),
        args.stem(),
        started.elapsed().as_secs_f64()
    );
}
