//! The admin API's route table: every (method, path) the `/v1` admin dispatcher answers.
//!
//! The proxy refuses (404 `unknown_url`) an admin path that matches no row, so a handler
//! added without a row here is unreachable; `tests/isolation.rs` checks that every row has a
//! row in the tenancy matrix, so an endpoint cannot ship without its scoping being tested.

/// One endpoint: method and path pattern (literal segments and `{name}` placeholders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
}

const fn e(method: &'static str, path: &'static str) -> Endpoint {
    Endpoint { method, path }
}

pub const ENDPOINTS: &[Endpoint] = &[
    e("GET", "/v1/logs"),
    e("GET", "/v1/logs/{id}"),
    e("GET", "/v1/sessions/{id}"),
    e("GET", "/v1/analytics"),
    e("GET", "/v1/export/logs"),
    e("GET", "/v1/export/decisions"),
    e("POST", "/v1/feedback"),
    e("GET", "/v1/feedback/{id}"),
    e("GET", "/v1/decisions"),
    e("GET", "/v1/decisions/{id}"),
    e("POST", "/v1/decisions/{id}/verify"),
    e("POST", "/v1/routing/explain"),
    e("GET", "/v1/routing"),
    e("GET", "/v1/constraints"),
    e("PUT", "/v1/constraints"),
    e("PATCH", "/v1/constraints"),
    e("DELETE", "/v1/constraints"),
    e("GET", "/v1/audit"),
    e("GET", "/v1/report/shadow"),
    e("GET", "/v1/experiments"),
    e("POST", "/v1/experiments"),
    e("GET", "/v1/experiments/{id}"),
    e("POST", "/v1/experiments/{id}/stop"),
    e("POST", "/v1/experiments/{id}/promote"),
    e("POST", "/v1/routes/{route}/mode"),
    e("PUT", "/v1/routes/{route}/mode"),
    e("POST", "/v1/routes/{route}/pin"),
    e("PUT", "/v1/routes/{route}/pin"),
    e("DELETE", "/v1/routes/{route}/pin"),
    e("POST", "/v1/keys"),
    e("GET", "/v1/keys"),
    e("GET", "/v1/keys/{id}"),
    e("GET", "/v1/keys/{id}/usage"),
    e("PATCH", "/v1/keys/{id}"),
    e("DELETE", "/v1/keys/{id}"),
    e("GET", "/v1/limits"),
    e("POST", "/v1/providers/{name}/keys"),
    e("GET", "/v1/providers/{name}/keys"),
    e("DELETE", "/v1/providers/{name}/keys/{id}"),
    e("POST", "/v1/mcp/tokens"),
    e("GET", "/v1/mcp/tokens"),
    e("GET", "/v1/whoami"),
    e("DELETE", "/v1/mcp/tokens/{id}"),
];

fn matches_segments(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.split_first(), path.split_first()) {
        (None, None) => true,
        // A final placeholder takes exactly one segment (ids never contain `/`).
        (Some((p, [])), Some((s, []))) if p.starts_with('{') => !s.is_empty(),
        // A placeholder before literal segments takes one or more (route names may hold `/`).
        (Some((p, prest)), Some(_)) if p.starts_with('{') && !prest.is_empty() => (1..path.len())
            .any(|n| {
                path[..n].iter().all(|x| !x.is_empty()) && matches_segments(prest, &path[n..])
            }),
        (Some((p, prest)), Some((s, srest))) => p == s && matches_segments(prest, srest),
        _ => false,
    }
}

/// Whether `path` (without query; a trailing `/` is ignored) matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    matches_segments(&p, &s)
}

/// Whether any endpoint (of any method: a wrong method is the handler's 405) has this path.
pub fn known_path(path: &str) -> bool {
    ENDPOINTS.iter().any(|e| matches(e.path, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        assert!(matches("/v1/logs", "/v1/logs"));
        assert!(matches("/v1/logs", "/v1/logs/"));
        assert!(matches("/v1/logs/{id}", "/v1/logs/abc"));
        assert!(!matches("/v1/logs/{id}", "/v1/logs"));
        assert!(!matches("/v1/logs/{id}", "/v1/logs/a/b"));
        assert!(matches("/v1/routes/{route}/pin", "/v1/routes/a/b/pin"));
        assert!(!matches("/v1/routes/{route}/pin", "/v1/routes/pin"));
        assert!(!matches("/v1/routes/{route}/pin", "/v1/routes/a/mode"));
        assert!(known_path("/v1/experiments/exp_1/stop"));
        assert!(!known_path("/v1/experiments/exp_1/delete"));
        assert!(!known_path("/v1/report/other"));
    }

    #[test]
    fn rows_are_unique() {
        for (i, a) in ENDPOINTS.iter().enumerate() {
            assert!(!ENDPOINTS[i + 1..].contains(a), "{a:?} listed twice");
        }
    }
}
