#!/usr/bin/env python3
"""Validate benches/data/replay.jsonl.gz and summary.json.

Usage:
    python3 benches/data/check_replay.py [SRC_DATA_DIR]

Always checks the committed files (schema, ranges, counts, costs). When the
RouteLLM source data is present (SRC_DATA_DIR, else $LOOPGATE_SHARED_DATA,
else <repo>/../shared/data) it also re-derives the set into a temp dir and
compares sha256 digests, which proves the derivation is deterministic and the
committed file is up to date. Without the source data that step is skipped
with a message and the script still exits 0. Python 3.11 stdlib only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STRONG = "gpt-4-1106-preview"
CHEAP = "mixtral-8x7b-instruct-v0.1"
# Rows in the RouteLLM source and how many of them its contamination lists
# flag (MT-Bench: 8 questions x 2 turns).
EXPECTED = {"mmlu": (14042, 5), "gsm8k": (1319, 12), "mt_bench": (160, 16)}
MAX_PROMPT_LEN = 2000 + len("\n[...]\n")

passed = 0
failed = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"ok    {name}")
    else:
        failed += 1
        print(f"FAIL  {name}{': ' + detail if detail else ''}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def row_errors(r: dict, prices: dict) -> list[str]:
    e = []
    need = {"id": str, "dataset": str, "category": str, "contaminated": bool, "prompt": str,
            "prompt_chars": int, "prompt_truncated": bool, "source_index": int, "models": dict}
    for k, t in need.items():
        if not isinstance(r.get(k), t):
            e.append(f"{k} missing or not {t.__name__}")
    if e:
        return e
    if r["dataset"] not in EXPECTED:
        e.append(f"unknown dataset {r['dataset']}")
    if r["dataset"] == "mt_bench":
        if r.get("turn") not in (1, 2) or not isinstance(r.get("session"), str):
            e.append("mt_bench row needs turn 1|2 and a session")
        if r.get("turn") == 2 and not isinstance(r.get("prev_prompt"), str):
            e.append("turn 2 needs prev_prompt")
    elif r.get("turn") is not None or r.get("session") is not None:
        e.append("turn/session only for mt_bench")
    if len(r["prompt"]) > MAX_PROMPT_LEN or not r["prompt"]:
        e.append("prompt empty or longer than the truncation limit")
    if r["prompt_truncated"] != (r["prompt_chars"] > 2000):
        e.append("prompt_truncated inconsistent with prompt_chars")
    if not r["prompt_truncated"] and len(r["prompt"]) != r["prompt_chars"]:
        e.append("prompt_chars != len(prompt) for an untruncated prompt")
    if set(r["models"]) != {STRONG, CHEAP}:
        e.append(f"models must be exactly {STRONG}, {CHEAP}")
        return e
    for m, o in r["models"].items():
        q = o.get("quality")
        if not isinstance(q, float) or not 0.0 <= q <= 1.0:
            e.append(f"{m}.quality not a float in [0,1]")
        pt, ct = o.get("prompt_tokens"), o.get("completion_tokens")
        if not isinstance(pt, int) or pt < 1 or not isinstance(ct, int) or ct < 0:
            e.append(f"{m} token counts invalid")
            continue
        c = o.get("cost_usd")
        p = prices[m]
        want = pt * p["input_cost_per_token"] + ct * p["output_cost_per_token"]
        if not isinstance(c, float) or not math.isfinite(c) or abs(c - want) > 1e-9:
            e.append(f"{m}.cost_usd {c} != tokens x price {want}")
        if r["dataset"] == "mt_bench":
            s = o.get("judge_score")
            if not isinstance(s, float) or not 1.0 <= s <= 10.0 or abs((s - 1) / 9 - q) > 1e-5:
                e.append(f"{m}.judge_score missing or inconsistent with quality")
        elif not isinstance(o.get("correct"), bool) or q != (1.0 if o["correct"] else 0.0):
            e.append(f"{m}.correct missing or inconsistent with quality")
    return e


def check_committed(out_dir: str) -> None:
    gz_path = os.path.join(out_dir, "replay.jsonl.gz")
    sum_path = os.path.join(out_dir, "summary.json")
    exists = os.path.isfile(gz_path) and os.path.isfile(sum_path)
    check("replay.jsonl.gz and summary.json present", exists)
    if not exists:
        return
    with open(sum_path, encoding="utf-8") as f:
        summary = json.load(f)
    prices = summary["prices"]
    with gzip.open(gz_path, "rb") as f:
        text = f.read().decode("utf-8")
    check("file ends with a newline", text.endswith("\n"))
    check("no raw U+0085/U+2028/U+2029 (line breaks to some readers)",
          not any(c in text for c in "\u0085\u2028\u2029"))
    # Split on "\n" only: a record is one line for every reader.
    lines = text[:-1].split("\n") if text else []
    rows = []
    bad_json = 0
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad_json += 1
    check("every line is JSON", bad_json == 0, f"{bad_json} bad lines")
    errs = []
    for r in rows:
        for msg in row_errors(r, prices):
            errs.append(f"{r.get('id')}: {msg}")
    check("schema and ranges of every row", not errs, "; ".join(errs[:5]) + (" ..." if len(errs) > 5 else ""))
    ids = [r.get("id") for r in rows]
    check("ids unique", len(set(ids)) == len(ids))
    counts_ok = True
    detail = []
    for ds, (n, n_cont) in EXPECTED.items():
        got = sum(1 for r in rows if r.get("dataset") == ds)
        got_cont = sum(1 for r in rows if r.get("dataset") == ds and r.get("contaminated"))
        clean = summary["datasets"][ds]["n"]
        if (got, got_cont, clean) != (n, n_cont, n - n_cont):
            counts_ok = False
            detail.append(f"{ds}: rows {got}/{n}, contaminated {got_cont}/{n_cont}, summary n {clean}")
    check("per-dataset counts match the source and summary.json", counts_ok, "; ".join(detail))
    sessions = {}
    for r in rows:
        if r.get("dataset") == "mt_bench":
            sessions.setdefault(r["session"], set()).add(r["turn"])
    check("every MT-Bench session has turns 1 and 2", all(t == {1, 2} for t in sessions.values()))


ROUTERBENCH_EXPECTED = {"arc_challenge": 1019, "mbpp": 299, "winogrande": 887}


def check_routerbench(out_dir: str) -> None:
    path = os.path.join(out_dir, "routerbench.jsonl.gz")
    check("routerbench.jsonl.gz present", os.path.isfile(path))
    if not os.path.isfile(path):
        return
    with gzip.open(path, "rb") as f:
        lines = f.read().decode("utf-8").splitlines()
    rows = [json.loads(l) for l in lines]
    errs = []
    for r in rows:
        ms = r.get("models", {})
        if len(ms) != 11:
            errs.append(f"{r.get('id')}: {len(ms)} models")
        for m, v in ms.items():
            if not (0.0 <= v["quality"] <= 1.0) or not (v["cost_usd"] >= 0.0):
                errs.append(f"{r.get('id')}/{m}: out of range")
        if not isinstance(r.get("prompt"), str) or not r["prompt"]:
            errs.append(f"{r.get('id')}: no prompt")
    check("routerbench: schema and ranges", not errs, "; ".join(errs[:5]))
    ids = [r["id"] for r in rows]
    check("routerbench: ids unique", len(set(ids)) == len(ids))
    got = {t: sum(1 for r in rows if r["task"] == t) for t in ROUTERBENCH_EXPECTED}
    check("routerbench: per-task counts", got == ROUTERBENCH_EXPECTED, str(got))


def find_src(argv: list[str]) -> str | None:
    for cand in (argv[0] if argv else None, os.environ.get("LOOPGATE_SHARED_DATA"),
                 os.path.join(os.path.dirname(REPO), "shared", "data")):
        if cand and os.path.isdir(os.path.join(cand, "routellm")) and os.path.isfile(
                os.path.join(cand, "model_prices.json")):
            return cand
    return None


def check_rederive(src: str, out_dir: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, os.path.join(HERE, "derive_replay.py"), src, tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        check("re-derivation runs", res.returncode == 0, res.stderr.strip()[-500:])
        if res.returncode != 0:
            return
        names = ["replay.jsonl.gz", "summary.json"]
        if os.path.isfile(os.path.join(tmp, "routerbench.jsonl.gz")):
            names.append("routerbench.jsonl.gz")
        for name in names:
            with open(os.path.join(out_dir, name), "rb") as f:
                committed = f.read()
            with open(os.path.join(tmp, name), "rb") as f:
                fresh = f.read()
            if name.endswith(".gz"):
                # Content must match exactly; the compressed bytes depend on the zlib build too.
                a, b = gzip.decompress(committed), gzip.decompress(fresh)
                check(f"re-derived {name} content sha256 matches", sha256(a) == sha256(b),
                      f"committed {sha256(a)[:16]} vs fresh {sha256(b)[:16]}")
                if sha256(committed) != sha256(fresh):
                    print(f"note  {name}: compressed bytes differ (different zlib build?); content is what counts")
            else:
                check(f"re-derived {name} sha256 matches", sha256(committed) == sha256(fresh),
                      f"committed {sha256(committed)[:16]} vs fresh {sha256(fresh)[:16]}")


def main(argv: list[str]) -> int:
    check_committed(HERE)
    check_routerbench(HERE)
    src = find_src(argv)
    if src is None:
        print("skip  re-derivation: RouteLLM source data not found "
              "(pass SRC_DATA_DIR or set LOOPGATE_SHARED_DATA); nothing else to do")
    else:
        check_rederive(src, HERE)
    print(f"check_replay: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
