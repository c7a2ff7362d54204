//! `GET /v1/export/logs`: the filtered traces as streamed JSONL, one stored record per line,
//! oldest page last (same order as `/v1/logs`), ending with a trailer line
//! `{"sha256":"<hex>","count":N}` over all preceding bytes (uncompressed), so a receiver
//! can tell a complete export from a cut one. If the store fails mid-way, the stream ends
//! with an `{"error":{...}}` line and no trailer.
//!
//! Compression: `Accept-Encoding: gzip` gives `Content-Encoding: gzip` (transparent to
//! HTTP clients); `?gzip=true` alone gives an `application/gzip` download.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::logs::{check_params, check_read, scoped_filter, store_of};
use super::{AdminBody, AdminRequest, AdminResponse};
use crate::error::GatewayError;
use crate::store::writer::StoreSlot;
use crate::store::{LogFilter, LogQuery, Store};

const PAGE: usize = 1000;
/// Upper bound on pages (100M records) so a runaway export always ends.
const MAX_PAGES: usize = 100_000;

pub async fn handle(store: &StoreSlot, req: &AdminRequest) -> Option<AdminResponse> {
    if req.path.trim_end_matches('/') != "/v1/export/logs" {
        return None;
    }
    Some(
        run(store, req)
            .await
            .unwrap_or_else(|e| AdminResponse::error(&e)),
    )
}

fn wants_gzip_encoding(req: &AdminRequest) -> bool {
    req.headers.iter().any(|(k, v)| {
        k == "accept-encoding"
            && v.split(',').any(|p| {
                let mut it = p.trim().split(';');
                let enc = it.next().unwrap_or("").trim();
                let q0 = it.any(|x| x.trim().replace(' ', "") == "q=0");
                enc.eq_ignore_ascii_case("gzip") && !q0
            })
    })
}

/// The `?gzip=` parameter (validated up front, before any store work).
pub(crate) fn gzip_param(req: &AdminRequest) -> Result<bool, GatewayError> {
    match req.param("gzip") {
        None => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(_) => Err(GatewayError::invalid(
            "'gzip' must be true or false",
            Some("gzip"),
        )),
    }
}

/// A streamed JSONL export response: gzip as content encoding, as a `.gz` download named
/// `download` (`?gzip=true` alone), or plain. Returns the response and whether to compress.
pub(crate) fn export_response(
    req: &AdminRequest,
    gzip_param: bool,
    download: &str,
    rx: mpsc::Receiver<Bytes>,
) -> AdminResponse {
    let encoding = wants_gzip_encoding(req);
    let mut headers = vec![("cache-control".to_string(), "no-store".to_string())];
    if encoding {
        headers.push(("content-type".into(), "application/x-ndjson".into()));
        headers.push(("content-encoding".into(), "gzip".into()));
    } else if gzip_param {
        headers.push(("content-type".into(), "application/gzip".into()));
        headers.push((
            "content-disposition".into(),
            format!("attachment; filename=\"{download}\""),
        ));
    } else {
        headers.push(("content-type".into(), "application/x-ndjson".into()));
    }
    AdminResponse {
        status: 200,
        headers,
        body: AdminBody::Stream(rx),
    }
}

/// Whether the export body is gzip-compressed (either way of asking for it).
pub(crate) fn export_gzip(req: &AdminRequest, gzip_param: bool) -> bool {
    wants_gzip_encoding(req) || gzip_param
}

async fn run(slot: &StoreSlot, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
    check_read(req)?;
    check_params(req, &["gzip"])?;
    let gzip = gzip_param(req)?;
    let filter = scoped_filter(req)?;
    let store = store_of(slot, &req.caller.visibility(None))?;
    // Fail fast (503) rather than starting a 200 stream against a dead store.
    store.health().await.map_err(super::logs::store_err)?;
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(stream_export(store, filter, export_gzip(req, gzip), tx));
    Ok(export_response(req, gzip, "loopgate-logs.jsonl.gz", rx))
}

/// Either plain bytes or a gzip stream; both hand out what is ready to send.
enum Out {
    Plain(Vec<u8>),
    Gz(GzEncoder<Vec<u8>>),
}

impl Out {
    fn write(&mut self, b: &[u8]) {
        match self {
            Out::Plain(v) => v.extend_from_slice(b),
            // Writing into a Vec cannot fail.
            Out::Gz(g) => {
                let _ = g.write_all(b);
            }
        }
    }

    fn take(&mut self) -> Bytes {
        match self {
            Out::Plain(v) => Bytes::from(std::mem::take(v)),
            Out::Gz(g) => Bytes::from(std::mem::take(g.get_mut())),
        }
    }

    fn finish(self) -> Bytes {
        match self {
            Out::Plain(v) => Bytes::from(v),
            Out::Gz(g) => Bytes::from(g.finish().unwrap_or_default()),
        }
    }
}

/// A JSONL export body: lines hashed as they are written, then either the trailer
/// `{"sha256":"<hex>","count":N}` over all preceding (uncompressed) bytes, or an error line.
pub(crate) struct JsonlExport {
    out: Out,
    hash: Sha256,
    pub(crate) count: u64,
}

impl JsonlExport {
    pub(crate) fn new(gzip: bool) -> Self {
        JsonlExport {
            out: if gzip {
                Out::Gz(GzEncoder::new(Vec::new(), Compression::fast()))
            } else {
                Out::Plain(Vec::new())
            },
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// One record (without its newline).
    pub(crate) fn line(&mut self, record: &[u8]) {
        self.hash.update(record);
        self.hash.update(b"\n");
        self.out.write(record);
        self.out.write(b"\n");
        self.count += 1;
    }

    /// What is ready to send.
    pub(crate) fn take(&mut self) -> Bytes {
        self.out.take()
    }

    /// End with an OpenAI-shaped error line and no trailer (a cut export).
    pub(crate) fn fail(mut self, message: &str) -> Bytes {
        let line = crate::error::openai_error_body(
            message,
            "api_error",
            None,
            Some("service_unavailable"),
        );
        self.out.write(&line);
        self.out.write(b"\n");
        self.out.finish()
    }

    /// End with the trailer.
    pub(crate) fn finish(mut self) -> Bytes {
        let trailer =
            serde_json::json!({"sha256": hex::encode(self.hash.finalize()), "count": self.count});
        let mut line = serde_json::to_vec(&trailer).unwrap_or_default();
        line.push(b'\n');
        self.out.write(&line);
        self.out.finish()
    }
}

async fn stream_export(
    store: std::sync::Arc<dyn Store>,
    filter: LogFilter,
    gzip: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let mut out = JsonlExport::new(gzip);
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let page = match store
            .query_logs(&LogQuery {
                filter: filter.clone(),
                limit: PAGE,
                after: after.take(),
            })
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, exported = out.count, "export stopped by a store error");
                let last = out.fail("export interrupted: the trace store failed; retry the export");
                let _ = tx.send(last).await;
                return;
            }
        };
        for r in &page.records {
            out.line(&serde_json::to_vec(r).unwrap_or_default());
        }
        let chunk = out.take();
        if !chunk.is_empty() && tx.send(chunk).await.is_err() {
            return; // client went away
        }
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    let last = out.finish();
    if !last.is_empty() {
        let _ = tx.send(last).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::Caller;

    fn req(h: &str) -> AdminRequest {
        AdminRequest {
            method: "GET".into(),
            path: "/v1/export/logs".into(),
            query: vec![],
            body: Bytes::new(),
            caller: Caller::default(),
            headers: vec![("accept-encoding".into(), h.into())],
        }
    }

    #[test]
    fn accept_encoding_parsing() {
        assert!(wants_gzip_encoding(&req("gzip, deflate")));
        assert!(wants_gzip_encoding(&req("br;q=1.0, GZIP;q=0.5")));
        assert!(!wants_gzip_encoding(&req("gzip;q=0")));
        assert!(!wants_gzip_encoding(&req("identity")));
    }
}
