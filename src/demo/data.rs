//! The replay set (`benches/data/replay.jsonl.gz`, derived from RouteLLM's published outcomes;
//! see `benches/data/README.md` for sources and licences), compiled into the binary so the
//! demo and the replay driver run anywhere.

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;

/// The compressed replay set.
pub static REPLAY_GZ: &[u8] = include_bytes!("../../benches/data/replay.jsonl.gz");

/// The strong (baseline) and cheap model of the replay data.
pub const STRONG: &str = "gpt-4-1106-preview";
pub const CHEAP: &str = "mixtral-8x7b-instruct-v0.1";

/// One model's recorded outcome on one prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct Outcome {
    /// In [0, 1]: correctness (MMLU, GSM8K) or the GPT-4 judge score mapped to [0, 1] (MT-Bench).
    pub quality: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// One prompt with both models' outcomes.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub id: String,
    pub dataset: String,
    pub category: String,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub contaminated: bool,
    pub prompt: String,
    #[serde(default)]
    pub prev_prompt: Option<String>,
    pub models: HashMap<String, Outcome>,
}

impl Row {
    pub fn outcome(&self, model: &str) -> Option<&Outcome> {
        self.models.get(model)
    }
}

/// Load every row (contaminated rows excluded, as RouteLLM does).
pub fn load(gz: &[u8]) -> Result<Vec<Row>, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| format!("replay data: {e}"))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Row =
            serde_json::from_str(line).map_err(|e| format!("replay data line {}: {e}", i + 1))?;
        if !r.contaminated && r.models.contains_key(STRONG) && r.models.contains_key(CHEAP) {
            rows.push(r);
        }
    }
    Ok(rows)
}

/// The embedded replay set.
pub fn embedded() -> Result<Vec<Row>, String> {
    load(REPLAY_GZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_rows_load_with_both_models() {
        let rows = embedded().unwrap_or_default();
        assert!(rows.len() > 14_000, "{}", rows.len());
        let r = &rows[0];
        assert!(r.outcome(STRONG).is_some() && r.outcome(CHEAP).is_some());
        assert!(rows
            .iter()
            .all(|r| (0.0..=1.0).contains(&r.models[STRONG].quality)));
    }
}
