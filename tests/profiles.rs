//! The provider profiles in `filters/`: every file loads and validates, and the
//! OpenAI-compatible profiles resolve model names to the right provider.
//!
//! Resolution here mirrors the gateway's rule (routing::resolve): among active
//! providers, a catalog listing wins over a name pattern; within each, the highest
//! `priority` wins.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Once;

use loopgate::catalog::Catalog;
use loopgate::providers::{load_profiles, Endpoint, ProviderProfile};

/// The OpenAI-compatible profiles this test owns: (file stem, key env var).
const OWN: &[(&str, Option<&str>)] = &[
    ("openai", Some("OPENAI_API_KEY")),
    ("azure", Some("AZURE_OPENAI_API_KEY")),
    ("groq", Some("GROQ_API_KEY")),
    ("mistral", Some("MISTRAL_API_KEY")),
    ("deepseek", Some("DEEPSEEK_API_KEY")),
    ("xai", Some("XAI_API_KEY")),
    ("perplexity", Some("PERPLEXITY_API_KEY")),
    ("together", Some("TOGETHER_API_KEY")),
    ("fireworks", Some("FIREWORKS_API_KEY")),
    ("cerebras", Some("CEREBRAS_API_KEY")),
    ("sambanova", Some("SAMBANOVA_API_KEY")),
    ("deepinfra", Some("DEEPINFRA_API_KEY")),
    ("nebius", Some("NEBIUS_API_KEY")),
    ("novita", Some("NOVITA_API_KEY")),
    ("ai21", Some("AI21_API_KEY")),
    ("ollama", None),
];

fn filters_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("filters")
}

/// Values for the `${VAR}`s used in base URLs, so they expand to parseable URLs.
/// Set once, before any profile is parsed (tests in this file share the process).
fn env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(
            "AZURE_OPENAI_ENDPOINT",
            "https://example-resource.openai.azure.com/",
        );
        std::env::set_var("OLLAMA_HOST", "127.0.0.1:11434");
    });
}

fn is_own(name: &str) -> bool {
    OWN.iter().any(|(n, _)| *n == name)
}

fn own_profiles() -> Vec<ProviderProfile> {
    env();
    OWN.iter()
        .map(|(stem, _)| {
            let path = filters_dir().join(format!("{stem}.toml"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            ProviderProfile::parse(&text, &path.display().to_string())
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn catalog() -> &'static Catalog {
    Catalog::embedded().unwrap_or_else(|e| panic!("embedded catalog: {e}"))
}

/// The gateway's resolution rule over a set of active profiles.
fn resolve<'a>(active: &'a [ProviderProfile], cat: &Catalog, model: &str) -> Option<&'a str> {
    let best = |claims: &dyn Fn(&ProviderProfile) -> bool| {
        let mut best: Option<&ProviderProfile> = None;
        for p in active {
            if claims(p) && best.is_none_or(|b| p.priority > b.priority) {
                best = Some(p);
            }
        }
        best
    };
    let by_catalog = |p: &ProviderProfile| {
        cat.providers_for(model)
            .any(|lp| p.catalog_providers.iter().any(|c| c == lp))
    };
    best(&by_catalog)
        .or_else(|| best(&|p: &ProviderProfile| p.matches_model(model)))
        .map(|p| p.name.as_str())
}

#[test]
fn every_filter_loads_with_unique_names() {
    env();
    let all =
        load_profiles(&filters_dir()).unwrap_or_else(|e| panic!("filters/ does not load: {e}"));
    let names: BTreeSet<&str> = all.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "duplicate provider names");
    for (stem, _) in OWN {
        assert!(
            names.contains(stem),
            "filters/{stem}.toml missing or misnamed"
        );
    }
    for p in &all {
        assert!(
            p.activation_var().is_some(),
            "{}: no env var activates it",
            p.name
        );
        // Every base URL (after ${VAR} expansion) must parse, unless it is purely an
        // env reference that this test does not know (another helper's provider).
        if !p.base_url.is_empty() {
            Endpoint::parse(&p.base_url).unwrap_or_else(|e| panic!("{}: base_url: {e}", p.name));
        }
        assert!(p.chat_path.starts_with('/'), "{}", p.name);
    }
}

#[test]
fn own_profiles_are_complete() {
    let cat = catalog();
    for (p, (stem, key)) in own_profiles().iter().zip(OWN) {
        assert_eq!(p.name, *stem);
        let want = if *stem == "fireworks" {
            "fireworks"
        } else {
            "openai"
        };
        assert_eq!(p.dialect.as_str(), want, "{stem}");
        assert_eq!(p.api_key_vars().first().copied(), *key, "{stem}");
        let base_env = p
            .base_url_env
            .as_deref()
            .unwrap_or_else(|| panic!("{stem}: no base_url_env"));
        assert!(base_env.ends_with("_BASE_URL"), "{stem}: {base_env}");
        let ep = Endpoint::parse(&p.base_url).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(
            ep.tls || *stem == "ollama",
            "{stem}: cloud providers use https"
        );
        assert!(!ep.host.is_empty());
        for path in [
            Some(&p.chat_path),
            p.embeddings_path.as_ref(),
            p.images_path.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(path.starts_with('/'), "{stem}: {path}");
        }
        // Every catalog provider name exists in the catalog (catches typos).
        assert!(!p.catalog_providers.is_empty(), "{stem}");
        for lp in &p.catalog_providers {
            let v = vec![lp.clone()];
            let n = ["chat", "embedding", "image_generation", "completion"]
                .iter()
                .map(|m| cat.models_for(&v, m).count())
                .sum::<usize>();
            assert!(n > 0, "{stem}: catalog provider '{lp}' has no entries");
        }
        // Quirks never rename into something they also drop.
        for to in p.rename_params.values() {
            assert!(
                !p.unsupported_params.contains(to),
                "{stem}: renames into dropped {to}"
            );
        }
        // A provider that is not asked for stream usage must not get the client's
        // stream_options either when it rejects them; the others keep them.
        if !p.stream_usage && ["mistral", "perplexity", "ai21", "fireworks"].contains(stem) {
            assert!(
                p.unsupported_params.iter().any(|x| x == "stream_options"),
                "{stem}"
            );
        }
    }
}

#[test]
fn provider_specific_shapes() {
    let own = own_profiles();
    let get = |n: &str| {
        own.iter()
            .find(|p| p.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };

    let az = get("azure");
    assert_eq!(az.auth_header.as_deref(), Some("api-key"));
    assert!(!az.model_in_body);
    assert_eq!(az.query.as_deref(), Some("api-version=2024-10-21"));
    let ep = Endpoint::parse(&az.base_url).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        az.path_for(&ep, &az.chat_path, "my-gpt4o"),
        "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(ep.host, "example-resource.openai.azure.com");

    let ol = get("ollama");
    assert_eq!(ol.activation_var(), Some("OLLAMA_HOST"));
    let ep = Endpoint::parse(&ol.base_url).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (ep.tls, ep.port, ep.base_path.as_str()),
        (false, 11434, "/v1")
    );
    assert_eq!(
        ol.path_for(&ep, &ol.chat_path, "llama3.2"),
        "/v1/chat/completions"
    );

    let oa = get("openai");
    assert_eq!(
        oa.rename_params.get("max_tokens").map(String::as_str),
        Some("max_completion_tokens")
    );
    let ep = Endpoint::parse(&oa.base_url).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        oa.path_for(&ep, &oa.chat_path, "gpt-4o"),
        "/v1/chat/completions"
    );
    assert_eq!(
        oa.path_for(&ep, oa.embeddings_path.as_deref().unwrap_or(""), "x"),
        "/v1/embeddings"
    );

    let pp = get("perplexity");
    let ep = Endpoint::parse(&pp.base_url).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pp.path_for(&ep, &pp.chat_path, "sonar"),
        "/chat/completions"
    );
    assert!(pp.unsupported_params.iter().any(|x| x == "tools"));

    let mi = get("mistral");
    assert_eq!(
        mi.rename_params.get("seed").map(String::as_str),
        Some("random_seed")
    );
    assert!(!mi.stream_usage);

    let g = get("groq");
    for x in ["logprobs", "top_logprobs", "logit_bias"] {
        assert!(g.unsupported_params.iter().any(|p| p == x), "groq {x}");
    }
    let c = get("cerebras");
    for x in [
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "parallel_tool_calls",
        "service_tier",
    ] {
        assert!(c.unsupported_params.iter().any(|p| p == x), "cerebras {x}");
    }
}

/// Catalog model names each profile claims.
fn catalog_claims(cat: &Catalog, p: &ProviderProfile) -> BTreeSet<String> {
    ["chat", "embedding", "image_generation"]
        .iter()
        .flat_map(|m| {
            cat.models_for(&p.catalog_providers, m)
                .map(|e| e.name.clone())
        })
        .collect()
}

#[test]
fn no_same_priority_catalog_conflicts() {
    env();
    let cat = catalog();
    let all = load_profiles(&filters_dir()).unwrap_or_else(|e| panic!("{e}"));
    let claims: HashMap<&str, BTreeSet<String>> = all
        .iter()
        .map(|p| (p.name.as_str(), catalog_claims(cat, p)))
        .collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            // Only pairs involving this test's profiles: other files have their own tests.
            if a.priority != b.priority || !(is_own(&a.name) || is_own(&b.name)) {
                continue;
            }
            let both: Vec<&String> = claims[a.name.as_str()]
                .intersection(&claims[b.name.as_str()])
                .take(5)
                .collect();
            assert!(
                both.is_empty(),
                "{} and {} share priority {} and both list {both:?}",
                a.name,
                b.name,
                a.priority
            );
        }
    }
}

/// Model name -> provider, with every OpenAI-compatible profile active.
const EXAMPLES: &[(&str, &str)] = &[
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-4.1-nano", "openai"),
    ("gpt-5-mini", "openai"),
    ("o1", "openai"),
    ("o3-mini", "openai"),
    ("o4-mini-2025-04-16", "openai"),
    ("chatgpt-4o-latest", "openai"),
    ("text-embedding-3-small", "openai"),
    ("gpt-image-1", "openai"),
    ("llama-3.3-70b-versatile", "groq"),
    ("llama-3.1-8b-instant", "groq"),
    ("meta-llama/llama-4-maverick-17b-128e-instruct", "groq"),
    ("moonshotai/kimi-k2-instruct-0905", "groq"),
    ("mistral-large-latest", "mistral"),
    ("mistral-small-2603", "mistral"),
    ("codestral-latest", "mistral"),
    ("mistral-embed", "mistral"),
    ("magistral-medium-latest", "mistral"),
    ("deepseek-chat", "deepseek"),
    ("deepseek-reasoner", "deepseek"),
    ("grok-4.20", "xai"),
    ("grok-code-fast-1", "xai"),
    ("grok-imagine-image", "xai"),
    ("sonar", "perplexity"),
    ("sonar-pro", "perplexity"),
    ("sonar-deep-research", "perplexity"),
    ("jamba-large-1.7", "ai21"),
    ("jamba-mini", "ai21"),
    ("llama-3.3-70b", "cerebras"),
    ("llama3.1-8b", "cerebras"),
    ("gpt-oss-120b", "cerebras"),
    ("Meta-Llama-3.3-70B-Instruct", "sambanova"),
    ("DeepSeek-R1", "sambanova"),
    ("accounts/fireworks/models/glm-5p3", "fireworks"),
    (
        "accounts/fireworks/models/llama-v3p3-70b-instruct",
        "fireworks",
    ),
    ("meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"),
    ("togethercomputer/m2-bert-80M-8k-retrieval", "together"),
    ("deepseek-ai/DeepSeek-R1-0528-Turbo", "deepinfra"),
    ("nvidia/Llama-3_1-Nemotron-Ultra-253B-v1", "nebius"),
    ("deepseek/deepseek-v3.2", "novita"),
    ("llama3.2:3b", "ollama"),
    ("qwen2.5-coder:7b", "ollama"),
];

#[test]
fn model_names_resolve_to_their_provider() {
    let cat = catalog();
    let own = own_profiles();
    let mut wrong = Vec::new();
    for (model, want) in EXAMPLES {
        let got = resolve(&own, cat, model);
        if got != Some(*want) {
            wrong.push(format!("{model}: want {want}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for model in [
        "no-such-model",
        "claude-sonnet-4-5",
        "gemini-2.5-pro",
        "command-a-03-2025",
    ] {
        assert_eq!(
            resolve(&own, cat, model),
            None,
            "{model} must not be claimed by an OpenAI-compatible profile"
        );
    }
}

#[test]
fn fallback_when_preferred_provider_is_inactive() {
    let cat = catalog();
    let own = own_profiles();
    let only = |names: &[&str]| -> Vec<ProviderProfile> {
        own.iter()
            .filter(|p| names.contains(&p.name.as_str()))
            .cloned()
            .collect()
    };
    // Azure serves OpenAI's catalog names when OpenAI itself is not configured.
    let az = only(&["azure"]);
    assert_eq!(resolve(&az, cat, "gpt-4o"), Some("azure"));
    assert_eq!(
        resolve(&only(&["azure", "openai"]), cat, "gpt-4o"),
        Some("openai")
    );
    // Hosts of the same open model: the catalog decides among the active ones.
    assert_eq!(
        resolve(&only(&["sambanova", "fireworks"]), cat, "gpt-oss-120b"),
        Some("sambanova")
    );
    assert_eq!(
        resolve(&only(&["deepinfra", "nebius"]), cat, "Qwen/Qwen3-235B-A22B"),
        Some("deepinfra")
    );
    // `gpt-oss-*` is not OpenAI's hosted API.
    assert_eq!(resolve(&only(&["openai"]), cat, "gpt-oss-120b"), None);
    // A local Ollama tag never beats a cloud provider that claims the name.
    assert_eq!(
        resolve(
            &only(&["ollama", "openai"]),
            cat,
            "ft:gpt-4o-mini:acme::abc123"
        ),
        Some("openai")
    );
}

#[test]
fn other_filters_do_not_steal_examples() {
    env();
    let cat = catalog();
    let all = load_profiles(&filters_dir()).unwrap_or_else(|e| panic!("{e}"));
    let mut wrong = Vec::new();
    for (model, want) in EXAMPLES {
        let got = resolve(&all, cat, model);
        if got != Some(*want) {
            wrong.push(format!("{model}: want {want}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "with every filter active:\n{}",
        wrong.join("\n")
    );
}
