//! Day-0 benchmark priors: what the router believes about a model before any feedback exists.
//!
//! `conf/priors.toml` (compiled in; a deployment may point `routing_priors` at its own file)
//! records published benchmark numbers per model, each with its source. This module turns them
//! into one prior quality in [0, 1] and a strength `n0` (pseudo-observations) per task category,
//! and finds the entry for a model name as a provider spells it (`together/...`, Bedrock ids,
//! Fireworks resource names, ...). See `conf/PRIORS.md` for the rules and the sources.
//!
//! Everything is computed at load time; [`Priors::lookup`] is a hash probe plus, failing that, a
//! scan of the glob patterns (a few hundred): cheap enough per routing snapshot.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// The committed priors file, compiled into the binary.
pub const EMBEDDED_PRIORS: &str = include_str!("../../conf/priors.toml");

/// Task categories a prior can be specific to. `General` is the fallback for everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    General,
    Math,
    Coding,
    Knowledge,
    Chat,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::General,
        Category::Math,
        Category::Coding,
        Category::Knowledge,
        Category::Chat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::General => "general",
            Category::Math => "math",
            Category::Coding => "coding",
            Category::Knowledge => "knowledge",
            Category::Chat => "chat",
        }
    }

    /// Parse a category name (case-insensitive); `None` for anything unknown.
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a published number is turned into a quality in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Accuracy / pass rate / win rate in percent (0..=100): divided by 100.
    Percent,
    /// Already a fraction in [0, 1]: used as is.
    Fraction,
    /// MT-Bench score (0..=10): divided by 10.
    MtBench,
    /// Arena (Bradley-Terry) Elo: expected win probability against `reference_elo`,
    /// `1 / (1 + 10^((reference_elo - elo) / 400))`.
    Elo,
}

/// The benchmarks the file may cite, each mapped to exactly one category.
/// Adding a benchmark is a code change on purpose: the mapping is part of the published rules.
pub fn benchmark_category(benchmark: &str) -> Option<Category> {
    let c = match benchmark {
        "mmlu" | "mmlu_pro" | "mmlu_redux" | "mmmlu" | "gpqa_diamond" => Category::Knowledge,
        "math" | "math_500" | "gsm8k" | "mgsm" | "aime_2024" | "aime_2025" => Category::Math,
        "humaneval" | "humaneval_mul" | "mbpp" | "livecodebench" | "swe_bench_verified" => {
            Category::Coding
        }
        "arena_hard" | "mt_bench" | "arena_elo" | "alpaca_eval_lc" => Category::Chat,
        _ => return None,
    };
    Some(c)
}

/// Normalise one published number to a quality in [0, 1] (see [`Unit`]).
pub fn normalise(value: f64, unit: Unit, reference_elo: Option<f64>) -> Result<f64, String> {
    if !value.is_finite() {
        return Err(format!("value {value} is not a finite number"));
    }
    let in_range = |lo: f64, hi: f64| -> Result<(), String> {
        if (lo..=hi).contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "value {value} out of range {lo}..={hi} for this unit"
            ))
        }
    };
    match unit {
        Unit::Percent => in_range(0.0, 100.0).map(|_| value / 100.0),
        Unit::Fraction => in_range(0.0, 1.0).map(|_| value),
        Unit::MtBench => in_range(0.0, 10.0).map(|_| value / 10.0),
        Unit::Elo => {
            in_range(0.0, 4000.0)?;
            let r = reference_elo.ok_or("unit `elo` needs `reference_elo`")?;
            if !r.is_finite() || !(0.0..=4000.0).contains(&r) {
                return Err(format!("reference_elo {r} out of range 0..=4000"));
            }
            Ok(1.0 / (1.0 + 10f64.powf((r - value) / 400.0)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File format (serde); unknown keys are rejected so typos do not silently drop data.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    schema: u32,
    /// When the numbers were collected (YYYY-MM-DD).
    retrieved: String,
    #[serde(default)]
    strength: Option<FileStrength>,
    #[serde(default, rename = "model")]
    models: Vec<FileModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStrength {
    per_source: f64,
    max: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    /// Fixed strength for every category of this model (overrides the per-source rule).
    #[serde(default)]
    n0: Option<f64>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    bench: Vec<FileBench>,
    #[serde(default)]
    score: Vec<FileScore>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBench {
    benchmark: String,
    value: f64,
    unit: Unit,
    source: String,
    /// When the number was published (YYYY-MM or YYYY-MM-DD).
    published: String,
    #[serde(default)]
    setting: Option<String>,
    /// Where the number was read when that is not the primary source itself.
    #[serde(default)]
    via: Option<String>,
    #[serde(default)]
    reference_elo: Option<f64>,
    #[serde(default)]
    reference_model: Option<String>,
}

/// A directly given prior (e.g. a deployment's own evaluation), replacing the derived one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScore {
    category: String,
    score: f64,
    n0: f64,
    source: String,
    published: String,
}

// ---------------------------------------------------------------------------------------------

/// Errors loading a priors file. Messages name the model and key at fault.
#[derive(Debug, thiserror::Error)]
pub enum PriorsError {
    #[error("priors file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, wrong type, missing or unknown key (the message names the key).
    #[error("priors file: {0}")]
    Parse(String),
    #[error("priors file: model `{model}`: {key}: {reason}")]
    Invalid {
        model: String,
        key: String,
        reason: String,
    },
}

fn invalid(model: &str, key: impl Into<String>, reason: impl Into<String>) -> PriorsError {
    PriorsError::Invalid {
        model: model.to_string(),
        key: key.into(),
        reason: reason.into(),
    }
}

/// How a model name found its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    Name,
    Alias,
    Pattern,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Name => "name",
            MatchKind::Alias => "alias",
            MatchKind::Pattern => "pattern",
        }
    }
}

/// The prior for one (model, category): what [`Priors::lookup`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorEntry {
    /// Canonical model name of the entry in the file.
    pub model: String,
    /// The name, alias or glob pattern that matched.
    pub matched: String,
    pub match_kind: MatchKind,
    /// The part of the looked-up name that matched, after stripping `provider/` prefixes.
    pub matched_input: String,
    /// The category the score is for (the requested one, or `general` as fallback).
    pub category: Category,
    /// Prior quality in [0, 1].
    pub score: f64,
    /// Prior strength in pseudo-observations (capped again by `PosteriorConfig::max_prior_strength`).
    pub n0: f64,
    /// Source URLs of every number behind the score.
    pub sources: Vec<String>,
    /// The numbers behind the score, e.g. `mmlu 88.7 percent (0-shot CoT)`, for traces.
    pub evidence: Vec<String>,
    /// The file's caveat for this model, if any.
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
struct CatPrior {
    score: f64,
    n0: f64,
    sources: Vec<String>,
    evidence: Vec<String>,
}

#[derive(Clone, Debug)]
struct ModelPrior {
    name: String,
    note: Option<String>,
    cats: HashMap<Category, CatPrior>,
}

#[derive(Clone, Debug)]
struct Pattern {
    glob: String,
    /// Literal (non-wildcard) characters: more is more specific.
    specificity: usize,
    model: usize,
}

/// Loaded, validated priors with their name index.
#[derive(Clone, Debug)]
pub struct Priors {
    retrieved: String,
    models: Vec<ModelPrior>,
    names: HashMap<String, usize>,
    aliases: HashMap<String, usize>,
    /// Most specific first; ties keep file order.
    patterns: Vec<Pattern>,
}

const DEFAULT_PER_SOURCE: f64 = 6.0;
const DEFAULT_MAX: f64 = 16.0;

impl Priors {
    /// The committed `conf/priors.toml`.
    pub fn embedded() -> Result<Priors, PriorsError> {
        Priors::from_toml(EMBEDDED_PRIORS)
    }

    /// Load a deployment's own priors file (`routing_priors = "path"`).
    pub fn load(path: &Path) -> Result<Priors, PriorsError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriorsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Priors::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Priors, PriorsError> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| PriorsError::Parse(e.to_string()))?;
        if doc.schema != 1 {
            return Err(PriorsError::Parse(format!(
                "schema: unsupported version {} (expected 1)",
                doc.schema
            )));
        }
        if !valid_date(&doc.retrieved) {
            return Err(PriorsError::Parse(format!(
                "retrieved: `{}` is not a YYYY-MM-DD date",
                doc.retrieved
            )));
        }
        let (per_source, max) = match &doc.strength {
            Some(s) => (s.per_source, s.max),
            None => (DEFAULT_PER_SOURCE, DEFAULT_MAX),
        };
        for (k, v) in [("strength.per_source", per_source), ("strength.max", max)] {
            if !v.is_finite() || v < 0.0 {
                return Err(PriorsError::Parse(format!("{k}: must be >= 0, got {v}")));
            }
        }

        let mut priors = Priors {
            retrieved: doc.retrieved.clone(),
            models: Vec::with_capacity(doc.models.len()),
            names: HashMap::new(),
            aliases: HashMap::new(),
            patterns: Vec::new(),
        };
        // Every name, alias and pattern must point at exactly one model.
        let mut seen: HashMap<String, String> = HashMap::new();
        for (idx, m) in doc.models.iter().enumerate() {
            let prior = build_model(m, per_source, max)?;
            let mut claim = |key: &str, what: &str| -> Result<String, PriorsError> {
                let k = key.trim().to_ascii_lowercase();
                if k.is_empty() {
                    return Err(invalid(&m.name, what, "empty string"));
                }
                if let Some(other) = seen.insert(k.clone(), m.name.clone()) {
                    return Err(invalid(
                        &m.name,
                        what,
                        format!("`{key}` is already used by model `{other}`"),
                    ));
                }
                Ok(k)
            };
            let n = claim(&m.name, "name")?;
            priors.names.insert(n, idx);
            for a in &m.aliases {
                let k = claim(a, "aliases")?;
                priors.aliases.insert(k, idx);
            }
            for p in &m.patterns {
                let glob = claim(p, "patterns")?;
                if !glob.contains(['*', '?']) {
                    return Err(invalid(
                        &m.name,
                        "patterns",
                        format!("`{p}` has no wildcard: list it under `aliases`"),
                    ));
                }
                let specificity = glob.chars().filter(|c| *c != '*' && *c != '?').count();
                priors.patterns.push(Pattern {
                    glob,
                    specificity,
                    model: idx,
                });
            }
            priors.models.push(prior);
        }
        // Stable sort: equal specificity keeps file order.
        priors
            .patterns
            .sort_by_key(|p| std::cmp::Reverse(p.specificity));
        Ok(priors)
    }

    /// The date the committed numbers were collected.
    pub fn retrieved(&self) -> &str {
        &self.retrieved
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Canonical model names, in file order.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|m| m.name.as_str())
    }

    /// Find the prior for `model` (as a client or provider spells it) and `category`.
    ///
    /// Order: exact canonical name, then aliases, then the most specific glob pattern; if none
    /// matches and the name has a `provider/` prefix, strip it and try again. Case-insensitive.
    /// An unknown or absent category (or one the model has no data for) falls back to `general`;
    /// a model with no `general` (only a chat number) then has no prior for that request.
    pub fn lookup(&self, model: &str, category: Option<&str>) -> Option<PriorEntry> {
        let lowered = model.trim().to_ascii_lowercase();
        let mut candidate = lowered.as_str();
        loop {
            if let Some((idx, matched, kind)) = self.match_one(candidate) {
                return self.entry(idx, matched, kind, candidate, category);
            }
            match candidate.split_once('/') {
                Some((_, rest)) if !rest.is_empty() => candidate = rest,
                _ => return None,
            }
        }
    }

    fn match_one(&self, name: &str) -> Option<(usize, String, MatchKind)> {
        if let Some(&i) = self.names.get(name) {
            return Some((i, self.models[i].name.clone(), MatchKind::Name));
        }
        if let Some(&i) = self.aliases.get(name) {
            return Some((i, name.to_string(), MatchKind::Alias));
        }
        self.patterns
            .iter()
            .find(|p| glob_match(&p.glob, name))
            .map(|p| (p.model, p.glob.clone(), MatchKind::Pattern))
    }

    fn entry(
        &self,
        idx: usize,
        matched: String,
        match_kind: MatchKind,
        input: &str,
        category: Option<&str>,
    ) -> Option<PriorEntry> {
        let m = &self.models[idx];
        let wanted = category.and_then(Category::parse);
        let (cat, p) = match wanted.and_then(|c| m.cats.get(&c).map(|p| (c, p))) {
            Some(hit) => hit,
            None => (Category::General, m.cats.get(&Category::General)?),
        };
        Some(PriorEntry {
            model: m.name.clone(),
            matched,
            match_kind,
            matched_input: input.to_string(),
            category: cat,
            score: p.score,
            n0: p.n0,
            sources: p.sources.clone(),
            evidence: p.evidence.clone(),
            note: m.note.clone(),
        })
    }
}

/// Validate one model's numbers and derive its per-category priors.
fn build_model(m: &FileModel, per_source: f64, max: f64) -> Result<ModelPrior, PriorsError> {
    if m.name.trim().is_empty() {
        return Err(invalid("", "name", "empty model name"));
    }
    if let Some(n0) = m.n0 {
        if !n0.is_finite() || n0 < 0.0 {
            return Err(invalid(&m.name, "n0", format!("must be >= 0, got {n0}")));
        }
    }
    if m.bench.is_empty() && m.score.is_empty() {
        return Err(invalid(
            &m.name,
            "bench",
            "no benchmark numbers and no scores",
        ));
    }
    // category -> (normalised values, sources, evidence lines)
    type Acc = (Vec<f64>, BTreeSet<String>, Vec<String>);
    let mut by_cat: HashMap<Category, Acc> = HashMap::new();
    for (i, b) in m.bench.iter().enumerate() {
        let key = |k: &str| format!("bench[{i}].{k}");
        let cat = benchmark_category(&b.benchmark).ok_or_else(|| {
            invalid(
                &m.name,
                key("benchmark"),
                format!("unknown benchmark `{}`", b.benchmark),
            )
        })?;
        check_source(&m.name, &key("source"), &b.source)?;
        if !valid_date(&b.published) {
            return Err(invalid(
                &m.name,
                key("published"),
                format!("`{}` is not YYYY-MM or YYYY-MM-DD", b.published),
            ));
        }
        if let Some(v) = &b.via {
            check_source(&m.name, &key("via"), v)?;
        }
        if b.unit == Unit::Elo && b.reference_model.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                &m.name,
                key("reference_model"),
                "unit `elo` needs the reference model named",
            ));
        }
        let q = normalise(b.value, b.unit, b.reference_elo)
            .map_err(|r| invalid(&m.name, key("value"), r))?;
        let slot = by_cat.entry(cat).or_default();
        slot.0.push(q);
        slot.1.insert(b.source.clone());
        let unit = match b.unit {
            Unit::Percent => "percent",
            Unit::Fraction => "fraction",
            Unit::MtBench => "mt_bench",
            Unit::Elo => "elo",
        };
        slot.2.push(match &b.setting {
            Some(setting) => format!("{} {} {unit} ({setting})", b.benchmark, b.value),
            None => format!("{} {} {unit}", b.benchmark, b.value),
        });
    }

    let strength = |n_sources: usize| -> f64 {
        m.n0.unwrap_or_else(|| (per_source * n_sources as f64).min(max))
    };
    let mut cats: HashMap<Category, CatPrior> = HashMap::new();
    for (cat, (values, sources, evidence)) in &by_cat {
        let score = values.iter().sum::<f64>() / values.len() as f64;
        cats.insert(
            *cat,
            CatPrior {
                score,
                n0: strength(sources.len()),
                sources: sources.iter().cloned().collect(),
                evidence: evidence.clone(),
            },
        );
    }
    // Direct scores replace derived ones.
    let mut direct: HashMap<Category, CatPrior> = HashMap::new();
    for (i, s) in m.score.iter().enumerate() {
        let key = |k: &str| format!("score[{i}].{k}");
        let cat = Category::parse(&s.category).ok_or_else(|| {
            invalid(
                &m.name,
                key("category"),
                format!("unknown category `{}`", s.category),
            )
        })?;
        if !s.score.is_finite() || !(0.0..=1.0).contains(&s.score) {
            return Err(invalid(
                &m.name,
                key("score"),
                format!("must be in [0, 1], got {}", s.score),
            ));
        }
        if !s.n0.is_finite() || s.n0 < 0.0 {
            return Err(invalid(
                &m.name,
                key("n0"),
                format!("must be >= 0, got {}", s.n0),
            ));
        }
        check_source(&m.name, &key("source"), &s.source)?;
        if !valid_date(&s.published) {
            return Err(invalid(
                &m.name,
                key("published"),
                format!("`{}` is not YYYY-MM or YYYY-MM-DD", s.published),
            ));
        }
        let prior = CatPrior {
            score: s.score,
            n0: s.n0,
            sources: vec![s.source.clone()],
            evidence: vec![format!(
                "direct score {} (published {})",
                s.score, s.published
            )],
        };
        if direct.insert(cat, prior).is_some() {
            return Err(invalid(
                &m.name,
                key("category"),
                format!("category `{cat}` given twice"),
            ));
        }
    }
    for (cat, p) in direct.iter() {
        if *cat != Category::General {
            cats.insert(*cat, p.clone());
        }
    }
    // A model with only a chat (win-rate) number gets no `general`: that scale is not the
    // accuracy scale the other models' `general` is on, so comparing them would mislead.
    let general = match direct.remove(&Category::General) {
        Some(g) => Some(g),
        None => derive_general(&cats, &strength),
    };
    if let Some(g) = general {
        cats.insert(Category::General, g);
    }
    Ok(ModelPrior {
        name: m.name.clone(),
        note: m.note.clone(),
        cats,
    })
}

/// `general` = unweighted mean of the accuracy-scaled categories (knowledge, math, coding) that
/// exist. Chat (a win rate against a baseline model) is a different scale and never enters it.
fn derive_general(
    cats: &HashMap<Category, CatPrior>,
    strength: &dyn Fn(usize) -> f64,
) -> Option<CatPrior> {
    let used: Vec<&CatPrior> = [Category::Knowledge, Category::Math, Category::Coding]
        .iter()
        .filter_map(|c| cats.get(c))
        .collect();
    if used.is_empty() {
        return None;
    }
    let score = used.iter().map(|p| p.score).sum::<f64>() / used.len() as f64;
    let sources: BTreeSet<String> = used
        .iter()
        .flat_map(|p| p.sources.iter().cloned())
        .collect();
    Some(CatPrior {
        score,
        n0: strength(sources.len()),
        sources: sources.into_iter().collect(),
        evidence: used
            .iter()
            .flat_map(|p| p.evidence.iter().cloned())
            .collect(),
    })
}

fn check_source(model: &str, key: &str, url: &str) -> Result<(), PriorsError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "https://x.y".len()
        && !url.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            model,
            key,
            format!("`{url}` is not an http(s) URL: every number needs its source"),
        ))
    }
}

/// `YYYY-MM` or `YYYY-MM-DD` with plausible ranges (no calendar check needed for provenance).
fn valid_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| p.len() == len && p.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [y, m] | [y, m, _] if !num(y, 4) || !num(m, 2) => false,
        [_, m] => matches!(m.parse::<u32>(), Ok(1..=12)),
        [_, m, d] => {
            num(d, 2)
                && matches!(m.parse::<u32>(), Ok(1..=12))
                && matches!(d.parse::<u32>(), Ok(1..=31))
        }
        _ => false,
    }
}

/// Glob match over bytes: `*` any run (including empty), `?` exactly one byte. Both sides are
/// already lower-case. Iterative with single-star backtracking: O(len(p) * len(s)) worst case.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb() -> Priors {
        match Priors::embedded() {
            Ok(p) => p,
            Err(e) => panic!("embedded priors must load: {e}"),
        }
    }

    const MINI: &str = r#"
schema = 1
retrieved = "2026-11-23"

[[model]]
name = "m-one"
aliases = ["m1"]
patterns = ["m-one-*"]
[[model.bench]]
benchmark = "mmlu"
value = 80.0
unit = "percent"
source = "https://example.org/a"
published = "2024-05"
"#;

    fn err_of(text: &str) -> String {
        match Priors::from_toml(text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_loads_and_covers_the_popular_models() {
        let p = emb();
        assert!(p.len() >= 25, "only {} models", p.len());
        for name in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "o3-mini",
            "gpt-4-1106-preview",
            "claude-3-5-sonnet-20240620",
            "claude-3-5-sonnet-20241022",
            "claude-3-5-haiku-20241022",
            "claude-3-7-sonnet-20250219",
            "claude-sonnet-4-20250514",
            "claude-opus-4-20250514",
            "gemini-1.5-pro",
            "gemini-1.5-flash",
            "gemini-2.0-flash",
            "mistral-large-2407",
            "mixtral-8x7b-instruct-v0.1",
            "meta-llama/Llama-3.1-8B-Instruct",
            "meta-llama/Llama-3.1-70B-Instruct",
            "meta-llama/Llama-3.1-405B-Instruct",
            "meta-llama/Llama-3.3-70B-Instruct",
            "deepseek-v3",
            "deepseek-r1",
            "Qwen/Qwen2.5-72B-Instruct",
            "grok-2",
        ] {
            assert!(p.lookup(name, None).is_some(), "no prior for {name}");
        }
        // Chat-only entries (no accuracy-scale number was found for them).
        for name in [
            "gpt-3.5-turbo",
            "command-r-plus",
            "command-r",
            "claude-3-haiku-20240307",
        ] {
            assert!(
                p.lookup(name, Some("chat")).is_some(),
                "no chat prior for {name}"
            );
        }
    }

    #[test]
    fn every_entry_has_a_source_and_valid_numbers() {
        let p = emb();
        for m in &p.models {
            assert!(!m.cats.is_empty(), "{}", m.name);
            for (cat, c) in &m.cats {
                assert!(!c.sources.is_empty(), "{} {cat}: no source", m.name);
                for s in &c.sources {
                    assert!(s.starts_with("https://"), "{} {cat}: {s}", m.name);
                }
                assert!((0.0..=1.0).contains(&c.score), "{} {cat}", m.name);
                assert!(c.n0 >= 0.0 && c.n0 <= 20.0, "{} {cat}: n0 {}", m.name, c.n0);
            }
        }
        // The raw file too: every bench row carries `source` and `published` (serde enforces
        // presence; this guards against someone making them optional).
        let doc: FileDoc = match toml::from_str(EMBEDDED_PRIORS) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        for m in &doc.models {
            for b in &m.bench {
                assert!(
                    !b.source.is_empty() && !b.published.is_empty(),
                    "{}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn provider_prefixed_and_native_ids_find_their_prior() {
        let p = emb();
        let cases = [
            (
                "together/meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
                "meta-llama/Llama-3.1-70B-Instruct",
            ),
            (
                "accounts/fireworks/models/llama-v3p1-405b-instruct",
                "meta-llama/Llama-3.1-405B-Instruct",
            ),
            (
                "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
                "claude-3-5-sonnet-20240620",
            ),
            (
                "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
                "claude-3-5-sonnet-20241022",
            ),
            ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet-20240620"),
            ("claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022"),
            ("openai/gpt-4o-mini", "gpt-4o-mini"),
            ("azure/gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            (
                "meta.llama3-1-8b-instruct-v1:0",
                "meta-llama/Llama-3.1-8B-Instruct",
            ),
            (
                "mistral.mixtral-8x7b-instruct-v0:1",
                "mixtral-8x7b-instruct-v0.1",
            ),
            (
                "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1",
                "mixtral-8x7b-instruct-v0.1",
            ),
            ("vertex_ai/gemini-2.0-flash-001", "gemini-2.0-flash"),
            (
                "deepinfra/Qwen/Qwen2.5-72B-Instruct",
                "Qwen/Qwen2.5-72B-Instruct",
            ),
            ("GPT-4.1-MINI-2025-04-14", "gpt-4.1-mini"),
        ];
        for (input, want) in cases {
            match p.lookup(input, None) {
                Some(e) => assert_eq!(e.model, want, "{input} matched {:?}", e.matched),
                None => panic!("{input}: no prior"),
            }
        }
    }

    #[test]
    fn more_specific_pattern_wins() {
        let p = emb();
        // `gpt-4o*` must not swallow the mini; `gpt-4.1*` must not swallow 4.1-mini.
        let e = p.lookup("gpt-4o-mini-2099-01-01", None);
        assert_eq!(e.map(|e| e.model), Some("gpt-4o-mini".to_string()));
        let e = p.lookup("gpt-4.1-mini-2099-01-01", None);
        assert_eq!(e.map(|e| e.model), Some("gpt-4.1-mini".to_string()));
        // A fine-tune is a different model: no prior.
        assert!(p.lookup("ft:gpt-4o-2024-08-06:acme::abc", None).is_none());
        // A community fine-tune built on Llama must not inherit Meta's numbers.
        assert!(p
            .lookup("NousResearch/Hermes-3-Llama-3.1-70B", None)
            .is_none());
    }

    #[test]
    fn unknown_model_is_none() {
        let p = emb();
        assert!(p.lookup("totally-unknown-model-7b", None).is_none());
        assert!(p.lookup("acme/unknown", Some("math")).is_none());
        assert!(p.lookup("", None).is_none());
        assert!(p.lookup("/", None).is_none());
    }

    #[test]
    fn category_falls_back_to_general() {
        let p = emb();
        let Some(math) = p.lookup("gpt-4o-2024-08-06", Some("math")) else {
            panic!("gpt-4o math")
        };
        assert_eq!(math.category, Category::Math);
        assert!((math.score - 0.759).abs() < 1e-9, "{}", math.score);
        assert_eq!(math.evidence.len(), 1);
        assert!(
            math.evidence[0].starts_with("math 75.9 percent"),
            "{:?}",
            math.evidence
        );
        let Some(g) = p.lookup("gpt-4o-2024-08-06", Some("poetry")) else {
            panic!("fallback")
        };
        assert_eq!(g.category, Category::General);
        let Some(g2) = p.lookup("gpt-4o-2024-08-06", None) else {
            panic!("general")
        };
        assert_eq!(g, g2);
        // gpt-3.5-turbo only has a chat (win-rate) number: a chat prior, nothing else.
        let Some(c) = p.lookup("gpt-3.5-turbo", Some("chat")) else {
            panic!("3.5 chat")
        };
        assert_eq!(c.category, Category::Chat);
        assert!((c.score - 0.233).abs() < 1e-9);
        assert!(p.lookup("gpt-3.5-turbo", Some("coding")).is_none());
        assert!(p.lookup("gpt-3.5-turbo", None).is_none());
    }

    #[test]
    fn replay_models_use_public_numbers_not_routellm() {
        // benches/data/summary.json: gpt-4-1106 MMLU 0.80587, Mixtral 0.680915. The priors must
        // come from the public reports instead (simple-evals 84.7, Mixtral paper 70.6).
        let p = emb();
        let Some(g) = p.lookup("gpt-4-1106-preview", Some("knowledge")) else {
            panic!("gpt-4-1106")
        };
        assert!((g.score - 0.847).abs() < 1e-9);
        assert!(g.sources.iter().all(|s| !s.contains("RouteLLM")));
        let Some(m) = p.lookup("mistralai/Mixtral-8x7B-Instruct-v0.1", Some("knowledge")) else {
            panic!("mixtral")
        };
        assert!((m.score - 0.706).abs() < 1e-9);
        assert!(m.note.as_deref().is_some_and(|n| n.contains("Replay")));
    }

    #[test]
    fn routerbench_models_resolve_with_public_priors() {
        // The eleven candidates of the RouterBench replay (benches/replay/routerbench.rs), in
        // RouterBench's spelling. Each must find its entry and a `general` prior built from
        // public benchmark numbers, never from RouterBench / RouteLLM outcomes.
        let p = emb();
        let cases = [
            (
                "WizardLM/WizardLM-13B-V1.2",
                "WizardLMTeam/WizardLM-13B-V1.2",
            ),
            ("claude-instant-v1", "claude-instant-1.2"),
            ("claude-v1", "claude-1.3"),
            ("claude-v2", "claude-2.0"),
            ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106"),
            ("gpt-4-1106-preview", "gpt-4-1106-preview"),
            (
                "meta/code-llama-instruct-34b-chat",
                "codellama/CodeLlama-34b-Instruct-hf",
            ),
            ("meta/llama-2-70b-chat", "meta-llama/Llama-2-70b-chat-hf"),
            (
                "mistralai/mistral-7b-chat",
                "mistralai/Mistral-7B-Instruct-v0.1",
            ),
            ("mistralai/mixtral-8x7b-chat", "mixtral-8x7b-instruct-v0.1"),
            ("zero-one-ai/Yi-34B-Chat", "01-ai/Yi-34B-Chat"),
        ];
        for (input, want) in cases {
            let Some(g) = p.lookup(input, None) else {
                panic!("{input}: no prior")
            };
            assert_eq!(g.model, want, "{input} matched {:?}", g.matched);
            assert_eq!(g.category, Category::General, "{input}");
            assert!((0.0..=1.0).contains(&g.score), "{input}: {}", g.score);
            assert!(g.n0 > 0.0, "{input}");
            for s in &g.sources {
                let s = s.to_ascii_lowercase();
                assert!(
                    !s.contains("routerbench") && !s.contains("routellm"),
                    "{input}: {s}"
                );
            }
        }
        // Spot checks against the published numbers.
        let check = |m: &str, c: &str, want_cat: Category, want: f64| {
            let Some(e) = p.lookup(m, Some(c)) else {
                panic!("{m} {c}: no prior")
            };
            assert_eq!(e.category, want_cat, "{m} {c}");
            assert!((e.score - want).abs() < 1e-9, "{m} {c}: {}", e.score);
        };
        check("claude-v2", "knowledge", Category::Knowledge, 0.785);
        check("claude-instant-v1", "coding", Category::Coding, 0.587);
        check("gpt-3.5-turbo-1106", "math", Category::Math, 0.571);
        check("meta/llama-2-70b-chat", "math", Category::Math, 0.116);
        // The Arena-Hard chat number of gpt-3.5-turbo-1106 stays out of `general`.
        let Some(g) = p.lookup("gpt-3.5-turbo-1106", None) else {
            panic!("gpt-3.5-turbo-1106")
        };
        assert!(
            (g.score - (0.70 + 0.571 + 0.481) / 3.0).abs() < 1e-9,
            "{}",
            g.score
        );
        // Code Llama has coding only: knowledge falls back to general = coding.
        check(
            "meta/code-llama-instruct-34b-chat",
            "knowledge",
            Category::General,
            0.415,
        );
    }

    #[test]
    fn general_is_the_mean_of_accuracy_categories() {
        let text = r#"
schema = 1
retrieved = "2026-11-23"
[strength]
per_source = 5.0
max = 12.0
[[model]]
name = "x"
[[model.bench]]
benchmark = "mmlu"
value = 80.0
unit = "percent"
source = "https://a.example/1"
published = "2024-01"
[[model.bench]]
benchmark = "mmlu_pro"
value = 60.0
unit = "percent"
source = "https://b.example/2"
published = "2024-01"
[[model.bench]]
benchmark = "math"
value = 50.0
unit = "percent"
source = "https://a.example/1"
published = "2024-01"
[[model.bench]]
benchmark = "mt_bench"
value = 9.0
unit = "mt_bench"
source = "https://c.example/3"
published = "2024-01"
"#;
        let p = match Priors::from_toml(text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let get = |c: &str| match p.lookup("x", Some(c)) {
            Some(e) => e,
            None => panic!("{c}"),
        };
        let k = get("knowledge");
        assert!((k.score - 0.70).abs() < 1e-12);
        assert_eq!(k.n0, 10.0); // two sources x 5
        assert!((get("chat").score - 0.9).abs() < 1e-12);
        let g = get("general");
        assert!(
            (g.score - 0.60).abs() < 1e-12,
            "(0.70 + 0.50) / 2, chat excluded"
        );
        assert_eq!(g.n0, 10.0);
        assert_eq!(g.sources.len(), 2);
    }

    #[test]
    fn normalisation_rules() {
        let ok = |v: f64, u: Unit, r: Option<f64>| match normalise(v, u, r) {
            Ok(q) => q,
            Err(e) => panic!("{v}: {e}"),
        };
        assert!((ok(88.7, Unit::Percent, None) - 0.887).abs() < 1e-12);
        assert!((ok(0.5, Unit::Fraction, None) - 0.5).abs() < 1e-12);
        assert!((ok(8.3, Unit::MtBench, None) - 0.83).abs() < 1e-12);
        let q = match normalise(1300.0, Unit::Elo, Some(1300.0)) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
        assert!((q - 0.5).abs() < 1e-12);
        let q = match normalise(1400.0, Unit::Elo, Some(1000.0)) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
        assert!((q - 10.0 / 11.0).abs() < 1e-12);
        assert!(normalise(101.0, Unit::Percent, None).is_err());
        assert!(normalise(f64::NAN, Unit::Fraction, None).is_err());
        assert!(normalise(1200.0, Unit::Elo, None).is_err());
    }

    #[test]
    fn direct_scores_override_and_validate() {
        let text = format!(
            "{MINI}\n[[model.score]]\ncategory = \"coding\"\nscore = 0.42\nn0 = 3.0\nsource = \"https://internal.example/eval\"\npublished = \"2026-10-01\"\n"
        );
        let p = match Priors::from_toml(&text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let Some(c) = p.lookup("m1", Some("coding")) else {
            panic!("coding")
        };
        assert_eq!((c.score, c.n0, c.match_kind), (0.42, 3.0, MatchKind::Alias));
        let bad = text.replace("score = 0.42", "score = 1.5");
        assert!(err_of(&bad).contains("score[0].score"));
        let bad = text.replace("n0 = 3.0", "n0 = -1.0");
        assert!(err_of(&bad).contains("score[0].n0"));
    }

    #[test]
    fn malformed_files_name_the_key() {
        // Unknown key.
        let e = err_of(&MINI.replace("unit = \"percent\"", "unit = \"percent\"\nfoo = 1"));
        assert!(e.contains("foo"), "{e}");
        let e = err_of(&MINI.replace("aliases", "alias"));
        assert!(e.contains("alias"), "{e}");
        // Missing source.
        let e = err_of(&MINI.replace("source = \"https://example.org/a\"\n", ""));
        assert!(e.contains("source"), "{e}");
        // Source that is not a URL.
        let e = err_of(&MINI.replace("https://example.org/a", "the internet"));
        assert!(e.contains("bench[0].source"), "{e}");
        // Out-of-range value.
        let e = err_of(&MINI.replace("value = 80.0", "value = 180.0"));
        assert!(e.contains("bench[0].value") && e.contains("m-one"), "{e}");
        // Unknown benchmark and unit.
        let e = err_of(&MINI.replace("\"mmlu\"", "\"vibes\""));
        assert!(
            e.contains("bench[0].benchmark") && e.contains("vibes"),
            "{e}"
        );
        let e = err_of(&MINI.replace("\"percent\"", "\"furlongs\""));
        assert!(e.contains("furlongs") || e.contains("unit"), "{e}");
        // Bad date.
        let e = err_of(&MINI.replace("\"2024-05\"", "\"May 2024\""));
        assert!(e.contains("bench[0].published"), "{e}");
        // Negative strength.
        let e = err_of(&MINI.replace("patterns", "n0 = -2.0\npatterns"));
        assert!(e.contains("n0"), "{e}");
        // Duplicate alias across models.
        let dup = format!(
            "{MINI}\n{}",
            MINI.replace("schema = 1\nretrieved = \"2026-11-23\"\n", "")
                .replace("name = \"m-one\"", "name = \"m-two\"")
                .replace("patterns = [\"m-one-*\"]", "")
        );
        let e = err_of(&dup);
        assert!(e.contains("m1") && e.contains("m-one"), "{e}");
        // Pattern without wildcard.
        let e = err_of(&MINI.replace("\"m-one-*\"", "\"m-one-x\""));
        assert!(e.contains("patterns"), "{e}");
        // Elo without reference.
        let e = err_of(
            &MINI
                .replace(
                    "value = 80.0\nunit = \"percent\"",
                    "value = 1250.0\nunit = \"elo\"",
                )
                .replace("\"mmlu\"", "\"arena_elo\""),
        );
        assert!(e.contains("reference_model"), "{e}");
        // Wrong schema.
        let e = err_of(&MINI.replace("schema = 1", "schema = 2"));
        assert!(e.contains("schema"), "{e}");
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match(
            "claude-3-5-sonnet*",
            "claude-3-5-sonnet-20241022"
        ));
        assert!(glob_match(
            "*/meta-llama-3.1-70b-instruct*",
            "together/meta-llama-3.1-70b-instruct-turbo"
        ));
        assert!(glob_match("llama-3?1-70b*", "llama-3_1-70b"));
        assert!(!glob_match("llama-3?1-70b*", "llama-3-70b"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acd"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("abc", "abcd"));
    }

    #[test]
    fn dates() {
        for ok in ["2024-05", "2024-05-13", "1999-12-31"] {
            assert!(valid_date(ok), "{ok}");
        }
        for bad in [
            "2024",
            "2024-13",
            "2024-5",
            "24-05-01",
            "2024-05-32",
            "2024-05-01-01",
            "",
        ] {
            assert!(!valid_date(bad), "{bad}");
        }
    }
}
