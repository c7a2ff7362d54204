//! `[routes.<name>.prompt_routing]`: per-route prompt-routing settings.

use serde::{Deserialize, Serialize};

use super::index::{self, IndexParams};

/// `[routes.<name>.prompt_routing] mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    /// Route-level decisions only.
    #[default]
    Off,
    /// Nearest neighbours over in-process features.
    InProcess,
    /// Nearest neighbours over embeddings from a configured model (in-process fallback).
    Embeddings,
}

/// `[routes.<name>.prompt_routing.embeddings]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// Any embeddings model the gateway serves (`text-embedding-3-small`, `ollama/nomic-embed-text`).
    pub model: String,
    /// Bound on the embeddings call; past it the request uses in-process features.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    150
}

/// `[routes.<name>.prompt_routing]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptRoutingConfig {
    pub mode: PromptMode,
    pub embeddings: Option<EmbeddingsConfig>,
    /// Neighbours per model.
    pub k: usize,
    /// Labelled examples kept per route (oldest dropped first).
    pub capacity: usize,
    /// Pseudo-observations at the model's route-level mean behind every per-prompt estimate.
    pub prior_weight: f64,
    /// Probability of exploring a plausibly eligible candidate that has few labels.
    pub explore: f64,
    /// Labels per candidate after which it is no longer explored.
    pub explore_labels: u32,
    /// IVF clusters searched per query.
    pub nprobe: usize,
    /// The budgeted rule never sends a prompt to the partner when its predicted regression for
    /// that prompt exceeds this (the average budget is not spent on a few very bad answers).
    pub max_prompt_regression: f64,
}

impl Default for PromptRoutingConfig {
    fn default() -> Self {
        PromptRoutingConfig {
            mode: PromptMode::Off,
            embeddings: None,
            k: 8,
            capacity: 2048,
            prior_weight: 4.0,
            explore: 0.05,
            explore_labels: 100,
            nprobe: 4,
            max_prompt_regression: 0.3,
        }
    }
}

impl PromptRoutingConfig {
    /// Every field in range; `embeddings` mode names its model.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == PromptMode::Embeddings
            && self.embeddings.as_ref().is_none_or(|e| e.model.is_empty())
        {
            return Err("mode = \"embeddings\" needs embeddings.model".into());
        }
        if let Some(e) = &self.embeddings {
            if e.timeout_ms == 0 || e.timeout_ms > 10_000 {
                return Err(format!(
                    "embeddings.timeout_ms must be in 1..=10000, got {}",
                    e.timeout_ms
                ));
            }
        }
        if !(1..=index::MAX_K).contains(&self.k) {
            return Err(format!("k must be in 1..={}, got {}", index::MAX_K, self.k));
        }
        if !(16..=100_000).contains(&self.capacity) {
            return Err(format!(
                "capacity must be in 16..=100000, got {}",
                self.capacity
            ));
        }
        if !(self.prior_weight.is_finite() && self.prior_weight > 0.0) {
            return Err("prior_weight must be > 0".into());
        }
        if !(self.explore.is_finite() && (0.0..=0.5).contains(&self.explore)) {
            return Err(format!("explore must be in [0, 0.5], got {}", self.explore));
        }
        if !(self.max_prompt_regression.is_finite()
            && (0.0..=1.0).contains(&self.max_prompt_regression))
        {
            return Err(format!(
                "max_prompt_regression must be in [0, 1], got {}",
                self.max_prompt_regression
            ));
        }
        if !(1..=8).contains(&self.nprobe) {
            return Err(format!("nprobe must be in 1..=8, got {}", self.nprobe));
        }
        Ok(())
    }

    /// Index tunables with the route's quality limits.
    pub fn params(&self, max_regression: f64, min_confidence: f64) -> IndexParams {
        IndexParams {
            k: self.k,
            prior_weight: self.prior_weight,
            max_regression,
            min_confidence,
            explore: self.explore,
            explore_labels: self.explore_labels,
            nprobe: self.nprobe,
            max_prompt_regression: self.max_prompt_regression,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_validate() {
        let c: PromptRoutingConfig =
            toml::from_str("mode = \"embeddings\"\nembeddings = { model = \"text-embedding-3-small\", timeout_ms = 80 }\nk = 12\n")
                .unwrap();
        assert_eq!(c.mode, PromptMode::Embeddings);
        assert!(c.validate().is_ok());
        let c: PromptRoutingConfig = toml::from_str("mode = \"embeddings\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("embeddings.model"));
        let c: PromptRoutingConfig = toml::from_str("mode = \"in_process\"\nk = 99\n").unwrap();
        assert!(c.validate().unwrap_err().contains("k must be"));
        assert!(toml::from_str::<PromptRoutingConfig>("mode = \"fast\"\n").is_err());
        assert!(toml::from_str::<PromptRoutingConfig>("neighbours = 3\n").is_err());
        assert_eq!(PromptRoutingConfig::default().mode, PromptMode::Off);
    }
}
