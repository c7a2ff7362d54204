//! Request signing per provider auth scheme. Keys are read from the environment when a
//! provider is activated and live only inside the signer.

use std::sync::Arc;

use super::{AuthScheme, ProviderProfile, Secret};
use crate::upstream::UpstreamRequest;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("missing credential: {0}")]
    Missing(String),
    #[error("credential error: {0}")]
    Credential(String),
    /// No credential yet (token not fetched); `refresh` must run first.
    #[error("credential not ready: {0}")]
    NotReady(String),
}

/// Adds authentication to a built request. `host` is the Host header value.
///
/// `sign` runs on the request path and must not do I/O: short-lived credentials (OAuth
/// access tokens) are fetched by `refresh`, which a background service calls ahead of
/// expiry (and the proxy awaits once if `sign` reports `SignError::NotReady`).
#[async_trait::async_trait]
pub trait Signer: Send + Sync {
    fn sign(&self, req: &mut UpstreamRequest, host: &str) -> Result<(), SignError>;

    /// Fetch or renew credentials. Default: nothing to refresh.
    async fn refresh(&self) -> Result<(), SignError> {
        Ok(())
    }

    /// Seconds until the current credential should be refreshed (`None`: never).
    fn refresh_in(&self) -> Option<u64> {
        None
    }
}

/// `Authorization: Bearer <key>` or the key in a named header.
pub struct HeaderKey {
    header: String,
    prefix: &'static str,
    key: Secret,
}

impl Signer for HeaderKey {
    fn sign(&self, req: &mut UpstreamRequest, _host: &str) -> Result<(), SignError> {
        req.headers.push((
            self.header.clone(),
            format!("{}{}", self.prefix, self.key.expose()),
        ));
        Ok(())
    }
}

pub struct NoAuth;

impl Signer for NoAuth {
    fn sign(&self, _req: &mut UpstreamRequest, _host: &str) -> Result<(), SignError> {
        Ok(())
    }
}

fn read_key(profile: &ProviderProfile) -> Result<Secret, SignError> {
    let vars = profile.api_key_vars();
    if vars.is_empty() {
        return Err(SignError::Missing(format!(
            "provider {} has no api_key_env",
            profile.name
        )));
    }
    profile
        .api_key()
        .ok_or_else(|| SignError::Missing(format!("set {}", vars.join(" or "))))
}

/// Where a profile's API key goes: header name and value prefix (`None`: the provider does
/// not authenticate with a static API key, e.g. SigV4 or OAuth).
pub fn key_header(profile: &ProviderProfile) -> Option<(String, &'static str)> {
    match profile.auth {
        AuthScheme::Bearer => Some(("authorization".into(), "Bearer ")),
        AuthScheme::Header => Some((
            profile
                .auth_header
                .clone()
                .unwrap_or_else(|| "api-key".into()),
            "",
        )),
        AuthScheme::None | AuthScheme::Sigv4 | AuthScheme::GoogleOauth => None,
    }
}

/// Sign with a given API key (one added at runtime) instead of the profile's own.
pub fn sign_with_key(
    profile: &ProviderProfile,
    req: &mut UpstreamRequest,
    key: &Secret,
) -> Result<(), SignError> {
    let (header, prefix) = key_header(profile).ok_or_else(|| {
        SignError::Credential(format!(
            "provider {} does not authenticate with an API key",
            profile.name
        ))
    })?;
    req.headers
        .push((header, format!("{prefix}{}", key.expose())));
    Ok(())
}

/// The signer of a provider active only through its runtime keys: it has no key of its
/// own, so an attempt that reaches it (every runtime key is cooling down) fails naming
/// what would serve it.
struct RuntimeKeysOnly {
    message: String,
}

impl Signer for RuntimeKeysOnly {
    fn sign(&self, _req: &mut UpstreamRequest, _host: &str) -> Result<(), SignError> {
        Err(SignError::Missing(self.message.clone()))
    }
}

/// The signer for a provider activated by runtime keys alone (see [`RuntimeKeysOnly`]).
pub fn runtime_keys_only(profile: &ProviderProfile) -> Arc<dyn Signer> {
    let vars = profile.api_key_vars();
    Arc::new(RuntimeKeysOnly {
        message: format!(
            "every runtime key of provider {} is cooling down and {} is not set",
            profile.name,
            vars.join(" or ")
        ),
    })
}

/// The signer for a profile's auth scheme.
pub fn signer_for(profile: &ProviderProfile) -> Result<Arc<dyn Signer>, SignError> {
    match profile.auth {
        AuthScheme::Bearer => Ok(Arc::new(HeaderKey {
            header: "authorization".into(),
            prefix: "Bearer ",
            key: read_key(profile)?,
        })),
        AuthScheme::Header => Ok(Arc::new(HeaderKey {
            header: profile
                .auth_header
                .clone()
                .unwrap_or_else(|| "api-key".into()),
            prefix: "",
            key: read_key(profile)?,
        })),
        AuthScheme::None => Ok(Arc::new(NoAuth)),
        AuthScheme::Sigv4 => Ok(Arc::new(crate::providers::sigv4::Sigv4Signer::from_env(
            profile,
        )?)),
        AuthScheme::GoogleOauth => Ok(Arc::new(super::google_oauth::GoogleOauth::from_profile(
            profile,
        )?)),
    }
}
