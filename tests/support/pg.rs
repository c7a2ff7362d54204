//! A throwaway PostgreSQL server for tests and benches, started from the machine's
//! PostgreSQL binaries: `initdb` into a temp dir, listen on 127.0.0.1 and a unix socket
//! on a free port, stopped (and the dir removed) on drop.
//!
//! Include with `#[path = "support/pg.rs"] mod pg;`. Binaries are found via
//! `LOOPGATE_PG_BINDIR`, `pg_config --bindir`, `/usr/lib/postgresql/*/bin`, or `PATH`.
//! PostgreSQL refuses to run as root, so as root the server runs as the system user
//! `loopgate-test` (created with `useradd` if missing) through `runuser`.
//! Missing binaries are a test failure with a clear message, never a silent skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TEST_USER: &str = "loopgate-test";
pub const DB_ROLE: &str = "loopgate";

pub struct PgServer {
    pub bindir: PathBuf,
    pub port: u16,
    dir: Option<tempfile::TempDir>,
    run_as: Option<String>,
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// Where the PostgreSQL server binaries are, or `None`.
pub fn find_bindir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("LOOPGATE_PG_BINDIR") {
        let p = PathBuf::from(d);
        if has_initdb(&p) {
            return Some(p);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_initdb(&p) {
                return Some(p);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
                let bin = e.path().join("bin");
                has_initdb(&bin).then_some((v, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, p)) = versions.pop() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| has_initdb(d))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn ensure_user() -> String {
    // Serialise user creation between tests of one binary.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("id")
        .args(["-u", TEST_USER])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ])
            .output()
            .expect("running useradd (needed to run PostgreSQL as non-root in tests)");
        // A parallel test may have created it meanwhile (exit code 9: already exists).
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd {TEST_USER} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    TEST_USER.to_string()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl PgServer {
    /// initdb + start. Panics with a clear message when PostgreSQL is not installed.
    pub fn start() -> PgServer {
        let bindir = find_bindir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL \
                 (e.g. `apt-get install postgresql`) or set LOOPGATE_PG_BINDIR. \
                 These tests are not skipped on purpose."
            )
        });
        let run_as = is_root().then(ensure_user);
        let dir = tempfile::Builder::new()
            .prefix("loopgate-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        if let Some(u) = &run_as {
            let out = Command::new("chown")
                .args([u.as_str(), &dir.path().to_string_lossy()])
                .output()
                .expect("chown temp dir");
            assert!(
                out.status.success(),
                "chown failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = PgServer {
            bindir,
            port: free_port(),
            dir: Some(dir),
            run_as,
        };
        let data = s.data_dir();
        let out = s.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                DB_ROLE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        s.start_server();
        s.create_db("loopgate");
        s
    }

    fn root(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    fn run(&self, bin: &str, args: &[&str]) -> Output {
        let exe = self.bindir.join(bin);
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir(self.root())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
    }

    /// (Re)start the server on its port; waits until it accepts connections.
    pub fn start_server(&self) {
        let data = self.data_dir();
        let log = self.root().join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=60 -c shared_buffers=32MB",
            self.port,
            self.root().display()
        );
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        if !out.status.success() {
            let log = std::fs::read_to_string(self.root().join("server.log")).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Stop the server (fast shutdown: clients are disconnected).
    pub fn stop_server(&self) {
        let data = self.data_dir();
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create_db(&self, name: &str) {
        let port = self.port.to_string();
        let out = self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", DB_ROLE, name],
        );
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// libpq-style connection string for database `db`.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={DB_ROLE} dbname={db}",
            self.port
        )
    }

    pub fn url(&self) -> String {
        self.url_for("loopgate")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.dir.is_some() {
            let data = self.data_dir();
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}
