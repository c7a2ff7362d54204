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
use crate::store::{LogFilter, LogQuery, Store};
use crate::trace::writer::StoreSlot;

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

pub(crate) fn wants_gzip_encoding(req: &AdminRequest) -> bool {
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

async fn run(slot: &StoreSlot, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
    check_read(req)?;
    check_params(req, &["gzip"])?;
    let gzip_param = match req.param("gzip") {
        None => false,
        Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        Some(_) => {
            return Err(GatewayError::invalid(
                "'gzip' must be true or false",
                Some("gzip"),
            ))
        }
    };
    let filter = scoped_filter(req)?;
    let store = store_of(slot)?;
    // Fail fast (503) rather than starting a 200 stream against a dead store.
    store.health().await.map_err(super::logs::store_err)?;
    let encoding = wants_gzip_encoding(req);
    let gzip = encoding || gzip_param;
    let mut headers = vec![("cache-control".to_string(), "no-store".to_string())];
    if encoding {
        headers.push(("content-type".into(), "application/x-ndjson".into()));
        headers.push(("content-encoding".into(), "gzip".into()));
    } else if gzip {
        headers.push(("content-type".into(), "application/gzip".into()));
        headers.push((
            "content-disposition".into(),
            "attachment; filename=\"loopgate-logs.jsonl.gz\"".into(),
        ));
    } else {
        headers.push(("content-type".into(), "application/x-ndjson".into()));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(stream_export(store, filter, gzip, tx));
    Ok(AdminResponse {
        status: 200,
        headers,
        body: AdminBody::Stream(rx),
    })
}

/// Either plain bytes or a gzip stream; both hand out what is ready to send.
pub(crate) enum Out {
    Plain(Vec<u8>),
    Gz(GzEncoder<Vec<u8>>),
}

impl Out {
    pub(crate) fn write(&mut self, b: &[u8]) {
        match self {
            Out::Plain(v) => v.extend_from_slice(b),
            // Writing into a Vec cannot fail.
            Out::Gz(g) => {
                let _ = g.write_all(b);
            }
        }
    }

    pub(crate) fn take(&mut self) -> Bytes {
        match self {
            Out::Plain(v) => Bytes::from(std::mem::take(v)),
            Out::Gz(g) => Bytes::from(std::mem::take(g.get_mut())),
        }
    }

    pub(crate) fn finish(self) -> Bytes {
        match self {
            Out::Plain(v) => Bytes::from(v),
            Out::Gz(g) => Bytes::from(g.finish().unwrap_or_default()),
        }
    }
}

async fn stream_export(
    store: std::sync::Arc<dyn Store>,
    filter: LogFilter,
    gzip: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let mut out = if gzip {
        Out::Gz(GzEncoder::new(Vec::new(), Compression::fast()))
    } else {
        Out::Plain(Vec::new())
    };
    let mut hash = Sha256::new();
    let mut count: u64 = 0;
    let mut after = None;
    let mut failed = false;
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
                tracing::warn!(error = %e, exported = count, "export stopped by a store error");
                let line = crate::error::openai_error_body(
                    "export interrupted: the trace store failed; retry the export",
                    "api_error",
                    None,
                    Some("service_unavailable"),
                );
                out.write(&line);
                out.write(b"\n");
                failed = true;
                break;
            }
        };
        for r in &page.records {
            let mut line = serde_json::to_vec(r).unwrap_or_default();
            line.push(b'\n');
            hash.update(&line);
            out.write(&line);
            count += 1;
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
    if !failed {
        let trailer = serde_json::json!({"sha256": hex::encode(hash.finalize()), "count": count});
        let mut line = serde_json::to_vec(&trailer).unwrap_or_default();
        line.push(b'\n');
        out.write(&line);
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
