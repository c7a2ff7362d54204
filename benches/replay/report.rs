//! Summaries across seeds, `replay.json`, `replay.md` and two SVG plots (own tiny writer).

use std::fmt::Write as _;

use loopgate::feedback::context::ContextKey;
use serde_json::{json, Value};

use super::data::{Dataset, Row};
use super::sim::{RunResult, SimConfig, Totals, Truth, BINS};
use super::{Args, Cell, RouterMode, StaticRow};

pub struct ReportInput<'a> {
    pub args: &'a Args,
    pub rows: &'a [Row],
    pub truth: &'a Truth,
    pub cells: &'a [Cell],
    pub statics: &'a [StaticRow],
    pub routellm: Option<&'a Value>,
    pub sim: &'a SimConfig,
    pub reg_sim: &'a SimConfig,
    pub costs: [f64; 2],
    pub features_ns: (f64, f64, f64),
    pub timeline_delta: f64,
    pub elapsed_s: f64,
    /// HTTP mode: per-run transport counters and wall time.
    pub http_runs: &'a [Value],
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// One (mode, max_regression) cell summarised over seeds.
pub struct CellSummary {
    pub cost_pct: (f64, f64),
    pub quality_pct: (f64, f64),
    pub baseline_call_pct: (f64, f64),
    pub pgr: (f64, f64),
    pub per_dataset: [[(f64, f64); 4]; 3],
    pub promotions: u64,
    pub bad_promotions: u64,
    pub promoted_snapshots: u64,
    pub bad_promoted_snapshots: u64,
    pub conf95: u64,
    pub conf95_within: u64,
    pub first_promotion: (f64, f64),
    pub seeds_promoted: usize,
    pub seeds: usize,
    pub explored_pct: f64,
    pub false_alarms: u64,
    pub reg_runs_promoted: usize,
    pub reg_monitor_detected: usize,
    pub reg_monitor_delay: (f64, f64),
    pub reg_gate_closed: usize,
    pub reg_gate_delay: (f64, f64),
    pub reg_runs: usize,
    pub reliability: Vec<(f64, u64, u64)>,
    pub bucket_candidate_share: [f64; 11],
}

fn four(t: &Totals) -> [f64; 4] {
    [
        t.cost_pct(),
        t.quality_pct(),
        t.baseline_call_pct(),
        t.pgr(),
    ]
}

impl CellSummary {
    pub fn of(c: &Cell) -> CellSummary {
        let col =
            |f: &dyn Fn(&RunResult) -> f64| mean_sd(&c.clean.iter().map(f).collect::<Vec<_>>());
        let mut per_dataset = [[(0.0, 0.0); 4]; 3];
        for (d, slot) in per_dataset.iter_mut().enumerate() {
            for (k, v) in slot.iter_mut().enumerate() {
                *v = col(&|r: &RunResult| four(&r.per_dataset[d])[k]);
            }
        }
        let firsts: Vec<f64> = c
            .clean
            .iter()
            .filter_map(|r| r.first_promotion.map(|x| x as f64))
            .collect();
        let mut reliability = vec![(0.0, 0u64, 0u64); BINS.len() - 1];
        for r in &c.clean {
            for (acc, b) in reliability.iter_mut().zip(&r.reliability) {
                acc.0 += b.0;
                acc.1 += b.1;
                acc.2 += b.2;
            }
        }
        let reg_promoted: Vec<&RunResult> = c
            .regressed
            .iter()
            .filter(|r| {
                r.regression
                    .as_ref()
                    .is_some_and(|g| !g.promoted_buckets.is_empty())
            })
            .collect();
        let mon: Vec<f64> = reg_promoted
            .iter()
            .filter_map(|r| r.regression.as_ref()?.monitor_delay.map(|x| x as f64))
            .collect();
        let gate: Vec<f64> = reg_promoted
            .iter()
            .filter_map(|r| r.regression.as_ref()?.gate_delay.map(|x| x as f64))
            .collect();
        let mut bucket_candidate_share = [0.0; 11];
        for (k, s) in bucket_candidate_share.iter_mut().enumerate() {
            *s = col(&|r: &RunResult| {
                let t = &r.per_bucket[k];
                if t.n == 0 {
                    f64::NAN
                } else {
                    100.0 - t.baseline_call_pct()
                }
            })
            .0;
        }
        CellSummary {
            cost_pct: col(&|r: &RunResult| r.overall.cost_pct()),
            quality_pct: col(&|r: &RunResult| r.overall.quality_pct()),
            baseline_call_pct: col(&|r: &RunResult| r.overall.baseline_call_pct()),
            pgr: col(&|r: &RunResult| r.overall.pgr()),
            per_dataset,
            promotions: c.clean.iter().map(|r| r.promotions).sum(),
            bad_promotions: c.clean.iter().map(|r| r.bad_promotions).sum(),
            promoted_snapshots: c.clean.iter().map(|r| r.promoted_snapshots).sum(),
            bad_promoted_snapshots: c.clean.iter().map(|r| r.bad_promoted_snapshots).sum(),
            conf95: c.clean.iter().map(|r| r.conf95).sum(),
            conf95_within: c.clean.iter().map(|r| r.conf95_within).sum(),
            first_promotion: mean_sd(&firsts),
            seeds_promoted: firsts.len(),
            seeds: c.clean.len(),
            explored_pct: col(&|r: &RunResult| {
                100.0 * r.explored as f64 / r.overall.n.max(1) as f64
            })
            .0,
            false_alarms: c.clean.iter().map(|r| r.false_alarms).sum(),
            reg_runs_promoted: reg_promoted.len(),
            reg_monitor_detected: mon.len(),
            reg_monitor_delay: mean_sd(&mon),
            reg_gate_closed: gate.len(),
            reg_gate_delay: mean_sd(&gate),
            reg_runs: c.regressed.len(),
            reliability,
            bucket_candidate_share,
        }
    }

    pub fn calibration(&self) -> Option<f64> {
        (self.conf95 > 0).then(|| self.conf95_within as f64 / self.conf95 as f64)
    }
}

fn pm(x: (f64, f64)) -> String {
    if !x.0.is_finite() {
        "–".into()
    } else if x.1 > 0.0 {
        format!("{:.1} ± {:.1}", x.0, x.1)
    } else {
        format!("{:.1}", x.0)
    }
}

fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".into()
    }
}

fn jnum(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1e6).round() / 1e6)
    } else {
        Value::Null
    }
}

fn jms(x: (f64, f64)) -> Value {
    json!({"mean": jnum(x.0), "sd": jnum(x.1)})
}

fn totals_json(t: &Totals) -> Value {
    json!({
        "n": t.n,
        "cost_pct_of_baseline": jnum(t.cost_pct()),
        "quality_pct_of_baseline": jnum(t.quality_pct()),
        "baseline_call_pct": jnum(t.baseline_call_pct()),
        "pgr": jnum(t.pgr()),
    })
}

/// Per bucket: rows per dataset, both models' mean quality, the true gap.
fn bucket_rows(inp: &ReportInput<'_>) -> Vec<(ContextKey, [u64; 3], f64, f64, f64)> {
    let mut per = [[0u64; 3]; 11];
    for r in inp.rows {
        per[r.key.index()][r.dataset.index()] += 1;
    }
    ContextKey::ALL
        .iter()
        .filter(|k| inp.truth.n[k.index()] > 0)
        .map(|k| {
            let i = k.index();
            let n = inp.truth.n[i] as f64;
            let qb = inp.truth.sum_q[i][0] / n;
            let qc = inp.truth.sum_q[i][1] / n;
            (*k, per[i], qb, qc, qb - qc)
        })
        .collect()
}

pub fn write_all(inp: &ReportInput<'_>) -> std::io::Result<()> {
    std::fs::create_dir_all(&inp.args.out)?;
    let sums: Vec<CellSummary> = inp.cells.iter().map(CellSummary::of).collect();
    let json = build_json(inp, &sums);
    let text = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    let stem = inp.args.stem();
    std::fs::write(inp.args.out.join(format!("{stem}.json")), text + "\n")?;
    std::fs::write(
        inp.args.out.join(format!("{stem}.md")),
        build_md(inp, &sums),
    )?;
    std::fs::write(
        inp.args.out.join(format!("{stem}_cost_quality.svg")),
        svg_cost_quality(inp, &sums),
    )?;
    std::fs::write(
        inp.args.out.join(format!("{stem}_timeline.svg")),
        svg_timeline(inp),
    )?;
    Ok(())
}

fn build_json(inp: &ReportInput<'_>, sums: &[CellSummary]) -> Value {
    let cells: Vec<Value> = inp
        .cells
        .iter()
        .zip(sums)
        .map(|(c, s)| {
            let per_dataset: serde_json::Map<String, Value> = Dataset::ALL
                .iter()
                .map(|d| {
                    let x = &s.per_dataset[d.index()];
                    (
                        d.as_str().to_string(),
                        json!({"cost_pct": jms(x[0]), "quality_pct": jms(x[1]),
                               "baseline_call_pct": jms(x[2]), "pgr": jms(x[3])}),
                    )
                })
                .collect();
            json!({
                "router": c.mode.label(inp.args.http),
                "max_regression": c.max_regression,
                "seeds": s.seeds,
                "cost_pct_of_baseline": jms(s.cost_pct),
                "quality_pct_of_baseline": jms(s.quality_pct),
                "baseline_call_pct": jms(s.baseline_call_pct),
                "pgr": jms(s.pgr),
                "per_dataset": per_dataset,
                "promotions": s.promotions,
                "bad_promotions": s.bad_promotions,
                "promoted_snapshots": s.promoted_snapshots,
                "bad_promoted_snapshots": s.bad_promoted_snapshots,
                "promoted_snapshots_conf_ge_0_95": s.conf95,
                "within_limit_share_conf_ge_0_95": s.calibration().map_or(Value::Null, jnum),
                "first_promotion_request": jms(s.first_promotion),
                "seeds_with_a_promotion": s.seeds_promoted,
                "exploration_pct": jnum(s.explored_pct),
                "monitor_false_alarms": s.false_alarms,
                "reliability": s.reliability.iter().enumerate().map(|(i, b)| json!({
                    "bin": [BINS[i], BINS[i + 1].min(1.0)], "unit_snapshots": b.1,
                    "mean_confidence": if b.1 > 0 { jnum(b.0 / b.1 as f64) } else { Value::Null },
                    "within_share": if b.1 > 0 { jnum(b.2 as f64 / b.1 as f64) } else { Value::Null },
                })).collect::<Vec<_>>(),
                "regression": {
                    "runs": s.reg_runs,
                    "runs_promoted_at_injection": s.reg_runs_promoted,
                    "monitor_detected": s.reg_monitor_detected,
                    "monitor_delay_requests": jms(s.reg_monitor_delay),
                    "gate_closed": s.reg_gate_closed,
                    "gate_delay_requests": jms(s.reg_gate_delay),
                },
                "bucket_candidate_share_pct": ContextKey::ALL.iter().map(|k| (k.as_str().to_string(), jnum(s.bucket_candidate_share[k.index()]))).collect::<serde_json::Map<_, _>>(),
                "runs": c.clean.iter().map(|r| json!({
                    "overall": totals_json(&r.overall),
                    "promotions": r.promotions, "bad_promotions": r.bad_promotions,
                    "first_promotion": r.first_promotion,
                    "promotion_log": r.promotion_log.iter().map(|(u, at, c, g)| json!({"unit": u, "request": at, "confidence": jnum(*c), "true_gap": jnum(*g)})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let statics: Vec<Value> = inp
        .statics
        .iter()
        .map(|s| {
            json!({
                "policy": s.name, "max_regression": s.max_regression,
                "overall": totals_json(&s.overall),
                "per_dataset": Dataset::ALL.iter().map(|d| (d.as_str().to_string(), totals_json(&s.per_dataset[d.index()]))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let buckets: Vec<Value> = bucket_rows(inp)
        .iter()
        .map(|(k, per, qb, qc, gap)| {
            json!({"bucket": k.as_str(), "rows": {"mmlu": per[0], "gsm8k": per[1], "mt_bench": per[2]},
                   "baseline_quality": jnum(*qb), "candidate_quality": jnum(*qc), "true_gap": jnum(*gap)})
        })
        .collect();
    json!({
        "benchmark": "loopgate replay (in-process)",
        "data": inp.args.data.display().to_string(),
        "rows": inp.rows.len(),
        "epochs": inp.sim.epochs,
        "requests_per_run": inp.rows.len() * inp.sim.epochs,
        "quick": inp.args.quick,
        "seeds": inp.args.seeds,
        "models": {"baseline": super::data::MODELS[0], "candidate": super::data::MODELS[1]},
        "estimated_cost_per_request": inp.costs,
        "router_defaults": {
            "constraints": format!("library defaults ({}) with max_regression swept", constraint_defaults()),
            "exploration": format!("library defaults ({})", exploration_defaults()),
            "posterior": "library defaults (uniform Beta(1,1) base, half-life 30 days, reliability weighting on unless --no-reliability)",
            "reliability_weighting": inp.args.reliability,
            "score_weights": "library defaults 0.4 success / 0.4 feedback / 0.2 cost",
            "priors": inp.args.priors,
            "nps_weight": 1.0,
            "sticky": "every session stays on its first request's model where allowed (the gateway's session stickiness)",
            "contextual_nps": "a session NPS is folded into a bucket only when the whole session was in that bucket",
            "contextual_maturity": "a bucket decides alone once both models have >= min_samples samples in it; smaller buckets share one pooled posterior",
            "monitor": "RegressionMonitor per bucket, threshold = max_regression, other fields default; an alarm pins the bucket to the baseline",
        },
        "simulation": inp.sim,
        "regression_simulation": inp.reg_sim,
        "features_ns_per_prompt": {"mean": jnum(inp.features_ns.0), "p50": jnum(inp.features_ns.1), "p99": jnum(inp.features_ns.2)},
        "buckets": buckets,
        "cells": cells,
        "static": statics,
        "routellm_reference": inp.routellm.cloned().unwrap_or(Value::Null),
        "elapsed_s": jnum(inp.elapsed_s),
        "transport": inp.args.transport(),
        "http_runs": inp.http_runs,
    })
}

fn build_md(inp: &ReportInput<'_>, sums: &[CellSummary]) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Replay benchmark: GPT-4-1106 (baseline) vs Mixtral-8x7B (candidate)\n\n{} prompts{} × {} passes (each a fresh shuffle) = {} requests per run, {} seeds, {}. Mean ± sd over seeds. Cost and quality are % of always-GPT-4 on the same prompts; PGR = (q − q_Mixtral)/(q_GPT-4 − q_Mixtral).\n",
        inp.rows.len(),
        if inp.args.quick { " (--quick subset)" } else { "" },
        inp.sim.epochs,
        inp.rows.len() * inp.sim.epochs,
        inp.args.seeds,
        if inp.args.http {
            format!("**through the real gateway over HTTP** (`loopgate serve` child process per run, fresh SQLite store, simulated fleet; rollback holdback share {}; wall time {:.0} s in total)", inp.args.holdback, inp.elapsed_s)
        } else {
            "in-process router (library statistics, no HTTP)".to_string()
        }
    );
    let _ = writeln!(m, "## Router vs max_regression\n");
    let _ = writeln!(m, "| router | max_regression | cost % | quality % | GPT-4 calls % | PGR | promotions (bad) | promoted snapshots (bad) | within limit at conf ≥ 0.95 | first promotion (request) | exploration % | monitor false alarms |");
    let _ = writeln!(
        m,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (c, s) in inp.cells.iter().zip(sums) {
        let cal = s.calibration().map_or("–".to_string(), |x| {
            format!("{:.1}% of {}", 100.0 * x, s.conf95)
        });
        let first = if s.seeds_promoted == 0 {
            "never".to_string()
        } else {
            format!(
                "{} ({}/{} seeds)",
                pm(s.first_promotion),
                s.seeds_promoted,
                s.seeds
            )
        };
        let _ = writeln!(
            m,
            "| {} | {:.2} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} | {} |",
            c.mode.label(inp.args.http),
            c.max_regression,
            pm(s.cost_pct),
            pm(s.quality_pct),
            pm(s.baseline_call_pct),
            pm((s.pgr.0 * 100.0, s.pgr.1 * 100.0)).replace(" ± ", "% ± ") + "%",
            s.promotions,
            s.bad_promotions,
            s.promoted_snapshots,
            s.bad_promoted_snapshots,
            cal,
            first,
            f1(s.explored_pct),
            s.false_alarms
        );
    }
    for mode in [RouterMode::PerRoute, RouterMode::Contextual] {
        let (n, w, p, b) = inp
            .cells
            .iter()
            .zip(sums)
            .filter(|(c, _)| c.mode == mode)
            .fold((0u64, 0u64, 0u64, 0u64), |a, (_, s)| {
                (
                    a.0 + s.conf95,
                    a.1 + s.conf95_within,
                    a.2 + s.promotions,
                    a.3 + s.bad_promotions,
                )
            });
        let _ = writeln!(
            m,
            "\n{}, all limits and seeds: {} promotions, {} of them beyond the limit; promoted snapshots at confidence ≥ 0.95 truly within the limit: {}.",
            mode.label(inp.args.http),
            p,
            b,
            if n == 0 { "none".to_string() } else { format!("{:.1}% of {}", 100.0 * w as f64 / n as f64, n) }
        );
    }
    let _ = writeln!(m, "\n## Per dataset (cost % / quality % of GPT-4)\n");
    let _ = writeln!(m, "| router | max_regression | MMLU | GSM8K | MT-Bench |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|");
    for (c, s) in inp.cells.iter().zip(sums) {
        let d = |i: usize| {
            format!(
                "{} / {}",
                f1(s.per_dataset[i][0].0),
                f1(s.per_dataset[i][1].0)
            )
        };
        let _ = writeln!(
            m,
            "| {} | {:.2} | {} | {} | {} |",
            c.mode.label(inp.args.http),
            c.max_regression,
            d(0),
            d(1),
            d(2)
        );
    }
    let _ = writeln!(m, "\n## Comparison policies (hindsight, no learning)\n");
    let _ = writeln!(m, "| policy | max_regression | cost % | quality % | GPT-4 calls % | MMLU cost / q | GSM8K cost / q | MT-Bench cost / q |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in inp.statics {
        let d = |i: usize| {
            format!(
                "{} / {}",
                f1(s.per_dataset[i].cost_pct()),
                f1(s.per_dataset[i].quality_pct())
            )
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.max_regression.map_or("–".into(), |x| format!("{x:.2}")),
            f1(s.overall.cost_pct()),
            f1(s.overall.quality_pct()),
            f1(s.overall.baseline_call_pct()),
            d(0),
            d(1),
            d(2)
        );
    }
    let _ = writeln!(m, "\n## Silent regression (injected {} requests after a run's first promotion: {:.0}% of Mixtral's correct answers turn wrong, MT-Bench scores × {:.1}; runs without a promotion measure nothing)\n", inp.reg_sim.regression_after_promotion.unwrap_or(0), inp.reg_sim.regression_share * 100.0, 1.0 - inp.reg_sim.regression_share);
    let _ = writeln!(m, "| router | max_regression | runs promoted at injection | monitor fired (delay, requests) | gate closed (delay, requests) |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|");
    for (c, s) in inp.cells.iter().zip(sums) {
        let _ = writeln!(
            m,
            "| {} | {:.2} | {}/{} | {} {} | {} {} |",
            c.mode.label(inp.args.http),
            c.max_regression,
            s.reg_runs_promoted,
            s.reg_runs,
            s.reg_monitor_detected,
            if s.reg_monitor_detected > 0 {
                format!("({})", pm(s.reg_monitor_delay))
            } else {
                String::new()
            },
            s.reg_gate_closed,
            if s.reg_gate_closed > 0 {
                format!("({})", pm(s.reg_gate_delay))
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(
        m,
        "\n## Context buckets (ground truth over the replayed prompts)\n"
    );
    let td = inp.timeline_delta;
    let ctx_cell =
        inp.cells.iter().zip(sums).find(|(c, _)| {
            c.mode == RouterMode::Contextual && (c.max_regression - td).abs() < 1e-9
        });
    let _ = writeln!(m, "| bucket | rows (MMLU / GSM8K / MT-Bench) | GPT-4 quality | Mixtral quality | true gap | Mixtral served %, contextual at {td:.2} |");
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|");
    for (k, per, qb, qc, gap) in bucket_rows(inp) {
        let share = ctx_cell.map_or(f64::NAN, |(_, s)| s.bucket_candidate_share[k.index()]);
        let _ = writeln!(
            m,
            "| {} | {} / {} / {} | {:.3} | {:.3} | {:+.3} | {} |",
            k.as_str(),
            per[0],
            per[1],
            per[2],
            qb,
            qc,
            gap,
            f1(share)
        );
    }
    let _ = writeln!(m, "\n## Calibration of the gate's confidence (all unit-snapshots with ≥ min_samples per model, all max_regression values and seeds)\n");
    let _ = writeln!(
        m,
        "| router | confidence bin | unit-snapshots | mean confidence | truly within the limit |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|");
    for mode in [RouterMode::PerRoute, RouterMode::Contextual] {
        let mut acc = vec![(0.0, 0u64, 0u64); BINS.len() - 1];
        for (c, s) in inp.cells.iter().zip(sums) {
            if c.mode != mode {
                continue;
            }
            for (a, b) in acc.iter_mut().zip(&s.reliability) {
                a.0 += b.0;
                a.1 += b.1;
                a.2 += b.2;
            }
        }
        for (i, a) in acc.iter().enumerate() {
            if a.1 == 0 {
                continue;
            }
            let _ = writeln!(
                m,
                "| {} | [{:.2}, {:.2}{} | {} | {:.3} | {:.1}% |",
                mode.label(inp.args.http),
                BINS[i],
                BINS[i + 1].min(1.0),
                if i + 2 == BINS.len() { "]" } else { ")" },
                a.1,
                a.0 / a.1 as f64,
                100.0 * a.2 as f64 / a.1 as f64
            );
        }
    }
    let _ = writeln!(m, "\n## RouteLLM's published numbers for this pair (from `summary.json`, not verified against the paper)\n");
    if let Some(entries) = inp
        .routellm
        .and_then(|v| v.get("entries"))
        .and_then(Value::as_array)
    {
        for e in entries {
            let _ = writeln!(m, "- {}", serde_json::to_string(e).unwrap_or_default());
        }
    }
    let s = inp.sim;
    let _ = writeln!(m, "\n## Settings\n\nRouter: library defaults (`Constraints::default()` except the swept max_regression: {}; `ExplorationConfig::default()`: {}; `PosteriorConfig::default()`{}; score weights 0.4/0.4/0.2), priors: {}. Sessions are sticky (a session stays on its first request's model where allowed). Contextual: a bucket decides alone once both models have ≥ min_samples samples in it, smaller buckets share one pooled posterior; a session NPS counts for a bucket only if the whole session was in it. Regression monitor per bucket (threshold = max_regression, `MonitorConfig::default()` otherwise); an alarm pins the bucket to the baseline.\n\nFeedback: judge scores (the served model's recorded quality) on {:.0}% of requests after {} requests; sessions of {} unrelated prompts (MT-Bench: its 2-turn conversation), {:.0}% answer an NPS = round(10 × mean quality + N(0, {:.1}²)) {} requests after the session; admin ratings round(10 × quality) on {:.1}% of requests after {} requests. Snapshot every {} requests.\n\nFeatures: {:.0} ns per prompt mean (p50 {:.0}, p99 {:.0}).", 
        constraint_defaults(),
        exploration_defaults(),
        if inp.args.reliability { "" } else { " but reliability weighting off (--no-reliability)" },
        if inp.args.priors.baseline.is_none() && inp.args.priors.candidate.is_none() { "neutral (none)".to_string() } else { format!("{:?}", inp.args.priors) },
        s.judge_share * 100.0, s.judge_delay, s.session_len, s.nps_rate * 100.0, s.nps_noise, s.nps_delay, s.admin_rate * 100.0, s.admin_delay, s.snapshot_every,
        inp.features_ns.0, inp.features_ns.1, inp.features_ns.2);
    m
}

/// The router's shipped constraint defaults, read from the library (never restated by hand).
fn constraint_defaults() -> String {
    let c = loopgate::feedback::constraints::Constraints::default();
    format!(
        "min_confidence {}, min_samples {}, max_exploration_share {}, max_cost_increase {:?}",
        c.min_confidence, c.min_samples, c.max_exploration_share, c.max_cost_increase
    )
}

/// The router's shipped exploration defaults, read from the library.
fn exploration_defaults() -> String {
    let e = loopgate::feedback::router::ExplorationConfig::default();
    format!(
        "rate {}, budget {} at z {}, trial_rate {}, warmup {}, cost_penalty {}, {} Thompson draws",
        e.rate, e.budget, e.budget_z, e.trial_rate, e.warmup, e.cost_penalty, e.draws
    )
}

/// A plotted line: name, colour, points (cost %, quality %, label).
type Series<'a> = (String, &'a str, Vec<(f64, f64, String)>);
/// A timeline row: label, (request, promoted, truly within the limit) per snapshot.
type TimelineRow = (String, Vec<(u64, bool, bool)>);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cost (x) vs quality (y), both % of always-GPT-4.
fn svg_cost_quality(inp: &ReportInput<'_>, sums: &[CellSummary]) -> String {
    let (w, h, l, r, t, b) = (760.0, 520.0, 70.0, 220.0, 40.0, 60.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let mut pts: Vec<Series> = Vec::new();
    for (mode, color) in [
        (RouterMode::PerRoute, "#1f77b4"),
        (RouterMode::Contextual, "#d62728"),
    ] {
        let v = inp
            .cells
            .iter()
            .zip(sums)
            .filter(|(c, _)| c.mode == mode)
            .map(|(c, s)| {
                (
                    s.cost_pct.0,
                    s.quality_pct.0,
                    format!("{:.2}", c.max_regression),
                )
            })
            .collect();
        pts.push((format!("router, {}", mode.label(inp.args.http)), color, v));
    }
    let hind: Vec<(f64, f64, String)> = inp
        .statics
        .iter()
        .filter(|s| s.name.starts_with("best static per bucket"))
        .map(|s| {
            (
                s.overall.cost_pct(),
                s.overall.quality_pct(),
                s.max_regression
                    .map_or(String::new(), |x| format!("{x:.2}")),
            )
        })
        .collect();
    pts.push(("hindsight per bucket".into(), "#2ca02c", hind));
    let singles: Vec<(String, &str, (f64, f64))> = inp
        .statics
        .iter()
        .filter(|s| s.max_regression.is_none())
        .zip(["#000000", "#ff7f0e", "#9467bd"])
        .map(|(s, c)| {
            (
                s.name.clone(),
                c,
                (s.overall.cost_pct(), s.overall.quality_pct()),
            )
        })
        .collect();
    let mut ymin: f64 = 100.0;
    let mut ymax: f64 = 100.0;
    for (_, _, v) in &pts {
        for p in v {
            if p.1.is_finite() {
                ymin = ymin.min(p.1);
                ymax = ymax.max(p.1);
            }
        }
    }
    for (_, _, p) in &singles {
        ymin = ymin.min(p.1);
        ymax = ymax.max(p.1);
    }
    let ymin = (ymin / 5.0).floor() * 5.0;
    let ymax = (ymax / 5.0).ceil() * 5.0;
    let x = |c: f64| l + pw * (c.clamp(0.0, 105.0) / 105.0);
    let y = |q: f64| t + ph * (1.0 - (q - ymin) / (ymax - ymin).max(1e-9));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15">Replay: cost vs quality (% of always-GPT-4), sweeping max_regression</text>"#,
        l
    );
    for i in 0..=7 {
        let c = i as f64 * 15.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ddd"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
            x(c),
            t,
            t + ph,
            t + ph + 16.0,
            c
        );
    }
    let steps = ((ymax - ymin) / 5.0).round() as i32;
    for i in 0..=steps {
        let q = ymin + i as f64 * 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(q),
            l + pw,
            l - 6.0,
            y(q) + 4.0,
            q
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">cost, % of always-GPT-4</text>"#,
        l + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">quality, % of always-GPT-4</text>"#,
        t + ph / 2.0,
        t + ph / 2.0
    );
    let mut ly = t + 10.0;
    for (name, color, v) in &pts {
        let path: Vec<String> = v
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
            path.join(" ")
        );
        for p in v.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{} max_regression {}: cost {:.1}%, quality {:.1}%</title></circle>"#,
                x(p.0),
                y(p.1),
                esc(name),
                p.2,
                p.0,
                p.1
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 12.0,
            l + pw + 32.0,
            l + pw + 38.0,
            ly + 4.0,
            esc(name)
        );
        ly += 18.0;
    }
    for (name, color, p) in &singles {
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{color}"><title>{}: cost {:.1}%, quality {:.1}%</title></rect>"#,
            x(p.0) - 4.0,
            y(p.1) - 4.0,
            esc(name),
            p.0,
            p.1
        );
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="8" height="8" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 18.0,
            ly - 4.0,
            l + pw + 38.0,
            ly + 4.0,
            esc(name)
        );
        ly += 18.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#555">points: max_regression</text>"##,
        l + pw + 12.0,
        ly + 6.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#555">{:?}</text>"##,
        l + pw + 12.0,
        ly + 22.0,
        inp.cells
            .iter()
            .filter(|c| c.mode == RouterMode::PerRoute)
            .map(|c| c.max_regression)
            .collect::<Vec<_>>()
    );
    s.push_str("</svg>\n");
    s
}

/// Promotion timeline at the featured max_regression: one row per (seed, decision unit).
fn svg_timeline(inp: &ReportInput<'_>) -> String {
    let td = inp.timeline_delta;
    let mut rows: Vec<TimelineRow> = Vec::new();
    for mode in [RouterMode::PerRoute, RouterMode::Contextual] {
        let Some(c) = inp
            .cells
            .iter()
            .find(|c| c.mode == mode && (c.max_regression - td).abs() < 1e-9)
        else {
            continue;
        };
        for (seed, run) in c.clean.iter().enumerate() {
            let mut names: Vec<String> = run.timeline.iter().map(|p| p.unit.clone()).collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                rows.push((
                    format!("{} seed {seed}: (none)", mode.label(inp.args.http)),
                    Vec::new(),
                ));
            }
            for n in names {
                let v = run
                    .timeline
                    .iter()
                    .filter(|p| p.unit == n)
                    .map(|p| (p.seq, p.promoted, p.within))
                    .collect();
                rows.push((
                    format!("{} seed {seed}: {}", mode.label(inp.args.http), n),
                    v,
                ));
            }
        }
    }
    let len = (inp.rows.len() * inp.sim.epochs.max(1)) as f64;
    let snap = inp.sim.snapshot_every as f64;
    let (l, r, t) = (190.0, 20.0, 50.0);
    let w = 900.0;
    let rh = 22.0;
    let h = t + rh * rows.len().max(1) as f64 + 50.0;
    let pw = w - l - r;
    let x = |s: f64| l + pw * (s / len.max(1.0));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15">Promotion timeline per seed (max_regression {td:.2}): green = promoted and truly within the limit, red = promoted beyond it</text>"#
    );
    for (i, (name, pts)) in rows.iter().enumerate() {
        let yy = t + rh * i as f64;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="#eee"/>"##,
            l - 8.0,
            yy + 14.0,
            esc(name),
            yy + 10.0,
            l + pw,
            yy + 10.0
        );
        for &(seq, promoted, within) in pts {
            if !promoted {
                continue;
            }
            let color = if within { "#2ca02c" } else { "#d62728" };
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.2}" height="14" fill="{color}"/>"#,
                x(seq as f64),
                yy + 3.0,
                (x(seq as f64 + snap) - x(seq as f64)).max(1.0)
            );
        }
    }
    let yb = t + rh * rows.len().max(1) as f64 + 5.0;
    for i in 0..=5 {
        let sq = len * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#999"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4:.0}</text>"##,
            x(sq),
            yb,
            yb + 5.0,
            yb + 18.0,
            sq
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">request</text>"#,
        l + pw / 2.0,
        yb + 36.0
    );
    s.push_str("</svg>\n");
    s
}
