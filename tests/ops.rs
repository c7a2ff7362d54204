//! Operations: the CLI (`check`, `hash-key`), the embedded defaults, and the systemd unit.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn loopgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loopgate"));
    for v in provider_env_vars() {
        c.env_remove(v);
    }
    c
}

#[test]
fn check_accepts_the_shipped_config_and_rejects_bad_ones_precisely() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateway.toml");
    let out = loopgate().args(["check", "-c", shipped]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("ok:") && text.contains("catalog models"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[routes.x]\ntargets = []\n", "routes.x"),
        ("[routes.x]\ntargets = [{ model = \"nosuchprovider/m\", provider = \"nosuchprovider\" }]\n", "unknown provider"),
        ("[[auth.keys]]\nid = \"a\"\nhash = \"plain\"\n", "sha256"),
        ("[server]\nlistem = \"x\"\n", "unknown field"),
        ("[storage]\nbackend = \"oracle\"\n", "storage"),
    ];
    for (toml, needle) in cases {
        let p = dir.path().join("bad.toml");
        std::fs::write(
            &p,
            format!("[auth]\nallow_unauthenticated_loopback = true\n{toml}"),
        )
        .unwrap();
        let out = loopgate()
            .args(["check", "-c", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{toml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{toml}: expected '{needle}' in: {err}"
        );
    }
    // A broken provider profile is named with its file.
    let filters = dir.path().join("filters");
    std::fs::create_dir(&filters).unwrap();
    std::fs::write(
        filters.join("x.toml"),
        "name = \"x\"\ndialect = \"klingon\"\nbase_url = \"http://h\"\nauth = \"none\"\n",
    )
    .unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(&p, "[server]\nfilters_dir = \"filters\"\n").unwrap();
    let out = loopgate()
        .args(["check", "-c", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.toml") && err.contains("klingon"), "{err}");
}

#[test]
fn hash_key_output_configures_a_working_key() {
    let out = loopgate()
        .args(["hash-key", "--key", "lg-abc"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&loopgate::auth::keys::hash_key("lg-abc")));
    assert!(!text.contains("hash: lg-abc"));
    let out = loopgate().args(["hash-key"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text.lines().find_map(|l| l.strip_prefix("key:  ")).unwrap();
    assert!(key.starts_with("lg-") && key.len() > 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_embedded_defaults_with_env_overrides() {
    let mock = MockUpstream::start(openai_like()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mport = free_port();
    let mut child = loopgate()
        .arg("serve")
        .current_dir(dir.path())
        .env("LOOPGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("LOOPGATE_METRICS_LISTEN", format!("127.0.0.1:{mport}"))
        .env("LOOPGATE_DB", dir.path().join("t.db"))
        .env("OPENAI_API_KEY", "sk-x")
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.url()))
        .env_remove("LOOPGATE_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        {
            ok = r.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "gateway on embedded defaults did not come up");
    // Embedded defaults: loopback dev mode without keys, embedded profiles and catalog.
    let r = c
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The logging phase (metrics, trace) runs just after the response is sent.
    let mut m = String::new();
    for _ in 0..100 {
        m = c
            .get(format!("http://127.0.0.1:{mport}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("loopgate_requests_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(m.contains("loopgate_requests_total"));
    let db = dir.path().join("t.db");
    assert!(
        eventually(|| trace_rows(&db, "") == 1, Duration::from_secs(5)).await,
        "trace not stored in LOOPGATE_DB"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/loopgate.service"
    ))
    .unwrap();
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=loopgate",
        "ExecReload=",
        "TimeoutStopSec=",
    ] {
        assert!(unit.contains(directive), "unit lacks {directive}");
    }
    // Verify the shipped unit with only the binary path pointed at the built binary
    // (verify checks that ExecStart exists).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loopgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/loopgate", env!("CARGO_BIN_EXE_loopgate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is required for this test (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        !stderr.contains("loopgate.service:"),
        "warnings about the unit: {stderr}"
    );
}

/// `server.listen` with port 0: the gateway picks a port, names it in its log, serves on it,
/// and holds it (another program cannot bind it); an upgrade with port 0 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_is_picked_held_and_named_in_the_log() {
    let mock = MockUpstream::start(openai_like()).await;
    let gw = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    assert!(gw.port != 0 && gw.metrics_port != 0 && gw.port != gw.metrics_port);
    let config = std::fs::read_to_string(&gw.config).unwrap();
    assert!(config.contains("listen = \"127.0.0.1:0\""), "{config}");
    let r = send_chat(&gw, MASTER_KEY, &chat_body("gpt-4o"), &[]).await;
    assert_eq!(r.status, 200);
    let m = client()
        .get(format!("http://127.0.0.1:{}/metrics", gw.metrics_port))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    // Held: a plain bind of either port fails while the gateway runs.
    for port in [gw.port, gw.metrics_port] {
        let e = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "port {port}");
    }
    // An upgrade has nothing to take over on port 0: a clear error, exit code 2.
    let out = loopgate()
        .args(["serve", "--upgrade", "-c"])
        .arg(&gw.config)
        .env("LOOPGATE_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen 127.0.0.1:0: port 0 cannot be taken over by an upgrade"),
        "{err}"
    );
}
