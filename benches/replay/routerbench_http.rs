//! The RouterBench replay **through the real gateway over HTTP** (issue 12):
//! `cargo bench --bench replay -- --routerbench --http [--seeds N] [--quick] [--only TEXT]`.
//!
//! Every run starts the built `loopgate serve` (the harness of `replay/http.rs`: [`Gateway`],
//! fresh temp dir and SQLite store) with a generated `gateway.toml` that declares the eleven
//! RouterBench models as custom models (`[models."<id>"]`, provider `openai`, the prices of
//! [`PRICES`]) and the run's route as a feedback route with the shipped defaults (only its
//! exploration seed is set). The replay runs 2,000 requests in a few seconds, so the
//! aggregator's clocks are compressed with it: `routing.refresh_ms = 50` (a snapshot does not
//! wait a second) and `routing.stats_refresh_ms = 50` (the traffic stats — each model's token
//! mix behind its cost estimate, the served counts behind the realized exploration account —
//! are re-read as often as the in-process replay recomputes them, instead of every 5 s, which
//! would leave a whole run on the configured token-mix guess and without the account).
//! The route is switched to `live` through `POST /v1/routes/<name>/mode` (its name holds `/`,
//! percent-encoded). The simulated fleet ([`RbResponder`]) answers each model on each prompt
//! with usage whose cost at those prices is the record's logged USD cost (see [`usage`]).
//!
//! The driver is the traffic model of `routerbench.rs` itself (`routerbench::run`, the same
//! sessions, judge scores and session NPS in the same order): requests go to
//! `POST /v1/chat/completions` as `model: "auto:<route>"` with a `loopgate-session-id`, the
//! served model is read from the `loopgate-model` header, judge scores are posted to
//! `POST /v1/feedback` by response id and session NPS by session id, and every
//! `SNAPSHOT_EVERY` requests the driver waits (bounded) until `GET /v1/routing?route=<name>`
//! has folded every accepted feedback event and reads the route's `exploit` pick and its
//! confidence from it. Every routing statistic is the gateway's own (its aggregator, cost
//! estimates from the catalog and the traces' token mix, stats window, stickiness).
//!
//! Limits: the gateway republishes its table on every feedback nudge, so a promotion made
//! between two snapshots is first seen (and counted in the calibration line) at the next
//! snapshot's confidence, possibly already the incumbent's hysteresis level; the gateway draws
//! its own exploration randomness, so runs are not reproducible request by request.

use std::collections::HashMap;

use loopgate::demo::sim::{completion, last_user_text, Responder};
use serde_json::{json, Value};

use super::http::{Gateway, HttpEnv, HttpStats};
use super::routerbench::{Fb, RouteSpec, Routed, Router, Snap, Task};

/// USD per input / output token of each RouterBench model, and where the price comes from.
/// RouterBench logged each call's cost as tokens × the provider's list price; these are
/// those prices. Seven are listed in `../shared/data/model_prices.json` (LiteLLM's table);
/// the other four Together AI models are not (or without a price) and are derived from the
/// logged costs: cost per token on ARC-Challenge and Winogrande (answers of a few tokens),
/// with tokens counted as Mistral-7B's logged cost / its listed $0.20 per million (same
/// Llama-family tokenizer); p10–p90 of that ratio lie within 0.2% of the value.
pub const PRICES: &[(&str, f64, f64, &str)] = &[
    (
        "gpt-4-1106-preview",
        10e-6,
        30e-6,
        "model_prices.json `gpt-4-1106-preview` (openai)",
    ),
    (
        "gpt-3.5-turbo-1106",
        1e-6,
        2e-6,
        "model_prices.json `gpt-3.5-turbo-1106` (openai)",
    ),
    (
        "claude-v2",
        8e-6,
        24e-6,
        "model_prices.json `anthropic.claude-v2:1` (bedrock)",
    ),
    (
        "claude-v1",
        8e-6,
        24e-6,
        "model_prices.json `anthropic.claude-v1` (bedrock)",
    ),
    (
        "claude-instant-v1",
        0.8e-6,
        2.4e-6,
        "model_prices.json `anthropic.claude-instant-v1` (bedrock)",
    ),
    (
        "mistralai/mixtral-8x7b-chat",
        0.6e-6,
        0.6e-6,
        "model_prices.json `together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1`",
    ),
    (
        "mistralai/mistral-7b-chat",
        0.2e-6,
        0.2e-6,
        "model_prices.json `together_ai/mistralai/Mistral-7B-Instruct-v0.1`",
    ),
    (
        "meta/llama-2-70b-chat",
        0.9e-6,
        0.9e-6,
        "derived from the logged cost",
    ),
    (
        "zero-one-ai/Yi-34B-Chat",
        0.8e-6,
        0.8e-6,
        "derived from the logged cost",
    ),
    (
        "WizardLM/WizardLM-13B-V1.2",
        0.3e-6,
        0.3e-6,
        "derived from the logged cost",
    ),
    (
        "meta/code-llama-instruct-34b-chat",
        0.776e-6,
        0.776e-6,
        "derived from the logged cost",
    ),
];

/// Prompt characters per token: ARC-Challenge and Winogrande prompts (whose answers are a few
/// tokens) hold 4.1 characters per token counted as above.
pub const CHARS_PER_TOKEN: f64 = 4.1;

pub fn price(model: &str) -> Option<(f64, f64)> {
    PRICES
        .iter()
        .find(|p| p.0 == model)
        .map(|&(_, i, o, _)| (i, o))
}

/// The usage the simulated model reports for a record: prompt tokens estimated from the prompt
/// (characters / [`CHARS_PER_TOKEN`], at most what the logged cost pays for), completion
/// tokens the rest of the logged cost at the output price; so input price × prompt tokens +
/// output price × completion tokens is the logged cost to within one output token.
pub fn usage(model: &str, prompt_chars: usize, cost_usd: f64) -> Option<(u64, u64)> {
    let (inp, out) = price(model)?;
    let est = (prompt_chars as f64 / CHARS_PER_TOKEN).round();
    let pt = est.min((cost_usd / inp).floor()).max(0.0);
    let ct = ((cost_usd - inp * pt) / out).round().max(0.0);
    Some((pt as u64, ct as u64))
}

/// The simulated fleet of the RouterBench replay: each model's recorded usage on each prompt.
pub struct RbResponder {
    /// Prompt text → (model, prompt tokens, completion tokens) per model.
    by_prompt: HashMap<String, Vec<(String, u64, u64)>>,
}

impl RbResponder {
    pub fn new(tasks: &[Task]) -> Result<RbResponder, String> {
        let mut by_prompt = HashMap::new();
        for t in tasks {
            for (row, prompt) in t.prompts.iter().enumerate() {
                let mut per = Vec::with_capacity(t.models.len());
                for (k, m) in t.models.iter().enumerate() {
                    let u = usage(m, prompt.chars().count(), t.cost[row][k])
                        .ok_or_else(|| format!("no price for model {m}"))?;
                    per.push((m.clone(), u.0, u.1));
                }
                by_prompt.entry(prompt.clone()).or_insert(per);
            }
        }
        Ok(RbResponder { by_prompt })
    }
}

impl Responder for RbResponder {
    fn answer(&self, req: &Value) -> (u16, Value) {
        let model = req["model"].as_str().unwrap_or_default();
        let Some(per) = self.by_prompt.get(&last_user_text(req)) else {
            return (
                400,
                json!({"error": {"message": "simulator: prompt is not in the RouterBench set", "type": "invalid_request_error"}}),
            );
        };
        let Some(&(_, pt, ct)) = per.iter().find(|u| u.0 == model) else {
            return (
                404,
                json!({"error": {"message": format!("simulator: model '{model}' is not simulated"), "type": "invalid_request_error", "code": "model_not_found"}}),
            );
        };
        let content = format!("Simulated answer of {model} (RouterBench record).");
        (200, completion(model, &content, pt, ct))
    }
}

/// Percent-encode a route name for a URL path segment or query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn config(
    t: &Task,
    r: &RouteSpec,
    seed: u64,
    dir: &std::path::Path,
    port: u16,
    mport: u16,
) -> String {
    let mut s = format!(
        r#"# Generated by the RouterBench replay (benches/replay/routerbench_http.rs). SIMULATED providers.
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

[routing]
refresh_ms = 50
stats_refresh_ms = 50

"#,
        dir = dir.display(),
    );
    for &(id, inp, out, _) in PRICES {
        s.push_str(&format!(
            "[models.\"{id}\"]\nprovider = \"openai\"\ninput_cost_per_token = {inp:e}\noutput_cost_per_token = {out:e}\n\n"
        ));
    }
    let names: Vec<&str> = r.models.iter().map(|&k| t.models[k].as_str()).collect();
    let cands: Vec<String> = names[1..].iter().map(|m| format!("\"{m}\"")).collect();
    s.push_str(&format!(
        "[routes.\"{name}\"]\nbaseline = \"{b}\"\ncandidates = [{c}]\n[routes.\"{name}\".exploration]\nseed = {seed}\n",
        name = r.name,
        b = names[0],
        c = cands.join(", "),
    ));
    s
}

/// The route under test in a fresh gateway.
pub struct HttpRouter<'a> {
    pub gw: Gateway<'a>,
    route: String,
    names: Vec<String>,
    prompts: &'a [String],
    /// Response id per request (empty: the request failed).
    ids: Vec<String>,
    /// Served-model names the driver could not map to a route model.
    pub unknown_served: u64,
    /// Sweep aid (`LOOPGATE_DEBUG_TABLE=<route>`): each model's true mean quality and logged
    /// cost, printed next to the gateway's view every 200 requests and when the exploit pick
    /// changes.
    debug: Option<(Vec<f64>, Vec<f64>)>,
    last_exploit: String,
}

impl<'a> HttpRouter<'a> {
    pub fn new(env: &'a HttpEnv, t: &'a Task, r: &RouteSpec, seed: u64) -> Result<Self, String> {
        let mut gw = Gateway::start(env, |dir, port, mport| config(t, r, seed, dir, port, mport))?;
        let path = format!("/v1/routes/{}/mode", enc(&r.name));
        match gw.call("POST", &path, Some(&json!({"mode": "live"})), &[]) {
            Some((200 | 201, _, _)) => {}
            other => {
                return Err(format!(
                    "POST {path}: {:?}\n{}",
                    other.map(|(s, v, _)| (s, v)),
                    gw.log_tail()
                ))
            }
        }
        // Bounded: until the published table serves the route live.
        let q = format!("/v1/routing?route={}", enc(&r.name));
        let mut live = false;
        for _ in 0..200 {
            let v = gw.table_at(&q);
            if v["routes"][0]["mode"] == "live" {
                live = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        if !live {
            return Err(format!("route {} never turned live", r.name));
        }
        gw.stats = HttpStats::default();
        Ok(HttpRouter {
            gw,
            route: r.name.clone(),
            names: r.models.iter().map(|&k| t.models[k].clone()).collect(),
            prompts: &t.prompts,
            ids: Vec::with_capacity(8_192),
            unknown_served: 0,
            last_exploit: t.models[r.models[0]].clone(),
            debug: std::env::var("LOOPGATE_DEBUG_TABLE")
                .is_ok_and(|v| v == r.name)
                .then(|| {
                    (
                        r.models.iter().map(|&k| t.mean_q[k]).collect(),
                        r.models.iter().map(|&k| t.mean_c[k]).collect(),
                    )
                }),
        })
    }

    fn index_of(&self, served: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|m| m == served)
            .or_else(|| self.names.iter().position(|m| served.ends_with(m.as_str())))
    }
}

impl Router for HttpRouter<'_> {
    fn snapshot(&mut self, n: usize) -> Snap {
        self.gw.stats.refreshes += 1;
        let v = self
            .gw
            .table_at(&format!("/v1/routing?route={}", enc(&self.route)));
        let r = &v["routes"][0];
        let changed = r["exploit"].as_str() != Some(self.last_exploit.as_str());
        self.last_exploit = r["exploit"].as_str().unwrap_or_default().to_string();
        if let Some((q, c)) = self
            .debug
            .as_ref()
            .filter(|_| n.is_multiple_of(200) || changed)
        {
            eprintln!(
                "n={n} exploit={} eps={} token_mix={}",
                r["exploit"], r["exploration_epsilon"], r["token_mix"]
            );
            for m in r["models"].as_array().into_iter().flatten() {
                let name = m["model"].as_str().unwrap_or_default();
                let i = self.names.iter().position(|x| x == name).unwrap_or(0);
                eprintln!(
                    "  {name:38} true q={:.3} c={:.6} | n={} mean={:.3} conf={:.3} cost={:.6} ts={:.4} gap_ub={:.3} static_failures={}",
                    q[i], c[i], m["samples"], m["quality_mean"].as_f64().unwrap_or(0.0),
                    m["confidence"].as_f64().unwrap_or(0.0), m["cost_per_request"].as_f64().unwrap_or(0.0),
                    m["exploration_probability"].as_f64().unwrap_or(0.0),
                    m["gap_upper_bound"].as_f64().unwrap_or(0.0), m["static_failures"]
                );
            }
        }
        let exploit = r["exploit"].as_str().unwrap_or_default();
        let e = self.index_of(exploit).unwrap_or(0);
        let confidence = r["models"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["model"] == exploit))
            .and_then(|m| m["confidence"].as_f64())
            .unwrap_or(0.0);
        Snap {
            exploit: e,
            confidence,
        }
    }

    fn route(
        &mut self,
        n: usize,
        session: u64,
        _sticky: Option<usize>,
        row: usize,
        _draw: f64,
        scored: Option<bool>,
    ) -> Routed {
        let body = json!({
            "model": format!("auto:{}", self.route),
            "messages": [{"role": "user", "content": self.prompts[row]}],
        });
        let sid = format!("s{session}");
        self.gw.stats.requests += 1;
        let mut headers = vec![("loopgate-session-id", sid.as_str())];
        if let Some(s) = scored {
            headers.push((
                "loopgate-feedback-expected",
                if s { "true" } else { "false" },
            ));
        }
        let (m, id) = match self
            .gw
            .call("POST", "/v1/chat/completions", Some(&body), &headers)
        {
            Some((200, v, holdback)) => {
                self.gw.stats.holdback += u64::from(holdback);
                let served = v["__served"]
                    .as_str()
                    .or_else(|| v["model"].as_str())
                    .unwrap_or_default();
                let m = match self.index_of(served) {
                    Some(m) => m,
                    None => {
                        if self.unknown_served < 3 {
                            eprintln!(
                                "routerbench-http: served model {served:?} is not in the route"
                            );
                        }
                        self.unknown_served += 1;
                        0
                    }
                };
                (m, v["id"].as_str().unwrap_or_default().to_string())
            }
            other => {
                if self.gw.stats.request_errors < 3 {
                    eprintln!(
                        "routerbench-http: request {n} failed: {:?}",
                        other.map(|(s, v, _)| (s, v))
                    );
                }
                self.gw.stats.request_errors += 1;
                (0, String::new())
            }
        };
        debug_assert_eq!(self.ids.len(), n);
        self.ids.push(id);
        // The gateway holds the session itself and credits its NPS; `session` and `held_session`
        // only feed the in-process NPS events, which this router does not build.
        Routed {
            served: m,
            session: m,
            held_session: true,
        }
    }

    fn deliver(&mut self, ev: &Fb) {
        let body =
            match ev {
                Fb::Judge { seq, value, .. } => self.ids.get(*seq).filter(|id| !id.is_empty()).map(
                    |id| json!({"id": id, "score": value, "scale": "unit", "signal": "judge"}),
                ),
                Fb::Nps { session, nps, .. } => {
                    Some(json!({"session_id": format!("s{session}"), "nps": nps}))
                }
            };
        match body {
            Some(b) => self.gw.post_feedback(b),
            None => self.gw.stats.feedback_skipped += 1,
        }
    }
}
