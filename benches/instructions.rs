//! Instruction count of one request through the gateway, per phase (callgrind).
//!
//! `cargo bench --bench instructions` (release build; about two minutes under valgrind).
//!
//! Wall-clock figures on a shared 2-core machine move by tens of percent between runs;
//! instruction counts do not. This bench runs the real `target/release/loopgate` under
//! `valgrind --tool=callgrind` (one worker thread, tracing to SQLite on) in front of a local
//! OpenAI-compatible mock, sends `WARMUP` plain `gpt-4o-mini` chat requests, then `N`
//! measured ones on one keep-alive connection, waits until every trace is in the database,
//! and reads the callgrind profile of exactly that window: callgrind dumps and zeroes its
//! counters when `GET /v1/models` enters the gateway (`--dump-before`), and the bench sends
//! one such request before and one after the measured requests.
//!
//! Reported per request: the whole process (every thread: Pingora's HTTP handling, tokio,
//! the trace writer and its SQLite inserts) and the inclusive cost of each phase's entry
//! functions (`PHASES`). "upstream exchange" includes "translate" and "gateway request
//! handler" includes every request-path phase; the rest of the total is Pingora, tokio,
//! the kernel-facing I/O and the background services. Without valgrind the bench prints a
//! note and exits successfully. Results also go to `target/bench-results/instructions.json`.
//!
//! `INSTR_TOP=<substring>` lists the costliest functions whose name contains it.
//!
//! `INSTR_AUTO=1` sends `model: "auto"` to a live feedback route instead (baseline `gpt-4o`,
//! three OpenAI candidates): the routing decision and the signed decision row stored with each
//! trace are then part of every request, for issue 14's "an auto request costs ≤ 1.3× a plain
//! one" (results in `instructions_auto.json`).
//!
//! `INSTR_KEEP=<path>` copies the measured window's callgrind profile there (for
//! `callgrind_annotate --inclusive=yes --tree=calling <path>`).

use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;

const GATEWAY_KEY: &str = "lg-bench-instr-0123456789abcdefghijklmnopqrstuvwxyz";
const WARMUP: usize = 100;
const N: usize = 400;
/// Generous: every instruction runs ~50x slower under callgrind.
const STARTUP: Duration = Duration::from_secs(180);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The phases of a request and the functions whose inclusive cost is the phase.
/// (Async functions are their `{{closure}}` poll functions in the profile.)
const PHASES: &[(&str, &[&str])] = &[
    (
        "parse (read body, parse_chat)",
        &[
            "loopgate::proxy::request::read_body::{{closure}}",
            "loopgate::exchange::parse::parse_chat",
        ],
    ),
    (
        "resolve",
        &["loopgate::routing::resolve::<impl loopgate::routing::table::Runtime>::resolve"],
    ),
    (
        "translate (build request, translate response)",
        &[
            "<loopgate::dialect::openai::OpenAi as loopgate::dialect::Dialect>::build_chat",
            "<loopgate::dialect::openai::OpenAi as loopgate::dialect::Dialect>::translate_chat",
        ],
    ),
    ("upstream exchange (incl. translate)", &["loopgate::proxy::upstream::serve::{{closure}}"]),
    (
        "trace on the request path (build record, submit)",
        &[
            "loopgate::proxy::logging::trace_record",
            "loopgate::store::writer::TraceSink::submit",
        ],
    ),
    (
        "trace writer task (batching, rollups; SQLite runs off it)",
        &["<loopgate::store::writer::TraceWriterService as pingora_core::services::background::BackgroundService>::start::{{closure}}"],
    ),
    ("SQLite statements (sqlite3_step)", &["sqlite3_step"]),
    ("metrics (observe)", &["loopgate::proxy::logging::observe"]),
    (
        "routing decision (auto requests only)",
        &["loopgate::proxy::routed::candidates"],
    ),
    (
        "decision row: render, canonicalise, sign (auto; on the trace writer)",
        &["loopgate::routing::auto::render_and_sign"],
    ),
    (
        "gateway request handler (all of the above but the writer)",
        &[
            "loopgate::proxy::handle::{{closure}}",
            "<loopgate::proxy::LoopgateProxy as pingora_proxy::proxy_trait::ProxyHttp>::logging::{{closure}}",
        ],
    ),
];

const COMPLETION: &str = r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Packets cross the wire,\nmicroseconds fall like leaves,\nthe proxy stays still.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":19,"total_tokens":43,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_mock"}"#;

const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about latency."}],"temperature":0.7,"max_completion_tokens":256}"#;

/// The same request to the feedback route (`INSTR_AUTO=1`).
const BODY_AUTO: &str = r#"{"model":"auto","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about latency."}],"temperature":0.7,"max_completion_tokens":256}"#;

/// The feedback route of `INSTR_AUTO=1`: live, no feedback yet, so the baseline is served and
/// every request still decides, renders, signs and stores its decision.
const AUTO_ROUTE: &str = r#"
[routes.default]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano"]
mode = "live"
"#;

fn auto() -> bool {
    std::env::var_os("INSTR_AUTO").is_some_and(|v| v != "0" && !v.is_empty())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read one HTTP/1.1 message with a content-length (the mock's requests, the gateway's
/// non-stream answers); returns the head and the body. `None` on a clean close.
fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> R<Option<(String, Vec<u8>)>> {
    let mut tmp = [0u8; 16 * 1024];
    // Bounded: each round reads at least one byte or returns.
    for _ in 0..100_000 {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut len = 0usize;
            for l in head.split("\r\n") {
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse()?;
                    }
                    if k.eq_ignore_ascii_case("transfer-encoding") {
                        return Err("chunked message: not expected here".into());
                    }
                }
            }
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Ok(Some((head, body)));
            }
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Err("message never completed".into())
}

/// The mock upstream: one thread per connection, a fixed `chat.completion`.
fn start_mock() -> R<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: req_mock\r\n\r\n{COMPLETION}",
        COMPLETION.len()
    );
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_nodelay(true);
                let mut buf = Vec::new();
                while let Ok(Some(_)) = read_message(&mut s, &mut buf) {
                    if s.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> R<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Client { s, buf: Vec::new() })
    }

    fn call(&mut self, method: &str, path: &str, body: &str) -> R<(u16, Vec<u8>)> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {GATEWAY_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s.write_all(req.as_bytes())?;
        let (head, body) = read_message(&mut self.s, &mut self.buf)?.ok_or("connection closed")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad status line")?;
        Ok((status, body))
    }

    fn chat(&mut self) -> R<()> {
        let body = if auto() { BODY_AUTO } else { BODY };
        let (st, body) = self.call("POST", "/v1/chat/completions", body)?;
        if st != 200 {
            return Err(format!("chat answered {st}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(())
    }
}

fn hash_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn loopgate_binary() -> R<PathBuf> {
    // `LOOPGATE_BENCH_BIN=<path>`: another build (A/B comparisons in the same conditions).
    if let Some(p) = std::env::var_os("LOOPGATE_BENCH_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_loopgate") {
        let p = PathBuf::from(p);
        if p.exists() {
            return Ok(p);
        }
    }
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?
        .join("loopgate");
    if p.exists() {
        return Ok(p);
    }
    Err(format!("loopgate binary not found at {}", p.display()).into())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: signalling a child this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> R<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn traces_stored(db: &Path) -> i64 {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return -1;
    };
    c.query_row("SELECT COUNT(*) FROM traces", [], |r| r.get(0))
        .unwrap_or(-1)
}

/// Inclusive cost per function name from `callgrind_annotate --inclusive=yes`, and the total.
fn annotate(file: &Path) -> R<(u64, Vec<(String, u64)>)> {
    let out = Command::new("callgrind_annotate")
        .arg("--inclusive=yes")
        .arg("--threshold=100")
        .arg(file)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "callgrind_annotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    let mut fns = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        let Some((num, rest)) = t.split_once(' ') else {
            continue;
        };
        let Ok(n) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        if rest.contains("PROGRAM TOTALS") {
            total = n;
            continue;
        }
        // "1,234 (12.3%)  file:function [object]"
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('(') {
            Some(r) => r.split_once(')').map(|x| x.1).unwrap_or(r).trim_start(),
            None => rest,
        };
        let name = rest.split_once(':').map(|x| x.1).unwrap_or(rest);
        let name = match name.rfind(" [") {
            Some(i) => &name[..i],
            None => name,
        };
        fns.push((name.to_string(), n));
    }
    Ok((total, fns))
}

fn main() -> R<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("note: valgrind not found; skipping the instruction-count benchmark");
        return Ok(());
    }
    let bin = loopgate_binary()?;
    let mock = start_mock()?;
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().display();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config = format!(
        r#"[server]
listen = "{listen}"
metrics_listen = "{metrics}"
threads = 1
watch = false
filters_dir = "{filters}"
pid_file = "{d}/loopgate.pid"
upgrade_sock = "{d}/loopgate.sock"
grace_period_secs = 0
graceful_shutdown_timeout_secs = 1

[auth]
allow_unauthenticated_loopback = false
[[auth.keys]]
id = "bench"
hash = "{hash}"

[storage]
backend = "sqlite"
sqlite_path = "{d}/traces.db"
spill_path = "{d}/spill.jsonl"
"#,
        filters = concat!(env!("CARGO_MANIFEST_DIR"), "/filters"),
        hash = hash_key(GATEWAY_KEY),
    ) + if auto() { AUTO_ROUTE } else { "" };
    let conf = tmp.path().join("gateway.toml");
    std::fs::write(&conf, config)?;
    let out = tmp.path().join("callgrind.out");
    let log = std::fs::File::create(tmp.path().join("loopgate.log"))?;
    let started = Instant::now();
    let child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--dump-before=loopgate::proxy::models::{{closure}}")
        .arg("--dump-instr=no")
        .arg(&bin)
        .arg("serve")
        .arg("-c")
        .arg(&conf)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPENAI_API_KEY", "sk-bench")
        .env("OPENAI_BASE_URL", format!("http://{mock}/v1"))
        .env("LOOPGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut proc_ = Proc(child);

    // Ready: the first chat request that answers 200.
    let deadline = Instant::now() + STARTUP;
    let mut client = loop {
        if let Ok(Some(st)) = proc_.0.try_wait() {
            return Err(format!("loopgate exited at startup ({st}); log: {d}/loopgate.log").into());
        }
        if let Ok(mut c) = Client::connect(listen) {
            if c.chat().is_ok() {
                break c;
            }
        }
        if Instant::now() >= deadline {
            return Err("loopgate under valgrind not ready in time".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "ready after {:.1} s under callgrind",
        started.elapsed().as_secs_f64()
    );
    for _ in 0..WARMUP {
        client.chat()?;
    }
    let db = tmp.path().join("traces.db");
    let wait_stored = |want: i64| -> R<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while traces_stored(&db) < want {
            if Instant::now() >= deadline {
                return Err(format!("traces not stored: {} of {want}", traces_stored(&db)).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    wait_stored(WARMUP as i64 + 1)?;
    // Window start: callgrind dumps (startup + warm-up) and zeroes.
    client.call("GET", "/v1/models", "")?;
    let t = Instant::now();
    for _ in 0..N {
        client.chat()?;
    }
    wait_stored((WARMUP + N) as i64 + 1)?;
    let window = t.elapsed();
    // Window end: callgrind dumps the measured requests.
    client.call("GET", "/v1/models", "")?;
    drop(client);
    drop(proc_);

    // Dumps are `<out>.1` (startup, warm-up), `<out>.2` (the window), `<out>` (shutdown).
    let part = PathBuf::from(format!("{}.2", out.display()));
    if !part.exists() {
        let names: Vec<_> = std::fs::read_dir(tmp.path())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        return Err(format!("callgrind dump {} missing; have {names:?}", part.display()).into());
    }
    // `INSTR_KEEP=<path>`: keep the window's profile for `callgrind_annotate` (the temporary
    // directory goes away with the bench).
    if let Some(keep) = std::env::var_os("INSTR_KEEP") {
        std::fs::copy(&part, keep)?;
    }
    let (total, fns) = annotate(&part)?;
    let per = |v: u64| v as f64 / N as f64;
    let mut rows = Vec::new();
    println!(
        "instructions per request: {N} {} requests, 1 worker, tracing to SQLite ({:.1} s under callgrind)",
        if auto() {
            "auto (live feedback route, signed decisions stored)"
        } else {
            "plain gpt-4o-mini"
        },
        window.as_secs_f64()
    );
    println!("{:<62} {:>12}", "phase", "Ir/request");
    println!("{:<62} {:>12.0}", "whole process (all threads)", per(total));
    rows.push(("total".to_string(), per(total)));
    for (phase, names) in PHASES {
        let mut sum = 0u64;
        let mut found = 0;
        for n in *names {
            // A function can appear once per source file it spans; its largest
            // inclusive entry is the one that holds the calls.
            if let Some(v) = fns.iter().filter(|(f, _)| f == n).map(|(_, v)| *v).max() {
                sum += v;
                found += 1;
            }
        }
        let note = if found < names.len() {
            format!("  ({} of {} functions seen)", found, names.len())
        } else {
            String::new()
        };
        println!("{phase:<62} {:>12.0}{note}", per(sum));
        rows.push((phase.to_string(), per(sum)));
    }
    let json = serde_json::json!({
        "requests": N,
        "warmup": WARMUP,
        "instructions_per_request": rows.iter().map(|(k, v)| (k.clone(), serde_json::json!(v.round()))).collect::<serde_json::Map<_, _>>(),
    });
    let exe = std::env::current_exe()?;
    if let Some(target) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
        let dir = target.join("bench-results");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(if auto() {
                "instructions_auto.json"
            } else {
                "instructions.json"
            }),
            serde_json::to_vec_pretty(&json)?,
        )?;
    }
    // `INSTR_TOP=<substring>`: the 60 costliest functions whose name contains it.
    if let Some(pat) = std::env::var_os("INSTR_TOP") {
        let pat = pat.to_string_lossy().into_owned();
        let mut top = fns.clone();
        top.sort_by_key(|b| std::cmp::Reverse(b.1));
        for (f, v) in top.iter().filter(|(f, _)| f.contains(&pat)).take(60) {
            println!("{:>12.0}  {f}", per(*v));
        }
    }
    Ok(())
}
