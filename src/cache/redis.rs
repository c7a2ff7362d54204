//! The Redis backend of the exact cache (`[cache] backend = "redis"`): entries shared by
//! every gateway on one Redis, so an answer one gateway stored is a hit on the others.
//!
//! - **Key**: `<cache.redis_key_prefix><hex of the 32-byte cache key>`; the cache key already
//!   covers the project, the served target and every output-affecting field.
//! - **Value**: [`encode`]: a versioned binary form (magic `LGC`, version 1) holding the
//!   served provider and model, usage, cost, latency and request id of the original answer,
//!   then the JSON body or every SSE chunk with its original boundaries. Redis expires it
//!   (`SET … PX <entry TTL>`); a lookup reads the value and its `PTTL` in one round trip.
//! - **Faults**: a lookup is bounded by `cache.redis_timeout_ms`; a timeout, an error or a
//!   value that does not decode is a miss (a bad value is deleted), never an error of the
//!   request. Each fault counts `loopgate_cache_backend_errors_total{op}`; the log gets one
//!   warning when an outage starts, at most one a minute while it lasts, and one line when
//!   Redis answers again. Writes run in spawned tasks, at most [`MAX_WRITES`] in flight;
//!   beyond that a write is dropped and counted (`op="write_dropped"`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Body, CacheConfig, Entry, Key};
use crate::dialect::Usage;
use crate::upstream::redis::RedisLink;

/// Writes to Redis in flight at once; more are dropped (and counted).
pub const MAX_WRITES: usize = 64;
/// Magic and version of the encoded entry.
const MAGIC: &[u8; 4] = b"LGC\x01";
/// At most one warning per this while Redis keeps failing (or entries keep failing to decode).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a call to the shared cache failed (a miss for the caller, never an error).
pub use crate::upstream::redis::RedisLinkError as SharedError;

/// Why a stored value is not an entry.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a cache entry of this version")]
    Version,
    #[error("truncated or malformed entry")]
    Malformed,
}

/// The Redis side of the cache: one multiplexed connection (made on first use, inside the
/// runtime that serves requests) that reconnects by itself.
pub struct Shared {
    link: RedisLink,
    prefix: String,
    writes: Arc<tokio::sync::Semaphore>,
    /// Redis is failing (an outage was logged), the faults seen since the last log line,
    /// and when that line was written (ms since `epoch`).
    down: AtomicBool,
    faults: AtomicU64,
    logged_ms: AtomicU64,
    decode_logged_ms: AtomicU64,
    epoch: Instant,
}

impl Shared {
    /// Check the URL; nothing is connected until the first lookup.
    pub fn new(cfg: &CacheConfig) -> Result<Shared, String> {
        let url = cfg
            .redis_url
            .as_deref()
            .ok_or("cache.redis_url is not set")?;
        let timeout = Duration::from_millis(cfg.redis_timeout_ms.max(1));
        let link = RedisLink::open(url, timeout)
            .map_err(|_| "cache.redis_url is not a valid Redis URL")?;
        Ok(Shared {
            link,
            prefix: cfg.redis_key_prefix.clone(),
            writes: Arc::new(tokio::sync::Semaphore::new(MAX_WRITES)),
            down: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            logged_ms: AtomicU64::new(0),
            decode_logged_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Where Redis is, for logs: scheme, host and port (or socket path), never credentials.
    pub fn endpoint(&self) -> String {
        self.link.endpoint()
    }

    /// `<prefix><hex key>`.
    pub fn redis_key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, hex::encode(key))
    }

    /// The entry stored under `key`, expiring when Redis expires it. A fault, a timeout or a
    /// value that does not decode (deleted then) is `None`.
    pub async fn get(self: &Arc<Self>, key: &Key) -> Option<Entry> {
        let k = self.redis_key(key);
        let reply = match self.link.conn() {
            Ok(mut conn) => {
                let mut p = ::redis::pipe();
                p.cmd("GET").arg(&k).cmd("PTTL").arg(&k);
                self.link
                    .bounded(p.query_async::<(Option<Vec<u8>>, i64)>(&mut conn))
                    .await
            }
            Err(e) => Err(e.into()),
        };
        let (value, pttl) = match reply {
            Ok(r) => r,
            Err(e) => {
                self.fault("get", &e);
                return None;
            }
        };
        self.answered();
        let value = value?;
        // -2: expired between the two reads; -1: no TTL (not written by a gateway).
        let decoded = match u64::try_from(pttl) {
            Ok(ms) if ms > 0 => decode(
                Bytes::from(value),
                Instant::now() + Duration::from_millis(ms),
            ),
            _ if pttl == -2 => return None,
            _ => Err(DecodeError::Malformed),
        };
        match decoded {
            Ok(e) => Some(e),
            Err(err) => {
                count("decode");
                if self.rate_ok(&self.decode_logged_ms) {
                    tracing::warn!(error = %err, "cache: a shared entry did not decode; it is a miss and is deleted");
                }
                self.delete(k);
                None
            }
        }
    }

    /// Store `e` until it expires, off the request path: a spawned task bounded by the
    /// timeout; dropped (and counted) when [`MAX_WRITES`] are already in flight.
    pub fn put(self: &Arc<Self>, key: Key, e: Arc<Entry>) {
        let ttl_ms = e
            .expires
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        if ttl_ms == 0 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            count("write_dropped");
            return;
        };
        let this = Arc::clone(self);
        rt.spawn(async move {
            let _permit = permit;
            let value = encode(&e);
            let k = this.redis_key(&key);
            let r = match this.link.conn() {
                Ok(mut conn) => {
                    let mut cmd = ::redis::cmd("SET");
                    cmd.arg(&k).arg(value).arg("PX").arg(ttl_ms);
                    this.link.bounded(cmd.query_async::<()>(&mut conn)).await
                }
                Err(e) => Err(e.into()),
            };
            match r {
                Ok(()) => this.answered(),
                Err(err) => this.fault("set", &err),
            }
        });
    }

    /// Delete `k` (a value that did not decode), off the request path.
    fn delete(self: &Arc<Self>, k: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = Arc::clone(self);
        rt.spawn(async move {
            let r = match this.link.conn() {
                Ok(mut conn) => {
                    let mut cmd = ::redis::cmd("DEL");
                    cmd.arg(&k);
                    this.link.bounded(cmd.query_async::<i64>(&mut conn)).await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(err) = r {
                this.fault("delete", &err);
            }
        });
    }

    /// True at most once per [`LOG_EVERY`] per `slot`.
    fn rate_ok(&self, slot: &AtomicU64) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64 + LOG_EVERY.as_millis() as u64;
        let last = slot.load(Ordering::Acquire);
        (last == 0 || now >= last + LOG_EVERY.as_millis() as u64)
            && slot
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Count a fault; log when an outage starts and at most once per [`LOG_EVERY`] after.
    fn fault(&self, op: &'static str, e: &SharedError) {
        count(op);
        let faults = self.faults.fetch_add(1, Ordering::AcqRel) + 1;
        let starts = !self.down.swap(true, Ordering::AcqRel);
        if self.rate_ok(&self.logged_ms) || starts {
            self.faults.store(0, Ordering::Release);
            tracing::warn!(
                error = %e,
                faults,
                redis = %self.endpoint(),
                "cache backend: {op} failed; lookups are misses and answers are not shared until Redis answers again"
            );
        }
    }

    /// Redis answered: ends an outage (one line with the faults it saw since the last line).
    fn answered(&self) {
        if self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel) {
            let faults = self.faults.swap(0, Ordering::AcqRel);
            tracing::warn!(faults, redis = %self.endpoint(), "cache backend: Redis answers again");
        }
    }
}

/// `loopgate_cache_backend_errors_total{op}` (a fixed label set).
fn count(op: &'static str) {
    crate::metrics::metrics()
        .cache_backend_errors
        .with_label_values(&[op])
        .inc();
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

/// The stored form of `e` (everything but its expiry, which Redis keeps):
/// `LGC\x01`, kind (0 JSON, 1 stream), usage (5 × u64 LE, reported flag), cost and latency
/// (f64 LE), provider, model (flag + string), request id (u32 LE length + UTF-8 each), then
/// the body (u32 length + bytes) or the chunk count and each chunk (u32 length + bytes).
pub fn encode(e: &Entry) -> Vec<u8> {
    let body_len = match &e.body {
        Body::Json(b) => b.len() + 4,
        Body::Stream(v) => v.iter().map(|c| c.len() + 4).sum::<usize>() + 4,
    };
    let mut out = Vec::with_capacity(96 + body_len + e.provider.len() + e.request_id.len());
    out.extend_from_slice(MAGIC);
    out.push(u8::from(matches!(e.body, Body::Stream(_))));
    let u = &e.usage;
    for n in [
        u.prompt_tokens,
        u.completion_tokens,
        u.cached_tokens,
        u.cache_creation_tokens,
        u.reasoning_tokens,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.push(u8::from(u.reported));
    out.extend_from_slice(&e.cost_usd.to_le_bytes());
    out.extend_from_slice(&e.latency_ms.to_le_bytes());
    put_str(&mut out, e.provider.as_bytes());
    match &e.model {
        Some(m) => {
            out.push(1);
            put_str(&mut out, m.as_bytes());
        }
        None => out.push(0),
    }
    put_str(&mut out, e.request_id.as_bytes());
    match &e.body {
        Body::Json(b) => put_str(&mut out, b),
        Body::Stream(chunks) => {
            out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
            for c in chunks {
                put_str(&mut out, c);
            }
        }
    }
    out
}

/// Reads an encoded entry front to back; every length is checked against what is left.
struct Reader {
    b: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Malformed)?;
        if end > self.b.len() {
            return Err(DecodeError::Malformed);
        }
        let out = self.b.slice(self.at..end);
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
    fn f64(&mut self) -> Result<f64, DecodeError> {
        let v = f64::from_bits(self.u64()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(DecodeError::Malformed)
        }
    }
    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()?;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed)
    }
}

/// The entry `b` encodes, expiring at `expires`. Zero-copy for the body and chunks.
pub fn decode(b: Bytes, expires: Instant) -> Result<Entry, DecodeError> {
    if b.len() < MAGIC.len() || &b[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::Version);
    }
    let mut r = Reader { b, at: MAGIC.len() };
    let kind = r.u8()?;
    let mut n = [0u64; 5];
    for x in &mut n {
        *x = r.u64()?;
    }
    let reported = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::Malformed),
    };
    let cost_usd = r.f64()?;
    let latency_ms = r.f64()?;
    let provider = r.string()?;
    let model = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(DecodeError::Malformed),
    };
    let request_id = r.string()?;
    let body = match kind {
        0 => Body::Json(r.bytes()?),
        1 => {
            let count = r.u32()?;
            // Each chunk takes at least its 4-byte length: a count beyond that is a lie.
            if count == 0 || count > (r.b.len() - r.at) / 4 {
                return Err(DecodeError::Malformed);
            }
            let mut chunks = Vec::with_capacity(count);
            for _ in 0..count {
                chunks.push(r.bytes()?);
            }
            Body::Stream(chunks)
        }
        _ => return Err(DecodeError::Malformed),
    };
    if r.at != r.b.len() || provider.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(Entry {
        body,
        provider,
        model,
        usage: Usage {
            prompt_tokens: n[0],
            completion_tokens: n[1],
            cached_tokens: n[2],
            cache_creation_tokens: n[3],
            reasoning_tokens: n[4],
            reported,
        },
        cost_usd,
        latency_ms,
        request_id,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: Body) -> Entry {
        Entry {
            body,
            provider: "openai".into(),
            model: Some("gpt-4o-2024-08-06".into()),
            usage: Usage {
                prompt_tokens: 11,
                completion_tokens: 3,
                cached_tokens: 2,
                cache_creation_tokens: 1,
                reasoning_tokens: 0,
                reported: true,
            },
            cost_usd: 0.000_123,
            latency_ms: 456.5,
            request_id: "req-1".into(),
            expires: Instant::now(),
        }
    }

    #[test]
    fn entries_round_trip_with_their_chunking() {
        let at = Instant::now() + Duration::from_secs(5);
        let json = entry(Body::Json(Bytes::from_static(b"{\"id\":\"x\"}")));
        let d = decode(Bytes::from(encode(&json)), at).expect("json");
        assert!(matches!(&d.body, Body::Json(b) if &b[..] == b"{\"id\":\"x\"}"));
        assert_eq!(d.usage, json.usage);
        assert_eq!(
            (d.provider.as_str(), d.model.as_deref()),
            ("openai", Some("gpt-4o-2024-08-06"))
        );
        assert_eq!((d.cost_usd, d.latency_ms), (0.000_123, 456.5));
        assert_eq!((d.request_id.as_str(), d.expires), ("req-1", at));
        let chunks = vec![
            Bytes::from_static(b"data: a\n\n"),
            Bytes::from_static(b""),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ];
        let mut s = entry(Body::Stream(chunks.clone()));
        s.model = None;
        let d = decode(Bytes::from(encode(&s)), at).expect("stream");
        assert!(matches!(&d.body, Body::Stream(v) if *v == chunks));
        assert_eq!(d.model, None);
    }

    #[test]
    fn corrupt_values_are_errors_never_panics() {
        let at = Instant::now();
        let good = encode(&entry(Body::Stream(vec![Bytes::from_static(
            b"data: a\n\n",
        )])));
        assert_eq!(
            decode(Bytes::from_static(b"garbage"), at).err(),
            Some(DecodeError::Version)
        );
        let mut v2 = good.clone();
        v2[3] = 2;
        assert_eq!(
            decode(Bytes::from(v2), at).err(),
            Some(DecodeError::Version)
        );
        // Every truncation and one trailing byte are malformed.
        for n in MAGIC.len()..good.len() {
            assert!(
                decode(Bytes::copy_from_slice(&good[..n]), at).is_err(),
                "{n}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode(Bytes::from(long), at).is_err());
        // Flipping any single byte never panics.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = decode(Bytes::from(b), at);
        }
    }
}
