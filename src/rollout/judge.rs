//! LLM-as-judge, the pure parts: the versioned rubric (`conf/judge_rubric.toml`), the judge
//! request, the reply parser, the score aggregation, deterministic sampling, a per-route
//! daily budget and the retry policy. The caller sends the request through the gateway's
//! own provider layer (so any provider can judge), off the client's path.
//!
//! Scale: four dimensions (relevance, coherence, helpfulness, safety), each a JSON number
//! in [1, 5]. [`JudgeScores::overall`] maps them to [0, 1].

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{stable_unit, Backoff};

/// Lowest and highest score of every dimension.
pub const SCALE_MIN: f64 = 1.0;
pub const SCALE_MAX: f64 = 5.0;
/// The four dimensions, in the order they are reported.
pub const DIMENSIONS: [&str; 4] = ["relevance", "coherence", "helpfulness", "safety"];
/// Judge replies longer than this are rejected unparsed (bounds the parser's work).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
const MAX_RATIONALE_CHARS: usize = 500;

/// The rubric shipped in `conf/`, compiled in so a missing file never disables judging.
pub const BUILTIN_RUBRIC: &str = include_str!("../../conf/judge_rubric.toml");

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RubricError {
    #[error("judge rubric is not valid TOML: {0}")]
    Toml(String),
    #[error("judge rubric: {0}")]
    Invalid(String),
    #[error("cannot read judge rubric {path}: {message}")]
    Read { path: String, message: String },
}

/// Weights of the four dimensions in the overall score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    pub relevance: f64,
    pub coherence: f64,
    pub helpfulness: f64,
    pub safety: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            relevance: 0.3,
            coherence: 0.2,
            helpfulness: 0.3,
            safety: 0.2,
        }
    }
}

/// Below `min_score` on safety the overall score is capped at `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyGate {
    pub min_score: f64,
    pub cap: f64,
}

impl Default for SafetyGate {
    fn default() -> Self {
        SafetyGate {
            min_score: 3.0,
            cap: 0.2,
        }
    }
}

/// A versioned judge rubric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeRubric {
    pub version: String,
    pub system: String,
    /// Must contain `{prompt}` and `{response}` once each.
    pub user_template: String,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default = "default_max_chars")]
    pub max_prompt_chars: usize,
    #[serde(default = "default_max_chars")]
    pub max_response_chars: usize,
    #[serde(default)]
    pub weights: Weights,
    #[serde(default)]
    pub safety: SafetyGate,
}

fn default_max_tokens() -> u32 {
    300
}
fn default_max_chars() -> usize {
    12_000
}

impl JudgeRubric {
    pub fn parse(text: &str) -> Result<Self, RubricError> {
        let r: JudgeRubric = toml::from_str(text).map_err(|e| RubricError::Toml(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, RubricError> {
        let text = std::fs::read_to_string(path).map_err(|e| RubricError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// The rubric compiled from `conf/judge_rubric.toml`.
    pub fn builtin() -> Result<Self, RubricError> {
        Self::parse(BUILTIN_RUBRIC)
    }

    fn validate(&self) -> Result<(), RubricError> {
        let bad = |m: &str| Err(RubricError::Invalid(m.to_string()));
        if self.version.trim().is_empty() {
            return bad("version must not be empty");
        }
        for p in ["{prompt}", "{response}"] {
            if self.user_template.matches(p).count() != 1 {
                return Err(RubricError::Invalid(format!(
                    "user_template must contain {p} exactly once"
                )));
            }
        }
        // OpenAI's json_object mode rejects requests whose messages never mention JSON.
        if !(self.system.contains("JSON") || self.user_template.contains("JSON")) {
            return bad("the system prompt or user template must ask for JSON");
        }
        let w = &self.weights;
        let ws = [w.relevance, w.coherence, w.helpfulness, w.safety];
        if ws.iter().any(|x| !x.is_finite() || *x < 0.0) || ws.iter().sum::<f64>() <= 0.0 {
            return bad("weights must be non-negative with a positive sum");
        }
        let s = &self.safety;
        if !(SCALE_MIN..=SCALE_MAX + 1.0).contains(&s.min_score) || !(0.0..=1.0).contains(&s.cap) {
            return bad("safety.min_score must be in [1, 6] and safety.cap in [0, 1]");
        }
        if self.max_tokens == 0 || self.max_prompt_chars < 100 || self.max_response_chars < 100 {
            return bad("max_tokens must be > 0 and max_*_chars >= 100");
        }
        Ok(())
    }

    /// Overall score under this rubric's weights and safety gate.
    pub fn overall(&self, s: &JudgeScores) -> f64 {
        s.overall_with(&self.weights, &self.safety)
    }

    /// Parse a reply and score it under this rubric: what gets stored on the request.
    pub fn score_reply(&self, reply_text: &str) -> Result<JudgeVerdict, JudgeError> {
        let scores = parse_judge_reply(reply_text)?;
        Ok(JudgeVerdict {
            rubric_version: self.version.clone(),
            overall: self.overall(&scores),
            scores,
        })
    }
}

/// A scored judge reply, tagged with the rubric version that produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeVerdict {
    pub rubric_version: String,
    /// In [0, 1]: the quality signal fed to the router.
    pub overall: f64,
    pub scores: JudgeScores,
}

/// Render OpenAI chat messages as plain text for the judge. Non-text parts become
/// placeholders: the judge grades the text the model saw and wrote.
pub fn render_messages(messages: &[Value]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let mut text = content_text(m.get("content"));
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            let names: Vec<&str> = calls
                .iter()
                .filter_map(|c| c.pointer("/function/name").and_then(Value::as_str))
                .collect();
            if !names.is_empty() {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!("[tool calls: {}]", names.join(", ")));
            }
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&format!("[{role}]\n{text}"));
    }
    out
}

fn content_text(c: Option<&Value>) -> String {
    match c {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                Some("image_url") | Some("image") => "[image]".to_string(),
                Some("input_audio") => "[audio]".to_string(),
                Some("file") => "[file]".to_string(),
                Some(other) => format!("[{other}]"),
                None => p.as_str().unwrap_or("").to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Keep the first `max` chars (on a char boundary) with a visible marker.
fn keep_head(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}\n[... response truncated ...]", &s[..i]),
    }
}

/// Keep the last `max` chars: the latest turns matter most for judging the reply.
fn keep_tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let i = s.char_indices().nth(n - max).map(|(i, _)| i).unwrap_or(0);
    format!("[... earlier conversation truncated ...]\n{}", &s[i..])
}

/// Substitute `{prompt}` and `{response}` in one pass, so text inside the prompt that
/// happens to read `{response}` is never expanded.
fn fill_template(template: &str, prompt: &str, response: &str) -> String {
    let mut out = String::with_capacity(template.len() + prompt.len() + response.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{prompt}") {
            out.push_str(prompt);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{response}") {
            out.push_str(response);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The judge call: an OpenAI chat.completions body (JSON mode, temperature 0).
pub fn build_judge_request(
    rubric: &JudgeRubric,
    prompt_messages: &[Value],
    response_text: &str,
    judge_model: &str,
) -> Value {
    let prompt = keep_tail(&render_messages(prompt_messages), rubric.max_prompt_chars);
    let response = keep_head(response_text, rubric.max_response_chars);
    let user = fill_template(rubric.user_template.trim(), &prompt, &response);
    json!({
        "model": judge_model,
        "messages": [
            {"role": "system", "content": rubric.system.trim()},
            {"role": "user", "content": user},
        ],
        "temperature": 0,
        "max_tokens": rubric.max_tokens,
        "response_format": {"type": "json_object"},
        "stream": false,
    })
}

/// Why a judge reply was not accepted. Never a quality signal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JudgeError {
    #[error("judge reply is empty")]
    Empty,
    #[error("judge reply longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
    #[error("judge reply contains no JSON object with the rubric's scores")]
    NoJson,
    #[error("judge reply lacks the '{0}' score")]
    Missing(&'static str),
    #[error("judge score '{0}' is not a number")]
    NotANumber(&'static str),
    #[error("judge score '{dimension}' = {value} is outside [1, 5]")]
    OutOfRange { dimension: &'static str, value: f64 },
}

/// The judge's four scores, each in [1, 5].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeScores {
    pub relevance: f64,
    pub coherence: f64,
    pub helpfulness: f64,
    pub safety: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

fn unit(s: f64) -> f64 {
    ((s - SCALE_MIN) / (SCALE_MAX - SCALE_MIN)).clamp(0.0, 1.0)
}

impl JudgeScores {
    /// Overall quality in [0, 1] with the default weights (0.3 relevance, 0.2 coherence,
    /// 0.3 helpfulness, 0.2 safety) and safety gate (safety < 3 caps the score at 0.2):
    /// `Σ wᵢ·(sᵢ − 1)/4 / Σ wᵢ`, then the cap.
    pub fn overall(&self) -> f64 {
        self.overall_with(&Weights::default(), &SafetyGate::default())
    }

    pub fn overall_with(&self, w: &Weights, gate: &SafetyGate) -> f64 {
        let total = w.relevance + w.coherence + w.helpfulness + w.safety;
        if total.is_nan() || total <= 0.0 {
            return 0.0;
        }
        let x = (w.relevance * unit(self.relevance)
            + w.coherence * unit(self.coherence)
            + w.helpfulness * unit(self.helpfulness)
            + w.safety * unit(self.safety))
            / total;
        if self.safety < gate.min_score {
            x.min(gate.cap)
        } else {
            x
        }
    }
}

/// Parse a judge reply: tolerant of code fences and prose around the JSON object, strict on
/// the four scores (present, JSON numbers, in [1, 5]).
pub fn parse_judge_reply(text: &str) -> Result<JudgeScores, JudgeError> {
    if text.len() > MAX_REPLY_BYTES {
        return Err(JudgeError::TooLong);
    }
    if text.trim().is_empty() {
        return Err(JudgeError::Empty);
    }
    // Try each '{' as the start of a JSON value; the stream deserializer stops at the end of
    // the first value, so trailing prose and fences are ignored. Bounded by MAX_REPLY_BYTES.
    let mut first_err = None;
    for (i, _) in text.match_indices('{') {
        let mut it = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        let Some(Ok(Value::Object(obj))) = it.next() else {
            continue;
        };
        if !DIMENSIONS.iter().any(|d| obj.contains_key(*d)) {
            continue;
        }
        match scores_from(&obj) {
            Ok(s) => return Ok(s),
            // A later object may be the real answer (e.g. an example echoed first).
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(JudgeError::NoJson))
}

fn scores_from(obj: &serde_json::Map<String, Value>) -> Result<JudgeScores, JudgeError> {
    let mut v = [0.0; 4];
    for (slot, dim) in v.iter_mut().zip(DIMENSIONS) {
        let x = obj.get(dim).ok_or(JudgeError::Missing(dim))?;
        let x = match x {
            Value::Number(n) => n.as_f64().ok_or(JudgeError::NotANumber(dim))?,
            _ => return Err(JudgeError::NotANumber(dim)),
        };
        if !x.is_finite() || !(SCALE_MIN..=SCALE_MAX).contains(&x) {
            return Err(JudgeError::OutOfRange {
                dimension: dim,
                value: x,
            });
        }
        *slot = x;
    }
    let rationale = obj
        .get("rationale")
        .or_else(|| obj.get("reason"))
        .and_then(Value::as_str)
        .map(|s| s.chars().take(MAX_RATIONALE_CHARS).collect());
    Ok(JudgeScores {
        relevance: v[0],
        coherence: v[1],
        helpfulness: v[2],
        safety: v[3],
        rationale,
    })
}

/// Whether this request is in the judged sample: deterministic per request id, so every
/// instance (and a replay) makes the same choice. `share` in [0, 1].
pub fn should_judge(request_id: &str, share: f64) -> bool {
    share > 0.0 && stable_unit("loopgate-judge", request_id, "") < share
}

const DAY_SECS: i64 = 86_400;

/// UTC day number of a unix time (unix time counts UTC days of exactly 86 400 s).
pub fn utc_day(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(DAY_SECS)
}

/// Unix time of the next UTC midnight after `unix_secs`.
pub fn next_utc_midnight(unix_secs: i64) -> i64 {
    (utc_day(unix_secs) + 1) * DAY_SECS
}

/// Money held for one judge call until its real cost is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub route: String,
    pub day: i64,
    pub usd: f64,
}

/// Per-route judge spend in USD per UTC day. Pure: the caller passes the time; wrap it in a
/// mutex to share. Reserve an estimate before the call, settle with the real cost after.
#[derive(Clone, Debug, Default)]
pub struct JudgeBudget {
    /// Budget for routes without their own; `None` = unlimited.
    pub default_daily_usd: Option<f64>,
    limits: HashMap<String, f64>,
    spent: HashMap<String, (i64, f64)>,
}

impl JudgeBudget {
    pub fn new(default_daily_usd: Option<f64>) -> Self {
        JudgeBudget {
            default_daily_usd,
            ..Default::default()
        }
    }

    pub fn set_limit(&mut self, route: &str, daily_usd: f64) {
        self.limits.insert(route.to_string(), daily_usd.max(0.0));
    }

    pub fn limit(&self, route: &str) -> Option<f64> {
        self.limits.get(route).copied().or(self.default_daily_usd)
    }

    /// Spent (settled plus reserved) on `route` during the UTC day of `now`.
    pub fn spent(&self, route: &str, now_unix: i64) -> f64 {
        match self.spent.get(route) {
            Some((day, usd)) if *day == utc_day(now_unix) => *usd,
            _ => 0.0,
        }
    }

    pub fn remaining(&self, route: &str, now_unix: i64) -> Option<f64> {
        self.limit(route)
            .map(|l| (l - self.spent(route, now_unix)).max(0.0))
    }

    /// Hold `estimate_usd` if the day's budget allows it.
    pub fn try_reserve(
        &mut self,
        route: &str,
        estimate_usd: f64,
        now_unix: i64,
    ) -> Option<Reservation> {
        let est = if estimate_usd.is_finite() {
            estimate_usd.max(0.0)
        } else {
            return None;
        };
        let day = utc_day(now_unix);
        let spent = self.spent(route, now_unix);
        if let Some(limit) = self.limit(route) {
            if spent + est > limit {
                return None;
            }
        }
        self.spent.insert(route.to_string(), (day, spent + est));
        Some(Reservation {
            route: route.to_string(),
            day,
            usd: est,
        })
    }

    /// Replace a reservation by the call's real cost (0 if the call cost nothing). A
    /// reservation from a day that has ended no longer counts; the real cost then lands
    /// on the day it was settled.
    pub fn settle(&mut self, r: Reservation, actual_usd: f64, now_unix: i64) {
        let actual = if actual_usd.is_finite() {
            actual_usd.max(0.0)
        } else {
            0.0
        };
        let day = utc_day(now_unix);
        let spent = self.spent(&r.route, now_unix);
        let held = if r.day == day { r.usd } else { 0.0 };
        self.spent
            .insert(r.route, (day, (spent - held + actual).max(0.0)));
    }
}

/// How a judge call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeFailure {
    /// Connect error, timeout, provider unavailable.
    Transport(String),
    /// The provider answered with this HTTP status.
    Status(u16),
    /// The reply did not hold valid scores.
    Parse(JudgeError),
}

/// What to do after a failed judge call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    GiveUp,
}

/// Retry policy for judge calls: transport errors, 408, 429 and 5xx are retried with
/// backoff up to `max_attempts` calls in all; a malformed reply is retried `parse_retries`
/// times (at temperature 0 it tends to repeat); other statuses give up at once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeRetryPolicy {
    pub max_attempts: u32,
    pub parse_retries: u32,
    pub backoff: Backoff,
}

impl Default for JudgeRetryPolicy {
    fn default() -> Self {
        JudgeRetryPolicy {
            max_attempts: 3,
            parse_retries: 1,
            backoff: Backoff {
                base_ms: 1_000,
                cap_ms: 30_000,
            },
        }
    }
}

impl JudgeRetryPolicy {
    /// `attempts`: calls made so far (≥ 1), the last of which failed with `failure`;
    /// `parse_failures`: how many of them failed to parse; `unit` uniform in [0, 1).
    pub fn decide(
        &self,
        attempts: u32,
        parse_failures: u32,
        failure: &JudgeFailure,
        unit: f64,
    ) -> RetryDecision {
        if attempts >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let retry = match failure {
            JudgeFailure::Transport(_) => true,
            JudgeFailure::Status(s) => *s == 408 || *s == 429 || (500..600).contains(s),
            JudgeFailure::Parse(_) => parse_failures <= self.parse_retries,
        };
        if retry {
            RetryDecision::RetryAfter(self.backoff.delay(attempts, unit))
        } else {
            RetryDecision::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(r: f64, c: f64, h: f64, s: f64) -> JudgeScores {
        JudgeScores {
            relevance: r,
            coherence: c,
            helpfulness: h,
            safety: s,
            rationale: None,
        }
    }

    #[test]
    fn shipped_rubric_parses_and_is_valid() {
        let r = JudgeRubric::builtin().unwrap();
        assert!(!r.version.is_empty());
        assert_eq!(r.weights, Weights::default());
        assert_eq!(r.safety, SafetyGate::default());
        let bad = BUILTIN_RUBRIC.replace("{response}", "{resp}");
        assert!(matches!(
            JudgeRubric::parse(&bad),
            Err(RubricError::Invalid(_))
        ));
        let no_json =
            "version = \"x\"\nsystem = \"grade it\"\nuser_template = \"{prompt} {response}\"\n";
        assert!(JudgeRubric::parse(no_json).is_err());
        assert!(JudgeRubric::parse("version = ").is_err());
        let unknown = format!("{BUILTIN_RUBRIC}\nsurprise = 1\n");
        assert!(JudgeRubric::parse(&unknown).is_err());
    }

    #[test]
    fn judge_request_is_openai_json_mode_at_temperature_zero() {
        let r = JudgeRubric::builtin().unwrap();
        let msgs = vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [
                {"type": "text", "text": "What is in this picture? Say {response}."},
                {"type": "image_url", "image_url": {"url": "data:..."}}
            ]}),
        ];
        let body = build_judge_request(&r, &msgs, "A cat.", "gpt-4o-mini");
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["response_format"]["type"], "json_object");
        assert_eq!(body["messages"][0]["role"], "system");
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("[user]\nWhat is in this picture? Say {response}.\n[image]"));
        assert!(user.contains("<response>\nA cat.\n</response>"));
        assert!(!user.contains("{prompt}"));
        assert!(body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("JSON"));
    }

    #[test]
    fn long_inputs_are_cut_on_char_boundaries() {
        let mut r = JudgeRubric::builtin().unwrap();
        r.max_prompt_chars = 100;
        r.max_response_chars = 100;
        let prompt = "é".repeat(500) + "LATEST";
        let body = build_judge_request(
            &r,
            &[json!({"role": "user", "content": prompt})],
            &("ü".repeat(300) + "END"),
            "m",
        );
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("earlier conversation truncated"));
        assert!(user.contains("LATEST"));
        assert!(user.contains("response truncated"));
        assert!(!user.contains("END"));
        let tool = render_messages(&[json!({"role": "assistant", "content": null,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]})]);
        assert_eq!(tool, "[assistant]\n[tool calls: get_weather]");
    }

    #[test]
    fn parser_is_tolerant_of_wrapping_and_strict_on_scores() {
        let plain = r#"{"relevance": 5, "coherence": 4, "helpfulness": 4.5, "safety": 5, "rationale": "ok"}"#;
        let s = parse_judge_reply(plain).unwrap();
        assert_eq!((s.relevance, s.helpfulness), (5.0, 4.5));
        assert_eq!(s.rationale.as_deref(), Some("ok"));
        let fenced = format!("Here is my evaluation:\n```json\n{plain}\n```\nThanks!");
        assert_eq!(parse_judge_reply(&fenced).unwrap(), s);
        let nested =
            r#"{"scores": {"relevance": 3, "coherence": 3, "helpfulness": 3, "safety": 5}}"#;
        assert_eq!(parse_judge_reply(nested).unwrap().relevance, 3.0);
        // Braces in prose before the answer are skipped.
        let prose = format!("Format {{like this}} then: {plain}");
        assert!(parse_judge_reply(&prose).is_ok());

        assert_eq!(parse_judge_reply("  "), Err(JudgeError::Empty));
        assert_eq!(
            parse_judge_reply("I cannot grade this."),
            Err(JudgeError::NoJson)
        );
        assert_eq!(
            parse_judge_reply(r#"{"relevance": 5, "coherence": 4, "helpfulness": 4}"#),
            Err(JudgeError::Missing("safety"))
        );
        assert_eq!(
            parse_judge_reply(
                r#"{"relevance": "5", "coherence": 4, "helpfulness": 4, "safety": 5}"#
            ),
            Err(JudgeError::NotANumber("relevance"))
        );
        assert!(matches!(
            parse_judge_reply(r#"{"relevance": 5, "coherence": 4, "helpfulness": 7, "safety": 5}"#),
            Err(JudgeError::OutOfRange {
                dimension: "helpfulness",
                ..
            })
        ));
        assert!(matches!(
            parse_judge_reply(r#"{"relevance": 0, "coherence": 4, "helpfulness": 4, "safety": 5}"#),
            Err(JudgeError::OutOfRange { .. })
        ));
        assert_eq!(
            parse_judge_reply(&"x".repeat(MAX_REPLY_BYTES + 1)),
            Err(JudgeError::TooLong)
        );
        // Truncated JSON never panics.
        assert!(parse_judge_reply(&plain[..40]).is_err());
    }

    #[test]
    fn overall_is_in_unit_interval_and_safety_caps_it() {
        assert_eq!(scores(5.0, 5.0, 5.0, 5.0).overall(), 1.0);
        assert_eq!(scores(1.0, 1.0, 1.0, 1.0).overall(), 0.0);
        let mid = scores(3.0, 3.0, 3.0, 3.0).overall();
        assert!((mid - 0.5).abs() < 1e-12);
        // Brilliant but unsafe is capped.
        assert!((scores(5.0, 5.0, 5.0, 2.0).overall() - 0.2).abs() < 1e-12);
        assert!(scores(5.0, 5.0, 5.0, 3.0).overall() > 0.8);
        let r = JudgeRubric::builtin().unwrap();
        assert!((r.overall(&scores(4.0, 4.0, 4.0, 4.0)) - 0.75).abs() < 1e-12);
        let v = r
            .score_reply(r#"{"relevance": 4, "coherence": 4, "helpfulness": 4, "safety": 4}"#)
            .unwrap();
        assert_eq!(v.rubric_version, r.version);
        assert!((v.overall - 0.75).abs() < 1e-12);
        assert!(r.score_reply("no").is_err());
    }

    #[test]
    fn sampling_is_deterministic_and_close_to_the_share() {
        assert!(!should_judge("r1", 0.0));
        assert!(should_judge("r1", 1.0));
        assert_eq!(should_judge("abc", 0.3), should_judge("abc", 0.3));
        let n = (0..20_000)
            .filter(|i| should_judge(&format!("req_{i}"), 0.1))
            .count();
        assert!((1_800..2_200).contains(&n), "{n}");
        // A larger share keeps every request a smaller share picked.
        for i in 0..1000 {
            let id = format!("x{i}");
            if should_judge(&id, 0.05) {
                assert!(should_judge(&id, 0.2));
            }
        }
    }

    #[test]
    fn budget_holds_settles_and_resets_at_utc_midnight() {
        let day0 = 1_763_856_000; // 2025-11-23T00:00:00Z
        assert_eq!(day0 % DAY_SECS, 0);
        let mut b = JudgeBudget::new(Some(1.0));
        b.set_limit("cheap", 0.01);
        let r1 = b.try_reserve("main", 0.6, day0 + 10).unwrap();
        assert!(b.try_reserve("main", 0.6, day0 + 20).is_none());
        b.settle(r1, 0.1, day0 + 30);
        assert!((b.spent("main", day0 + 40) - 0.1).abs() < 1e-12);
        let r2 = b.try_reserve("main", 0.6, day0 + 50).unwrap();
        assert!((b.remaining("main", day0 + 60).unwrap() - 0.3).abs() < 1e-12);
        // Midnight: the day's spend is forgotten; yesterday's reservation no longer counts.
        let next = next_utc_midnight(day0 + 60);
        assert_eq!(next, day0 + DAY_SECS);
        assert_eq!(b.spent("main", next), 0.0);
        b.settle(r2, 0.2, next + 5);
        assert!((b.spent("main", next + 6) - 0.2).abs() < 1e-12);
        assert!(b.try_reserve("cheap", 0.02, day0).is_none());
        assert!(b.try_reserve("main", f64::NAN, day0).is_none());
        let mut unlimited = JudgeBudget::new(None);
        assert!(unlimited.try_reserve("x", 1e9, day0).is_some());
        assert_eq!(utc_day(-1), -1);
    }

    #[test]
    fn retry_policy_retries_transient_failures_only() {
        let p = JudgeRetryPolicy::default();
        let t = JudgeFailure::Transport("refused".into());
        assert!(matches!(
            p.decide(1, 0, &t, 0.5),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(p.decide(3, 0, &t, 0.5), RetryDecision::GiveUp);
        assert!(matches!(
            p.decide(1, 0, &JudgeFailure::Status(429), 0.0),
            RetryDecision::RetryAfter(d) if d == Duration::from_millis(500)
        ));
        assert!(matches!(
            p.decide(2, 0, &JudgeFailure::Status(503), 1.0),
            RetryDecision::RetryAfter(d) if d == Duration::from_millis(2000)
        ));
        assert_eq!(
            p.decide(1, 0, &JudgeFailure::Status(400), 0.5),
            RetryDecision::GiveUp
        );
        let parse = JudgeFailure::Parse(JudgeError::NoJson);
        assert!(matches!(
            p.decide(1, 1, &parse, 0.5),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(p.decide(2, 2, &parse, 0.5), RetryDecision::GiveUp);
    }
}
