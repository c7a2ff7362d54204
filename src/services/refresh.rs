//! Keeps short-lived provider credentials (OAuth access tokens) fresh, off the request
//! path. Runs as a Pingora background service over the current routing table.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::gateway::Gateway;

/// Refresh when the credential has less than this long to live.
const AHEAD_SECS: u64 = 300;

pub struct CredentialRefresher {
    pub gw: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for CredentialRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let rt = self.gw.runtime.load_full();
            let mut failed = false;
            for p in &rt.providers {
                if let Some(left) = p.signer.refresh_in() {
                    if left <= AHEAD_SECS {
                        if let Err(e) = p.signer.refresh().await {
                            failed = true;
                            tracing::warn!(provider = p.name(), error = %e, "credential refresh failed");
                        }
                    }
                }
            }
            drop(rt);
            let wait = if failed {
                backoff = (backoff * 2).min(Duration::from_secs(60));
                backoff
            } else {
                backoff = Duration::from_secs(1);
                Duration::from_secs(15)
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
