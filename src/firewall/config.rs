//! `[firewall]`: policies (rule packs plus custom rules, each rule with an action), and which
//! policy applies to a request (key, then project, then route, then the default).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the verdict only; the text passes unchanged (stored copies are still masked).
    #[serde(alias = "log")]
    Flag,
    /// Replace the matched text with `[REDACTED:<rule>]`.
    #[serde(alias = "mask")]
    Redact,
    /// Requests: answer 400 `content_filter`. Responses: cut the text before the match and
    /// finish the choice with `finish_reason: "content_filter"`.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Flag => "flag",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// The `[firewall]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// Policy for requests that no key, project or route names (none: no firewall).
    pub default_policy: Option<String>,
    /// Project id → policy name (`"none"` turns the firewall off for that project).
    pub projects: BTreeMap<String, String>,
    /// Streamed responses: bytes of text held back at the end of what was seen so far, so a
    /// match split across chunks is still caught before it is sent.
    pub stream_window_bytes: usize,
    /// Streamed responses: the most text held back while a match keeps growing (a private
    /// key block); beyond it the held text is checked and sent.
    pub stream_max_hold_bytes: usize,
    /// Named policies.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Custom rules (`pattern` regex or `keywords` list), referenced by policies' `rules`.
    pub rules: BTreeMap<String, RuleConfig>,
    /// Classifier models, referenced by policies' `classifier`.
    pub classifiers: BTreeMap<String, super::classifier::ClassifierConfig>,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            default_policy: None,
            projects: BTreeMap::new(),
            stream_window_bytes: 256,
            stream_max_hold_bytes: 16 * 1024,
            policies: BTreeMap::new(),
            rules: BTreeMap::new(),
            classifiers: BTreeMap::new(),
        }
    }
}

/// One policy: built-in packs and custom rules with their actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Built-in packs: `injection`, `pii`, `secrets`.
    pub packs: Vec<String>,
    /// Custom rule ids from `[firewall.rules]`.
    pub rules: Vec<String>,
    /// Action for every rule of the packs (default: each pack's own, see docs/firewall.md).
    pub action: Option<Action>,
    /// Per pack name or rule id (`pii`, `pii.email`, a custom id): overrides `action`.
    pub actions: BTreeMap<String, Action>,
    /// Built-in rule ids left out (e.g. `pii.phone`, `pii.uk_nino`).
    pub disable: Vec<String>,
    /// Check requests (the messages sent upstream).
    pub requests: bool,
    /// Check responses (JSON and streamed).
    pub responses: bool,
    /// A classifier from `[firewall.classifiers]` that reads each request the rules let
    /// through (requests only).
    pub classifier: Option<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            packs: Vec::new(),
            rules: Vec::new(),
            action: None,
            actions: BTreeMap::new(),
            disable: Vec::new(),
            requests: true,
            responses: true,
            classifier: None,
        }
    }
}

/// A custom rule: a regex or a list of keywords (blocked topics), with its action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A regular expression (`regex` crate syntax).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Whole words or phrases, matched case-insensitively (ASCII).
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default = "default_rule_action")]
    pub action: Action,
    #[serde(default)]
    pub description: Option<String>,
}

fn default_rule_action() -> Action {
    Action::Block
}
