//! The README quickstart, as a new user runs it: `loopgate serve` on the embedded defaults,
//! then the README's Python snippet — verbatim, extracted from README.md after the
//! `<!-- quickstart-snippet` marker — with the official OpenAI Python SDK (the venv of
//! `tests/sdk/setup.sh`). Only the provider behind the gateway is a mock.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The fenced python block following the marker comment.
fn snippet(readme: &str) -> String {
    let at = readme
        .find("<!-- quickstart-snippet")
        .expect("README.md has no <!-- quickstart-snippet --> marker");
    let rest = &readme[at..];
    let start = rest
        .find("```python\n")
        .expect("no ```python block after the marker")
        + "```python\n".len();
    let end = rest[start..].find("\n```").expect("unclosed python block");
    rest[start..start + end + 1].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quickstart_snippet_runs_verbatim_with_the_openai_sdk() {
    let python = Path::new(ROOT).join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash tests/sdk/setup.sh` (official OpenAI SDKs)",
        python.display()
    );
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let code = snippet(&readme);
    // The gateway must be where the snippet looks: the embedded default listener.
    assert!(
        code.contains("base_url=\"http://127.0.0.1:8080/v1\""),
        "the snippet's base_url is not the embedded default listener:\n{code}"
    );
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8080").is_ok(),
        "127.0.0.1:8080 is taken: the quickstart needs it free"
    );

    let mock = MockUpstream::start(openai_like()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let logf = std::fs::File::create(&log).unwrap();
    // `loopgate serve` as in the README: no config file, no key; only a provider key, a
    // free metrics port (9091 may be taken) and a private state directory.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopgate"));
    for v in provider_env_vars() {
        cmd.env_remove(v);
    }
    for v in [
        "LOOPGATE_LISTEN",
        "LOOPGATE_DB",
        "LOOPGATE_MASTER_KEY",
        "LOOPGATE_KEYS",
        "LOOPGATE_STATE_DIR",
    ] {
        cmd.env_remove(v);
    }
    let mut gateway = cmd
        .arg("serve")
        .current_dir(dir.path())
        .env("OPENAI_API_KEY", "sk-quickstart")
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.url()))
        .env(
            "LOOPGATE_METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("STATE_DIRECTORY", dir.path().join("state"))
        .stdout(Stdio::from(logf.try_clone().unwrap()))
        .stderr(Stdio::from(logf))
        .spawn()
        .unwrap();
    let up = eventually(
        || std::net::TcpStream::connect("127.0.0.1:8080").is_ok(),
        Duration::from_secs(20),
    )
    .await;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(up, "gateway did not start:\n{}", log_text());

    let mut py = Command::new(&python);
    py.arg("-c").arg(&code);
    // The user's shell: no OpenAI variables that could redirect the SDK.
    for v in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
    ] {
        py.env_remove(v);
    }
    let out = tokio::task::spawn_blocking(move || py.output().unwrap())
        .await
        .unwrap();
    let _ = gateway.kill();
    let _ = gateway.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the README snippet failed:\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_text()
    );
    // The mock provider's answer, printed by the snippet.
    assert_eq!(stdout.trim(), "Hello!");
    assert_eq!(mock.count(), 1);
}

#[test]
fn the_marker_finds_the_quickstart_block() {
    let text =
        "x\n<!-- quickstart-snippet -->\n```python\nprint(1)\nprint(2)\n```\n```python\nno\n```\n";
    assert_eq!(snippet(text), "print(1)\nprint(2)\n");
}
