//! The link to a shared Redis (fleet limits, the shared exact cache): one multiplexed
//! connection made on first use — inside the runtime that serves requests, not the one that
//! loaded the configuration — that reconnects by itself, and every call bounded by the
//! owner's timeout so a slow or silent Redis costs a request at most that long.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why a bounded Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisLinkError {
    #[error("no answer from Redis within {0} ms")]
    Timeout(u64),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct RedisLink {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    timeout: Duration,
}

impl RedisLink {
    /// Check the URL; nothing is connected until the first call.
    pub fn open(url: &str, timeout: Duration) -> Result<RedisLink, redis::RedisError> {
        Ok(RedisLink {
            client: redis::Client::open(url)?,
            conn: OnceLock::new(),
            timeout,
        })
    }

    /// How long one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The shared connection (made on first use; reconnects after a fault).
    pub fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        // A reconnect is tried once, quickly: the caller's timeout bounds the whole call and a
        // fault is the owner's failure mode, not a wait.
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(250));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), cfg)?;
        Ok(self.conn.get_or_init(|| made).clone())
    }

    /// A Redis call bounded by the link's timeout.
    pub async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisLinkError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisLinkError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    /// Where Redis is, for logs: scheme, host and port (or socket path), never the user name
    /// or password.
    pub fn endpoint(&self) -> String {
        match self.client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}"),
            redis::ConnectionAddr::Unix(path) => format!("unix://{}", path.display()),
            _ => "redis (TLS)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_never_shows_credentials() {
        let l = RedisLink::open(
            "redis://user:s3cret-pass@10.0.0.7:6380/2",
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(l.endpoint(), "redis://10.0.0.7:6380");
        assert!(RedisLink::open("not a url", Duration::from_millis(50)).is_err());
    }

    #[tokio::test]
    async fn a_silent_redis_is_a_timeout() {
        // A listener that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", silent.local_addr().unwrap());
        let l = RedisLink::open(&url, Duration::from_millis(100)).unwrap();
        let mut c = l.conn().unwrap();
        let r: Result<Option<String>, _> = l
            .bounded(redis::cmd("GET").arg("k").query_async(&mut c))
            .await;
        assert!(matches!(r, Err(RedisLinkError::Timeout(100))), "{r:?}");
    }
}
