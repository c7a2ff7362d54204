//! `loopgate demo` from the command line: the real binary, its simulated fleet and driver,
//! a short script, `--exit` at the end.

mod common;

use std::process::Command;

#[test]
fn demo_runs_shadow_then_live_and_prints_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let metrics_port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopgate"));
    for v in common::provider_env_vars() {
        cmd.env_remove(v);
    }
    let out = cmd
        .args([
            "demo",
            "--port",
            &port.to_string(),
            "--metrics-port",
            &metrics_port.to_string(),
            "--shadow-requests",
            "200",
            "--live-requests",
            "200",
            "--exit",
            "--dir",
        ])
        .arg(dir.path())
        .env("LOOPGATE_LOG", "warn")
        .output()
        .expect("run loopgate demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in [
        "SIMULATED providers",
        "== phase 1: shadow",
        "route default is live",
        "== phase 2: live",
        "live phase:     200 requests",
        "== summary",
        "promotions:",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // `--exit` stops the gateway: no links to it.
    assert!(!stdout.contains("curl "), "{stdout}");
    // No judge job or shadow call was dropped, and judging kept pace through both phases:
    // the served answer of every request, plus the shadow answer in the shadow phase.
    let num = |prefix: &str, after: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
        let at = line.find(after).unwrap_or_else(|| panic!("{line}"));
        line[..at]
            .split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    assert_eq!(num("judge:", " dropped"), 0, "{stdout}");
    assert_eq!(num("shadow calls:", " dropped"), 0, "{stdout}");
    let scored = num("judge:", " answers scored");
    assert!(scored >= 550, "judged {scored} of ~600 answers:\n{stdout}");
    // The demo's gateway wrote real traces and decisions.
    let db = dir.path().join("demo.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    let decisions: i64 = conn
        .query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0))
        .unwrap();
    assert!(decisions >= 400, "{decisions}");
}
