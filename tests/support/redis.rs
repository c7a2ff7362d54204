//! A real `redis-server` on a loopback port for the tests that share state through Redis,
//! killed on drop. Without `/usr/bin/redis-server` the Redis tests are skipped with a loud
//! message, unless `LOOPGATE_REQUIRE_REDIS` is set (CI installs it), then they fail.
//! Used by `tests/fleet_limits.rs` and `tests/cache_fleet.rs` (each uses part of it).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REDIS: &str = "/usr/bin/redis-server";

pub struct RedisProc {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether Redis tests can run here; panics when they must (LOOPGATE_REQUIRE_REDIS).
pub fn redis_available() -> bool {
    if Path::new(REDIS).exists() {
        return true;
    }
    assert!(
        std::env::var_os("LOOPGATE_REQUIRE_REDIS").is_none(),
        "LOOPGATE_REQUIRE_REDIS is set but {REDIS} is missing (apt-get install redis-server)"
    );
    eprintln!("SKIPPED: {REDIS} not found; install redis-server to run the Redis tests");
    false
}

impl RedisProc {
    pub fn start(port: u16) -> RedisProc {
        Self::start_with(port, None)
    }

    /// With `requirepass` when `password` is set.
    pub fn start_with(port: u16, password: Option<&str>) -> RedisProc {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, port, password)
    }

    /// In `dir` (a restart on the directory a killed server left).
    pub fn start_in(dir: tempfile::TempDir, port: u16, password: Option<&str>) -> RedisProc {
        let mut cmd = Command::new(REDIS);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().expect("spawn redis-server");
        let r = RedisProc { child, port, dir };
        r.wait_ready();
        r
    }

    /// Poll until Redis answers a PING (any reply: NOAUTH counts), at most 10 s.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return;
                }
            }
            // The pause between polls of this bounded loop.
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not start on port {} (dir {})",
            self.port,
            self.dir.path().display()
        );
    }

    /// Kill Redis (SIGKILL: no goodbye to its clients); its port.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// Kill Redis and keep its directory and port for [`RedisProc::start_in`].
    pub fn kill_keeping_dir(mut self) -> (tempfile::TempDir, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        (std::mem::replace(&mut self.dir, dir), self.port)
    }

    pub fn url(&self) -> String {
        self.url_with(None)
    }

    pub fn url_with(&self, password: Option<&str>) -> String {
        match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// A connection of the test's own, to look at and tamper with what the gateways stored.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}
