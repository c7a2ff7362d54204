//! What the transport sends and where: a native request built by a dialect and signed by a
//! provider's signer, and a provider's parsed base URL. They live here, at the bottom, so that
//! `providers` (signing) and `dialect` (building) share them without importing each other.

use bytes::Bytes;

/// A native request, ready to be signed and sent.
#[derive(Debug, Clone, Default)]
pub struct UpstreamRequest {
    pub method: &'static str,
    /// Path and query, including the provider's base path prefix.
    pub path: String,
    /// Headers other than Host, Content-Length and authentication.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl UpstreamRequest {
    /// Set a header, replacing any of the same name (case-insensitive).
    pub fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value));
    }
}

/// A parsed base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without trailing slash (may be empty).
    pub base_path: String,
    /// The `Host` header value, formatted once (every attempt signs and sends it).
    host_header: String,
}

impl Endpoint {
    /// Parse `http(s)://host[:port][/prefix]`; a bare `host:port` means http.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if url.contains("://") {
            return Err(format!("unsupported URL scheme in '{url}'"));
        } else {
            (false, url)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("no host in '{url}'"));
        }
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            // [v6]:port
            let end = h
                .find(']')
                .ok_or_else(|| format!("bad IPv6 host in '{url}'"))?;
            let port = h[end + 1..].strip_prefix(':').map(str::parse::<u16>);
            (h[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse::<u16>())),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(Ok(p)) => p,
            Some(Err(_)) => return Err(format!("bad port in '{url}'")),
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        Ok(Endpoint {
            host_header: host_header(tls, &host, port),
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `Host` header value.
    pub fn host_header(&self) -> &str {
        &self.host_header
    }
}

fn host_header(tls: bool, host: &str, port: u16) -> String {
    let default = if tls { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default {
        host
    } else {
        format!("{host}:{port}")
    }
}
