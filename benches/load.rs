//! Whole-gateway load benchmark: loopgate against a bare Pingora passthrough, both in
//! front of the same local OpenAI-compatible mock, measured in one run.
//!
//! `cargo bench --bench load` (release build; about two minutes of load).
//!
//! What runs (all on loopback):
//! - **mock**: a minimal HTTP/1.1 keep-alive server on its own thread and tokio runtime,
//!   answering `POST .../chat/completions` with a fixed `chat.completion` or a short SSE
//!   stream (with the usage chunk only when `stream_options.include_usage` is set, as
//!   OpenAI does). Paths under `/slow/` answer after 20 ms (the throughput test).
//! - **passthrough**: the reference, a `ProxyHttp` of a few lines (`upstream_peer` returns
//!   the mock; Pingora pools the upstream connections). It runs in a child process — this
//!   same bench executable re-run with `--serve-passthrough` — so it gets its own Pingora
//!   `Server` and worker threads exactly like loopgate, which also runs as a process.
//! - **loopgate**: `target/release/loopgate` (cargo builds the package's binaries for
//!   `cargo bench`), started with a temp config: one gateway key, `OPENAI_BASE_URL` at the
//!   mock, 2 worker threads. `lg_trace_on` writes traces to SQLite in a temp dir;
//!   `lg_trace_off` points the store at a path that cannot be opened with retries pushed
//!   out an hour and a large memory buffer, so no trace is ever written (the request path
//!   still builds and enqueues every record: there is no config switch for "no traces").
//! - **load generator**: raw tokio TCP, one keep-alive HTTP/1.1 connection per worker,
//!   `TCP_NODELAY`, hand-written response parsing (content-length and chunked).
//!
//! Measured: p50/p95/p99 at concurrency 1 for non-stream requests (time to the whole
//! response) and stream TTFB (time to the first body byte); 2,000 requests per target
//! and mode after 200 warm-up ones, targets interleaved in 8 rounds so drift on a shared
//! machine hits all of them alike (the order rotates each round). Throughput: 64
//! connections, 20 ms mock, 10 s window. For every process under test: CPU time per
//! request (the process's user + system CPU clock, the figure `/proc/<pid>/stat` reports as
//! utime + stime but in nanoseconds, read before and after each measured block) and its
//! memory (`VmRSS` / `VmHWM` from `/proc/<pid>/status`) at the end of its phase.
//! `lg_otlp_on` is tracing on plus OTLP export (HTTP/protobuf, shipped batching) to a local
//! receiver that accepts and discards `/v1/traces` (issue 18). A stream soak then runs
//! bounded waves of streamed requests through a fresh passthrough and a fresh loopgate and
//! reports RSS after every wave (issue 14's memory goals).
//!
//! Flags (after `--`): `--concurrency N` (throughput connections, 64), `--slow-ms N` (mock
//! delay of the throughput test, 20), `--window-s N` (throughput window, 10),
//! `--soak-waves N` (20), `--soak-per-wave N` (1,000 streams), `--soak-concurrency N` (64),
//! `--no-throughput`, `--no-soak`, `--baseline-bin PATH` (another loopgate build measured
//! beside this one, tracing on, as `lg_baseline`: before/after in one run), `--help`. Every phase is bounded in count and time.
//! `--capacity` adds the one-core capacity phase (issue 14's headline figure): a fresh
//! passthrough, then a fresh loopgate with tracing to SQLite (then the `--baseline-bin`
//! build), each pinned to one CPU (`sched_setaffinity` in the child before exec) while this
//! process — load generator and mock — is pinned to another; `--capacity-concurrency`
//! keep-alive connections (128) on a mock answering after `--capacity-ms` (5), a
//! `--capacity-window-s` window (10) after a 2 s warm-up; req/s, the target's share of its
//! core and CPU µs per request, and both as ratios to the passthrough's.
//! Prints a table, PASS/MISS per target (never fails the run), and writes
//! `target/bench-results/load.json`.

use std::error::Error;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Connections the mock accepted: shows whether a proxy reuses its upstream connections.
static MOCK_CONNS: AtomicUsize = AtomicUsize::new(0);

const GATEWAY_KEY: &str = "lg-bench-load-0123456789abcdefghijklmnopqrstuvwxyz";
const WARMUP: usize = 200;
const ROUNDS: usize = 8;
const PER_ROUND: usize = 250;
/// The `/slow/` mock delay (`--slow-ms`), read by the mock thread.
static SLOW_MS: AtomicU64 = AtomicU64::new(20);
/// Export requests and body bytes the local OTLP receiver accepted.
static OTLP_POSTS: AtomicUsize = AtomicUsize::new(0);
static OTLP_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Hard cap on the stream soak of one target, whatever happens.
const SOAK_CAP: Duration = Duration::from_secs(120);
const THROUGHPUT_WARMUP: Duration = Duration::from_secs(1);
/// Warm-up of each capacity target before its window (pools filled, caches warm).
const CAPACITY_WARMUP: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Hard cap on each latency phase, whatever happens.
const PHASE_CAP: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// HTTP/1.1 framing shared by the mock and the client.

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Head {
    len: usize,
    status_or_path: String,
    content_length: Option<usize>,
    chunked: bool,
}

/// Parse a request or response head ending at `\r\n\r\n`; `None` until it is complete.
fn parse_head(buf: &[u8]) -> R<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("head larger than 64 KiB".into());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end])?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    // Request: "POST /path HTTP/1.1"; response: "HTTP/1.1 200 OK". The second word either way.
    let status_or_path = first.split(' ').nth(1).unwrap_or_default().to_string();
    let mut content_length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            content_length = Some(v.parse()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding")
            && v.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    Ok(Some(Head {
        len: end + 4,
        status_or_path,
        content_length,
        chunked,
    }))
}

/// End of a chunked body starting at `from`, once the terminating chunk is in `buf`.
fn chunked_end(buf: &[u8], mut from: usize) -> R<Option<usize>> {
    loop {
        let Some(nl) = find(&buf[from..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[from..from + nl])?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)?;
        let data = from + nl + 2;
        if size == 0 {
            // No trailers are ever sent here: the last chunk is followed by one CRLF.
            return Ok((buf.len() >= data + 2).then_some(data + 2));
        }
        if buf.len() < data + size + 2 {
            return Ok(None);
        }
        from = data + size + 2;
    }
}

/// Decoded payload of a chunked body (for checking what a client received).
fn dechunk(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(nl) = find(&buf[from..], b"\r\n") {
        let Ok(line) = std::str::from_utf8(&buf[from..from + nl]) else {
            break;
        };
        let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
            break;
        };
        let data = from + nl + 2;
        if size == 0 || buf.len() < data + size {
            break;
        }
        out.extend_from_slice(&buf[data..data + size]);
        from = data + size + 2;
        if from > buf.len() {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The mock upstream.

const COMPLETION: &str = r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Packets cross the wire,\nmicroseconds fall like leaves,\nthe proxy stays still.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":19,"total_tokens":43,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_mock"}"#;

fn sse_event(delta: &str, finish: &str, usage: bool) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{}}}\n\n",
        if usage { ",\"usage\":null" } else { "" }
    )
}

fn chunk(payload: &str) -> String {
    format!("{:x}\r\n{payload}\r\n", payload.len())
}

/// The first write of a stream (head + role chunk) and the rest, as the mock sends them.
fn stream_response(include_usage: bool) -> (Vec<u8>, Vec<u8>) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\nx-request-id: req_mock\r\nopenai-processing-ms: 1\r\nx-ratelimit-remaining-requests: 9999\r\nx-ratelimit-remaining-tokens: 1999000\r\n\r\n";
    let first = format!(
        "{head}{}",
        chunk(&sse_event(
            r#"{"role":"assistant","content":"","refusal":null}"#,
            "null",
            include_usage
        ))
    );
    let mut rest = String::new();
    for t in ["Packets", " cross", " the", " wire"] {
        rest.push_str(&chunk(&sse_event(
            &format!("{{\"content\":\"{t}\"}}"),
            "null",
            include_usage,
        )));
    }
    rest.push_str(&chunk(&sse_event("{}", "\"stop\"", include_usage)));
    if include_usage {
        rest.push_str(&chunk("data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\",\"choices\":[],\"usage\":{\"prompt_tokens\":24,\"completion_tokens\":4,\"total_tokens\":28,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n"));
    }
    rest.push_str(&chunk("data: [DONE]\n\n"));
    rest.push_str("0\r\n\r\n");
    (first.into_bytes(), rest.into_bytes())
}

struct MockAnswers {
    json: Vec<u8>,
    stream: (Vec<u8>, Vec<u8>),
    stream_usage: (Vec<u8>, Vec<u8>),
}

/// Read one whole request (head and body, content-length or chunked) into `buf`: the head and
/// where the request ends; `None` when the peer closed the connection.
async fn read_request(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    tmp: &mut [u8],
) -> R<Option<(Head, usize)>> {
    loop {
        if let Some(h) = parse_head(buf)? {
            let end = if h.chunked {
                chunked_end(buf, h.len)?
            } else {
                let e = h.len + h.content_length.unwrap_or(0);
                (buf.len() >= e).then_some(e)
            };
            if let Some(end) = end {
                return Ok(Some((h, end)));
            }
        }
        let n = s.read(tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn mock_conn(mut s: TcpStream, answers: &'static MockAnswers) -> R<()> {
    s.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let Some((head, end)) = read_request(&mut s, &mut buf, &mut tmp).await? else {
            return Ok(());
        };
        let body = &buf[head.len..end];
        let stream = find(body, b"\"stream\":true").is_some();
        let usage = find(body, b"\"include_usage\":true").is_some();
        if head.status_or_path.starts_with("/slow/") {
            tokio::time::sleep(Duration::from_millis(SLOW_MS.load(Ordering::Relaxed))).await;
        }
        if stream {
            let (first, rest) = if usage {
                &answers.stream_usage
            } else {
                &answers.stream
            };
            s.write_all(first).await?;
            s.write_all(rest).await?;
        } else {
            s.write_all(&answers.json).await?;
        }
        buf.drain(..end);
    }
}

/// Listen on a loopback port and serve each connection with `on_conn` on a thread of its own
/// (a current-thread runtime, so the server never competes with the client's workers);
/// returns the address.
fn serve_on_thread<F, Fut>(name: &str, on_conn: F) -> R<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let label = name.to_string();
    std::thread::Builder::new()
        .name(label.clone())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("{label} runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(on_conn(s));
                }
            });
        })?;
    Ok(addr)
}

/// Start the mock on its own thread and current-thread runtime; returns its address.
fn start_mock() -> R<SocketAddr> {
    let json_head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: req_mock\r\nopenai-processing-ms: 1\r\nx-ratelimit-remaining-requests: 9999\r\nx-ratelimit-remaining-tokens: 1999000\r\n\r\n",
        COMPLETION.len()
    );
    let answers: &'static MockAnswers = Box::leak(Box::new(MockAnswers {
        json: [json_head.as_bytes(), COMPLETION.as_bytes()].concat(),
        stream: stream_response(false),
        stream_usage: stream_response(true),
    }));
    serve_on_thread("mock", move |s| {
        MOCK_CONNS.fetch_add(1, Ordering::Relaxed);
        async move {
            let _ = mock_conn(s, answers).await;
        }
    })
}

/// One keep-alive connection of the OTLP receiver: reads each `POST /v1/traces` whole
/// (content-length or chunked), counts it and answers an empty `ExportTraceServiceResponse`.
async fn otlp_conn(mut s: TcpStream) -> R<()> {
    s.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let Some((head, end)) = read_request(&mut s, &mut buf, &mut tmp).await? else {
            return Ok(());
        };
        OTLP_POSTS.fetch_add(1, Ordering::Relaxed);
        OTLP_BYTES.fetch_add(end - head.len, Ordering::Relaxed);
        let answer: &[u8] = if head.status_or_path == "/v1/traces" {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        };
        s.write_all(answer).await?;
        buf.drain(..end);
    }
}

/// A local OTLP/HTTP receiver that accepts and discards `/v1/traces` (own thread).
fn start_otlp_receiver() -> R<SocketAddr> {
    serve_on_thread("otlp-receiver", |s| async move {
        let _ = otlp_conn(s).await;
    })
}

// ---------------------------------------------------------------------------------------
// What a process under test costs: CPU time and memory, read from the outside.

/// User + system CPU time of a whole process (all its threads), nanoseconds: the
/// process's CPU-time clock (`clock_getcpuclockid`), which is what `/proc/<pid>/stat`
/// reports as utime + stime but without the 10 ms tick rounding. Falls back to the
/// ticks of `/proc/<pid>/stat` if the clock cannot be read.
fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: writes one clockid_t into the variable given.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } == 0 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec into the variable given.
        if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
            return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
        }
    }
    proc_stat_ticks(pid).map(|t| t * (1_000_000_000 / clk_tck()))
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of `/proc/<pid>/stat`, clock ticks.
fn proc_stat_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after `state`.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The named KiB fields of `/proc/<pid>/status`, in the order asked.
fn proc_status_kib<const N: usize>(pid: u32, names: [&str; N]) -> Option<[u64; N]> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut out = [0u64; N];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = s
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())?;
    }
    Some(out)
}

/// (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, KiB.
fn proc_mem_kib(pid: u32) -> Option<(u64, u64)> {
    let [rss, hwm] = proc_status_kib(pid, ["VmRSS:", "VmHWM:"])?;
    Some((rss, hwm))
}

/// (`RssAnon`, `RssFile`, `RssShmem`) in KiB: heap and stacks, mapped files (the binary's
/// pages, SQLite's files), shared memory (SQLite's WAL index).
fn proc_rss_split_kib(pid: u32) -> Option<(u64, u64, u64)> {
    let [anon, file, shmem] = proc_status_kib(pid, ["RssAnon:", "RssFile:", "RssShmem:"])?;
    Some((anon, file, shmem))
}

fn fmt_split(m: Option<(u64, u64, u64)>) -> String {
    m.map_or("-".into(), |(a, f, s)| {
        format!("anon {:.1} file {:.1} shmem {:.1}", mib(a), mib(f), mib(s))
    })
}

// ---------------------------------------------------------------------------------------
// CPU affinity: the capacity phase runs the process under test on one CPU and this bench
// (load generator, mock, OTLP receiver) on another.

/// The CPUs this process may run on (its affinity mask), ascending.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: writes at most `size_of::<cpu_set_t>()` bytes into `set`.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, inside the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `c` is below CPU_SETSIZE, inside the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// Pin every thread of this process to `cpus` (threads it starts later inherit it).
fn pin_self(cpus: &[usize]) -> R<()> {
    let set = cpu_set(cpus);
    for entry in std::fs::read_dir("/proc/self/task")? {
        let tid: libc::pid_t = entry?.file_name().to_string_lossy().parse()?;
        // SAFETY: reads `size_of::<cpu_set_t>()` bytes of `set`; `tid` is one of our threads.
        let rc =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        let err = std::io::Error::last_os_error();
        // A thread that exited since the directory was read is no error.
        if rc != 0 && err.raw_os_error() != Some(libc::ESRCH) {
            return Err(format!("sched_setaffinity({tid}, {cpus:?}): {err}").into());
        }
    }
    Ok(())
}

/// Start the child on `cpu` only: set between fork and exec, so every thread the process
/// ever starts (Pingora's workers, the trace writer, the runtimes' blocking pools) inherits it.
fn pin_child(cmd: &mut Command, cpu: Option<usize>) {
    use std::os::unix::process::CommandExt;
    let Some(cpu) = cpu else { return };
    let set = cpu_set(&[cpu]);
    // SAFETY: the closure runs in the child between fork and exec and makes one
    // async-signal-safe system call on a value computed before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How long the soak waits after its last wave before reading memory again (allocators
/// return freed memory on timers: jemalloc's decay is 10 s).
const SOAK_SETTLE: Duration = Duration::from_secs(12);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------
// The reference: a bare Pingora passthrough (child process mode of this executable).

mod passthrough {
    use std::net::SocketAddr;

    use async_trait::async_trait;
    use pingora::server::configuration::{Opt, ServerConf};
    use pingora::server::Server;
    use pingora::upstreams::peer::HttpPeer;
    use pingora_proxy::{ProxyHttp, Session};

    pub struct Passthrough {
        pub upstream: SocketAddr,
    }

    #[async_trait]
    impl ProxyHttp for Passthrough {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn upstream_peer(
            &self,
            _s: &mut Session,
            _c: &mut (),
        ) -> pingora_error::Result<Box<HttpPeer>> {
            Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
        }
    }

    /// `--serve-passthrough <listen> <upstream> <tmpdir>`: never returns.
    pub fn serve(args: &[String]) -> ! {
        let (Some(listen), Some(Ok(upstream)), Some(tmp)) =
            (args.first(), args.get(1).map(|a| a.parse()), args.get(2))
        else {
            eprintln!("usage: --serve-passthrough <listen> <upstream> <tmpdir>");
            std::process::exit(2)
        };
        // Same worker count as loopgate's bench config.
        let conf = ServerConf {
            threads: 2,
            pid_file: format!("{tmp}/passthrough.pid"),
            upgrade_sock: format!("{tmp}/passthrough.sock"),
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
        server.bootstrap();
        let mut svc =
            pingora_proxy::http_proxy_service(&server.configuration, Passthrough { upstream });
        svc.add_tcp(listen);
        server.add_service(svc);
        server.run_forever()
    }
}

// ---------------------------------------------------------------------------------------
// Processes under test.

struct Proc {
    name: String,
    child: Child,
    /// Where its stderr goes (quoted when it exits at startup).
    log: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGINT is Pingora's fast shutdown; kill if it lingers.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling a child this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} did not stop on SIGINT; killed", self.name);
    }
}

fn free_port() -> R<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where cargo put the binaries: `target/release` for `cargo bench`.
fn target_profile_dir() -> R<PathBuf> {
    // The bench executable lives in `<target>/<profile>/deps/`.
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory from the bench executable")?;
    Ok(dir.to_path_buf())
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
    let p = target_profile_dir()?.join("loopgate");
    if p.exists() {
        return Ok(p);
    }
    Err(format!(
        "loopgate binary not found at {}: run `cargo build --release --bin loopgate` (cargo bench normally builds it)",
        p.display()
    )
    .into())
}

fn hash_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[derive(Clone, Copy, PartialEq)]
enum Tracing {
    On,
    Off,
    /// Tracing on, and the key's project under `[limits.projects]`: an rpm, a tpm and a
    /// daily budget checked and settled on every request (issue 15), set high enough that
    /// nothing is refused.
    Limits,
    /// Tracing on, and the firewall's three packs on every request (issue 16).
    Firewall,
    /// Tracing on, and the exact cache on: every request after the first is a hit (issue 16).
    Cache,
    /// Tracing on, and OTLP export (HTTP/protobuf, the shipped batching: 512 spans or 1 s)
    /// to the local receiver at this address (issue 18).
    Otlp(SocketAddr),
}

fn start_loopgate(
    bin: &Path,
    tmp: &Path,
    name: &str,
    upstream_base: &str,
    tracing: Tracing,
    cpu: Option<usize>,
) -> R<(Proc, SocketAddr, SocketAddr)> {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir)?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let d = dir.display();
    let storage = match tracing {
        Tracing::On | Tracing::Limits | Tracing::Firewall | Tracing::Cache | Tracing::Otlp(_) => format!("backend = \"sqlite\"\nsqlite_path = \"{d}/traces.db\"\nspill_path = \"{d}/spill.jsonl\"\n"),
        // `backend = "none"`: no trace record is built, nothing is written.
        Tracing::Off => "backend = \"none\"\n".to_string(),
    };
    let extra = match tracing {
        Tracing::Limits => "\n[limits.projects.bench]\nrpm = 100000000\ntpm = 1000000000000\nbudgets = [{ period = \"day\", usd = 1000000000.0 }]\n".to_string(),
        Tracing::Firewall => "\n[firewall]\ndefault_policy = \"std\"\n[firewall.policies.std]\npacks = [\"injection\", \"pii\", \"secrets\"]\n".to_string(),
        Tracing::Cache => "\n[cache]\nenabled = true\n".to_string(),
        // Everything else as shipped: batch_size 512, export_interval_ms 1000, queue 4096.
        Tracing::Otlp(rx) => format!("\n[otlp]\nenabled = true\nendpoint = \"http://{rx}\"\nprotocol = \"http/protobuf\"\n"),
        Tracing::On | Tracing::Off => String::new(),
    };
    let config = format!(
        r#"[server]
listen = "{listen}"
metrics_listen = "{metrics}"
threads = 2
watch = false
filters_dir = "{filters}"
pid_file = "{d}/loopgate.pid"
upgrade_sock = "{d}/loopgate.sock"
state_dir = "{d}"
grace_period_secs = 0
graceful_shutdown_timeout_secs = 1

[auth]
allow_unauthenticated_loopback = false
[[auth.keys]]
id = "bench"
hash = "{hash}"
project = "bench"

[storage]
{storage}{extra}"#,
        filters = concat!(env!("CARGO_MANIFEST_DIR"), "/filters"),
        hash = hash_key(GATEWAY_KEY),
    );
    let conf_path = dir.join("gateway.toml");
    std::fs::write(&conf_path, config)?;
    let log = std::fs::File::create(dir.join("loopgate.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("-c")
        .arg(&conf_path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPENAI_API_KEY", "sk-bench")
        .env("OPENAI_BASE_URL", upstream_base)
        .env("LOOPGATE_LOG", "warn");
    // Allocator experiments (`MALLOC_ARENA_MAX=2`, `_RJEM_MALLOC_CONF=...`) reach loopgate as
    // they reach the passthrough, which keeps the bench's environment.
    for (k, v) in std::env::vars() {
        if ALLOCATOR_ENV.contains(&k.as_str()) {
            cmd.env(k, v);
        }
    }
    pin_child(&mut cmd, cpu);
    let child = cmd.stdout(Stdio::null()).stderr(log).spawn()?;
    Ok((
        Proc {
            name: name.to_string(),
            child,
            log: Some(dir.join("loopgate.log")),
        },
        listen,
        metrics,
    ))
}

/// Environment variables that tune the allocator, passed on to loopgate.
const ALLOCATOR_ENV: &[&str] = &[
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
    "_RJEM_MALLOC_CONF",
    "MALLOC_CONF",
];

fn start_passthrough(
    tmp: &Path,
    upstream: SocketAddr,
    cpu: Option<usize>,
) -> R<(Proc, SocketAddr)> {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let dir = tmp.join("passthrough");
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("passthrough.log"))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve-passthrough")
        .arg(listen.to_string())
        .arg(upstream.to_string())
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(log);
    pin_child(&mut cmd, cpu);
    let child = cmd.spawn()?;
    Ok((
        Proc {
            name: "passthrough".into(),
            child,
            log: None,
        },
        listen,
    ))
}

// ---------------------------------------------------------------------------------------
// The load generator.

struct Conn {
    addr: SocketAddr,
    s: Option<TcpStream>,
    buf: Vec<u8>,
    tmp: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Timing {
    /// Write start to the last byte of the response.
    total: Duration,
    /// Write start to the first byte of the body.
    ttfb: Duration,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            s: None,
            buf: Vec::with_capacity(16 * 1024),
            tmp: vec![0u8; 64 * 1024],
        }
    }

    async fn stream(&mut self) -> R<&mut TcpStream> {
        if self.s.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.s = Some(s);
            self.buf.clear();
        }
        self.s.as_mut().ok_or_else(|| "no connection".into())
    }

    /// One request on the keep-alive connection; checks the answer is a complete 200
    /// (a JSON completion, or an SSE stream ending in `[DONE]`).
    async fn request(&mut self, req: &[u8], stream: bool) -> R<Timing> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(req, stream)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => {
                self.s = None;
                Err(e)
            }
            Err(_) => {
                self.s = None;
                Err("request timed out".into())
            }
        }
    }

    async fn exchange(&mut self, req: &[u8], stream: bool) -> R<Timing> {
        let t0 = Instant::now();
        self.stream().await?.write_all(req).await?;
        let mut head: Option<Head> = None;
        let mut ttfb = None;
        loop {
            let Some(s) = self.s.as_mut() else {
                return Err("no connection".into());
            };
            let n = s.read(&mut self.tmp).await?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
            self.buf.extend_from_slice(&self.tmp[..n]);
            if head.is_none() {
                head = parse_head(&self.buf)?;
            }
            let Some(h) = &head else { continue };
            if ttfb.is_none() && self.buf.len() > h.len {
                ttfb = Some(t0.elapsed());
            }
            let end = if h.chunked {
                chunked_end(&self.buf, h.len)?
            } else {
                let e = h.len + h.content_length.ok_or("response without length")?;
                (self.buf.len() >= e).then_some(e)
            };
            let Some(end) = end else { continue };
            let total = t0.elapsed();
            if h.status_or_path != "200" {
                let body = String::from_utf8_lossy(&self.buf[h.len..end]).into_owned();
                return Err(format!(
                    "status {}: {}",
                    h.status_or_path,
                    body.chars().take(300).collect::<String>()
                )
                .into());
            }
            let ok = if stream {
                h.chunked && find(&dechunk(&self.buf[h.len..end]), b"data: [DONE]").is_some()
            } else {
                find(&self.buf[h.len..end], b"\"choices\"").is_some()
            };
            if !ok {
                return Err("incomplete or unexpected response body".into());
            }
            self.buf.drain(..end);
            return Ok(Timing {
                total,
                ttfb: ttfb.unwrap_or(total),
            });
        }
    }
}

fn request_bytes(path: &str, stream: bool) -> Vec<u8> {
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Write a haiku about latency."}}],"temperature":0.7,"max_completion_tokens":256{}}}"#,
        if stream { r#","stream":true"# } else { "" }
    );
    format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {GATEWAY_KEY}\r\ncontent-type: application/json\r\naccept: {}\r\nuser-agent: loopgate-load-bench\r\ncontent-length: {}\r\n\r\n{body}",
        if stream { "text/event-stream" } else { "application/json" },
        body.len()
    )
    .into_bytes()
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// Request path (the mock's `/v1/...` or `/slow/v1/...` for direct and passthrough).
    path: &'static str,
    /// The process serving it (none for the mock, which runs inside this one).
    pid: Option<u32>,
}

impl Target {
    /// A target taking `POST /v1/chat/completions` (every one but the mock's slow path).
    fn chat(name: &'static str, addr: SocketAddr, pid: Option<u32>) -> Target {
        Target {
            name,
            addr,
            path: "/v1/chat/completions",
            pid,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

#[derive(Default, Clone)]
struct LatencyStats {
    n: usize,
    errors: usize,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
    /// Upstream connections the mock accepted while this target was measured.
    upstream_conns: usize,
    /// The target process's CPU time over its measured blocks, per request (µs).
    cpu_us_per_req: Option<f64>,
}

/// Concurrency 1, targets interleaved in rounds. `stream` selects the TTFB measurement.
async fn latency_phase(targets: &[Target], stream: bool) -> R<Vec<LatencyStats>> {
    let mut conns: Vec<Conn> = targets.iter().map(|t| Conn::new(t.addr)).collect();
    let reqs: Vec<Vec<u8>> = targets
        .iter()
        .map(|t| request_bytes(t.path, stream))
        .collect();
    let mut samples: Vec<Vec<Duration>> =
        vec![Vec::with_capacity(ROUNDS * PER_ROUND); targets.len()];
    let mut errors = vec![0usize; targets.len()];
    let mut upstream_conns = vec![0usize; targets.len()];
    let mut cpu_ns: Vec<Option<u64>> = targets.iter().map(|t| t.pid.map(|_| 0)).collect();
    let started = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        for _ in 0..WARMUP {
            if let Err(e) = c.request(&reqs[i], stream).await {
                return Err(format!("{} warm-up failed: {e}", targets[i].name).into());
            }
        }
    }
    'rounds: for round in 0..ROUNDS {
        // Rotate the order each round so no target always runs right after another.
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let c = &mut conns[i];
            let accepted = MOCK_CONNS.load(Ordering::Relaxed);
            let cpu0 = targets[i].pid.and_then(proc_cpu_ns);
            for _ in 0..PER_ROUND {
                if started.elapsed() > PHASE_CAP {
                    eprintln!("latency phase hit its {PHASE_CAP:?} cap; stopping early");
                    break 'rounds;
                }
                match c.request(&reqs[i], stream).await {
                    Ok(t) => samples[i].push(if stream { t.ttfb } else { t.total }),
                    Err(e) => {
                        errors[i] += 1;
                        if errors[i] > 20 {
                            return Err(
                                format!("{}: too many errors, last: {e}", targets[i].name).into()
                            );
                        }
                    }
                }
            }
            upstream_conns[i] += MOCK_CONNS.load(Ordering::Relaxed) - accepted;
            let cpu1 = targets[i].pid.and_then(proc_cpu_ns);
            match (cpu0, cpu1, cpu_ns[i].as_mut()) {
                (Some(a), Some(b), Some(acc)) => *acc += b.saturating_sub(a),
                _ => cpu_ns[i] = None,
            }
        }
    }
    Ok(samples
        .into_iter()
        .zip(errors)
        .zip(upstream_conns)
        .zip(cpu_ns)
        .map(|(((mut s, errors), upstream_conns), cpu)| {
            s.sort();
            let done = (s.len() + errors).max(1) as f64;
            LatencyStats {
                n: s.len(),
                errors,
                p50_us: percentile(&s, 50.0),
                p95_us: percentile(&s, 95.0),
                p99_us: percentile(&s, 99.0),
                upstream_conns,
                cpu_us_per_req: cpu.map(|ns| ns as f64 / 1000.0 / done),
            }
        })
        .collect())
}

#[derive(Default, Clone)]
struct ThroughputStats {
    rps: f64,
    completed: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// The target process's CPU time in the window per completed request (µs), from its
    /// CPU clock and, as a cross-check, from `/proc/<pid>/stat` ticks.
    cpu_us_per_req: Option<f64>,
    cpu_us_per_req_stat: Option<f64>,
    /// Share of one core the target process used in the window.
    cpu_cores: Option<f64>,
    /// (`VmRSS`, `VmHWM`) at the end of the window, KiB.
    mem_kib: Option<(u64, u64)>,
}

/// `concurrency` keep-alive connections in a closed loop for `window` (after `warmup`).
async fn throughput(
    target: &Target,
    concurrency: usize,
    window: Duration,
    warmup: Duration,
) -> R<ThroughputStats> {
    let req: &'static [u8] = Box::leak(request_bytes(target.path, false).into_boxed_slice());
    let start = Instant::now() + warmup;
    let stop = start + window;
    // CPU of the process under test over exactly the window.
    let pid = target.pid;
    let cpu_probe = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let a = pid.and_then(proc_cpu_ns);
        let at = pid.and_then(proc_stat_ticks);
        tokio::time::sleep_until(stop.into()).await;
        let b = pid.and_then(proc_cpu_ns);
        let bt = pid.and_then(proc_stat_ticks);
        let mem = pid.and_then(proc_mem_kib);
        (
            a.zip(b).map(|(a, b)| b.saturating_sub(a)),
            at.zip(bt).map(|(a, b)| b.saturating_sub(a)),
            mem,
        )
    });
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let addr = target.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(addr);
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let now = Instant::now();
                if now >= stop {
                    break;
                }
                match c.request(req, false).await {
                    Ok(t) => {
                        // Count requests that started and finished inside the window.
                        if now >= start && Instant::now() <= stop {
                            lat.push(t.total);
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    let (cpu, ticks, mem_kib) = cpu_probe.await?;
    let done = all.len().max(1) as f64;
    Ok(ThroughputStats {
        rps: all.len() as f64 / window.as_secs_f64(),
        completed: all.len(),
        errors,
        p50_ms: percentile(&all, 50.0) / 1000.0,
        p99_ms: percentile(&all, 99.0) / 1000.0,
        cpu_us_per_req: cpu.map(|ns| ns as f64 / 1000.0 / done),
        cpu_us_per_req_stat: ticks.map(|t| t as f64 * 1e6 / clk_tck() as f64 / done),
        cpu_cores: cpu.map(|ns| ns as f64 / 1e9 / window.as_secs_f64()),
        mem_kib,
    })
}

/// Wait until a target answers a chat request with 200.
async fn wait_ready(name: &str, addr: SocketAddr, path: &str, proc_: Option<&mut Proc>) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let req = request_bytes(path, false);
    let mut last = String::new();
    let mut p = proc_;
    while Instant::now() < deadline {
        if let Some(p) = p.as_mut() {
            if let Ok(Some(st)) = p.child.try_wait() {
                let log = p
                    .log
                    .as_ref()
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "{name} exited at startup ({st}); its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
                .into());
            }
        }
        let mut c = Conn::new(addr);
        match c.request(&req, false).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{name} not ready after 20 s: {last}").into())
}

/// Read one counter family's total from a Prometheus text page.
async fn scrape(addr: SocketAddr, metric: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    let mut sum = None;
    for l in text.lines() {
        if l.starts_with(metric)
            && (l[metric.len()..].starts_with('{') || l[metric.len()..].starts_with(' '))
        {
            if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *sum.get_or_insert(0.0) += v;
            }
        }
    }
    sum
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// `x` to `digits` decimals; `None` (JSON `null`) for a missing value.
fn round(x: f64, digits: i32) -> Option<f64> {
    let k = 10f64.powi(digits);
    x.is_finite().then(|| (x * k).round() / k)
}

#[derive(Default, Clone)]
struct SoakWave {
    completed: usize,
    errors: usize,
    /// Longest single stream of the wave, request written to last byte (ms).
    worst_ms: f64,
    /// (`VmRSS`, `VmHWM`) right after the wave, KiB.
    mem_kib: Option<(u64, u64)>,
}

#[derive(Default, Clone)]
struct SoakStats {
    /// (`VmRSS`, `VmHWM`) before the first wave (the process has answered one request).
    before_kib: Option<(u64, u64)>,
    waves: Vec<SoakWave>,
    elapsed_s: f64,
    cpu_us_per_req: Option<f64>,
    /// RSS split before the first wave, after the last and `SOAK_SETTLE` later.
    split_before: Option<(u64, u64, u64)>,
    split_after: Option<(u64, u64, u64)>,
    split_settled: Option<(u64, u64, u64)>,
    /// `VmRSS` `SOAK_SETTLE` after the last wave.
    settled_kib: Option<(u64, u64)>,
}

impl SoakStats {
    fn rss_mib(&self, wave: usize) -> Option<f64> {
        self.waves
            .get(wave)
            .and_then(|w| w.mem_kib)
            .map(|(r, _)| mib(r))
    }
    /// RSS change from the end of the first wave (warm-up) to the end of the last, MiB.
    fn growth_after_warmup_mib(&self) -> Option<f64> {
        Some(self.rss_mib(self.waves.len().checked_sub(1)?)? - self.rss_mib(0)?)
    }
    /// RSS change over the second half of the waves, MiB (flat memory: about zero).
    fn growth_second_half_mib(&self) -> Option<f64> {
        let last = self.waves.len().checked_sub(1)?;
        Some(self.rss_mib(last)? - self.rss_mib(last / 2)?)
    }
}

/// Bounded stream soak: `waves` waves of `per_wave` streamed requests on `concurrency`
/// fresh keep-alive connections each; RSS read after every wave. Stops at `SOAK_CAP`.
async fn soak(target: &Target, waves: usize, per_wave: usize, concurrency: usize) -> R<SoakStats> {
    let req: &'static [u8] = Box::leak(request_bytes(target.path, true).into_boxed_slice());
    let started = Instant::now();
    let deadline = started + SOAK_CAP;
    let mut out = SoakStats {
        before_kib: target.pid.and_then(proc_mem_kib),
        split_before: target.pid.and_then(proc_rss_split_kib),
        ..Default::default()
    };
    let cpu0 = target.pid.and_then(proc_cpu_ns);
    let mut total = 0usize;
    for _ in 0..waves {
        if Instant::now() >= deadline {
            eprintln!(
                "soak {} hit its {SOAK_CAP:?} cap; stopping early",
                target.name
            );
            break;
        }
        let left = std::sync::Arc::new(AtomicUsize::new(per_wave));
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let addr = target.addr;
            let left = left.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::new(addr);
                let (mut done, mut errors, mut worst) = (0usize, 0usize, Duration::ZERO);
                while Instant::now() < deadline
                    && left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                {
                    match c.request(req, true).await {
                        Ok(t) => {
                            done += 1;
                            worst = worst.max(t.total);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (done, errors, worst)
            }));
        }
        let mut w = SoakWave::default();
        let mut worst = Duration::ZERO;
        for t in tasks {
            let (d, e, x) = t.await?;
            w.completed += d;
            w.errors += e;
            worst = worst.max(x);
        }
        w.worst_ms = worst.as_secs_f64() * 1000.0;
        w.mem_kib = target.pid.and_then(proc_mem_kib);
        total += w.completed + w.errors;
        out.waves.push(w);
    }
    out.elapsed_s = started.elapsed().as_secs_f64();
    let cpu1 = target.pid.and_then(proc_cpu_ns);
    out.split_after = target.pid.and_then(proc_rss_split_kib);
    tokio::time::sleep(SOAK_SETTLE).await;
    out.split_settled = target.pid.and_then(proc_rss_split_kib);
    out.settled_kib = target.pid.and_then(proc_mem_kib);
    out.cpu_us_per_req = cpu0
        .zip(cpu1)
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1000.0 / total.max(1) as f64);
    Ok(out)
}

/// One target of the capacity phase: its throughput run and its trace counters.
struct CapacityRun {
    name: &'static str,
    stats: ThroughputStats,
    /// `loopgate_trace_written_total` / `_dropped_total` after the window (loopgate only).
    traces_written: Option<f64>,
    traces_dropped: Option<f64>,
}

/// Capacity on one core: a fresh passthrough, then a fresh loopgate with tracing to SQLite
/// (then the `--baseline-bin` build, likewise), each pinned to `target_cpu` while this
/// process (load generator and mock) runs on another CPU; `o.capacity_concurrency`
/// keep-alive connections on the mock's `/slow/` path (answers after `o.capacity_ms`).
async fn capacity_phase(
    o: &Opts,
    bin: &Path,
    tmp: &Path,
    mock: SocketAddr,
    slow_base: &str,
    target_cpu: usize,
) -> R<Vec<CapacityRun>> {
    let dir = tmp.join("capacity");
    let mut runs = Vec::new();
    let (mut pt, pt_addr) = start_passthrough(&dir, mock, Some(target_cpu))?;
    wait_ready(
        "capacity passthrough",
        pt_addr,
        "/slow/v1/chat/completions",
        Some(&mut pt),
    )
    .await?;
    let target = Target {
        name: "passthrough",
        addr: pt_addr,
        path: "/slow/v1/chat/completions",
        pid: Some(pt.child.id()),
    };
    let stats = capacity_load(o, &target).await?;
    runs.push(CapacityRun {
        name: "passthrough",
        stats,
        traces_written: None,
        traces_dropped: None,
    });
    drop(pt);
    let mut lgs: Vec<(&'static str, &Path)> = vec![("lg_trace_on", bin)];
    if let Some(b) = &o.baseline_bin {
        lgs.push(("lg_baseline", b));
    }
    for (name, target_bin) in lgs {
        let (p, addr, metrics) = loopgate_ready_on(
            target_bin,
            &dir,
            &format!("{name}_capacity"),
            slow_base,
            Tracing::On,
            Some(target_cpu),
        )
        .await?;
        let target = Target::chat(name, addr, Some(p.child.id()));
        let stats = capacity_load(o, &target).await?;
        // The writer commits in batches: give it a moment before reading its counters.
        tokio::time::sleep(Duration::from_millis(500)).await;
        runs.push(CapacityRun {
            name,
            stats,
            traces_written: scrape(metrics, "loopgate_trace_written_total").await,
            traces_dropped: scrape(metrics, "loopgate_trace_dropped_total").await,
        });
        drop(p);
    }
    Ok(runs)
}

/// The capacity phase's load on one target: `o.capacity_concurrency` connections for
/// `o.capacity_window` after the warm-up.
async fn capacity_load(o: &Opts, target: &Target) -> R<ThroughputStats> {
    eprintln!("capacity {} ...", target.name);
    throughput(
        target,
        o.capacity_concurrency,
        o.capacity_window,
        CAPACITY_WARMUP,
    )
    .await
}

/// Command-line flags (after `cargo bench --bench load --`).
struct Opts {
    concurrency: usize,
    slow_ms: u64,
    window: Duration,
    soak_waves: usize,
    soak_per_wave: usize,
    soak_concurrency: usize,
    throughput: bool,
    soak: bool,
    /// Another loopgate build measured beside this one (tracing on) as `lg_baseline`:
    /// before/after comparisons of a change in one run.
    baseline_bin: Option<PathBuf>,
    /// The one-core capacity phase (`--capacity`): off unless asked for.
    capacity: bool,
    capacity_concurrency: usize,
    capacity_ms: u64,
    capacity_window: Duration,
}

const USAGE: &str = "cargo bench --bench load -- [--concurrency N (64)] [--slow-ms N (20)] \
[--window-s N (10)] [--soak-waves N (20)] [--soak-per-wave N (1000)] [--soak-concurrency N (64)] \
[--no-throughput] [--no-soak] [--baseline-bin PATH] [--capacity] [--capacity-concurrency N (128)] \
[--capacity-ms N (5)] [--capacity-window-s N (10)]";

fn parse_opts(args: &[String]) -> R<Opts> {
    let mut o = Opts {
        concurrency: 64,
        slow_ms: 20,
        window: Duration::from_secs(10),
        soak_waves: 20,
        soak_per_wave: 1000,
        soak_concurrency: 64,
        throughput: true,
        soak: true,
        baseline_bin: None,
        capacity: false,
        capacity_concurrency: 128,
        capacity_ms: 5,
        capacity_window: Duration::from_secs(10),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str, max: u64| -> R<u64> {
            let v: u64 = it
                .next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse()
                .map_err(|_| format!("{name}: not a number"))?;
            if v == 0 || v > max {
                return Err(format!("{name}: 1..={max}").into());
            }
            Ok(v)
        };
        match a.as_str() {
            "--concurrency" => o.concurrency = num(a, 4096)? as usize,
            "--slow-ms" => o.slow_ms = num(a, 10_000)?,
            "--window-s" => o.window = Duration::from_secs(num(a, 600)?),
            "--soak-waves" => o.soak_waves = num(a, 1000)? as usize,
            "--soak-per-wave" => o.soak_per_wave = num(a, 1_000_000)? as usize,
            "--soak-concurrency" => o.soak_concurrency = num(a, 4096)? as usize,
            "--no-throughput" => o.throughput = false,
            "--no-soak" => o.soak = false,
            "--capacity" => o.capacity = true,
            "--capacity-concurrency" => o.capacity_concurrency = num(a, 4096)? as usize,
            "--capacity-ms" => o.capacity_ms = num(a, 10_000)?,
            "--capacity-window-s" => o.capacity_window = Duration::from_secs(num(a, 600)?),
            "--baseline-bin" => {
                let p = PathBuf::from(it.next().ok_or("--baseline-bin needs a path")?);
                if !p.is_file() {
                    return Err(format!("--baseline-bin {}: no such file", p.display()).into());
                }
                o.baseline_bin = Some(p);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // cargo passes `--bench`; filters are not used by this bench.
            _ => {}
        }
    }
    Ok(o)
}

/// Start a loopgate and wait until it answers; returns (process, listen, metrics).
async fn loopgate_ready(
    bin: &Path,
    tmp: &Path,
    name: &str,
    upstream_base: &str,
    tracing: Tracing,
) -> R<(Proc, SocketAddr, SocketAddr)> {
    loopgate_ready_on(bin, tmp, name, upstream_base, tracing, None).await
}

/// [`loopgate_ready`] with the process pinned to one CPU (the capacity phase).
async fn loopgate_ready_on(
    bin: &Path,
    tmp: &Path,
    name: &str,
    upstream_base: &str,
    tracing: Tracing,
    cpu: Option<usize>,
) -> R<(Proc, SocketAddr, SocketAddr)> {
    let (mut p, addr, metrics) = start_loopgate(bin, tmp, name, upstream_base, tracing, cpu)?;
    wait_ready(name, addr, "/v1/chat/completions", Some(&mut p)).await?;
    Ok((p, addr, metrics))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn mem_json(m: Option<(u64, u64)>) -> serde_json::Value {
    match m {
        Some((rss, hwm)) => {
            serde_json::json!({"rss_mib": round(mib(rss), 1), "hwm_mib": round(mib(hwm), 1)})
        }
        None => serde_json::Value::Null,
    }
}

async fn run(o: &Opts) -> R<()> {
    SLOW_MS.store(o.slow_ms, Ordering::Relaxed);
    let bin = loopgate_binary()?;
    let tmp = tempfile::tempdir()?;
    let mock = start_mock()?;
    let otlp_rx = start_otlp_receiver()?;
    let fast_base = format!("http://{mock}/v1");
    let slow_base = format!("http://{mock}/slow/v1");
    eprintln!(
        "mock on {mock}; OTLP receiver on {otlp_rx}; loopgate binary {}",
        bin.display()
    );
    let t = tmp.path();

    let (mut pt, pt_addr) = start_passthrough(t, mock, None)?;
    wait_ready(
        "passthrough",
        pt_addr,
        "/v1/chat/completions",
        Some(&mut pt),
    )
    .await?;
    let (on, on_addr, on_metrics) =
        loopgate_ready(&bin, t, "lg_trace_on", &fast_base, Tracing::On).await?;
    let (off, off_addr, off_metrics) =
        loopgate_ready(&bin, t, "lg_trace_off", &fast_base, Tracing::Off).await?;
    let (lim, lim_addr, _) =
        loopgate_ready(&bin, t, "lg_limits_on", &fast_base, Tracing::Limits).await?;
    let (fw, fw_addr, _) =
        loopgate_ready(&bin, t, "lg_firewall_on", &fast_base, Tracing::Firewall).await?;
    let (ch, ch_addr, _) =
        loopgate_ready(&bin, t, "lg_cache_hit", &fast_base, Tracing::Cache).await?;
    let (ot, ot_addr, ot_metrics) =
        loopgate_ready(&bin, t, "lg_otlp_on", &fast_base, Tracing::Otlp(otlp_rx)).await?;
    let baseline = match &o.baseline_bin {
        Some(b) => Some(loopgate_ready(b, t, "lg_baseline", &fast_base, Tracing::On).await?),
        None => None,
    };
    let load_before = load_average();
    eprintln!("all up; load average {load_before}");

    let pid = |p: &Proc| Some(p.child.id());
    let mut lat_targets = vec![
        Target::chat("direct", mock, None),
        Target::chat("passthrough", pt_addr, pid(&pt)),
        Target::chat("lg_trace_on", on_addr, pid(&on)),
        Target::chat("lg_trace_off", off_addr, pid(&off)),
        Target::chat("lg_limits_on", lim_addr, pid(&lim)),
        Target::chat("lg_firewall_on", fw_addr, pid(&fw)),
        Target::chat("lg_cache_hit", ch_addr, pid(&ch)),
        Target::chat("lg_otlp_on", ot_addr, pid(&ot)),
    ];
    if let Some((p, addr, _)) = &baseline {
        lat_targets.push(Target::chat("lg_baseline", *addr, pid(p)));
    }
    // Idle memory: each process has started and answered one request.
    let idle_mem: Vec<Option<(u64, u64)>> = lat_targets
        .iter()
        .map(|t| t.pid.and_then(proc_mem_kib))
        .collect();
    eprintln!("latency, non-stream ...");
    let non_stream = latency_phase(&lat_targets, false).await?;
    eprintln!("latency, stream TTFB ...");
    let stream = latency_phase(&lat_targets, true).await?;
    let lat_mem: Vec<Option<(u64, u64)>> = lat_targets
        .iter()
        .map(|t| t.pid.and_then(proc_mem_kib))
        .collect();
    // Let the OTLP batch (1 s interval) go out before reading the counters.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let traces_written = scrape(on_metrics, "loopgate_trace_written_total").await;
    let traces_dropped = scrape(on_metrics, "loopgate_trace_dropped_total").await;
    let off_written = scrape(off_metrics, "loopgate_trace_written_total").await;
    let otlp_exported = scrape(ot_metrics, "loopgate_otlp_spans_exported_total").await;
    let otlp_dropped = scrape(ot_metrics, "loopgate_otlp_spans_dropped_total").await;
    let otlp_failures = scrape(ot_metrics, "loopgate_otlp_export_failures_total").await;
    let otlp_posts = OTLP_POSTS.load(Ordering::Relaxed);
    let otlp_bytes = OTLP_BYTES.load(Ordering::Relaxed);
    // The latency processes are done: stop them so the throughput phase has the cores.
    drop((on, off, lim, fw, ch, ot, baseline));

    // Throughput: fresh gateways on the slow mock, one at a time.
    let mut tp_targets: Vec<Target> = Vec::new();
    let mut tp: Vec<ThroughputStats> = Vec::new();
    if o.throughput {
        let mut slow: Vec<(&'static str, Option<Tracing>, &Path)> = vec![
            ("direct", None, &bin),
            ("passthrough", None, &bin),
            ("lg_trace_on", Some(Tracing::On), &bin),
            ("lg_trace_off", Some(Tracing::Off), &bin),
            ("lg_otlp_on", Some(Tracing::Otlp(otlp_rx)), &bin),
        ];
        if let Some(b) = &o.baseline_bin {
            slow.push(("lg_baseline", Some(Tracing::On), b));
        }
        for (name, tracing, target_bin) in slow {
            let proc_ = match tracing {
                Some(tr) => {
                    let (p, addr, _) =
                        loopgate_ready(target_bin, t, &format!("{name}_slow"), &slow_base, tr)
                            .await?;
                    Some((p, addr))
                }
                None => None,
            };
            let target = match (&proc_, name) {
                (Some((p, addr)), _) => Target::chat(name, *addr, pid(p)),
                (None, "direct") => Target {
                    name,
                    addr: mock,
                    path: "/slow/v1/chat/completions",
                    pid: None,
                },
                (None, _) => Target {
                    name,
                    addr: pt_addr,
                    path: "/slow/v1/chat/completions",
                    pid: pid(&pt),
                },
            };
            eprintln!("throughput {name} ...");
            tp.push(throughput(&target, o.concurrency, o.window, THROUGHPUT_WARMUP).await?);
            tp_targets.push(target);
            drop(proc_);
        }
    }
    drop(pt);

    // Capacity on one core (opt-in): the target pinned to one CPU, this process to another.
    let mut capacity: Vec<CapacityRun> = Vec::new();
    let mut capacity_cpus: Option<(usize, usize)> = None;
    if o.capacity {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            eprintln!(
                "capacity phase skipped: it needs 2 CPUs, this process may use {:?}",
                cpus
            );
        } else {
            // The bench on the first CPU, the process under test on the last.
            let (bench_cpu, target_cpu) = (cpus[0], cpus[cpus.len() - 1]);
            pin_self(&[bench_cpu])?;
            SLOW_MS.store(o.capacity_ms, Ordering::Relaxed);
            let result = capacity_phase(o, &bin, t, mock, &slow_base, target_cpu).await;
            SLOW_MS.store(o.slow_ms, Ordering::Relaxed);
            pin_self(&cpus)?;
            capacity = result?;
            capacity_cpus = Some((target_cpu, bench_cpu));
        }
    }

    // Stream soak: a fresh passthrough and a fresh loopgate (tracing on), one after the other.
    let mut soaks: Vec<(&'static str, SoakStats)> = Vec::new();
    if o.soak {
        let (mut spt, spt_addr) = start_passthrough(&t.join("soak"), mock, None)?;
        wait_ready(
            "soak passthrough",
            spt_addr,
            "/v1/chat/completions",
            Some(&mut spt),
        )
        .await?;
        let target = Target::chat("passthrough", spt_addr, pid(&spt));
        eprintln!("stream soak passthrough ...");
        soaks.push((
            "passthrough",
            soak(&target, o.soak_waves, o.soak_per_wave, o.soak_concurrency).await?,
        ));
        drop(spt);
        let (slg, slg_addr, _) =
            loopgate_ready(&bin, t, "lg_trace_on_soak", &fast_base, Tracing::On).await?;
        let target = Target::chat("lg_trace_on", slg_addr, pid(&slg));
        eprintln!("stream soak lg_trace_on ...");
        soaks.push((
            "lg_trace_on",
            soak(&target, o.soak_waves, o.soak_per_wave, o.soak_concurrency).await?,
        ));
        drop(slg);
    }
    let load_after = load_average();

    // Report.
    let added =
        |s: &[LatencyStats], i: usize| (s[i].p50_us - s[0].p50_us, s[i].p99_us - s[0].p99_us);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nloopgate load benchmark ({} cores, load average {load_before} -> {load_after})",
        num_cpus()
    );
    let _ = writeln!(
        out,
        "concurrency 1, {} requests per target after {WARMUP} warm-up, microseconds; conns = upstream connections the mock accepted",
        ROUNDS * PER_ROUND
    );
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>8} {:>8} {:>9} {:>9} {:>5} | {:>8} {:>8} {:>8} {:>9} {:>9} {:>5}",
        "target",
        "p50",
        "p95",
        "p99",
        "added p50",
        "added p99",
        "conns",
        "TTFB p50",
        "TTFB p95",
        "TTFB p99",
        "added p50",
        "added p99",
        "conns"
    );
    for (i, t) in lat_targets.iter().enumerate() {
        let (a50, a99) = added(&non_stream, i);
        let (s50, s99) = added(&stream, i);
        let _ = writeln!(
            out,
            "{:<15} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>5} | {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>5}",
            t.name,
            non_stream[i].p50_us,
            non_stream[i].p95_us,
            non_stream[i].p99_us,
            a50,
            a99,
            non_stream[i].upstream_conns,
            stream[i].p50_us,
            stream[i].p95_us,
            stream[i].p99_us,
            s50,
            s99,
            stream[i].upstream_conns
        );
    }
    let _ = writeln!(
        out,
        "\nprocess cost in the latency phase (CPU = the process's user+system CPU time per request; memory in MiB)"
    );
    let _ = writeln!(
        out,
        "{:<15} {:>13} {:>13} {:>9} {:>12} {:>12}",
        "target", "CPU us/req", "CPU us/TTFB", "idle RSS", "RSS at end", "HWM at end"
    );
    for (i, t) in lat_targets.iter().enumerate().skip(1) {
        let _ = writeln!(
            out,
            "{:<15} {:>13} {:>13} {:>9} {:>12} {:>12}",
            t.name,
            fmt_opt(non_stream[i].cpu_us_per_req, 1),
            fmt_opt(stream[i].cpu_us_per_req, 1),
            fmt_opt(idle_mem[i].map(|m| mib(m.0)), 1),
            fmt_opt(lat_mem[i].map(|m| mib(m.0)), 1),
            fmt_opt(lat_mem[i].map(|m| mib(m.1)), 1),
        );
    }
    if o.throughput {
        let _ = writeln!(
            out,
            "\nthroughput: {} connections, mock answers after {} ms, {}s window (a fresh process per target)",
            o.concurrency,
            o.slow_ms,
            o.window.as_secs()
        );
        let _ = writeln!(
            out,
            "{:<15} {:>9} {:>7} {:>8} {:>8} {:>7} {:>11} {:>11} {:>7} {:>8} {:>8}",
            "target",
            "req/s",
            "errors",
            "p50 ms",
            "p99 ms",
            "x pt",
            "CPU us/req",
            "(stat tck)",
            "cores",
            "RSS MiB",
            "HWM MiB"
        );
        for (i, t) in tp_targets.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:<15} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>7.3} {:>11} {:>11} {:>7} {:>8} {:>8}",
                t.name,
                tp[i].rps,
                tp[i].errors,
                tp[i].p50_ms,
                tp[i].p99_ms,
                tp[i].rps / tp[1].rps,
                fmt_opt(tp[i].cpu_us_per_req, 1),
                fmt_opt(tp[i].cpu_us_per_req_stat, 1),
                fmt_opt(tp[i].cpu_cores, 2),
                fmt_opt(tp[i].mem_kib.map(|m| mib(m.0)), 1),
                fmt_opt(tp[i].mem_kib.map(|m| mib(m.1)), 1),
            );
        }
    }
    if let Some((target_cpu, bench_cpu)) = capacity_cpus {
        let _ = writeln!(
            out,
            "\ncapacity on one core: the target pinned to CPU {target_cpu}, load generator and mock on CPU {bench_cpu}; {} connections, mock answers after {} ms, {} s window after {} s warm-up (a fresh process per target)",
            o.capacity_concurrency,
            o.capacity_ms,
            o.capacity_window.as_secs(),
            CAPACITY_WARMUP.as_secs()
        );
        let _ = writeln!(
            out,
            "{:<15} {:>9} {:>7} {:>8} {:>8} {:>7} {:>11} {:>8} {:>10} {:>8} {:>8} {:>16}",
            "target",
            "req/s",
            "errors",
            "p50 ms",
            "p99 ms",
            "x pt",
            "CPU us/req",
            "CPU x pt",
            "core share",
            "RSS MiB",
            "HWM MiB",
            "traces w/dropped"
        );
        let pt = &capacity[0].stats;
        for r in &capacity {
            let _ = writeln!(
                out,
                "{:<15} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>7.3} {:>11} {:>8} {:>10} {:>8} {:>8} {:>16}",
                r.name,
                r.stats.rps,
                r.stats.errors,
                r.stats.p50_ms,
                r.stats.p99_ms,
                r.stats.rps / pt.rps,
                fmt_opt(r.stats.cpu_us_per_req, 1),
                fmt_opt(
                    r.stats
                        .cpu_us_per_req
                        .zip(pt.cpu_us_per_req)
                        .map(|(a, b)| a / b),
                    2
                ),
                fmt_opt(r.stats.cpu_cores, 2),
                fmt_opt(r.stats.mem_kib.map(|m| mib(m.0)), 1),
                fmt_opt(r.stats.mem_kib.map(|m| mib(m.1)), 1),
                match (r.traces_written, r.traces_dropped) {
                    (Some(w), d) => format!("{w:.0}/{:.0}", d.unwrap_or(0.0)),
                    (None, _) => "-".into(),
                },
            );
        }
    }
    for (name, s) in &soaks {
        let _ = writeln!(
            out,
            "\nstream soak {name}: {} waves x {} streams on {} connections, {:.1} s, CPU {} us/stream; RSS MiB before {}",
            s.waves.len(),
            o.soak_per_wave,
            o.soak_concurrency,
            s.elapsed_s,
            fmt_opt(s.cpu_us_per_req, 1),
            fmt_opt(s.before_kib.map(|m| mib(m.0)), 1),
        );
        let curve: Vec<String> = s
            .waves
            .iter()
            .map(|w| fmt_opt(w.mem_kib.map(|m| mib(m.0)), 1))
            .collect();
        let worst = s.waves.iter().map(|w| w.worst_ms).fold(0.0, f64::max);
        let errors: usize = s.waves.iter().map(|w| w.errors).sum();
        let _ = writeln!(
            out,
            "  RSS after each wave: {}; HWM {}; worst stream {worst:.1} ms; errors {errors}",
            curve.join(" "),
            fmt_opt(s.waves.last().and_then(|w| w.mem_kib).map(|m| mib(m.1)), 1),
        );
        let _ = writeln!(
            out,
            "  RSS {:.0} s after the last wave: {}; split before: {}; after: {}; {:.0} s later: {}",
            SOAK_SETTLE.as_secs_f64(),
            fmt_opt(s.settled_kib.map(|m| mib(m.0)), 1),
            fmt_split(s.split_before),
            fmt_split(s.split_after),
            SOAK_SETTLE.as_secs_f64(),
            fmt_split(s.split_settled),
        );
    }

    // Targets (loopgate with tracing on is the product as shipped).
    let mut checks: Vec<(String, f64, f64, bool)> = Vec::new();
    for (mode, s) in [("non-stream", &non_stream), ("stream TTFB", &stream)] {
        let (pt50, _) = added(s, 1);
        let (lg50, lg99) = added(s, 2);
        checks.push((
            format!("{mode}: added p50 within 25 us of passthrough's"),
            lg50 - pt50,
            25.0,
            lg50 - pt50 <= 25.0,
        ));
        checks.push((
            format!("{mode}: added p99 <= 150 us"),
            lg99,
            150.0,
            lg99 <= 150.0,
        ));
    }
    let (_, pt99) = added(&non_stream, 1);
    let (_, lg99) = added(&non_stream, 2);
    checks.push((
        "non-stream: added p99 <= passthrough's + 50 us (issue 14)".into(),
        lg99 - pt99,
        50.0,
        lg99 - pt99 <= 50.0,
    ));
    let (pt50s, _) = added(&stream, 1);
    let (lg50s, _) = added(&stream, 2);
    checks.push((
        "stream TTFB: added p50 <= passthrough's + 30 us (issue 14)".into(),
        lg50s - pt50s,
        30.0,
        lg50s - pt50s <= 30.0,
    ));
    if o.throughput {
        let ratio = tp[2].rps / tp[1].rps;
        checks.push((
            "throughput >= 0.85x passthrough".into(),
            ratio,
            0.85,
            ratio >= 0.85,
        ));
        if let (Some(lg), Some(p)) = (tp[2].cpu_us_per_req, tp[1].cpu_us_per_req) {
            checks.push((
                "throughput phase: CPU per request <= 1.7x passthrough's (issue 14)".into(),
                lg / p,
                1.7,
                lg / p <= 1.7,
            ));
        }
        if let (Some(ot), Some(on)) = (tp[4].cpu_us_per_req, tp[2].cpu_us_per_req) {
            checks.push((
                "throughput phase: OTLP on minus tracing on, CPU us per request (no limit set; issue 18)".into(),
                ot - on,
                f64::NAN,
                true,
            ));
        }
        if let Some((_, hwm)) = tp[2].mem_kib {
            checks.push((
                format!(
                    "peak RSS (VmHWM) under load <= 40 MiB (issue 14 asks it at c=128; here c={})",
                    o.concurrency
                ),
                mib(hwm),
                40.0,
                mib(hwm) <= 40.0,
            ));
        }
    }
    if let [pt, lg, rest @ ..] = capacity.as_slice() {
        checks.push((
            "capacity on one core: loopgate (tracing on) >= 17,000 req/s (issue 14)".into(),
            lg.stats.rps,
            17_000.0,
            lg.stats.rps >= 17_000.0,
        ));
        let share = lg.stats.rps / pt.stats.rps;
        checks.push((
            "capacity on one core: loopgate >= 0.6x the passthrough's req/s (issue 14)".into(),
            share,
            0.6,
            share >= 0.6,
        ));
        if let (Some(l), Some(p)) = (lg.stats.cpu_us_per_req, pt.stats.cpu_us_per_req) {
            checks.push((
                "capacity on one core: CPU per request <= 1.7x the passthrough's (issue 14)".into(),
                l / p,
                1.7,
                l / p <= 1.7,
            ));
        }
        if let Some(base) = rest.first() {
            checks.push((
                "capacity on one core: lg_trace_on / lg_baseline req/s (no limit set)".into(),
                lg.stats.rps / base.stats.rps,
                f64::NAN,
                true,
            ));
            if let (Some(l), Some(b)) = (lg.stats.cpu_us_per_req, base.stats.cpu_us_per_req) {
                checks.push((
                    "capacity on one core: lg_trace_on / lg_baseline CPU per request (no limit set)"
                        .into(),
                    l / b,
                    f64::NAN,
                    true,
                ));
            }
        }
    }
    let (on50, _) = added(&non_stream, 2);
    let (off50, _) = added(&non_stream, 3);
    checks.push((
        "tracing on vs off: p50 difference < 10 us (issue 4)".into(),
        on50 - off50,
        10.0,
        on50 - off50 < 10.0,
    ));
    let (lim50, _) = added(&non_stream, 4);
    checks.push((
        "limits on vs off (tracing on): p50 difference < 25 us (issue 15)".into(),
        lim50 - on50,
        25.0,
        lim50 - on50 < 25.0,
    ));
    let (fw50, _) = added(&non_stream, 5);
    checks.push((
        "firewall on vs off (tracing on): p50 difference < 15 us (issue 16)".into(),
        fw50 - on50,
        15.0,
        fw50 - on50 < 15.0,
    ));
    let (ot50, _) = added(&non_stream, 7);
    checks.push((
        "OTLP on vs off (tracing on): p50 difference < 10 us (issue 18)".into(),
        ot50 - on50,
        10.0,
        ot50 - on50 < 10.0,
    ));
    let ot95 = non_stream[7].p95_us - non_stream[2].p95_us;
    checks.push((
        "OTLP on vs off (tracing on): p95 difference (no limit set; issue 18)".into(),
        ot95,
        f64::NAN,
        true,
    ));
    let ot50s = stream[7].p50_us - stream[2].p50_us;
    checks.push((
        "OTLP on vs off (tracing on): stream TTFB p50 difference < 10 us (issue 18)".into(),
        ot50s,
        10.0,
        ot50s < 10.0,
    ));
    if let (Some(ot), Some(on)) = (non_stream[7].cpu_us_per_req, non_stream[2].cpu_us_per_req) {
        checks.push((
            "OTLP on minus tracing on: CPU us per request at c=1 (no limit set; issue 18)".into(),
            ot - on,
            f64::NAN,
            true,
        ));
    }
    if let Some((rss, _)) = idle_mem[2] {
        checks.push((
            "idle RSS <= 25 MiB (issue 14; tracing on, after one request)".into(),
            mib(rss),
            25.0,
            mib(rss) <= 25.0,
        ));
    }
    for (name, s) in &soaks {
        if let Some(g) = s.growth_second_half_mib() {
            checks.push((
                format!("stream soak {name}: RSS growth over the second half of the waves <= 1 MiB (flat after warm-up, issue 14)"),
                g,
                1.0,
                g <= 1.0,
            ));
        }
    }
    let _ = writeln!(out, "\ntargets (loopgate = tracing on):");
    for (what, value, limit, ok) in &checks {
        if limit.is_nan() {
            let _ = writeln!(out, "  info {what}: {value:.2}");
        } else {
            let _ = writeln!(
                out,
                "  {:<4} {what}: {value:.2} (limit {limit})",
                verdict(*ok)
            );
        }
    }
    let _ = writeln!(
        out,
        "\ntraces: written {} dropped {} (tracing on); written {} (tracing off)",
        traces_written.map_or("?".into(), |v| v.to_string()),
        traces_dropped.map_or("0".into(), |v| v.to_string()),
        off_written.map_or("0".into(), |v| v.to_string()),
    );
    let _ = writeln!(
        out,
        "OTLP (latency phase): spans exported {} dropped {} export failures {}; receiver got {otlp_posts} POSTs, {otlp_bytes} bytes",
        otlp_exported.map_or("?".into(), |v| v.to_string()),
        otlp_dropped.map_or("0".into(), |v| v.to_string()),
        otlp_failures.map_or("0".into(), |v| v.to_string()),
    );
    print!("{out}");

    // JSON.
    let lat_json = |s: &[LatencyStats]| {
        let mut m = serde_json::Map::new();
        for (i, t) in lat_targets.iter().enumerate() {
            let (a50, a99) = added(s, i);
            m.insert(
                t.name.into(),
                serde_json::json!({
                    "n": s[i].n, "errors": s[i].errors,
                    "p50_us": round(s[i].p50_us, 1), "p95_us": round(s[i].p95_us, 1),
                    "p99_us": round(s[i].p99_us, 1),
                    "added_p50_us": round(a50, 1), "added_p99_us": round(a99, 1),
                    "upstream_connections_opened": s[i].upstream_conns,
                    "cpu_us_per_request": s[i].cpu_us_per_req.and_then(|v| round(v, 1)),
                }),
            );
        }
        serde_json::Value::Object(m)
    };
    let mut mem = serde_json::Map::new();
    for (i, t) in lat_targets.iter().enumerate().skip(1) {
        mem.insert(
            t.name.into(),
            serde_json::json!({"idle": mem_json(idle_mem[i]), "end_of_latency_phase": mem_json(lat_mem[i])}),
        );
    }
    let mut tp_json = serde_json::Map::new();
    for (i, t) in tp_targets.iter().enumerate() {
        tp_json.insert(
            t.name.into(),
            serde_json::json!({
                "rps": round(tp[i].rps, 1), "completed": tp[i].completed, "errors": tp[i].errors,
                "p50_ms": round(tp[i].p50_ms, 3), "p99_ms": round(tp[i].p99_ms, 3),
                "cpu_us_per_request": tp[i].cpu_us_per_req.and_then(|v| round(v, 1)),
                "cpu_us_per_request_stat_ticks": tp[i].cpu_us_per_req_stat.and_then(|v| round(v, 1)),
                "cpu_cores": tp[i].cpu_cores.and_then(|v| round(v, 3)),
                "memory_end": mem_json(tp[i].mem_kib),
            }),
        );
    }
    let mut soak_json = serde_json::Map::new();
    for (name, s) in &soaks {
        soak_json.insert(
            (*name).into(),
            serde_json::json!({
                "waves": s.waves.len(), "streams_per_wave": o.soak_per_wave,
                "concurrency": o.soak_concurrency, "elapsed_s": round(s.elapsed_s, 2),
                "cpu_us_per_stream": s.cpu_us_per_req.and_then(|v| round(v, 1)),
                "before": mem_json(s.before_kib),
                "rss_mib_after_each_wave": s.waves.iter().map(|w| w.mem_kib.and_then(|m| round(mib(m.0), 1))).collect::<Vec<_>>(),
                "worst_stream_ms_each_wave": s.waves.iter().map(|w| round(w.worst_ms, 1)).collect::<Vec<_>>(),
                "errors": s.waves.iter().map(|w| w.errors).sum::<usize>(),
                "hwm_mib_end": s.waves.last().and_then(|w| w.mem_kib).and_then(|m| round(mib(m.1), 1)),
                "growth_after_warmup_mib": s.growth_after_warmup_mib().and_then(|v| round(v, 2)),
                "growth_second_half_mib": s.growth_second_half_mib().and_then(|v| round(v, 2)),
                "settled": mem_json(s.settled_kib),
                "split_kib": {"before": s.split_before, "after": s.split_after, "settled": s.split_settled},
            }),
        );
    }
    let capacity_json = match capacity_cpus {
        Some((target_cpu, bench_cpu)) => {
            let pt = &capacity[0].stats;
            let mut m = serde_json::Map::new();
            for r in &capacity {
                m.insert(
                    r.name.into(),
                    serde_json::json!({
                        "rps": round(r.stats.rps, 1), "completed": r.stats.completed,
                        "errors": r.stats.errors,
                        "p50_ms": round(r.stats.p50_ms, 3), "p99_ms": round(r.stats.p99_ms, 3),
                        "rps_x_passthrough": round(r.stats.rps / pt.rps, 3),
                        "cpu_us_per_request": r.stats.cpu_us_per_req.and_then(|v| round(v, 1)),
                        "cpu_us_per_request_stat_ticks": r.stats.cpu_us_per_req_stat.and_then(|v| round(v, 1)),
                        "cpu_x_passthrough": r.stats.cpu_us_per_req.zip(pt.cpu_us_per_req).and_then(|(a, b)| round(a / b, 3)),
                        "core_share": r.stats.cpu_cores.and_then(|v| round(v, 3)),
                        "memory_end": mem_json(r.stats.mem_kib),
                        "traces_written": r.traces_written,
                        "traces_dropped": r.traces_dropped,
                    }),
                );
            }
            serde_json::json!({
                "target_cpu": target_cpu, "bench_cpu": bench_cpu,
                "concurrency": o.capacity_concurrency, "mock_ms": o.capacity_ms,
                "window_s": o.capacity_window.as_secs(), "warmup_s": CAPACITY_WARMUP.as_secs(),
                "targets": m,
            })
        }
        None => serde_json::Value::Null,
    };
    let checks_json: Vec<_> = checks
        .iter()
        .map(|(w, v, l, ok)| {
            if l.is_nan() {
                serde_json::json!({"target": w, "value": round(*v, 2)})
            } else {
                serde_json::json!({"target": w, "value": round(*v, 2), "limit": l, "pass": ok})
            }
        })
        .collect();
    let json = serde_json::json!({
        "cores": num_cpus(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "requests_per_target": ROUNDS * PER_ROUND,
        "warmup_per_target": WARMUP,
        "concurrency": o.concurrency,
        "slow_mock_ms": o.slow_ms,
        "window_s": o.window.as_secs(),
        "latency_non_stream": lat_json(&non_stream),
        "latency_stream_ttfb": lat_json(&stream),
        "memory_latency_targets": mem,
        "throughput": tp_json,
        "stream_soak": soak_json,
        "capacity_one_core": capacity_json,
        "checks": checks_json,
        "traces_written_tracing_on": traces_written,
        "traces_dropped_tracing_on": traces_dropped.unwrap_or(0.0),
        "traces_written_tracing_off": off_written.unwrap_or(0.0),
        "otlp_spans_exported": otlp_exported,
        "otlp_spans_dropped": otlp_dropped.unwrap_or(0.0),
        "otlp_export_failures": otlp_failures.unwrap_or(0.0),
        "otlp_receiver_posts": otlp_posts,
        "otlp_receiver_bytes": otlp_bytes,
    });
    let dir = target_profile_dir()?
        .parent()
        .map(|t| t.join("bench-results"))
        .ok_or("no target directory")?;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("load.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-passthrough") {
        passthrough::serve(&args[i + 1..]);
    }
    let opts = match parse_opts(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load bench: {e}\nusage: {USAGE}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load bench: runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(&opts)) {
        eprintln!("load bench failed: {e}");
        std::process::exit(1);
    }
}
