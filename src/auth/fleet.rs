//! The shared limits backend: rate counters and budget spend of virtual keys in Redis, so
//! every gateway on one Redis enforces one limit and one budget together.
//!
//! - **Admission** is one Lua script (`EVALSHA`, one round trip): it reads the key's spend in
//!   each budgeted period and refuses when a cap is reached, then runs GCRA on every rate
//!   limit of the request (the model's, then the key's; requests and tokens per minute) and
//!   writes the new theoretical arrival times only when all of them fit. Time is Redis's
//!   own (`TIME`), so gateways with skewed clocks share one timeline.
//! - **Settlement** (the request ended) is a second script, sent off the request path by a
//!   spawned task: the real cost is added to the spend of the day, month and total
//!   (integer nano-dollars, period-stamped keys with a TTL), and the token estimate is
//!   corrected to the real usage.
//! - **Faults**: every call is bounded by `limits.timeout_ms`; a timeout or an error applies
//!   `limits.failure_mode` (admit, or refuse with 503 `limits_unavailable`), counts
//!   `loopgate_limits_backend_errors_total` and logs one warning when an outage starts and
//!   one line when Redis answers again. The connection manager reconnects by itself.
//!
//! Keys: `<prefix>{<holder>}:rate:<scope>:<rpm|tpm>` (the TAT in µs of Redis time) and
//! `<prefix>{<holder>}:spend:<day|month|total>[:<period index>]` (nano-USD), where the
//! holder is a key id or `project:<name>`, `team:<name>`, `user:<name>`; the braces keep
//! one holder's entries in one Redis Cluster slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{FailureMode, LimitsConfig};
use crate::error::GatewayError;
use crate::upstream::redis::{RedisLink, RedisLinkError};

/// GCRA window (and burst) in µs: one minute.
pub const WINDOW_US: f64 = 60_000_000.0;

/// Budgets first (refuse when spent), then GCRA on every limit; writes only when all fit.
/// ARGV[1]: H, the holders (key, project, team, user) of the request.
/// KEYS[1..3H]: each holder's spend of the day, month, total; KEYS[3H+1..]: the limits' TAT
/// keys. ARGV[2..3H+1]: the caps in nano-USD (-1: no budget in that period);
/// ARGV[3H+2..]: the cost in µs of this request on each limit.
/// Reply: {0, spent_1 .. spent_3H, used_1, used_2, ...} (µs of the window in use after
/// taking), {1, spend index, spent} (a budget is spent), {2, limit, wait_us}.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h3 = tonumber(ARGV[1]) * 3
local out = {0}
for i = 1, h3 do
  out[i + 1] = 0
  local cap = tonumber(ARGV[i + 1])
  if cap >= 0 then
    local spent = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    if spent >= cap then return {1, i, spent} end
    out[i + 1] = spent
  end
end
local n = #KEYS - h3
local next = {}
for j = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[h3 + j]) or '0') or 0
  if tat < now then tat = now end
  local nt = tat + tonumber(ARGV[h3 + 1 + j])
  if nt - now > 60000000 then return {2, j, nt - now - 60000000} end
  next[j] = nt
  out[h3 + 1 + j] = nt - now
end
for j = 1, n do
  local ttl = math.floor((next[j] - now) / 1000) + 1000
  redis.call('SET', KEYS[h3 + j], string.format('%.0f', next[j]), 'PX', ttl)
end
return out
";

/// ARGV[1]: H, the holders; KEYS[1..3H]: each holder's spend of the day, month, total;
/// KEYS[3H+1..]: TAT keys to move. ARGV[2]: nano-USD to add (0: none); ARGV[3], ARGV[4]:
/// TTL in s of the day and month keys; ARGV[5..]: µs to move each TAT by (negative: a
/// refund). A TAT that expired stays gone.
const SETTLE: &str = r"
local h3 = tonumber(ARGV[1]) * 3
local nanos = tonumber(ARGV[2])
if nanos > 0 then
  for i = 1, h3, 3 do
    redis.call('INCRBY', KEYS[i], ARGV[2])
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    redis.call('INCRBY', KEYS[i + 1], ARGV[2])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[4])
    redis.call('INCRBY', KEYS[i + 2], ARGV[2])
  end
end
for j = h3 + 1, #KEYS do
  local d = tonumber(ARGV[j - h3 + 4])
  if d ~= 0 and redis.call('EXISTS', KEYS[j]) == 1 then
    redis.call('INCRBY', KEYS[j], string.format('%.0f', d))
  end
end
return 1
";

/// A day key outlives its day by a day; a month key by a few days.
const DAY_TTL_SECS: u64 = 2 * 86_400;
const MONTH_TTL_SECS: u64 = 35 * 86_400;

/// One rate limit of a request as the script sees it.
#[derive(Debug, Clone)]
pub struct SharedLimit {
    pub key: String,
    /// µs of the window one unit (a request, a token) uses.
    pub us_per_unit: f64,
    /// µs this request costs.
    pub cost_us: f64,
}

/// What the script answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admitted: spend per holder and period (nano-USD, holder-major) and the µs in use
    /// of each limit after taking.
    Admitted { spent: Vec<u64>, used_us: Vec<u64> },
    /// A budget is spent: its index (holder × 3 + period slot) and the spend.
    Budget { slot: usize, spent: u64 },
    /// Limit `index` (into the request's limits) does not fit for `wait`.
    Rate { index: usize, wait: Duration },
}

/// Why a call to Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Link(#[from] RedisLinkError),
    #[error("unexpected reply from the limits script: {0}")]
    Reply(String),
}

/// The Redis side of the limiter: one multiplexed connection (made on first use, inside the
/// runtime that serves requests) that reconnects by itself.
pub struct Fleet {
    link: RedisLink,
    pub failure_mode: FailureMode,
    prefix: String,
    admit: redis::Script,
    settle: redis::Script,
    /// Redis is failing (an outage was logged), and the faults seen during it.
    down: AtomicBool,
    faults: AtomicU64,
}

impl Fleet {
    /// Check the URL; nothing is connected until the first request.
    pub fn new(cfg: &LimitsConfig) -> Result<Fleet, String> {
        let url = cfg
            .redis_url
            .as_deref()
            .ok_or("limits.redis_url is not set")?;
        let link = RedisLink::open(url, Duration::from_millis(cfg.timeout_ms))
            .map_err(|e| format!("limits.redis_url: {e}"))?;
        Ok(Fleet {
            link,
            failure_mode: cfg.failure_mode,
            prefix: cfg.key_prefix.clone(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            down: AtomicBool::new(false),
            faults: AtomicU64::new(0),
        })
    }

    /// Where Redis is, for logs: scheme, host and port (or socket path), never the
    /// user name or password.
    pub fn endpoint(&self) -> String {
        self.link.endpoint()
    }

    /// `<prefix>{<id>}:rate:<scope>:<kind>`.
    pub fn rate_key(&self, id: &str, scope: Option<&str>, kind: &str) -> String {
        match scope {
            Some(model) => format!("{}{{{id}}}:rate:model:{model}:{kind}", self.prefix),
            None => format!("{}{{{id}}}:rate:key:{kind}", self.prefix),
        }
    }

    /// The spend keys of the day, month and total for the periods `idx` (day, month).
    pub fn spend_keys(&self, id: &str, day: i64, month: i64) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}{{{id}}}:spend:day:{day}"),
            format!("{p}{{{id}}}:spend:month:{month}"),
            format!("{p}{{{id}}}:spend:total"),
        ]
    }

    /// Run the admission script: one spend triple and caps per holder, then the limits.
    pub async fn admit(
        &self,
        spend_keys: &[[String; 3]],
        caps: &[[i64; 3]],
        limits: &[SharedLimit],
    ) -> Result<Verdict, FleetError> {
        let mut conn = self.link.conn().map_err(RedisLinkError::from)?;
        let mut inv = self.admit.prepare_invoke();
        inv.arg(spend_keys.len());
        for k in spend_keys.iter().flatten() {
            inv.key(k);
        }
        for c in caps.iter().flatten() {
            inv.arg(*c);
        }
        for l in limits {
            inv.key(&l.key);
            inv.arg(format!("{:.0}", l.cost_us.max(0.0)));
        }
        let reply: Vec<i64> = self.link.bounded(inv.invoke_async(&mut conn)).await?;
        self.answered();
        parse_verdict(&reply, spend_keys.len(), limits.len())
    }

    /// Run the settlement script (`nanos` of spend for every holder; µs to move each TAT by).
    pub async fn settle(
        &self,
        spend_keys: &[[String; 3]],
        nanos: u64,
        moves: &[(String, f64)],
    ) -> Result<(), FleetError> {
        let mut conn = self.link.conn().map_err(RedisLinkError::from)?;
        let mut inv = self.settle.prepare_invoke();
        inv.arg(spend_keys.len());
        for k in spend_keys.iter().flatten() {
            inv.key(k);
        }
        inv.arg(nanos).arg(DAY_TTL_SECS).arg(MONTH_TTL_SECS);
        for (k, d) in moves {
            inv.key(k);
            inv.arg(format!("{d:.0}"));
        }
        let _: i64 = self.link.bounded(inv.invoke_async(&mut conn)).await?;
        self.answered();
        Ok(())
    }

    /// The spend of the day, month and total (nano-USD).
    pub async fn spend(&self, spend_keys: &[String; 3]) -> Result<[u64; 3], FleetError> {
        let mut conn = self.link.conn().map_err(RedisLinkError::from)?;
        let mut cmd = redis::cmd("MGET");
        for k in spend_keys {
            cmd.arg(k);
        }
        let v: Vec<Option<u64>> = self.link.bounded(cmd.query_async(&mut conn)).await?;
        self.answered();
        let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok([at(0), at(1), at(2)])
    }

    /// Count a fault and log it, at most once per [`LOG_EVERY`].
    pub fn fault(&self, what: &str, e: &FleetError, outcome: &'static str) {
        crate::metrics::metrics()
            .limits_backend_errors
            .with_label_values(&[outcome])
            .inc();
        self.log_fault(what, e);
    }

    /// Log a fault without counting a request: one warning when an outage starts.
    pub fn log_fault(&self, what: &str, e: &FleetError) {
        self.faults.fetch_add(1, Ordering::AcqRel);
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = %e,
                failure_mode = ?self.failure_mode,
                "limits backend: {what} failed; the failure mode applies until Redis answers again"
            );
        }
    }

    /// Redis answered: ends an outage (one line with the faults it saw).
    fn answered(&self) {
        if self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel) {
            let faults = self.faults.swap(0, Ordering::AcqRel);
            tracing::warn!(faults, "limits backend: Redis answers again");
        }
    }

    /// The 503 of `fail_closed`.
    pub fn unavailable(&self) -> GatewayError {
        GatewayError::Upstream {
            status: 503,
            message: format!(
                "Rate limits and budgets cannot be checked right now: the shared limits store did not answer within {} ms. Retry shortly.",
                self.link.timeout().as_millis()
            ),
            retry_after: Some("1".into()),
            code: "limits_unavailable",
        }
    }
}

/// `holders` spend triples and `n` limits.
fn parse_verdict(r: &[i64], holders: usize, n: usize) -> Result<Verdict, FleetError> {
    let bad = || FleetError::Reply(format!("{r:?}"));
    let at = |i: usize| r.get(i).copied().ok_or_else(bad);
    let h3 = holders * 3;
    match at(0)? {
        0 if r.len() == 1 + h3 + n => Ok(Verdict::Admitted {
            spent: r[1..1 + h3].iter().map(|v| (*v).max(0) as u64).collect(),
            used_us: r[1 + h3..].iter().map(|v| (*v).max(0) as u64).collect(),
        }),
        1 => Ok(Verdict::Budget {
            slot: usize::try_from(at(1)? - 1)
                .ok()
                .filter(|i| *i < h3)
                .ok_or_else(bad)?,
            spent: at(2)?.max(0) as u64,
        }),
        2 => {
            let index = usize::try_from(at(1)? - 1).map_err(|_| bad())?;
            if index >= n {
                return Err(bad());
            }
            Ok(Verdict::Rate {
                index,
                wait: Duration::from_micros(at(2)?.max(0) as u64),
            })
        }
        _ => Err(bad()),
    }
}

/// What a fleet-admitted request settles when it ends.
pub struct FleetTicket {
    pub fleet: Arc<Fleet>,
    /// The spend keys of every holder of the request.
    pub spend_keys: Vec<[String; 3]>,
    /// TAT keys of the token limits, their µs per token and the tokens charged up front.
    pub tokens: Vec<(String, f64, u64)>,
}

impl FleetTicket {
    /// Send the settlement off the request path (a spawned task, bounded by the timeout).
    pub fn settle(self, tokens: u64, nanos: u64) {
        let moves: Vec<(String, f64)> = self
            .tokens
            .iter()
            .map(|(k, us, charged)| (k.clone(), (tokens as f64 - *charged as f64) * us))
            .filter(|(_, d)| d.abs() >= 1.0)
            .collect();
        if nanos == 0 && moves.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if let Err(e) = self.fleet.settle(&self.spend_keys, nanos, &moves).await {
                // The spend of this request is lost to the shared budget: logged, counted.
                crate::metrics::metrics()
                    .limits_backend_errors
                    .with_label_values(&["settle_lost"])
                    .inc();
                self.fleet.log_fault("settling a request", &e);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_and_bad_replies_are_errors() {
        assert_eq!(
            parse_verdict(&[0, 1, 2, 3, 600, 700], 1, 2).ok(),
            Some(Verdict::Admitted {
                spent: vec![1, 2, 3],
                used_us: vec![600, 700]
            })
        );
        assert_eq!(
            parse_verdict(&[0, 1, 2, 3, 4, 5, 6, 600], 2, 1).ok(),
            Some(Verdict::Admitted {
                spent: vec![1, 2, 3, 4, 5, 6],
                used_us: vec![600]
            })
        );
        assert_eq!(
            parse_verdict(&[1, 3, 99], 1, 0).ok(),
            Some(Verdict::Budget { slot: 2, spent: 99 })
        );
        assert_eq!(
            parse_verdict(&[1, 5, 99], 2, 0).ok(),
            Some(Verdict::Budget { slot: 4, spent: 99 })
        );
        assert!(parse_verdict(&[1, 4, 99], 1, 0).is_err());
        assert_eq!(
            parse_verdict(&[2, 2, 1500], 1, 2).ok(),
            Some(Verdict::Rate {
                index: 1,
                wait: Duration::from_micros(1500)
            })
        );
        assert!(parse_verdict(&[2, 3, 1], 1, 2).is_err());
        assert!(parse_verdict(&[0, 1], 1, 2).is_err());
        assert!(parse_verdict(&[7], 1, 0).is_err());
    }
}
