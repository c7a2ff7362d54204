//! The upstream HTTP exchange, driven by the gateway itself on Pingora's pooled connector.
//!
//! Why not let Pingora proxy the body: stock 0.9.1 replays a request body read in
//! `request_filter` only from its 64 KiB retry buffer, so agent-sized requests would be
//! truncated (ARCHITECTURE.md). The gateway reads the whole body, builds the native request and
//! sends it here; connections are pooled by the same connector Pingora uses.
//!
//! Host names are resolved asynchronously and cached (`HttpPeer::new` with a name would do
//! blocking DNS and panic on failure); peers are always built from `SocketAddr`s with the
//! host name as SNI so certificates are verified.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use pingora::connectors::http::Connector;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::ALPN;
use pingora_error::ErrorType;
use pingora_http::{RequestHeader, ResponseHeader};

pub mod redis;
mod request;

pub use request::{Endpoint, UpstreamRequest};

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum UpstreamError {
    #[error("could not resolve {0}")]
    Resolve(String),
    #[error("connection to {0} failed: {1}")]
    Connect(String, String),
    #[error("upstream {0} timed out")]
    Timeout(String),
    #[error("upstream {0} closed the connection: {1}")]
    Io(String, String),
    #[error("bad request to upstream: {0}")]
    Build(String),
    #[error("upstream response body larger than {0} bytes")]
    TooLarge(usize),
}

impl UpstreamError {
    /// Outcome label for traces and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Resolve(_) | UpstreamError::Connect(..) => "connect_error",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Io(..) => "io_error",
            UpstreamError::Build(_) => "build_error",
            UpstreamError::TooLarge(_) => "too_large",
        }
    }
}

/// Timeouts and limits for one exchange.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeOptions {
    pub connect_timeout: Duration,
    /// Per read: waiting for the header and for each body chunk.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
}

impl Default for ExchangeOptions {
    fn default() -> Self {
        ExchangeOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

static CONNECTOR: LazyLock<Connector> =
    LazyLock::new(|| Connector::new(Some(ConnectorOptions::new(1024))));

/// Cached DNS answers: host -> (addresses, resolved at).
static DNS: LazyLock<DashMap<String, (Vec<std::net::IpAddr>, Instant)>> =
    LazyLock::new(DashMap::new);
const DNS_TTL: Duration = Duration::from_secs(60);

/// Resolve `host:port` without blocking a worker thread. IP literals never touch DNS.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, UpstreamError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(e) = DNS.get(host) {
        if e.1.elapsed() < DNS_TTL {
            if let Some(ip) = e.0.first() {
                return Ok(SocketAddr::new(*ip, port));
            }
        }
    }
    let addrs: Vec<std::net::IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| UpstreamError::Resolve(host.to_string()))?
        .map(|a| a.ip())
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| UpstreamError::Resolve(host.to_string()))?;
    DNS.insert(host.to_string(), (addrs, Instant::now()));
    Ok(SocketAddr::new(first, port))
}

fn peer_for(ep: &Endpoint, addr: SocketAddr, opts: &ExchangeOptions) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, ep.tls, ep.host.clone());
    peer.options.connection_timeout = Some(opts.connect_timeout);
    peer.options.read_timeout = Some(opts.read_timeout);
    peer.options.write_timeout = Some(opts.write_timeout);
    peer.options.idle_timeout = Some(opts.idle_timeout);
    if ep.tls {
        peer.options.alpn = ALPN::H2H1;
        peer.options.max_h2_streams = 100;
    }
    peer
}

fn classify(e: &pingora_error::Error, who: &str) -> UpstreamError {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => UpstreamError::Timeout(who.to_string()),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::ConnectProxyFailure
        | ErrorType::SocketError
        | ErrorType::BindError => {
            UpstreamError::Connect(who.to_string(), e.etype().as_str().to_string())
        }
        _ => UpstreamError::Io(who.to_string(), e.etype().as_str().to_string()),
    }
}

/// An upstream response whose header has arrived; the body is read on demand.
pub struct UpstreamResponse {
    session: HttpSession,
    peer: HttpPeer,
    who: String,
    idle_timeout: Duration,
    read_timeout: Duration,
}

impl UpstreamResponse {
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.session.response_header()
    }

    pub fn status(&self) -> u16 {
        self.header().map(|h| h.status.as_u16()).unwrap_or(0)
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header()
            .and_then(|h| h.headers.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// Next body chunk; `None` at the end. Each read is bounded by the read timeout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        match tokio::time::timeout(self.read_timeout, self.session.read_response_body()).await {
            Ok(r) => r.map_err(|e| classify(&e, &self.who)),
            Err(_) => Err(UpstreamError::Timeout(self.who.clone())),
        }
    }

    /// Read the whole body (bounded) and return the connection to the pool.
    pub async fn body(mut self, limit: usize) -> Result<Bytes, UpstreamError> {
        let mut buf = BytesMut::new();
        while let Some(c) = self.chunk().await? {
            if buf.len() + c.len() > limit {
                return Err(UpstreamError::TooLarge(limit));
            }
            buf.extend_from_slice(&c);
        }
        self.release().await;
        Ok(buf.freeze())
    }

    /// Return the connection to the pool once the body has been read to the end.
    pub async fn release(mut self) {
        if self.session.response_done() {
            CONNECTOR
                .release_http_session(self.session, &self.peer, Some(self.idle_timeout))
                .await;
        } else {
            self.session.shutdown().await;
        }
    }
}

fn request_header(
    ep: &Endpoint,
    req: &UpstreamRequest,
) -> Result<Box<RequestHeader>, UpstreamError> {
    let build = |e: pingora_error::BError| UpstreamError::Build(e.to_string());
    let mut h = RequestHeader::build(req.method, req.path.as_bytes(), Some(req.headers.len() + 4))
        .map_err(build)?;
    h.insert_header("host", ep.host_header()).map_err(build)?;
    h.insert_header("content-length", req.body.len().to_string())
        .map_err(build)?;
    // Ask for identity so response filters never see compressed bytes.
    h.insert_header("accept-encoding", "identity")
        .map_err(build)?;
    h.insert_header(
        "user-agent",
        concat!("loopgate/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(build)?;
    for (k, v) in &req.headers {
        h.insert_header(k.clone(), v.as_str()).map_err(build)?;
    }
    Ok(Box::new(h))
}

async fn try_send(
    ep: &Endpoint,
    peer: &HttpPeer,
    req: &UpstreamRequest,
    opts: &ExchangeOptions,
    who: &str,
) -> Result<(HttpSession, bool), (UpstreamError, bool)> {
    let (mut session, reused) = CONNECTOR
        .get_http_session(peer)
        .await
        .map_err(|e| (classify(&e, who), false))?;
    session.set_read_timeout(Some(opts.read_timeout));
    session.set_write_timeout(Some(opts.write_timeout));
    let header = request_header(ep, req).map_err(|e| (e, false))?;
    // Each stage is bounded here with tokio timers: sending by the write timeout,
    // waiting for the header by the read timeout.
    let write = async {
        session.write_request_header(header).await?;
        if !req.body.is_empty() {
            session.write_request_body(req.body.clone(), true).await?;
        }
        session.finish_request_body().await
    };
    match tokio::time::timeout(opts.write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err((classify(&e, who), reused)),
        Err(_) => return Err((UpstreamError::Timeout(who.to_string()), false)),
    }
    match tokio::time::timeout(opts.read_timeout, session.read_response_header()).await {
        Ok(Ok(())) => Ok((session, reused)),
        Ok(Err(e)) => Err((classify(&e, who), reused)),
        Err(_) => Err((UpstreamError::Timeout(who.to_string()), false)),
    }
}

/// How many times a request is sent when each failure came from a pooled connection.
const MAX_SENDS_ON_REUSED: usize = 4;

/// Send a request and wait for the response header.
///
/// A pooled connection the server closed while idle fails before the server saw the request,
/// so it is retried on the next connection, as Pingora's own proxy does (the pool may hold
/// several such connections: each failure discards one). A failure on a fresh connection, or a
/// timeout, is returned for the caller's fallback: the server may have processed the request.
pub async fn send(
    ep: &Endpoint,
    req: &UpstreamRequest,
    opts: &ExchangeOptions,
    who: &str,
) -> Result<UpstreamResponse, UpstreamError> {
    let addr = resolve(&ep.host, ep.port).await?;
    let peer = peer_for(ep, addr, opts);
    let mut sends = 0;
    let session = loop {
        sends += 1;
        match try_send(ep, &peer, req, opts, who).await {
            Ok((s, _)) => break s,
            Err((e, true))
                if sends < MAX_SENDS_ON_REUSED && !matches!(e, UpstreamError::Timeout(_)) =>
            {
                tracing::debug!(upstream = who, error = %e, "pooled connection failed; resending");
            }
            Err((e, _)) => return Err(e),
        }
    };
    Ok(UpstreamResponse {
        session,
        peer,
        who: who.to_string(),
        idle_timeout: opts.idle_timeout,
        read_timeout: opts.read_timeout,
    })
}

/// One complete request/response for background work (OAuth token exchange, webhooks,
/// judge calls): returns status and the whole body.
pub async fn oneshot(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<(u16, Bytes), UpstreamError> {
    let ep = Endpoint::parse(url).map_err(UpstreamError::Build)?;
    let method: &'static str = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        other => return Err(UpstreamError::Build(format!("unsupported method {other}"))),
    };
    // `Endpoint::parse` keeps the whole path as `base_path`.
    let path = if ep.base_path.is_empty() {
        "/".to_string()
    } else {
        ep.base_path.clone()
    };
    let req = UpstreamRequest {
        method,
        path,
        headers: headers.to_vec(),
        body,
    };
    let opts = ExchangeOptions {
        connect_timeout: timeout,
        read_timeout: timeout,
        write_timeout: timeout,
        ..Default::default()
    };
    let who = ep.host.clone();
    let fut = async {
        let resp = send(&ep, &req, &opts, &who).await?;
        let status = resp.status();
        let body = resp.body(64 * 1024 * 1024).await?;
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| UpstreamError::Timeout(who.clone()))?
}
