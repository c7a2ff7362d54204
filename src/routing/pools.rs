//! Learning pools (tenancy): with `learning = "project"` on a feedback route, each project the
//! config names learns in its own posteriors, keyed `route\u{1e}project` in the aggregator (and
//! `route\u{1e}project\u{1f}context` for context buckets). Everything else, and every route with
//! `learning = "shared"`, learns in the route's shared pool.

/// Separator between a route and a project in the posterior keys of a project's own learning
/// pool (`default\u{1e}alpha`; its context buckets are `default\u{1e}alpha\u{1f}math`).
pub const POOL_SEP: char = '\u{1e}';

/// Posterior key of `project`'s learning pool on `route`.
pub fn pool_key(route: &str, project: &str) -> String {
    format!("{route}{POOL_SEP}{project}")
}

/// The learning pools of a config: the routes with `learning = "project"` and the projects
/// that get a pool on them (those the config names, see `store::scoped::configured_projects`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pools {
    routes: std::collections::BTreeSet<String>,
    projects: std::collections::BTreeSet<String>,
}

impl Pools {
    pub fn of(config: &crate::config::GatewayConfig) -> Pools {
        Pools {
            routes: config
                .routes
                .iter()
                .filter(|(_, r)| r.is_feedback() && r.learning == crate::config::Learning::Project)
                .map(|(n, _)| n.clone())
                .collect(),
            projects: crate::store::scoped::configured_projects(config)
                .into_iter()
                .map(str::to_string)
                .collect(),
        }
    }

    /// The posterior key that feedback of `project` on `route` trains.
    pub fn key<'a>(&self, route: &'a str, project: Option<&str>) -> std::borrow::Cow<'a, str> {
        match project {
            Some(p) if self.routes.contains(route) && self.projects.contains(p) => {
                std::borrow::Cow::Owned(pool_key(route, p))
            }
            _ => std::borrow::Cow::Borrowed(route),
        }
    }

    /// The projects with their own pool on `route` (none unless it learns per project).
    pub fn projects_of<'a>(&'a self, route: &str) -> impl Iterator<Item = &'a str> + 'a {
        let on = self.routes.contains(route);
        self.projects.iter().filter(move |_| on).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_projects_on_isolated_routes_get_a_pool() {
        let pools = Pools {
            routes: ["iso".to_string()].into_iter().collect(),
            projects: ["a".to_string()].into_iter().collect(),
        };
        assert_eq!(pools.key("iso", Some("a")), pool_key("iso", "a"));
        assert_eq!(pools.key("iso", Some("header-only")), "iso");
        assert_eq!(pools.key("iso", None), "iso");
        assert_eq!(pools.key("shared", Some("a")), "shared");
        assert_eq!(pools.projects_of("iso").collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(pools.projects_of("shared").count(), 0);
    }
}
