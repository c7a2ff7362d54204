//! Who may call, and how much: gateway keys, the authenticated caller and its scopes.
//!
//! - [`keys`]: configured gateway keys (hashed) and their lookup.
//! - [`virtual_keys`]: gateway keys created through `/v1/keys`, kept in the store and
//!   mirrored in process (revocation reaches every instance within one refresh).
//! - [`limits`]: per-key requests / tokens per minute and USD budgets, in process or
//!   through [`fleet`] (Redis, shared by every gateway on it).
//! - [`provider_keys`]: provider API keys added through `/v1/providers/{name}/keys`,
//!   encrypted in the store and mirrored by the same poll as the virtual keys.
//!
//! `Scope` is part of the configuration vocabulary (a key's `scopes` in `[auth]`), so it is
//! defined in `config` and re-exported here.

pub mod fleet;
pub mod keys;
pub mod limits;
pub mod provider_keys;
pub mod virtual_keys;

pub use crate::config::Scope;
use crate::error::GatewayError;
use crate::store::scoped::Visibility;

/// The authenticated caller.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Key id (`None` when auth is disabled in loopback dev mode).
    pub key_id: Option<String>,
    pub scopes: Vec<Scope>,
    /// Project the key is locked to.
    pub project: Option<String>,
}

impl Caller {
    pub fn has(&self, s: Scope) -> bool {
        // admin implies read
        self.scopes.contains(&s) || (s == Scope::Read && self.scopes.contains(&Scope::Admin))
    }

    /// The tenancy scope of this caller (see `store::scoped`); `config` says which routes a
    /// project owns (`None`: handlers that never touch route-level state).
    pub fn visibility(&self, config: Option<&crate::config::GatewayConfig>) -> Visibility {
        Visibility::new(self.project.as_deref(), config)
    }

    pub fn require(&self, s: Scope) -> Result<(), GatewayError> {
        if self.has(s) {
            Ok(())
        } else {
            Err(GatewayError::Forbidden(format!(
                "this key lacks the '{}' scope",
                match s {
                    Scope::Inference => "inference",
                    Scope::Read => "read",
                    Scope::Admin => "admin",
                }
            )))
        }
    }
}
