//! The `[server.cors]` settings and the header values they produce (pure; the Pingora hook
//! that applies them is `proxy::cors`).

use serde::Deserialize;

/// A string or a list of strings (`allowed_origins = "*"` or `["https://a.example"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`), or `"*"` for any.
    pub allowed_origins: OneOrMany,
    /// Methods a preflight allows.
    #[serde(default = "default_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight allows; `["*"]` (default) allows what the browser asks for.
    #[serde(default = "any")]
    pub allowed_headers: Vec<String>,
    /// Response headers scripts may read (default: the gateway's own, `x-request-id`,
    /// `retry-after`).
    #[serde(default)]
    pub expose_headers: Option<Vec<String>>,
    /// How long a browser may cache a preflight, seconds.
    #[serde(default = "default_max_age")]
    pub max_age: u64,
    /// `Access-Control-Allow-Credentials: true` (cookies / HTTP auth); not with origin `*`.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_methods() -> Vec<String> {
    ["GET", "POST", "OPTIONS"].map(String::from).to_vec()
}
fn any() -> Vec<String> {
    vec!["*".into()]
}
fn default_max_age() -> u64 {
    600
}

impl CorsConfig {
    fn any_origin(&self) -> bool {
        self.allowed_origins.items().iter().any(|o| o == "*")
    }

    pub fn validate(&self) -> Result<(), String> {
        let origins = self.allowed_origins.items();
        if origins.is_empty() {
            return Err("allowed_origins is empty (list origins, or \"*\")".into());
        }
        for o in &origins {
            if o == "*" {
                continue;
            }
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty() && !r.contains('/') && !r.contains('*') && !r.contains(' ')
            });
            if !ok {
                return Err(format!(
                    "allowed_origins entry '{o}' must be scheme://host[:port] (no path, no trailing slash) or \"*\""
                ));
            }
        }
        if self.any_origin() && self.allow_credentials {
            return Err(
                "allow_credentials = true needs explicit allowed_origins, not \"*\" (browsers reject the pair)"
                    .into(),
            );
        }
        for m in &self.allowed_methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("allowed_methods entry '{m}' is not an HTTP method"));
            }
        }
        for h in self
            .allowed_headers
            .iter()
            .chain(self.expose_headers.iter().flatten())
        {
            if h != "*" && (h.is_empty() || !h.bytes().all(is_token_byte)) {
                return Err(format!("header name '{h}' is not a valid HTTP header name"));
            }
        }
        Ok(())
    }

    /// Whether `origin` is allowed (also `/mcp`'s Origin check).
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allow_origin(origin).is_some()
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &str) -> Option<String> {
        let origins = self.allowed_origins.items();
        if origins.iter().any(|o| o == "*") {
            return Some("*".into());
        }
        origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
            .then(|| origin.to_string())
    }

    fn vary(&self) -> bool {
        !self.any_origin()
    }

    /// Headers for an actual (non-preflight) response.
    pub fn response_headers(
        &self,
        origin: Option<&str>,
        own_headers: &[&str],
    ) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if self.vary() {
            h.push(("vary", "Origin".to_string()));
        }
        let Some(allow) = origin.and_then(|o| self.allow_origin(o)) else {
            return h;
        };
        h.push(("access-control-allow-origin", allow));
        if self.allow_credentials {
            h.push(("access-control-allow-credentials", "true".into()));
        }
        let expose = match &self.expose_headers {
            Some(list) => list.join(", "),
            None => own_headers.join(", "),
        };
        if !expose.is_empty() {
            h.push(("access-control-expose-headers", expose));
        }
        h
    }

    /// Headers of a preflight answer, or `None` when the origin is not allowed.
    pub fn preflight_headers(
        &self,
        origin: &str,
        requested_headers: Option<&str>,
    ) -> Option<Vec<(&'static str, String)>> {
        let allow = self.allow_origin(origin)?;
        let mut h = Vec::with_capacity(6);
        h.push(("access-control-allow-origin", allow));
        if self.vary() {
            h.push((
                "vary",
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into(),
            ));
        }
        h.push((
            "access-control-allow-methods",
            self.allowed_methods.join(", "),
        ));
        let headers = if self.allowed_headers.iter().any(|x| x == "*") {
            // Echo what was asked (only token characters: it is a header value we send).
            requested_headers
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty() && x.bytes().all(is_token_byte))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            self.allowed_headers.join(", ")
        };
        if !headers.is_empty() {
            h.push(("access-control-allow-headers", headers));
        }
        h.push(("access-control-max-age", self.max_age.to_string()));
        if self.allow_credentials {
            h.push(("access-control-allow-credentials", "true".into()));
        }
        Some(h)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
