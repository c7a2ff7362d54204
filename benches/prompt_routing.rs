//! Prompt-level routing on RouterBench (`../shared/data/routerbench/`, or `ROUTERBENCH_DIR`):
//! each task replayed as one route's traffic through the gateway's prompt router
//! (`loopgate::feedback::prompt`), learning online from simulated judge scores.
//!
//! Traffic: every prompt of the task once, in a seeded random order (no prompt is seen twice, so
//! nothing is memorised); a judge score (the served model's graded outcome + N(0, 0.1), clamped)
//! on 30% of requests; the index rebuilt every 50 requests (the aggregator's refresh). Cost is
//! RouterBench's logged USD cost of the served model on that prompt.
//!
//! Reported per task (mean over seeds, and the worst seed): cost saving and quality loss vs
//! always-baseline over all requests and over the second half, against the per-prompt oracle
//! (cheapest model at least as good as the baseline on that prompt) and the best static model
//! within δ = max_regression.
//!
//! `cargo bench --bench prompt_routing` (`-- --seeds 5 --passes 1 --feature-ns`).

use std::path::PathBuf;
use std::sync::Arc;

use loopgate::feedback::prompt::{
    text_features, Example, ModelFacts, PromptIndex, PromptPickKind, PromptRoutingConfig,
    RawFeatures,
};
use rand::{Rng, SeedableRng};

const BASELINE: &str = "gpt-4-1106-preview";
const TASKS: [&str; 3] = ["arc_challenge", "mbpp", "winograde"];

struct Task {
    name: String,
    models: Vec<String>,
    /// Per prompt: text features, quality and cost per model (index 0: baseline).
    prompts: Vec<(Box<RawFeatures>, Vec<f64>, Vec<f64>)>,
}

/// RFC 4180 records (quoted fields may hold commas, quotes and newlines).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rec = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => rec.push(std::mem::take(&mut field)),
            '\n' => {
                rec.push(std::mem::take(&mut field));
                out.push(std::mem::take(&mut rec));
            }
            '\r' => {}
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !rec.is_empty() {
        rec.push(field);
        out.push(rec);
    }
    out
}

/// RouterBench stores the prompt as a Python list literal of strings: join its items.
fn prompt_text(s: &str) -> String {
    let inner = s
        .trim()
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s)
        .trim();
    let inner = inner
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
        .unwrap_or(inner);
    inner
        .replace("\\n", "\n")
        .replace("\\'", "'")
        .replace("\\\"", "\"")
}

fn load(dir: &std::path::Path, task: &str) -> Result<Task, String> {
    let path = dir.join(format!("routerbench_zs_{task}_train.csv"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let recs = csv_records(&text);
    let header = recs.first().ok_or("empty csv")?;
    let col = |n: &str| header.iter().position(|h| h == n);
    let prompt_col = col("prompt").ok_or("no prompt column")?;
    let mut models: Vec<String> = header
        .iter()
        .filter(|h| {
            !h.contains('|')
                && !h.is_empty()
                && !matches!(
                    h.as_str(),
                    "sample_id" | "prompt" | "eval_name" | "oracle_model_to_route_to"
                )
        })
        .cloned()
        .collect();
    models.sort_by_key(|m| (m != BASELINE, m.clone()));
    let qcols: Vec<usize> = models.iter().filter_map(|m| col(m)).collect();
    let ccols: Vec<usize> = models
        .iter()
        .filter_map(|m| col(&format!("{m}|total_cost")))
        .collect();
    if qcols.len() != models.len() || ccols.len() != models.len() {
        return Err("missing model columns".into());
    }
    let mut prompts = Vec::new();
    for r in recs.iter().skip(1) {
        if r.len() != header.len() {
            continue;
        }
        let q: Option<Vec<f64>> = qcols.iter().map(|&c| r[c].parse().ok()).collect();
        let c: Option<Vec<f64>> = ccols.iter().map(|&c| r[c].parse().ok()).collect();
        // Rows with a missing outcome or cost are skipped (a handful per task).
        if let (Some(q), Some(c)) = (q, c) {
            let f = text_features(&prompt_text(&r[prompt_col]));
            prompts.push((Box::new(f), q, c));
        }
    }
    Ok(Task {
        name: task.to_string(),
        models,
        prompts,
    })
}

#[derive(Default, Clone, Copy)]
struct Tally {
    n: f64,
    q: f64,
    qb: f64,
    c: f64,
    cb: f64,
}

impl Tally {
    fn add(&mut self, q: f64, qb: f64, c: f64, cb: f64) {
        self.n += 1.0;
        self.q += q;
        self.qb += qb;
        self.c += c;
        self.cb += cb;
    }
    fn saving(&self) -> f64 {
        1.0 - self.c / self.cb
    }
    fn loss(&self) -> f64 {
        (self.qb - self.q) / self.n
    }
}

struct Run {
    /// Exploration picks only.
    explore: Tally,
    /// Requests per served model.
    served: Vec<u32>,
    all: Tally,
    half: Tally,
    explored: f64,
    tau: f64,
}

fn run(task: &Task, cfg: &PromptRoutingConfig, seed: u64, passes: usize, full: bool) -> Run {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..task.prompts.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let stream: Vec<usize> = (0..passes).flat_map(|_| order.iter().copied()).collect();
    let nm = task.models.len();
    let n = task.prompts.len() as f64;
    // Route-level costs: the model's mean cost on the task (what the catalog and token mix
    // estimate in the gateway).
    let facts: Vec<ModelFacts> = (0..nm)
        .map(|m| ModelFacts {
            model: Arc::from(task.models[m].as_str()),
            cost: task.prompts.iter().map(|p| p.2[m]).sum::<f64>() / n,
            prior_mean: 0.5,
            allowed: true,
        })
        .collect();
    let params = cfg.params(0.02, 0.95);
    let route: Arc<str> = Arc::from(task.name.as_str());
    let mut memory: std::collections::VecDeque<Example> = Default::default();
    let mut index = PromptIndex::build(Arc::clone(&route), facts.clone(), params, &[], 0);
    let mut all = Tally::default();
    let mut half = Tally::default();
    let mut explored = 0.0;
    let mut explore = Tally::default();
    let mut served = vec![0u32; nm];
    for (i, &p) in stream.iter().enumerate() {
        if i % 50 == 0 && i > 0 {
            let ex: Vec<Example> = memory.iter().cloned().collect();
            index = PromptIndex::build(Arc::clone(&route), facts.clone(), params, &ex, i as u64);
        }
        let (f, q, c) = &task.prompts[p];
        // The judge's sampling is decided by request id before routing, as in the gateway.
        let judged = rng.gen::<f64>() < 0.3;
        let pick = index.decide(f, None, rng.gen::<f64>(), judged, 0.3);
        let m = pick.chosen;
        served[m] += 1;
        if pick.kind == PromptPickKind::Explored {
            explored += 1.0;
            explore.add(q[m], q[0], c[m], c[0]);
        }
        all.add(q[m], q[0], c[m], c[0]);
        if i >= stream.len() / 2 {
            half.add(q[m], q[0], c[m], c[0]);
        }
        if judged {
            let noise: f64 = {
                // Box–Muller.
                let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-12), rng.gen());
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            };
            // `--full` (diagnostic only): every model's outcome is labelled, as in offline
            // router training; the default labels the served model only, as in production.
            let labelled: Vec<usize> = if full { (0..nm).collect() } else { vec![m] };
            for l in labelled {
                memory.push_back(Example {
                    request_id: Arc::from(format!("r{i}").as_str()),
                    raw: f.clone(),
                    embedding: None,
                    model: Arc::clone(&facts[l].model),
                    reward: (q[l] + 0.1 * noise).clamp(0.0, 1.0) as f32,
                    weight: 1.0,
                    at_ms: i as i64,
                    explored: l == m && pick.kind == PromptPickKind::Explored,
                });
            }
            if memory.len() > cfg.capacity {
                memory.pop_front();
            }
        }
    }
    Run {
        explore,
        served,
        all,
        half,
        explored: explored / stream.len() as f64,
        tau: index.tau.max(-1.0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let seeds = arg("--seeds").unwrap_or(5) as u64;
    let passes = arg("--passes").unwrap_or(1);
    let dir = std::env::var("ROUTERBENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routerbench")
        });
    let dir = if dir.exists() {
        dir
    } else {
        PathBuf::from("/work/shared/data/routerbench")
    };
    let mut cfg = PromptRoutingConfig::default();
    if let Some(k) = arg("--k") {
        cfg.k = k;
    }
    if let Some(c) = arg("--capacity") {
        cfg.capacity = c;
    }
    println!(
        "prompt routing on RouterBench ({}), {seeds} seeds, {passes} pass(es), k={}, judge 30% σ=0.1, δ=0.02",
        dir.display(),
        cfg.k
    );
    println!(
        "{:<14} {:>5} | {:>16} {:>16} | {:>16} | {:>14} {:>16} | {:>6} {:>7}",
        "task",
        "n",
        "saving all (min)",
        "loss all (max)",
        "saving/loss 2nd½",
        "oracle sav/loss",
        "best static",
        "explor",
        "τ"
    );
    let verbose = args.iter().any(|a| a == "--verbose");
    let full = args.iter().any(|a| a == "--full");
    for t in TASKS {
        let task = match load(&dir, t) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{t}: {e}");
                continue;
            }
        };
        let runs: Vec<Run> = (0..seeds)
            .map(|s| run(&task, &cfg, 0x5eed + s, passes, full))
            .collect();
        let mean = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
        let min = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).fold(f64::INFINITY, f64::min);
        let max = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if verbose {
            for r in &runs {
                eprintln!(
                    "  {t}: exploration loss share {:.4}, served {:?}",
                    (r.explore.qb - r.explore.q) / r.all.n,
                    task.models
                        .iter()
                        .zip(&r.served)
                        .map(|(m, n)| format!("{}={n}", m.rsplit('/').next().unwrap_or("")))
                        .collect::<Vec<_>>()
                );
            }
        }
        // Oracle and best static over the task.
        let nm = task.models.len();
        let (mut oc, mut oq, mut bc, mut bq) = (0.0, 0.0, 0.0, 0.0);
        let mut mean_q = vec![0.0; nm];
        let mut mean_c = vec![0.0; nm];
        for (_, q, c) in &task.prompts {
            let best = (0..nm)
                .filter(|&m| q[m] >= q[0])
                .min_by(|&a, &b| c[a].total_cmp(&c[b]))
                .unwrap_or(0);
            oc += c[best];
            oq += q[best];
            bc += c[0];
            bq += q[0];
            for m in 0..nm {
                mean_q[m] += q[m];
                mean_c[m] += c[m];
            }
        }
        let n = task.prompts.len() as f64;
        let static_best = (0..nm)
            .filter(|&m| mean_q[m] / n >= mean_q[0] / n - 0.02)
            .min_by(|&a, &b| mean_c[a].total_cmp(&mean_c[b]))
            .unwrap_or(0);
        println!(
            "{:<14} {:>5} | {:>7.1}% ({:>5.1}%) {:>7.4} ({:>6.4}) | {:>6.1}% {:>8.4} | {:>5.1}% {:>7.4} {:>16} | {:>5.1}% {:>7.3}",
            task.name,
            task.prompts.len() * passes,
            100.0 * mean(&|r| r.all.saving()),
            100.0 * min(&|r| r.all.saving()),
            mean(&|r| r.all.loss()),
            max(&|r| r.all.loss()),
            100.0 * mean(&|r| r.half.saving()),
            mean(&|r| r.half.loss()),
            100.0 * (1.0 - oc / bc),
            (bq - oq) / n,
            format!(
                "{} {:.0}%",
                task.models[static_best].rsplit('/').next().unwrap_or(""),
                100.0 * (1.0 - mean_c[static_best] / mean_c[0])
            ),
            100.0 * mean(&|r| r.explored),
            mean(&|r| r.tau),
        );
    }
}
