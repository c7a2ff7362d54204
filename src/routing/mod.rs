//! Routing: the table snapshot, keys, model resolution and target-ordering strategies.

pub mod auto;
pub mod pools;

pub mod resolve;
pub mod strategy;
pub mod table;

pub use resolve::{Ask, Candidate, Resolution};
pub use table::{HeaderNames, Runtime};
