//! Tenancy: the one scoping rule, applied in the store layer.
//!
//! A gateway key locked to a project sees and writes only that project's data. Every admin
//! handler gets its store through [`scoped`], which wraps it in [`Scoped`] for a locked
//! caller: every lookup and query below is narrowed to the project (and, for route-level
//! state, to the routes that declare the project), so a handler cannot forget the rule. A row
//! of another project is simply not found: the handler answers exactly as for an unknown id.
//! An unlocked caller ([`Visibility::All`]) gets the store itself, at no cost.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    AnalyticsQuery, AnalyticsRow, AuditAppend, AuditEntry, CacheSavingsRow, DecisionQuery,
    DecisionRow, FeedbackInsert, FeedbackRow, GroupBy, LogFilter, LogPage, LogQuery, PurgeRule,
    RawRow, RollupRow, RouteModelStats, RouteServed, RouteStateRow, ScoredDecision, Store,
    StoreError,
};
use super::{PendingFeedback, PendingInsert};
use crate::config::GatewayConfig as Config;
use crate::trace::TraceRecord;

/// What a caller may see and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// An unlocked key (or loopback dev mode): every project, every route.
    All,
    /// A key locked to `project`: its data, and the feedback routes that declare it.
    Project {
        project: String,
        routes: Arc<BTreeSet<String>>,
    },
}

impl Visibility {
    /// The visibility of a caller locked to `project` (or not), given the config that says
    /// which routes a project owns (`None`: no route-level state is visible to a locked key).
    pub fn new(project: Option<&str>, config: Option<&Config>) -> Visibility {
        match project {
            None => Visibility::All,
            Some(p) => Visibility::Project {
                project: p.to_string(),
                routes: Arc::new(
                    config
                        .map(|c| {
                            c.routes
                                .iter()
                                .filter(|(_, r)| r.project.as_deref() == Some(p))
                                .map(|(n, _)| n.clone())
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
            },
        }
    }

    /// The project a locked caller is confined to.
    pub fn project(&self) -> Option<&str> {
        match self {
            Visibility::All => None,
            Visibility::Project { project, .. } => Some(project),
        }
    }

    /// Whether data of `project` is visible (a locked caller never sees project-less data).
    pub fn sees(&self, project: Option<&str>) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Project { project: p, .. } => project == Some(p.as_str()),
        }
    }

    /// Whether the caller may see and (with the admin scope) change route-level state of
    /// `route`: constraints, mode, pin, experiments, its router table, shadow report, audit.
    pub fn owns_route(&self, route: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Project { routes, .. } => routes.contains(route),
        }
    }
}

/// Projects that may own a learning pool: those the config names (key locks and route
/// owners). A project a client merely sends in a header learns in the shared pool, so
/// clients cannot grow the number of pools.
pub fn configured_projects(config: &Config) -> BTreeSet<&str> {
    config
        .auth
        .keys
        .iter()
        .filter_map(|k| k.project.as_deref())
        .chain(config.routes.values().filter_map(|r| r.project.as_deref()))
        .collect()
}

/// The store as `vis` may use it.
pub fn scoped(store: Arc<dyn Store>, vis: &Visibility) -> Arc<dyn Store> {
    match vis {
        Visibility::All => store,
        Visibility::Project { project, routes } => Arc::new(Scoped {
            inner: store,
            project: project.clone(),
            routes: Arc::clone(routes),
        }),
    }
}

/// A store narrowed to one project (see the module docs).
pub struct Scoped {
    inner: Arc<dyn Store>,
    project: String,
    routes: Arc<BTreeSet<String>>,
}

impl Scoped {
    fn mine(&self, project: Option<&str>) -> bool {
        project == Some(self.project.as_str())
    }

    /// The filter narrowed to the project, or `None` when it asks for another project.
    fn filter(&self, f: &LogFilter) -> Option<LogFilter> {
        match &f.project {
            Some(p) if *p != self.project => None,
            _ => Some(LogFilter {
                project: Some(self.project.clone()),
                ..f.clone()
            }),
        }
    }

    fn denied(&self, what: &str) -> StoreError {
        StoreError::Config(format!(
            "{what} is not available to a project-scoped caller"
        ))
    }
}

#[async_trait]
impl Store for Scoped {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }
    async fn schema_version(&self) -> Result<u32, StoreError> {
        self.inner.schema_version().await
    }
    async fn insert_traces(&self, _recs: &[TraceRecord]) -> Result<usize, StoreError> {
        Err(self.denied("writing traces"))
    }
    async fn get_trace(&self, request_id: &str) -> Result<Option<TraceRecord>, StoreError> {
        Ok(self
            .inner
            .get_trace(request_id)
            .await?
            .filter(|t| self.mine(t.project_id.as_deref())))
    }
    async fn query_logs(&self, q: &LogQuery) -> Result<LogPage, StoreError> {
        match self.filter(&q.filter) {
            Some(filter) => {
                self.inner
                    .query_logs(&LogQuery {
                        filter,
                        limit: q.limit,
                        after: q.after.clone(),
                    })
                    .await
            }
            None => Ok(LogPage::default()),
        }
    }
    async fn rollup_rows(
        &self,
        dim: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        project: Option<&str>,
    ) -> Result<Vec<RollupRow>, StoreError> {
        if project.is_some_and(|p| p != self.project) {
            return Ok(Vec::new());
        }
        self.inner
            .rollup_rows(dim, from_ms, to_ms, Some(&self.project))
            .await
    }
    async fn raw_rows(
        &self,
        filter: &LogFilter,
        group: &GroupBy,
    ) -> Result<Vec<RawRow>, StoreError> {
        match self.filter(filter) {
            Some(f) => self.inner.raw_rows(&f, group).await,
            None => Ok(Vec::new()),
        }
    }
    async fn cache_savings(
        &self,
        filter: &LogFilter,
        group: &GroupBy,
    ) -> Result<Vec<CacheSavingsRow>, StoreError> {
        match self.filter(filter) {
            Some(f) => self.inner.cache_savings(&f, group).await,
            None => Ok(Vec::new()),
        }
    }
    async fn purge(&self, _rule: &PurgeRule) -> Result<u64, StoreError> {
        Err(self.denied("purging"))
    }
    async fn count_traces(&self) -> Result<u64, StoreError> {
        Err(self.denied("counting every trace"))
    }
    async fn analytics(&self, q: &AnalyticsQuery) -> Result<Vec<AnalyticsRow>, StoreError> {
        match self.filter(&q.filter) {
            Some(filter) => {
                self.inner
                    .analytics(&AnalyticsQuery {
                        filter,
                        group_by: q.group_by.clone(),
                        bucket: q.bucket,
                    })
                    .await
            }
            None => Ok(Vec::new()),
        }
    }
    async fn get_decision(&self, request_id: &str) -> Result<Option<DecisionRow>, StoreError> {
        Ok(self
            .inner
            .get_decision(request_id)
            .await?
            .filter(|d| self.mine(d.project.as_deref())))
    }
    async fn query_decisions(&self, q: &DecisionQuery) -> Result<Vec<DecisionRow>, StoreError> {
        if q.project.as_ref().is_some_and(|p| *p != self.project) {
            return Ok(Vec::new());
        }
        self.inner
            .query_decisions(&DecisionQuery {
                project: Some(self.project.clone()),
                ..q.clone()
            })
            .await
    }
    async fn insert_feedback(&self, row: &FeedbackRow) -> Result<FeedbackInsert, StoreError> {
        if !self.mine(row.project.as_deref()) {
            return Err(self.denied("feedback on another project's requests"));
        }
        self.inner.insert_feedback(row).await
    }
    async fn feedback_since(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<FeedbackRow>, StoreError> {
        let mut rows = self.inner.feedback_since(after_seq, limit).await?;
        rows.retain(|r| self.mine(r.project.as_deref()));
        Ok(rows)
    }
    async fn feedback_for_request(&self, request_id: &str) -> Result<Vec<FeedbackRow>, StoreError> {
        let mut rows = self.inner.feedback_for_request(request_id).await?;
        rows.retain(|r| self.mine(r.project.as_deref()));
        Ok(rows)
    }
    async fn append_audit(&self, a: &AuditAppend) -> Result<AuditEntry, StoreError> {
        if !a.route.as_deref().is_some_and(|r| self.routes.contains(r)) {
            return Err(self.denied("auditing a change outside the project's routes"));
        }
        self.inner.append_audit(a).await
    }
    /// The raw page: the chain can only be verified over every entry. The audit endpoint
    /// shows a locked caller only the entries of its routes (`Visibility::owns_route`).
    async fn list_audit(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.list_audit(after_seq, limit).await
    }
    async fn put_route_state(
        &self,
        route: &str,
        key: &str,
        value: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.routes.contains(route) {
            return Err(self.denied("changing a route the project does not own"));
        }
        self.inner.put_route_state(route, key, value, now_ms).await
    }
    async fn route_states(&self) -> Result<Vec<RouteStateRow>, StoreError> {
        let mut rows = self.inner.route_states().await?;
        rows.retain(|r| self.routes.contains(&r.route));
        Ok(rows)
    }
    async fn scored_decisions(
        &self,
        route: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<ScoredDecision>, StoreError> {
        if !self.routes.contains(route) {
            return Ok(Vec::new());
        }
        self.inner.scored_decisions(route, since_ms, limit).await
    }
    async fn route_model_stats(&self, since_ms: i64) -> Result<Vec<RouteModelStats>, StoreError> {
        let mut rows = self.inner.route_model_stats(since_ms).await?;
        rows.retain(|r| self.routes.contains(&r.route));
        Ok(rows)
    }
    async fn recent_served(
        &self,
        routes: &[String],
        last: usize,
    ) -> Result<Vec<RouteServed>, StoreError> {
        let own: Vec<String> = routes
            .iter()
            .filter(|r| self.routes.contains(r.as_str()))
            .cloned()
            .collect();
        self.inner.recent_served(&own, last).await
    }

    // Pending feedback: a pending event carries the project of the key that sent it (see
    // `store::pending`), so the same rule applies to it as to stored feedback.
    async fn get_feedback(&self, id: &str) -> Result<Option<FeedbackRow>, StoreError> {
        Ok(self
            .inner
            .get_feedback(id)
            .await?
            .filter(|r| self.mine(r.project.as_deref())))
    }
    async fn insert_pending_feedback(
        &self,
        p: &PendingFeedback,
    ) -> Result<PendingInsert, StoreError> {
        if !self.mine(pending_project(p).as_deref()) {
            return Err(self.denied("pending feedback for another project"));
        }
        match self.inner.insert_pending_feedback(p).await? {
            // The duplicate is another project's event (same target id): naming it would leak
            // that the id exists. Answer as for an unknown id; nothing is stored, and the
            // event's status reads 404 as when reconciliation drops a foreign event.
            PendingInsert::Duplicate { id, pending } => {
                let visible = if pending {
                    self.get_pending_feedback(&id).await?.is_some()
                } else {
                    self.get_feedback(&id).await?.is_some()
                };
                Ok(if visible {
                    PendingInsert::Duplicate { id, pending }
                } else {
                    PendingInsert::Inserted
                })
            }
            other => Ok(other),
        }
    }
    async fn pending_feedback(&self, limit: usize) -> Result<Vec<PendingFeedback>, StoreError> {
        let mut rows = self.inner.pending_feedback(limit).await?;
        rows.retain(|p| self.mine(pending_project(p).as_deref()));
        Ok(rows)
    }
    async fn get_pending_feedback(&self, id: &str) -> Result<Option<PendingFeedback>, StoreError> {
        Ok(self
            .inner
            .get_pending_feedback(id)
            .await?
            .filter(|p| self.mine(pending_project(p).as_deref())))
    }
    async fn delete_pending_feedback(&self, id: &str) -> Result<bool, StoreError> {
        match self.get_pending_feedback(id).await? {
            Some(_) => self.inner.delete_pending_feedback(id).await,
            None => Ok(false),
        }
    }
}

/// The project a pending event was sent under (its serialised row's `project`).
fn pending_project(p: &PendingFeedback) -> Option<String> {
    serde_json::from_str::<FeedbackRow>(&p.row)
        .ok()
        .and_then(|r| r.project)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_callers_see_only_their_project_and_routes() {
        let all = Visibility::All;
        assert!(all.sees(None) && all.sees(Some("a")) && all.owns_route("r"));
        let a = Visibility::Project {
            project: "a".into(),
            routes: Arc::new(["ra".to_string()].into_iter().collect()),
        };
        assert!(a.sees(Some("a")));
        assert!(!a.sees(Some("b")) && !a.sees(None));
        assert!(a.owns_route("ra") && !a.owns_route("rb"));
        assert_eq!(a.project(), Some("a"));
        assert_eq!(Visibility::new(None, None), Visibility::All);
        assert_eq!(Visibility::new(Some("a"), None).project(), Some("a"));
        assert!(!Visibility::new(Some("a"), None).owns_route("ra"));
    }
}
