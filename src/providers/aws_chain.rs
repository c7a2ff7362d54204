//! AWS credentials through the standard provider chain of the maintained `aws-config`
//! crate: environment, shared config and credentials files (`AWS_PROFILE`, role
//! chaining, SSO caches, `credential_process` aside), web identity (EKS/IRSA), ECS
//! container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`) and
//! EC2 instance metadata (IMDSv2).
//!
//! The request path never waits on any of them: [`AwsChain::current`] reads the cached
//! credentials (an `ArcSwap`); the credential refresher background service calls
//! [`AwsChain::refresh`] before they expire (and the proxy awaits it once before the
//! first request, like the Google token).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::{Secret, SignError};
use crate::providers::sigv4::Credentials;

/// Refresh this long before temporary credentials expire.
const REFRESH_AHEAD: u64 = 300;
/// Credentials this close to expiry are not used for new requests.
const MIN_LEFT: u64 = 10;
/// Long-lived credentials (access keys in a profile) are re-read this often.
const STATIC_RECHECK: u64 = 3600;
/// Bound on one pass through the chain (IMDS and STS calls included).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// What to set, for error messages.
pub const HOW_TO: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE (shared config/credentials files), \
AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_FULL_URI (ECS), run with an instance role (IMDS), \
or set AWS_BEARER_TOKEN_BEDROCK";

pub struct Cached {
    pub creds: Credentials,
    /// Unix seconds; `None` for long-lived keys.
    expires_at: Option<u64>,
    fetched_at: u64,
}

pub struct AwsChain {
    region: String,
    provider: tokio::sync::OnceCell<SharedCredentialsProvider>,
    current: ArcSwapOption<Cached>,
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AwsChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsChain")
            .field("region", &self.region)
            .field("has_credentials", &self.current.load().is_some())
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AwsChain {
    pub fn new(region: &str) -> AwsChain {
        AwsChain {
            region: region.to_string(),
            provider: tokio::sync::OnceCell::new(),
            current: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Usable credentials, if fetched and not about to expire.
    pub fn current(&self, now: u64) -> Option<Arc<Cached>> {
        self.current
            .load_full()
            .filter(|c| c.expires_at.is_none_or(|e| e > now + MIN_LEFT))
    }

    /// Seconds until the credentials should be fetched again (0: now).
    pub fn refresh_in(&self) -> u64 {
        let now = now_secs();
        match self.current.load().as_ref() {
            None => 0,
            Some(c) => match c.expires_at {
                Some(e) => e.saturating_sub(now + REFRESH_AHEAD),
                None => (c.fetched_at + STATIC_RECHECK).saturating_sub(now),
            },
        }
    }

    async fn provider(&self) -> &SharedCredentialsProvider {
        self.provider
            .get_or_init(|| async {
                // rustls with ring, the TLS stack the rest of the gateway uses.
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let conf = aws_config::provider_config::ProviderConfig::default()
                    .with_http_client(http)
                    .with_region(Some(aws_config::Region::new(self.region.clone())));
                // The region is given: resolving it would ask IMDS first.
                let chain =
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .region(aws_config::Region::new(self.region.clone()))
                        .configure(conf)
                        .build()
                        .await;
                SharedCredentialsProvider::new(chain)
            })
            .await
    }

    /// One pass through the chain; the result replaces the cached credentials.
    pub async fn refresh(&self) -> Result<(), SignError> {
        let _one = self.fetching.lock().await;
        if self.current.load().is_some() && self.refresh_in() > 0 {
            return Ok(()); // someone else refreshed while we waited
        }
        let provider = self.provider().await;
        let got = tokio::time::timeout(FETCH_TIMEOUT, provider.provide_credentials())
            .await
            .map_err(|_| {
                SignError::Credential(format!(
                    "AWS credential chain timed out after {}s",
                    FETCH_TIMEOUT.as_secs()
                ))
            })?;
        // The chain's errors name sources and variables, never secret values.
        let c = got
            .map_err(|e| SignError::Missing(format!("no AWS credentials found ({e}): {HOW_TO}")))?;
        let expires_at = c
            .expiry()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        self.current.store(Some(Arc::new(Cached {
            creds: Credentials {
                access_key_id: Secret::new(c.access_key_id().to_string()),
                secret_access_key: Secret::new(c.secret_access_key().to_string()),
                session_token: c.session_token().map(|t| Secret::new(t.to_string())),
            },
            expires_at,
            fetched_at: now_secs(),
        })));
        Ok(())
    }
}
