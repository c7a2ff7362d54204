//! Loading the replay set (`benches/data/replay.jsonl.gz`) into compact rows.

use std::io::{BufRead, BufReader};
use std::path::Path;

use loopgate::feedback::context::{self, ContextKey};
use serde_json::{json, Value};

/// Model index 0 is the route's baseline, 1 the cheap candidate.
pub const MODELS: [&str; 2] = ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    Mmlu,
    Gsm8k,
    MtBench,
}

impl Dataset {
    pub const ALL: [Dataset; 3] = [Dataset::Mmlu, Dataset::Gsm8k, Dataset::MtBench];
    pub fn as_str(self) -> &'static str {
        match self {
            Dataset::Mmlu => "mmlu",
            Dataset::Gsm8k => "gsm8k",
            Dataset::MtBench => "mt_bench",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    fn parse(s: &str) -> Option<Dataset> {
        Dataset::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// One prompt (MT-Bench: one turn) with both models' recorded outcomes.
#[derive(Clone, Debug)]
pub struct Row {
    /// Source id and category: for the HTTP mode's mock upstream and for debugging.
    #[allow(dead_code)]
    pub id: String,
    pub dataset: Dataset,
    #[allow(dead_code)]
    pub category: String,
    /// MT-Bench conversation (both turns share it).
    pub session: Option<String>,
    pub turn: u8,
    /// Quality in [0, 1] per model (MMLU/GSM8K correctness, MT-Bench (score − 1)/9).
    pub quality: [f64; 2],
    pub cost: [f64; 2],
    /// The request as a client would send it (turn 2 carries turn 1 and a placeholder answer).
    pub messages: Vec<Value>,
    /// The prompt-context bucket computed from `messages`.
    pub key: ContextKey,
}

#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, LoadError> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .ok_or_else(|| LoadError(format!("missing field {}", path.join("."))))?;
    }
    Ok(cur)
}

fn num(v: &Value, path: &[&str]) -> Result<f64, LoadError> {
    field(v, path)?
        .as_f64()
        .ok_or_else(|| LoadError(format!("{} is not a number", path.join("."))))
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, LoadError> {
    field(v, path)?
        .as_str()
        .ok_or_else(|| LoadError(format!("{} is not a string", path.join("."))))
}

/// Load the uncontaminated rows (RouteLLM and `summary.json` exclude the contaminated ones).
pub fn load(path: &Path) -> Result<Vec<Row>, LoadError> {
    let f = std::fs::File::open(path)
        .map_err(|e| LoadError(format!("open {}: {e}", path.display())))?;
    let rd = BufReader::new(flate2::read::GzDecoder::new(f));
    let mut rows = Vec::with_capacity(16_000);
    for (n, line) in rd.lines().enumerate() {
        let line = line.map_err(|e| LoadError(format!("line {}: {e}", n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| LoadError(format!("line {}: {e}", n + 1)))?;
        if v.get("contaminated").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let ds = text(&v, &["dataset"])?;
        let dataset = Dataset::parse(ds).ok_or_else(|| LoadError(format!("dataset {ds}")))?;
        let mut quality = [0.0; 2];
        let mut cost = [0.0; 2];
        for (i, m) in MODELS.iter().enumerate() {
            quality[i] = num(&v, &["models", m, "quality"])?;
            cost[i] = num(&v, &["models", m, "cost_usd"])?;
        }
        let prompt = text(&v, &["prompt"])?;
        let turn = v.get("turn").and_then(Value::as_u64).unwrap_or(1) as u8;
        let messages = match v.get("prev_prompt").and_then(Value::as_str) {
            // The earlier answer differs per model and is not in the file; a neutral
            // placeholder keeps the shape of a real second turn (assistant text is not a feature).
            Some(prev) => vec![
                json!({"role": "user", "content": prev}),
                json!({"role": "assistant", "content": "(previous answer)"}),
                json!({"role": "user", "content": prompt}),
            ],
            None => vec![json!({"role": "user", "content": prompt})],
        };
        let key = context::context_key(&messages);
        rows.push(Row {
            id: text(&v, &["id"])?.to_string(),
            dataset,
            category: text(&v, &["category"])?.to_string(),
            session: v.get("session").and_then(Value::as_str).map(str::to_string),
            turn,
            quality,
            cost,
            messages,
            key,
        });
    }
    Ok(rows)
}
