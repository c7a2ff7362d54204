//! The fleet artefacts under `deploy/`: Prometheus rules (checked and unit-tested by the real
//! `promtool`, then evaluated by a real Prometheus scraping a real gateway), the Grafana
//! dashboard (every query run by that Prometheus), the Kubernetes manifests (the ConfigMap's
//! config passes `loopgate check`, the grace periods fit, the probes answer).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` not found: run `bash .ci/setup --test` (Debian package prometheus)");
}

/// Every metric name the gateway registers (src/metrics.rs), with the histogram series.
fn registered_metrics() -> BTreeSet<String> {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    for part in src.split('"').skip(1).step_by(2) {
        if part.starts_with("loopgate_") && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            names.insert(part.to_string());
        }
    }
    assert!(names.len() > 20, "parsing src/metrics.rs found {names:?}");
    names
}

/// `loopgate_*` metric names (not recording rules, which contain `:`) used in a text.
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("loopgate_") {
        let start = i + pos;
        let before = if start == 0 { b' ' } else { bytes[start - 1] };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if before != b':' && !before.is_ascii_alphanumeric() && before != b'_' {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let promtool = tool("promtool");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy("prometheus/loopgate-rules.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&promtool)
        .args(["test", "rules", "loopgate-rules.test.yml"])
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&promtool)
        .args(["check", "config"])
        .arg(deploy("prometheus/prometheus.example.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_and_dashboard_use_only_metrics_the_gateway_registers() {
    let known = registered_metrics();
    for file in [
        "prometheus/loopgate-rules.yml",
        "grafana/loopgate-dashboard.json",
    ] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let used = used_metrics(&text);
        assert!(!used.is_empty(), "{file} uses no loopgate metric");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unregistered metrics {unknown:?}"
        );
    }
    // The dashboard is a loadable Grafana model: unique ids, panels inside the 24-column
    // grid, every query with a ref id and an expression.
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/loopgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(d["uid"], "loopgate-overview");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] != "row" {
            for t in p["targets"].as_array().unwrap() {
                assert!(
                    t["refId"].is_string() && t["expr"].as_str().is_some_and(|e| !e.is_empty())
                );
            }
        }
    }
}

fn dashboard_queries() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/loopgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().replace("$instance", ".*"));
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        out.push(a["expr"].as_str().unwrap().replace("$instance", ".*"));
    }
    out
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            deploy("prometheus/loopgate-rules.yml"),
            dir.path().join("loopgate-rules.yml"),
        )
        .unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - loopgate-rules.yml\n\
                 scrape_configs:\n  - job_name: loopgate\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
            ),
        )
        .unwrap();
        // The recording group's own 30 s interval would outlast the test: evaluate every second.
        let rules = std::fs::read_to_string(dir.path().join("loopgate-rules.yml")).unwrap();
        std::fs::write(
            dir.path().join("loopgate-rules.yml"),
            rules.replace("interval: 30s", "interval: 1s"),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<serde_json::Value> {
        let r = client()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .query(query)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn query(&self, q: &str) -> serde_json::Value {
        match self.api("/api/v1/query", &[("query", q)]).await {
            Some(v) => v,
            None => panic!("prometheus did not answer `{q}`; log:\n{}", self.log()),
        }
    }

    /// Poll `q` until it has at least one sample (or fail with what Prometheus said).
    async fn until_samples(&self, q: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.api("/api/v1/query", &[("query", q)]).await {
                if v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
                {
                    return v;
                }
                if Instant::now() > deadline {
                    panic!("`{q}` has no samples after {within:?}: {v}\n{}", self.log());
                }
            } else if Instant::now() > deadline {
                panic!("prometheus never answered; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_gateway_and_evaluates_every_rule_and_panel() {
    let mock = MockUpstream::start(openai_like()).await;
    let gw = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let c = client();
    for _ in 0..5 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Both probe paths of deploy/kubernetes/deployment.yaml answer on the proxy port.
    for path in ["/health", "/readyz"] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let metrics_port = gw.metrics_port;
    assert!(
        eventually(
            || std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok(),
            Duration::from_secs(5)
        )
        .await
    );

    let prom = Prometheus::start(metrics_port);
    let up = prom
        .until_samples("up{job=\"loopgate\"} == 1", Duration::from_secs(30))
        .await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let total = prom
        .until_samples(
            "sum(loopgate_requests_total{endpoint=\"chat.completions\",status=\"200\"}) >= 5",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(total["data"]["result"][0]["value"][1], "5", "{total}");
    // A recording rule produced from the gateway's own series.
    prom.until_samples("loopgate:requests:rate5m", Duration::from_secs(30))
        .await;

    // Every rule evaluated without error (a typo'd label matcher or a bad function shows up
    // here as `health: err`).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = prom.api("/api/v1/rules", &[]).await.unwrap_or_default();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let bad: Vec<_> = rules.iter().filter(|r| r["health"] != "ok").collect();
        if rules.len() == 21 && bad.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all healthy: {} loaded, failing {bad:#?}",
            rules.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every dashboard query is valid PromQL that this Prometheus runs.
    for q in dashboard_queries() {
        let v = prom.query(&q).await;
        assert_eq!(v["status"], "success", "dashboard query `{q}`: {v}");
    }
    let by_model = prom
        .until_samples(
            "sum by (provider, model) (rate(loopgate_requests_total[5m]))",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        by_model["data"]["result"][0]["metric"]["provider"],
        "openai"
    );
}

/// The `gateway.toml` block of the ConfigMap.
fn configmap_toml() -> String {
    let text = std::fs::read_to_string(deploy("kubernetes/configmap.yaml")).unwrap();
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_start().starts_with("gateway.toml: |") {
            inside = true;
            continue;
        }
        if inside {
            if !line.is_empty() && !line.starts_with("    ") {
                break;
            }
            out.push_str(line.strip_prefix("    ").unwrap_or(line));
            out.push('\n');
        }
    }
    assert!(
        out.contains("[server]"),
        "no gateway.toml block in configmap.yaml"
    );
    out
}

fn yaml_number(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix(key)
                .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
                .and_then(|n| n.trim_end_matches('}').parse().ok())
        })
        .unwrap_or_else(|| panic!("`{key}` not found"))
}

#[test]
fn the_kubernetes_config_passes_check_and_the_grace_periods_fit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, configmap_toml()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopgate"));
    for v in provider_env_vars() {
        cmd.env_remove(v);
    }
    let out = cmd
        .args(["check", "-c"])
        .arg(&cfg)
        .env("LOOPGATE_STATE_DIR", dir.path())
        .env("LOOPGATE_MASTER_KEY", MASTER_KEY)
        .env(
            "LOOPGATE_POSTGRES_URL",
            "postgresql://loopgate:x@127.0.0.1:1/loopgate",
        )
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "loopgate check on the ConfigMap: {text}"
    );
    assert!(text.contains("openai"), "{text}");

    // Without a key the same config must refuse to start on 0.0.0.0 (no open gateway).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopgate"));
    for v in provider_env_vars() {
        cmd.env_remove(v);
    }
    let out = cmd
        .args(["check", "-c"])
        .arg(&cfg)
        .env("LOOPGATE_STATE_DIR", dir.path())
        .env_remove("LOOPGATE_MASTER_KEY")
        .env_remove("LOOPGATE_KEYS")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unkeyed public gateway passed check"
    );

    let toml_text = configmap_toml();
    let grace = yaml_number(&toml_text, "grace_period_secs =");
    let shutdown = yaml_number(&toml_text, "graceful_shutdown_timeout_secs =");
    let deployment = std::fs::read_to_string(deploy("kubernetes/deployment.yaml")).unwrap();
    let termination = yaml_number(&deployment, "terminationGracePeriodSeconds");
    let pre_stop = deployment
        .split("sleep: {seconds:")
        .nth(1)
        .and_then(|r| r.trim().split('}').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("preStop sleep");
    assert!(
        termination > pre_stop + grace + shutdown,
        "terminationGracePeriodSeconds {termination} must exceed preStop {pre_stop} + grace {grace} + shutdown {shutdown}"
    );
    for probe in ["path: /health", "path: /readyz"] {
        assert!(deployment.contains(probe), "{probe}");
    }
    // The Containerfile's runtime listens where the manifests point their ports.
    let containerfile = std::fs::read_to_string(deploy("Containerfile")).unwrap();
    assert!(containerfile.contains("LOOPGATE_LISTEN=0.0.0.0:8080"));
    assert!(containerfile.contains("LOOPGATE_METRICS_LISTEN=0.0.0.0:9091"));
    assert!(
        deployment.contains("containerPort: 8080") && deployment.contains("containerPort: 9091")
    );
}
