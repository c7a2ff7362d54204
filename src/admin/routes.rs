//! Store-backed admin endpoints (logs, sessions, analytics, exports) as one
//! [`AdminRoutes`] family for the proxy's dispatcher.

use async_trait::async_trait;

use super::{analytics, export, logs, AdminRequest, AdminResponse, AdminRoutes};
use crate::store::writer::StoreSlot;

pub struct StoreRoutes {
    pub slot: StoreSlot,
}

#[async_trait]
impl AdminRoutes for StoreRoutes {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        if let Some(r) = logs::handle(&self.slot, req).await {
            return Some(r);
        }
        if let Some(r) = analytics::handle(&self.slot, req).await {
            return Some(r);
        }
        export::handle(&self.slot, req).await
    }
}
