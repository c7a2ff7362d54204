#!/usr/bin/env python3
"""Write link/loopgate.order: the functions a release loopgate executes to start and answer
requests, for the linker to place side by side (src/build.rs passes the file to LLD as
--symbol-ordering-file). Fewer pages of `.text` are then mapped at run time: see
docs/benchmarks.md, "Session 16".

    python3 link/gen-order.py [BIN]            # regenerate (needs valgrind); BIN defaults to
                                               # $CARGO_TARGET_DIR or target, /release/loopgate
    python3 link/gen-order.py --check [BIN]    # how many listed names BIN still has

How: BIN runs under `valgrind --tool=callgrind` on a temporary configuration like
`benches/load.rs`'s `lg_trace_on` (one gateway key, traces to SQLite, OpenAI at a local mock),
answers one plain and one streamed chat request and stops; every function callgrind saw run
that is a symbol of BIN goes into the list. The names carry crate hashes: after a dependency,
toolchain or `[profile.release]` change most of them no longer match and the layout falls back
to the linker's default (nothing breaks; `--check` shows it). Regenerate then, and rebuild.
"""
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "link", "loopgate.order")
KEY = "lg-gen-order-0123456789abcdefghijklmnopqrstuvwxyz"
COMPLETION = json.dumps({
    "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 2, "total_tokens": 26},
}).encode()


def sse():
    def chunk(delta, finish):
        return {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    events = [chunk({"role": "assistant", "content": ""}, None), chunk({"content": "Hello."}, None),
              chunk({}, "stop")]
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


class Mock(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        stream = bool(body.get("stream"))
        data = sse() if stream else COMPLETION
        self.send_response(200)
        self.send_header("content-type", "text/event-stream" if stream else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def text_symbols(binary):
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                         check=True).stdout
    return {p[2] for p in (line.split() for line in out.splitlines())
            if len(p) == 3 and p[1] in "tT"}


def chat(port, stream):
    body = {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about latency."}], "max_completion_tokens": 64}
    if stream:
        body["stream"] = True
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
        return r.status


def executed(binary, tmp):
    mock = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mock)
    threading.Thread(target=mock.serve_forever, daemon=True).start()
    listen, metrics = free_port(), free_port()
    key_hash = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    conf = os.path.join(tmp, "gateway.toml")
    with open(conf, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{listen}"
metrics_listen = "127.0.0.1:{metrics}"
threads = 2
watch = false
filters_dir = "{ROOT}/filters"
pid_file = "{tmp}/loopgate.pid"
upgrade_sock = "{tmp}/loopgate.sock"
state_dir = "{tmp}"
grace_period_secs = 0
graceful_shutdown_timeout_secs = 1

[auth]
allow_unauthenticated_loopback = false
[[auth.keys]]
id = "order"
hash = "{key_hash}"
project = "order"

[storage]
backend = "sqlite"
sqlite_path = "{tmp}/traces.db"
spill_path = "{tmp}/spill.jsonl"
""")
    env = {"PATH": os.environ.get("PATH", ""), "OPENAI_API_KEY": "sk-order",
           "OPENAI_BASE_URL": f"http://127.0.0.1:{mock.server_address[1]}/v1",
           "LOOPGATE_LOG": "warn"}
    profile = os.path.join(tmp, "callgrind.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={profile}",
         binary, "serve", "-c", conf],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "log"), "w"))
    try:
        deadline = time.time() + 240
        while True:
            try:
                if chat(listen, False) == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                sys.exit(f"loopgate did not answer; see {tmp}/log")
            time.sleep(0.2)
        chat(listen, True)
        time.sleep(3)  # the trace batch is written
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        mock.shutdown()
    names = set()
    with open(profile, errors="replace") as f:
        for line in f:
            m = re.match(r"c?fn=\(\d+\) (\S+)", line)
            if m:
                names.add(re.sub(r"'\d+$", "", m.group(1)))
    return names


def main():
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.abspath(args[0] if args else os.path.join(target, "release", "loopgate"))
    syms = text_symbols(binary)
    if check:
        listed = [n for n in open(OUT).read().split() if n]
        found = sum(1 for n in listed if n in syms)
        print(f"{found} of {len(listed)} names in {OUT} are symbols of {binary}")
        return
    with tempfile.TemporaryDirectory(prefix="lg-order") as tmp:
        names = executed(binary, tmp)
    hot = sorted(n for n in names if n in syms)
    with open(OUT, "w") as f:
        f.write("\n".join(hot) + "\n")
    print(f"{len(hot)} functions written to {OUT} ({len(names)} executed)")


if __name__ == "__main__":
    main()
