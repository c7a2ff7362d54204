//! Prompt-level routing that learns: per-prompt quality estimates from labelled neighbours.
//!
//! A feedback route's per-route statistics say whether a candidate is good enough *on average*;
//! on many routes none is (the cheap models lose 5 points overall) although they are as good as
//! the baseline on most prompts. This module estimates each model's quality *for this prompt*
//! from the outcomes (judge scores, user feedback, admin ratings) of the most similar earlier
//! prompts, and serves the cheapest model whose regression at the route's confidence fits the
//! route's quality budget ([`index`] has the estimator and the rule).
//!
//! - [`features`]: in-process features (feature-hashed words and word pairs, structural
//!   signals), weighted by inverse document frequencies learned from the route's own prompts.
//! - [`index`]: the immutable per-route snapshot (IVF nearest-neighbour index over quantised
//!   vectors, calibration of the allowance θ) and the allocation-free decision.
//! - [`state`]: the gateway side: a bounded memory of labelled examples per route, fed from the
//!   request path through a bounded channel and rebuilt by the aggregator, published by
//!   `ArcSwap`; optional embeddings through the gateway's own embeddings path.

pub mod config;
pub mod features;
pub mod index;
pub mod state;

pub use config::{EmbeddingsConfig, PromptMode, PromptRoutingConfig};
pub use features::{raw_features, text_features, RawFeatures};
pub use index::{
    Example, FeatureSource, IndexParams, ModelEstimate, ModelFacts, PromptIndex, PromptPick,
    PromptPickKind,
};
