//! Operations as an operator meets them: clean logs (text and JSON), state under the state
//! directory, the zero-downtime upgrade the systemd unit performs, `install`, `hash-key`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_loopgate");

fn loopgate() -> Command {
    let mut c = Command::new(BIN);
    for v in provider_env_vars() {
        c.env_remove(v);
    }
    for v in [
        "LOOPGATE_LISTEN",
        "LOOPGATE_METRICS_LISTEN",
        "LOOPGATE_DB",
        "LOOPGATE_STATE_DIR",
        "LOOPGATE_PID_FILE",
        "LOOPGATE_UPGRADE_SOCK",
        "LOOPGATE_LOG_FORMAT",
        "NOTIFY_SOCKET",
        "STATE_DIRECTORY",
        "XDG_STATE_HOME",
    ] {
        c.env_remove(v);
    }
    c
}

/// A config with no path in it: every file goes to the state directory.
fn config(dir: &Path, port: u16, mport: u16) -> PathBuf {
    let p = dir.join("gateway.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{mport}\"\nthreads = 2\nwatch = false\n\n[storage]\nflush_interval_ms = 20\n"
        ),
    )
    .unwrap();
    p
}

struct Env {
    vars: Vec<(&'static str, String)>,
}

impl Env {
    fn new(state: &Path, mock: &MockUpstream) -> Env {
        Env {
            vars: vec![
                ("STATE_DIRECTORY", state.display().to_string()),
                ("LOOPGATE_MASTER_KEY", MASTER_KEY.to_string()),
                ("LOOPGATE_LOG", "info".to_string()),
                ("OPENAI_API_KEY", "sk-test".to_string()),
                ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
            ],
        }
    }
    fn apply(&self, c: &mut Command) {
        for (k, v) in &self.vars {
            c.env(k, v);
        }
    }
}

fn log_to(path: &Path) -> (Stdio, Stdio) {
    let f = std::fs::File::create(path).unwrap();
    (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn wait_for(mut f: impl FnMut() -> bool, within: Duration, what: &str) {
    assert!(
        eventually(&mut f, within).await,
        "timed out waiting for {what}"
    );
}

fn alive(pid: i32) -> bool {
    // A zombie (reparented, not yet reaped) has exited.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid, sig);
    }
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lines logged at WARN or ERROR (text or JSON format).
fn warnings(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let word = l.split_whitespace().nth(1).unwrap_or_default();
            word == "WARN"
                || word == "ERROR"
                || l.contains("\"level\":\"WARN\"")
                || l.contains("\"level\":\"ERROR\"")
        })
        .map(str::to_string)
        .collect()
}

async fn chat(c: &reqwest::Client, port: u16, stream: bool) -> Result<(), String> {
    let mut body = chat_body("gpt-4o");
    body["stream"] = stream.into();
    let r = c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("authorization", auth())
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("send: {e:?}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("body: {e:?}"))?;
    if status != 200 || (stream && !text.contains("[DONE]")) {
        return Err(format!("{status}: {text}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_logs_no_warning_no_colour_and_json_lines_parse() {
    let mock = MockUpstream::start(openai_like()).await;
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (port, mport) = (free_port(), free_port());
        let cfg = config(dir.path(), port, mport);
        let log = dir.path().join("stderr.log");
        let (out, err) = log_to(&log);
        let mut cmd = loopgate();
        Env::new(&state, &mock).apply(&mut cmd);
        let mut child = cmd
            .args(["serve", "-c"])
            .arg(&cfg)
            .current_dir(dir.path())
            .env("LOOPGATE_LOG_FORMAT", format)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let pid_file = state.join("loopgate.pid");
        wait_for(
            || read_pid(&pid_file) == Some(pid),
            Duration::from_secs(20),
            "the pid file",
        )
        .await;

        // A normal session: JSON and streamed completions on kept-alive and concurrent
        // connections, model list, health, metrics.
        let c = client();
        for i in 0..30 {
            chat(&c, port, i % 5 == 0).await.unwrap();
        }
        let calls: Vec<_> = (0..10).map(|_| chat(&c, port, false)).collect();
        for r in futures_util::future::join_all(calls).await {
            r.unwrap();
        }
        for path in ["/v1/models", "/health"] {
            let r = c
                .get(format!("http://127.0.0.1:{port}{path}"))
                .header("authorization", auth())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let m = reqwest::get(format!("http://127.0.0.1:{mport}/metrics"))
            .await
            .unwrap();
        assert_eq!(m.status(), 200);
        // The database landed in the state directory, not the working directory.
        let db = state.join("loopgate.db");
        wait_for(
            || db.exists() && trace_rows(&db, "") == 40,
            Duration::from_secs(10),
            "40 traces in <state>/loopgate.db",
        )
        .await;
        assert!(!dir.path().join("loopgate.db").exists());

        signal(pid, libc::SIGTERM);
        let st = wait_exit(&mut child, Duration::from_secs(40)).await;
        assert!(st.success(), "{st}");
        assert!(!pid_file.exists(), "pid file left behind");

        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "ANSI escape in a log file:\n{text}"
        );
        let bad = warnings(&text);
        assert!(
            bad.is_empty(),
            "{format}: WARN/ERROR on the happy path:\n{bad:#?}"
        );
        match format {
            "text" => assert!(
                text.contains(" INFO ") && text.contains("serving"),
                "{text}"
            ),
            _ => {
                let mut serving = false;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                    assert!(
                        v["level"].is_string() && v["timestamp"].is_string(),
                        "{line}"
                    );
                    serving |= v["fields"]["message"] == "serving";
                }
                assert!(serving, "{text}");
            }
        }
    }
}

#[test]
fn a_bad_log_format_is_refused_with_the_variable_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = loopgate()
        .arg("serve")
        .env("LOOPGATE_LOG_FORMAT", "xml")
        .env("LOOPGATE_STATE_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LOOPGATE_LOG_FORMAT"), "{err}");
}

#[test]
fn explicit_paths_and_env_overrides_beat_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    // `check` prints nothing about paths; the resolution is a library call.
    let cfg_path = dir.path().join("g.toml");
    std::fs::write(
        &cfg_path,
        "[server]\npid_file = \"/run/x/lg.pid\"\n[storage]\nsqlite_path = \"/data/lg.db\"\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let mut cfg = loopgate::config::GatewayConfig::parse(&text, "g.toml").unwrap();
    let env = |k: &str| match k {
        "STATE_DIRECTORY" => Some("/var/lib/loopgate".to_string()),
        _ => None,
    };
    cfg.apply_state_dir(&env).unwrap();
    assert_eq!(cfg.server.pid_file.as_deref(), Some("/run/x/lg.pid"));
    assert_eq!(
        cfg.server.upgrade_sock.as_deref(),
        Some("/var/lib/loopgate/upgrade.sock")
    );
    assert_eq!(cfg.storage["sqlite_path"].as_str(), Some("/data/lg.db"));
    assert_eq!(
        cfg.storage["spill_path"].as_str(),
        Some("/var/lib/loopgate/loopgate-spill.jsonl")
    );
    assert_eq!(cfg.state_dir_from, "STATE_DIRECTORY");
    // A socket path too long for sun_path is refused by `check`, naming the fix.
    let long = dir.path().join("s".repeat(120));
    let out = loopgate()
        .args(["check", "-c"])
        .arg(&cfg_path)
        .env("LOOPGATE_UPGRADE_SOCK", &long)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOOPGATE_UPGRADE_SOCK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_drops_no_request() {
    let mock = MockUpstream::start(openai_like()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (port, mport) = (free_port(), free_port());
    let cfg = config(dir.path(), port, mport);
    let env = Env::new(&state, &mock);
    // systemd's notify socket, to see what systemd would be told.
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let recv_until = |want: &str| -> String {
        let mut buf = [0u8; 512];
        let mut seen = String::new();
        loop {
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no '{want}' from sd_notify ({e}); got: {seen}"));
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.push_str(&msg);
            seen.push('|');
            if msg.contains(want) {
                return msg;
            }
        }
    };

    let old_log = dir.path().join("old.log");
    let (out, err) = log_to(&old_log);
    let mut cmd = loopgate();
    env.apply(&mut cmd);
    let mut old = cmd
        .args(["serve", "-c"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let old_pid = old.id() as i32;
    let msg = recv_until("READY=1");
    assert!(msg.contains(&format!("MAINPID={old_pid}")), "{msg}");
    let pid_file = state.join("loopgate.pid");
    assert_eq!(read_pid(&pid_file), Some(old_pid));

    // Two clients with kept-alive connections, requests back to back (bounded).
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..2 {
        let (ok, failures, stop) = (ok.clone(), failures.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            for i in 0..20_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match chat(&c, port, (i + w) % 7 == 0).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    wait_for(
        || ok.load(Ordering::Relaxed) >= 20,
        Duration::from_secs(20),
        "traffic",
    )
    .await;

    // Exactly the unit's ExecReload: `loopgate upgrade -c <config> --pid $MAINPID`.
    let new_log = dir.path().join("new.log");
    let (out, err) = log_to(&new_log);
    let mut cmd = loopgate();
    env.apply(&mut cmd);
    cmd.arg("upgrade")
        .arg("-c")
        .arg(&cfg)
        .args(["--pid", &old_pid.to_string()])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(out)
        .stderr(err);
    let st = tokio::task::spawn_blocking(move || cmd.status().unwrap())
        .await
        .unwrap();
    let new_text = || std::fs::read_to_string(&new_log).unwrap_or_default();
    assert!(st.success(), "upgrade failed:\n{}", new_text());
    let new_pid = read_pid(&pid_file).expect("pid file after upgrade");
    assert_ne!(new_pid, old_pid);
    assert!(alive(new_pid));
    let msg = recv_until(&format!("MAINPID={new_pid}"));
    assert!(msg.contains("READY=1"), "{msg}");

    // The old process drains and exits cleanly; traffic goes on, served by the new one.
    let st = wait_exit(&mut old, Duration::from_secs(60)).await;
    assert!(st.success(), "old process: {st}");
    let at_exit = ok.load(Ordering::Relaxed);
    wait_for(
        || ok.load(Ordering::Relaxed) >= at_exit + 50,
        Duration::from_secs(30),
        "requests after the old process exited",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the upgrade: {:#?}",
        failures.len(),
        ok.load(Ordering::Relaxed) as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let total = ok.load(Ordering::Relaxed);
    let h = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    // Every request of both processes was traced into the one database.
    let db = state.join("loopgate.db");
    wait_for(
        || trace_rows(&db, "") == total as i64,
        Duration::from_secs(15),
        "every trace of both processes",
    )
    .await;

    let old_text = std::fs::read_to_string(&old_log).unwrap();
    assert!(old_text.contains("SIGQUIT"), "{old_text}");
    for (who, text) in [("old", old_text), ("new", new_text())] {
        let bad = warnings(&text);
        assert!(
            bad.is_empty(),
            "{who}: WARN/ERROR during the upgrade:\n{bad:#?}"
        );
    }

    signal(new_pid, libc::SIGTERM);
    wait_for(
        || !alive(new_pid),
        Duration::from_secs(40),
        "the new process to stop",
    )
    .await;
}

#[test]
fn install_writes_a_unit_that_verifies_and_a_config_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run = || {
        loopgate()
            .arg("install")
            .arg("--prefix")
            .arg(root.join("usr/local"))
            .arg("--sysconfdir")
            .arg(root.join("etc"))
            .arg("--unitdir")
            .arg(root.join("etc/systemd/system"))
            .arg("--no-daemon-reload")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = root.join("usr/local/bin/loopgate");
    let conf = root.join("etc/loopgate/gateway.toml");
    let env = root.join("etc/loopgate/env");
    let unit = root.join("etc/systemd/system/loopgate.service");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&env), 0o600);
    assert_eq!(mode(&conf), 0o644);

    // The installed config passes `check` with the installed binary, as ExecStartPre runs it.
    let mut check = Command::new(&bin);
    for v in provider_env_vars() {
        check.env_remove(v);
    }
    let out = check
        .args(["check", "-c"])
        .arg(&conf)
        .env("STATE_DIRECTORY", root.join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The unit points at the installed files and passes systemd-analyze verify.
    let text = std::fs::read_to_string(&unit).unwrap();
    let b = bin.display().to_string();
    let c = conf.display().to_string();
    for line in [
        format!("ExecStart={b} serve -c {c}"),
        format!("ExecStartPre={b} check -c {c}"),
        format!("ExecReload={b} upgrade -c {c} --pid $MAINPID"),
        format!("EnvironmentFile=-{}", env.display()),
        "StateDirectory=loopgate".to_string(),
        "Type=notify".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "unit lacks {line}:\n{text}"
        );
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze is required for this test (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(!stderr.contains("loopgate.service:"), "{stderr}");

    // Installing again keeps the operator's config and keys.
    std::fs::write(&env, "OPENAI_API_KEY=sk-mine\n").unwrap();
    let out = run();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "OPENAI_API_KEY=sk-mine\n"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
}

#[test]
fn hash_key_prints_an_entry_ready_to_paste() {
    let out = loopgate()
        .args(["hash-key", "--id", "web-app", "--scopes", "inference,read"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key:  "))
        .unwrap()
        .to_string();
    let entry = &text[text.find("[[auth.keys]]").unwrap()..];
    let v: toml::Value = toml::from_str(entry).unwrap();
    let k = &v["auth"]["keys"][0];
    assert_eq!(k["id"].as_str(), Some("web-app"));
    assert_eq!(
        k["hash"].as_str(),
        Some(loopgate::auth::keys::hash_key(&key).as_str())
    );
    assert_eq!(
        k["scopes"].as_array().unwrap(),
        &vec![toml::Value::from("inference"), toml::Value::from("read")]
    );
    // Pasted into a config, `check` accepts it.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(&p, entry).unwrap();
    let out = loopgate()
        .args(["check", "-c"])
        .arg(&p)
        .env("LOOPGATE_STATE_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A scope that does not exist is refused by the CLI.
    let out = loopgate()
        .args(["hash-key", "--id", "x", "--scopes", "inference,root"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
