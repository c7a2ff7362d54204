//! The statistics core of feedback-driven routing (`model: "auto"`).
//!
//! Everything here is pure and I/O-free: numbers in, numbers out. The proxy, the store and the
//! admin API wire it up; this module only knows how to
//! - fold quality signals into per-(route, model) Beta posteriors ([`posterior`], [`aggregator`]),
//! - decide whether a candidate is confidently within the regression limit ([`gate`]),
//! - check the nine declarative constraints of a route ([`constraints`]),
//! - pick a model for one request and explain why ([`router`]),
//! - render and sign the decision trace ([`decision`]),
//! - run always-valid sequential tests for canaries and rollback ([`sequential`]).
//!
//! The request path only reads immutable, precomputed snapshots
//! ([`router::PreparedRoute`]) that the aggregator publishes through an `ArcSwap`.

pub mod aggregator;
pub mod canonical;
pub mod constraints;
pub mod context;
pub mod decision;
pub mod gate;
pub mod math;
pub mod posterior;
pub mod priors;
pub mod prompt;
pub mod router;
pub mod sequential;

mod simulation;

pub use aggregator::{
    Aggregator, BatchReport, FeedbackEvent, FeedbackKind, FoldOutcome, RoutingStats,
};
pub use constraints::{CandidateStats, ConstraintResult, Constraints, Knob};
pub use decision::{sign, verify, verify_value, DecisionTrace, SignedDecision, SigningKey};
pub use gate::{confidence_within, gate, GateOutcome};
pub use posterior::{Phase, Posterior, PosteriorConfig, PosteriorState, Scale, Signal};
pub use router::{
    decide, Decision, Labelling, Mode, PickKind, PreparedRoute, RequestContext, RouteInput,
};
pub use sequential::{RegressionMonitor, TwoArmSequence, Verdict};
