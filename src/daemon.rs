//! Process lifecycle around Pingora: readiness (pid file, systemd `sd_notify`), draining
//! during a graceful upgrade or shutdown, and `loopgate upgrade` — the zero-downtime
//! replacement of a running instance (what the systemd unit's `ExecReload` runs).
//!
//! Upgrade, step by step (Pingora's graceful upgrade):
//! 1. `loopgate upgrade` validates the config like `check` (an invalid one stops here,
//!    the old process keeps serving);
//! 2. starts `loopgate serve --upgrade`, which listens on the upgrade socket;
//! 3. once that socket is listening, sends SIGQUIT to the old process, which hands its
//!    listening sockets over it, keeps accepting for 5 s beside the new process (answering
//!    with `Connection: close` so clients move over), then stops accepting, finishes the
//!    requests in flight, flushes its traces and exits;
//! 4. the new process, serving, writes the pid file and tells systemd `MAINPID=<new>`,
//!    `READY=1`; `loopgate upgrade` returns once the pid file names the new process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pingora::server::ExecutionPhase;

static DRAINING: AtomicBool = AtomicBool::new(false);

/// True once this process stops taking new work (graceful upgrade or shutdown): responses
/// then close their connection so keep-alive clients reconnect to the new process.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Send a state string to systemd's notify socket (`$NOTIFY_SOCKET`); a no-op outside
/// systemd. Errors are logged, never fatal.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_notify(&path, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

fn send_notify(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(path))?;
    }
    Ok(())
}

/// Write the pid file atomically (temp file + rename).
pub fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{pid}"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

pub fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Remove the pid file if it still names this process (a successor may own it now).
pub fn remove_pid_file_if_ours(path: &Path) {
    if read_pid_file(path) == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(path);
    }
}

/// An address a local client can connect to for a listen address (`0.0.0.0` → loopback).
fn probe_addr(listen: &str) -> Option<SocketAddr> {
    let mut a: SocketAddr = listen.parse().ok()?;
    if a.ip().is_unspecified() {
        a.set_ip(match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(a)
}

/// Follow Pingora's execution phases on a thread: once running and the listeners accept,
/// write the pid file and notify systemd (`MAINPID` too, so a graceful upgrade hands the
/// service over to this process); on upgrade or shutdown, start draining.
pub fn watch_lifecycle(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    listen: Vec<String>,
    pid_file: Option<PathBuf>,
) {
    let spawned = std::thread::Builder::new()
        .name("loopgate-lifecycle".into())
        .spawn(move || loop {
            let phase = match phases.blocking_recv() {
                Ok(p) => p,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            match phase {
                ExecutionPhase::Running => {
                    ready(&listen, pid_file.as_deref());
                }
                ExecutionPhase::GracefulUpgradeTransferringFds
                | ExecutionPhase::GracefulTerminate => {
                    DRAINING.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the lifecycle thread: no pid file, no readiness notification");
    }
}

fn ready(listen: &[String], pid_file: Option<&Path>) {
    // Services bind in their own runtimes after `Running` is announced: wait until each
    // listener accepts (bounded) before telling anyone this process serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    for a in listen.iter().filter_map(|l| probe_addr(l)) {
        while TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_err() {
            if Instant::now() > deadline {
                tracing::error!(listen = %a, "listener not accepting after 30 s; not reporting ready");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let pid = std::process::id();
    if let Some(p) = pid_file {
        if let Err(e) = write_pid_file(p, pid) {
            tracing::warn!(path = %p.display(), error = %e, "cannot write the pid file");
        }
    }
    sd_notify(&format!("MAINPID={pid}\nREADY=1"));
    tracing::info!(pid, "serving");
}

/// Whether a unix socket is listening at `path` (`/proc/net/unix`, flag `__SO_ACCEPTCON`),
/// checked without connecting: the upgrade socket takes exactly one connection.
fn unix_socket_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        // No /proc/net: the file appears at bind(2), listen(2) follows right after.
        if path.exists() {
            std::thread::sleep(Duration::from_millis(100));
            return true;
        }
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & 0x0001_0000 != 0)
    })
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

pub struct UpgradeOptions {
    pub config: Option<PathBuf>,
    /// The running instance (systemd: `$MAINPID`); default: the pid file's.
    pub pid: Option<i32>,
    pub timeout: Duration,
}

/// `loopgate upgrade`: replace the running instance with this binary, without dropping
/// a connection. Returns the new pid.
pub fn upgrade(opts: UpgradeOptions) -> Result<u32, String> {
    let cfg = crate::config::GatewayConfig::load(opts.config.as_deref())
        .map_err(|e| format!("config not valid, the running instance is left alone: {e}"))?;
    crate::routing::Runtime::build_checked(cfg.clone(), 1)
        .map_err(|e| format!("config not valid, the running instance is left alone: {e}"))?;
    let pid_file = cfg.server.pid_file.as_deref().map(PathBuf::from);
    let sock = PathBuf::from(cfg.server.upgrade_sock.clone().unwrap_or_default());
    let old = match opts.pid {
        Some(p) => p,
        None => pid_file.as_deref().and_then(read_pid_file).ok_or_else(|| {
            format!(
                "no running instance: pass --pid, or start one that writes {}",
                pid_file.as_deref().unwrap_or(Path::new("?")).display()
            )
        })?,
    };
    if !alive(old) {
        return Err(format!("process {old} is not running"));
    }
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("serve").arg("--upgrade");
    if let Some(c) = &opts.config {
        cmd.arg("-c").arg(c);
    }
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a signal to the caller's group must not reach it.
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", exe.display()))?;
    let new = child.id();
    let deadline = Instant::now() + opts.timeout;
    let exited = |child: &mut std::process::Child| -> Option<String> {
        match child.try_wait() {
            Ok(Some(st)) => Some(format!("the new process exited ({st}) before serving; the old one (pid {old}) keeps serving")),
            _ => None,
        }
    };
    while !unix_socket_listening(&sock) {
        if let Some(e) = exited(&mut child) {
            return Err(e);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "the new process did not open {} in time; the old one keeps serving",
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) with a standard signal on a pid we checked exists.
    if unsafe { libc::kill(old, libc::SIGQUIT) } != 0 {
        let _ = child.kill();
        return Err(format!(
            "cannot signal process {old}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let Some(pid_file) = pid_file else {
        return Ok(new);
    };
    while read_pid_file(&pid_file) != Some(new as i32) {
        if let Some(e) = exited(&mut child) {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the new process (pid {new}) did not report ready in time"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_addresses_reach_wildcard_listeners_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:80"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(probe_addr("[::]:80"), Some("[::1]:80".parse().unwrap()));
        assert_eq!(
            probe_addr("10.1.2.3:80"),
            Some("10.1.2.3:80".parse().unwrap())
        );
    }

    #[test]
    fn notify_reaches_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&p).unwrap();
        send_notify(p.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn listening_unix_sockets_are_seen_without_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.sock");
        assert!(!unix_socket_listening(&p));
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(unix_socket_listening(&p));
    }
}
