#!/usr/bin/env python3
"""Derive the compact replay set for loopgate's router benchmark.

Usage:
    python3 benches/data/derive_replay.py /work/shared/data benches/data

Reads the RouteLLM per-prompt outcomes (GPT-4-1106 vs Mixtral-8x7B; Apache-2.0)
under SRC/routellm/ and the LiteLLM price table SRC/model_prices.json (MIT), and
writes OUT/replay.jsonl.gz and OUT/summary.json. Python 3.11 stdlib only.
The output is byte-identical on every run (fixed ordering, fixed gzip header).
See benches/data/README.md for the field meanings and the estimation method.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import re
import sys

STRONG = "gpt-4-1106-preview"
CHEAP = "mixtral-8x7b-instruct-v0.1"
MODELS = (STRONG, CHEAP)
# Column / model names used by the RouteLLM files.
SRC_NAME = {STRONG: "gpt-4-1106-preview", CHEAP: "mistralai/Mixtral-8x7B-Instruct-v0.1"}

# Price-table keys. GPT-4-1106 is OpenAI's own entry. For Mixtral we take
# Together AI's entry: a hosted, serverless, pay-per-token endpoint serving
# the official weights, in the middle/upper part of the hosted range in the
# table (deepinfra 0.40, bedrock 0.45/0.70, fireworks 0.50, together 0.60,
# ovhcloud 0.63 $/Mtok), so savings are not flattered by the cheapest offer.
DEFAULT_PRICE_KEYS = {
    STRONG: "gpt-4-1106-preview",
    CHEAP: "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1",
}

# Prompts longer than this are stored as head + marker + tail; the full length
# is kept in prompt_chars and token counts use the full text.
MAX_PROMPT_CHARS = 2000
TRUNC_HEAD = 1000
TRUNC_TAIL = 1000
TRUNC_MARK = "\n[...]\n"

# ---------------------------------------------------------------------------
# Token estimate: tokens ~= sum(coef_i * feature_i), features from the text
# only (chars, whitespace words, digits, punctuation, non-ASCII chars).
# Coefficients were fitted (least squares, no intercept) against the real
# tokenizers on every prompt and response text in this data set:
# cl100k_base (GPT-4-1106, via the gpt-tokenizer npm package) and the
# Mistral/Mixtral 32k SentencePiece vocabulary (mistral-tokenizer-js).
# See README.md "Token estimate" for the fit and its error.
# ---------------------------------------------------------------------------
TOKEN_COEF = {
    # (chars, words, digits, punct, non_ascii)
    STRONG: (0.0299, 0.9409, 0.2317, 0.8121, 0.9720),
    CHEAP: (0.0869, 0.7417, 0.7406, 0.8684, 1.3861),
}

# Chat-template overhead in tokens, measured with the same tokenizers.
# GPT-4 chat format: 3 tokens per message + 3 to prime the reply.
# Mixtral instruct: "<s>" once, "[INST] " ... " [/INST]" per user turn,
# "</s>" after each earlier assistant turn.
CHAT_OVERHEAD = {
    STRONG: {"base": 3, "per_user": 3, "per_assistant": 3},
    CHEAP: {"base": 1, "per_user": 7, "per_assistant": 1},
}

# Exact token counts of the fixed 8-shot GSM8K prefix RouteLLM prepends
# (first 8 examples of GSM8K train, "Question: ...\nAnswer: ...\n\n" each;
# routellm/evals/gsm8k/generate_responses.py), measured with the real
# tokenizers (prefix: 3789 chars).
GSM8K_FEWSHOT_TOKENS = {STRONG: 1127, CHEAP: 1355}

# MMLU: RouteLLM sends "The following are multiple choice questions (with
# answers) about <subject>.\n\n" + k dev examples (k=5, reduced until the
# prefix is <= 1536 cl100k tokens) + the question, and reads 1 token back
# (max_new_tokens=1). The dev examples are not in the source data, so their
# length is estimated as k * the subject's mean test-question length + the
# " X\n\n" answer suffix.
MMLU_NTRAIN = 5
MMLU_FEWSHOT_CAP = 1536
MMLU_ANSWER_SUFFIX = " A\n\n"
MMLU_COMPLETION_TOKENS = 1

PUNCT_RE = re.compile(r"[^\w\s]", re.UNICODE)


def text_features(text: str) -> tuple[int, int, int, int, int]:
    chars = len(text)
    words = len(text.split())
    digits = sum(1 for c in text if "0" <= c <= "9")
    punct = len(PUNCT_RE.findall(text))
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return (chars, words, digits, punct, non_ascii)


def est_tokens(text: str, model: str) -> int:
    if not text:
        return 0
    coef = TOKEN_COEF[model]
    x = sum(c * f for c, f in zip(coef, text_features(text)))
    return max(1, int(math.floor(x + 0.5)))


def chat_prompt_tokens(model: str, user_turns: list[str], assistant_turns: list[str]) -> int:
    """Prompt tokens of a chat request: user turns interleaved with earlier answers."""
    o = CHAT_OVERHEAD[model]
    n = o["base"]
    n += sum(est_tokens(t, model) + o["per_user"] for t in user_turns)
    n += sum(est_tokens(t, model) + o["per_assistant"] for t in assistant_turns)
    return n


def truncate(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_PROMPT_CHARS:
        return text, False
    return text[:TRUNC_HEAD] + TRUNC_MARK + text[-TRUNC_TAIL:], True


def parse_bool(v: str, where: str) -> bool:
    if v == "True":
        return True
    if v == "False":
        return False
    raise ValueError(f"{where}: expected True/False, got {v!r}")


def read_jsonl(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def read_csv(path: str) -> list[dict]:
    csv.field_size_limit(1 << 30)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def contaminated_set(path: str) -> set[str]:
    return {r["eval_prompt"] for r in read_jsonl(path)}


# ---------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------
def load_prices(path: str, keys: dict[str, str]) -> dict[str, dict]:
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    out = {}
    for model, key in keys.items():
        if key not in table:
            raise KeyError(f"price key {key!r} not in {path}")
        e = table[key]
        inp, outp = e.get("input_cost_per_token"), e.get("output_cost_per_token")
        if not isinstance(inp, (int, float)) or not isinstance(outp, (int, float)):
            raise ValueError(f"price key {key!r} has no per-token prices")
        out[model] = {
            "price_key": key,
            "provider": e.get("litellm_provider"),
            "input_cost_per_token": inp,
            "output_cost_per_token": outp,
        }
    return out


def cost(prices: dict, model: str, pt: int, ct: int) -> float:
    p = prices[model]
    # Rounded to 1e-12 USD so the JSON text is short and stable.
    return round(pt * p["input_cost_per_token"] + ct * p["output_cost_per_token"], 12)


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------
MMLU_FILE_RE = re.compile(r"^mmlu_(.+)\.csv$")


def mmlu_rows(src: str, prices: dict) -> list[dict]:
    d = os.path.join(src, "routellm", "mmlu")
    cont = contaminated_set(os.path.join(d, "contaminated_prompts.jsonl"))
    files = sorted(f for f in os.listdir(d) if MMLU_FILE_RE.match(f))
    rows = []
    matched = set()
    for fname in files:
        subject = MMLU_FILE_RE.match(fname).group(1)
        data = read_csv(os.path.join(d, fname))
        header = (
            "The following are multiple choice questions (with answers) about "
            + subject.replace("_", " ")
            + ".\n\n"
        )
        # Few-shot prefix estimate per model, shared by the subject's rows.
        fewshot = {}
        mean_q = {m: sum(est_tokens(r["prompt"], m) for r in data) / len(data) for m in MODELS}
        suffix = {m: est_tokens(MMLU_ANSWER_SUFFIX, m) for m in MODELS}
        k = MMLU_NTRAIN
        # RouteLLM shrinks k until the prefix fits 1536 tokens of the OpenAI tokenizer.
        while k > 0 and est_tokens(header, STRONG) + k * (mean_q[STRONG] + suffix[STRONG]) > MMLU_FEWSHOT_CAP:
            k -= 1
        for m in MODELS:
            fewshot[m] = int(math.floor(est_tokens(header, m) + k * (mean_q[m] + suffix[m]) + 0.5))
        for i, r in enumerate(data):
            prompt = r["prompt"]
            is_cont = prompt in cont
            if is_cont:
                matched.add(prompt)
            models = {}
            for m in MODELS:
                ok = parse_bool(r[SRC_NAME[m]], f"{fname} row {i}")
                pt = chat_prompt_tokens(m, [prompt], []) + fewshot[m]
                ct = MMLU_COMPLETION_TOKENS
                models[m] = {
                    "quality": 1.0 if ok else 0.0,
                    "correct": ok,
                    "prompt_tokens": pt,
                    "completion_tokens": ct,
                    "fewshot_tokens": fewshot[m],
                    "cost_usd": cost(prices, m, pt, ct),
                }
            rows.append(make_row(f"mmlu/{subject}/{i:04d}", "mmlu", subject, None, None,
                                 i, prompt, None, is_cont, models, {"fewshot_k": k}))
    check_all_matched("mmlu", cont, matched)
    return rows


def gsm8k_rows(src: str, prices: dict) -> list[dict]:
    d = os.path.join(src, "routellm", "gsm8k")
    cont = contaminated_set(os.path.join(d, "contaminated_prompts.jsonl"))
    data = read_csv(os.path.join(d, "gsm8k_responses.csv"))
    rows = []
    matched = set()
    for i, r in enumerate(data):
        prompt = r["prompt"]
        is_cont = prompt in cont
        if is_cont:
            matched.add(prompt)
        # RouteLLM's user message: 8-shot prefix + "Question: <q>\nAnswer:".
        sent = "Question: " + prompt + "\nAnswer:"
        models = {}
        for m in MODELS:
            ok = parse_bool(r[SRC_NAME[m]], f"gsm8k row {i}")
            resp = r[SRC_NAME[m] + "_response"]
            pt = chat_prompt_tokens(m, [sent], []) + GSM8K_FEWSHOT_TOKENS[m]
            ct = est_tokens(resp, m)
            models[m] = {
                "quality": 1.0 if ok else 0.0,
                "correct": ok,
                "prompt_tokens": pt,
                "completion_tokens": ct,
                "fewshot_tokens": GSM8K_FEWSHOT_TOKENS[m],
                "response_chars": len(resp),
                "cost_usd": cost(prices, m, pt, ct),
            }
        rows.append(make_row(f"gsm8k/{i:04d}", "gsm8k", "math", None, None,
                             i, prompt, None, is_cont, models, None))
    check_all_matched("gsm8k", cont, matched)
    return rows


ANS_START = "[The Start of Assistant's Answer]\n"
ANS_END = "\n[The End of Assistant's Answer]"
CONV_START = "<|The Start of Assistant A's Conversation with User|>"
CONV_END = "<|The End of Assistant A's Conversation with User|>"
USER_MARK = "### User:\n"
ASSIST_MARK = "### Assistant A:\n"


def mt_answers(judgement: dict) -> list[str]:
    """The judged model's answers, recovered from the judge prompt."""
    up = judgement["user_prompt"]
    if judgement["turn"] == 1:
        a = up.index(ANS_START) + len(ANS_START)
        b = up.index(ANS_END, a)
        return [up[a:b]]
    conv = up[up.index(CONV_START) + len(CONV_START): up.index(CONV_END)]
    parts = conv.split(ASSIST_MARK)
    if len(parts) != 3:
        raise ValueError(f"question {judgement['question_id']}: cannot split conversation")
    first = parts[1]
    first = first[: first.rindex(USER_MARK)]
    return [first.strip("\n"), parts[2].strip("\n")]


def mt_bench_rows(src: str, prices: dict) -> list[dict]:
    d = os.path.join(src, "routellm", "mt_bench")
    cont = contaminated_set(os.path.join(d, "contaminated_prompts.jsonl"))
    questions = sorted(read_jsonl(os.path.join(d, "question.jsonl")), key=lambda q: q["question_id"])
    judg = {}
    for j in read_jsonl(os.path.join(d, "judgements.jsonl")):
        model = {v: k for k, v in SRC_NAME.items()}[j["model"]]
        key = (j["question_id"], model, j["turn"])
        if key in judg:
            raise ValueError(f"duplicate judgement {key}")
        judg[key] = j
    rows = []
    matched = set()
    for q in questions:
        qid = q["question_id"]
        turns = q["turns"]
        # RouteLLM drops the whole question if either turn is contaminated.
        hits = [t for t in turns if t in cont]
        matched.update(hits)
        is_cont = bool(hits)
        answers = {}
        for m in MODELS:
            a1 = mt_answers(judg[(qid, m, 1)])
            a12 = mt_answers(judg[(qid, m, 2)])
            if a1[0].strip() != a12[0].strip():
                raise ValueError(f"question {qid} {m}: turn-1 answer differs between judgements")
            answers[m] = [a1[0], a12[1]]
        for t in (1, 2):
            models = {}
            for m in MODELS:
                j = judg[(qid, m, t)]
                score = j["score"]
                if not isinstance(score, (int, float)) or not 1 <= score <= 10:
                    raise ValueError(f"question {qid} {m} turn {t}: bad judge score {score!r}")
                if t == 1:
                    pt = chat_prompt_tokens(m, [turns[0]], [])
                else:
                    pt = chat_prompt_tokens(m, [turns[0], turns[1]], [answers[m][0]])
                ct = est_tokens(answers[m][t - 1], m)
                models[m] = {
                    # Judge score 1..10 mapped linearly to 0..1.
                    "quality": round((float(score) - 1.0) / 9.0, 6),
                    "judge_score": float(score),
                    "prompt_tokens": pt,
                    "completion_tokens": ct,
                    "response_chars": len(answers[m][t - 1]),
                    "cost_usd": cost(prices, m, pt, ct),
                }
            rows.append(make_row(f"mt_bench/{qid}/t{t}", "mt_bench", q["category"], t,
                                 f"mt_bench/{qid}", qid, turns[t - 1],
                                 turns[0] if t == 2 else None, is_cont, models, None))
    check_all_matched("mt_bench", cont, matched)
    return rows


def check_all_matched(name: str, cont: set[str], matched: set[str]) -> None:
    missing = cont - matched
    if missing:
        raise ValueError(f"{name}: {len(missing)} contaminated prompts not found in the data")


def make_row(rid, dataset, category, turn, session, source_index, prompt, prev_prompt,
             contaminated, models, extra) -> dict:
    text, cut = truncate(prompt)
    row = {
        "id": rid,
        "dataset": dataset,
        "category": category,
        "turn": turn,
        "session": session,
        "source_index": source_index,
        "contaminated": contaminated,
        "prompt": text,
        "prompt_chars": len(prompt),
        "prompt_truncated": cut,
    }
    if prev_prompt is not None:
        row["prev_prompt"] = truncate(prev_prompt)[0]
    if extra:
        row.update(extra)
    row["models"] = models
    return row


# ---------------------------------------------------------------------------
# Summary statistics
# ---------------------------------------------------------------------------
def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def r6(x: float) -> float:
    return round(x, 6)


def policy_stats(rows: list[dict], choice) -> dict:
    """Quality and cost of a per-row choice function row -> model."""
    q = c = 0.0
    n_strong = 0
    for r in rows:
        m = choice(r)
        n_strong += m == STRONG
        q += r["models"][m]["quality"]
        c += r["models"][m]["cost_usd"]
    n = len(rows)
    qs = sum(r["models"][STRONG]["quality"] for r in rows)
    cs = sum(r["models"][STRONG]["cost_usd"] for r in rows)
    return {
        "mean_quality": r6(q / n),
        "quality_pct_of_strong": r6(100.0 * q / qs) if qs else None,
        "total_cost_usd": r6(c),
        "cost_pct_of_strong": r6(100.0 * c / cs) if cs else None,
        "strong_call_pct": r6(100.0 * n_strong / n),
    }


def oracle_choice(r: dict) -> str:
    qs, qc = r["models"][STRONG]["quality"], r["models"][CHEAP]["quality"]
    return CHEAP if qc >= qs else STRONG


def session_oracle(rows: list[dict]) -> dict:
    """MT-Bench oracle that picks one model per question for both turns."""
    by = {}
    for r in rows:
        by.setdefault(r["session"], []).append(r)
    pick = {}
    for s, rs in by.items():
        qs = sum(x["models"][STRONG]["quality"] for x in rs)
        qc = sum(x["models"][CHEAP]["quality"] for x in rs)
        pick[s] = CHEAP if qc >= qs else STRONG
    return policy_stats(rows, lambda r: pick[r["session"]])


def oracle_cpt(units: list[tuple[float, float]], target_pgr: float) -> float | None:
    """Smallest % of units sent to the strong model for an oracle to reach target PGR.

    units: (q_strong, q_cheap) per routing unit. The oracle sends the units with
    the largest strong-over-cheap gain first (RouteLLM's get_optimal_accuracy).
    """
    n = len(units)
    qs = sum(u[0] for u in units)
    qc = sum(u[1] for u in units)
    gap = qs - qc
    if n == 0 or gap <= 0:
        return None
    gains = sorted((s - c for s, c in units if s > c), reverse=True)
    acc = 0.0
    for i, g in enumerate(gains, start=1):
        acc += g
        if acc >= target_pgr * gap - 1e-12:
            return r6(100.0 * i / n)
    return None


def oracle_min_cost(rows: list[dict], quality_frac: float) -> dict:
    """Cheapest per-prompt assignment (with hindsight) whose mean quality reaches
    quality_frac x always-strong: start all-cheap, upgrade prompts in order of
    quality gain per extra dollar (greedy; exact up to the last prompt)."""
    target = quality_frac * sum(r["models"][STRONG]["quality"] for r in rows)
    q = sum(r["models"][CHEAP]["quality"] for r in rows)
    cost_now = sum(r["models"][CHEAP]["cost_usd"] for r in rows)
    cands = []
    for i, r in enumerate(rows):
        dq = r["models"][STRONG]["quality"] - r["models"][CHEAP]["quality"]
        dc = r["models"][STRONG]["cost_usd"] - r["models"][CHEAP]["cost_usd"]
        if dq > 0:
            cands.append((-(dq / dc) if dc > 0 else -math.inf, i, dq, dc))
    cands.sort()
    n_strong = 0
    for _, _, dq, dc in cands:
        if q >= target - 1e-9:
            break
        q += dq
        cost_now += dc
        n_strong += 1
    cs = sum(r["models"][STRONG]["cost_usd"] for r in rows)
    return {
        "reached": q >= target - 1e-9,
        "cost_pct_of_strong": r6(100.0 * cost_now / cs) if cs else None,
        "strong_call_pct": r6(100.0 * n_strong / len(rows)),
    }


def dataset_stats(rows: list[dict]) -> dict:
    n = len(rows)
    out = {"n": n}
    for m in MODELS:
        ms = [r["models"][m] for r in rows]
        s = {
            "mean_quality": r6(mean(x["quality"] for x in ms)),
            "mean_prompt_tokens": r6(mean(x["prompt_tokens"] for x in ms)),
            "mean_completion_tokens": r6(mean(x["completion_tokens"] for x in ms)),
            "mean_cost_usd": r6(mean(x["cost_usd"] for x in ms)),
            "total_cost_usd": r6(sum(x["cost_usd"] for x in ms)),
        }
        if all("judge_score" in x for x in ms):
            s["mean_judge_score"] = r6(mean(x["judge_score"] for x in ms))
        if all("correct" in x for x in ms):
            s["accuracy_pct"] = r6(100.0 * mean(1.0 if x["correct"] else 0.0 for x in ms))
        out[m] = s
    cs = out[STRONG]["total_cost_usd"]
    cc = out[CHEAP]["total_cost_usd"]
    out["cost_ratio_strong_over_cheap"] = r6(cs / cc) if cc else None
    qs = [r["models"][STRONG]["quality"] for r in rows]
    qc = [r["models"][CHEAP]["quality"] for r in rows]
    out["frac_cheap_at_least_as_good"] = r6(mean(1.0 if c >= s else 0.0 for s, c in zip(qs, qc)))
    out["frac_cheap_better"] = r6(mean(1.0 if c > s else 0.0 for s, c in zip(qs, qc)))
    out["frac_strong_better"] = r6(mean(1.0 if s > c else 0.0 for s, c in zip(qs, qc)))
    out["always_strong"] = policy_stats(rows, lambda r: STRONG)
    out["always_cheap"] = policy_stats(rows, lambda r: CHEAP)
    out["oracle"] = policy_stats(rows, oracle_choice)
    out["oracle_min_cost_at_quality_pct_of_strong"] = {
        "100": oracle_min_cost(rows, 1.0),
        "95": oracle_min_cost(rows, 0.95),
    }
    units = [(r["models"][STRONG]["quality"], r["models"][CHEAP]["quality"]) for r in rows]
    out["oracle"]["cpt_50_pct"] = oracle_cpt(units, 0.5)
    out["oracle"]["cpt_80_pct"] = oracle_cpt(units, 0.8)
    if rows and rows[0]["session"] is not None:
        out["oracle_per_session"] = session_oracle(rows)
        by = {}
        for r in rows:
            u = by.setdefault(r["session"], [0.0, 0.0])
            u[0] += r["models"][STRONG]["quality"]
            u[1] += r["models"][CHEAP]["quality"]
        su = [tuple(v) for _, v in sorted(by.items())]
        out["oracle_per_session"]["cpt_50_pct"] = oracle_cpt(su, 0.5)
        out["oracle_per_session"]["cpt_80_pct"] = oracle_cpt(su, 0.8)
    return out


# RouteLLM's published numbers for this exact pair, for the benchmark to print
# next to its own. Provenance and verification status are stated per entry;
# see README.md.
ROUTELLM_REFERENCE = {
    "paper": "Ong et al., RouteLLM: Learning to Route LLMs with Preference Data, arXiv:2406.18665 (ICLR 2025)",
    "pair": {"strong": "gpt-4-1106-preview", "weak": "mixtral-8x7b-instruct-v0.1"},
    "metric_notes": (
        "PGR = (q_router - q_weak) / (q_strong - q_weak); CPT(x%) = minimum % of calls to the "
        "strong model needed to reach PGR = x%; APGR = area under the PGR-vs-strong-call-% curve. "
        "RouteLLM counts cost as % of strong-model calls (MT-Bench routed per question on turn 1), "
        "not dollars, and evaluates on the decontaminated sets."
    ),
    "verified_against_paper": False,
    "provenance": (
        "The paper's tables could not be opened from the environment this file was made in. "
        "Entries marked 'readme' are from the lm-sys/RouteLLM README; the others are quoted from "
        "independent secondary write-ups of the paper (count given), which agree where they "
        "overlap. Check against the paper before citing them as the paper's numbers."
    ),
    "entries": [
        {"benchmark": "mt_bench", "router": "matrix factorization, Arena + GPT-4-judge augmented",
         "cpt_50_pct": 13.40, "cpt_80_pct": 31.3, "apgr": 0.802,
         "source": "secondary: 2 write-ups (CPT(80%): 1)"},
        {"benchmark": "mt_bench", "router": "random", "cpt_50_pct": 49.03, "source": "secondary: 1 write-up"},
        {"benchmark": "mt_bench", "router": "best router at CPT(50%)", "cost_saving_vs_always_gpt4": 3.66,
         "quality_pct_of_gpt4": 95, "source": "secondary: 3 write-ups"},
        {"benchmark": "mmlu", "router": "best router at CPT(50%)", "cost_saving_vs_always_gpt4": 1.41,
         "quality_pct_of_gpt4": 92, "source": "secondary: 2 write-ups"},
        {"benchmark": "mmlu", "router": "best per column, routers trained with MMLU-label augmentation",
         "cpt_50_pct": 35.4, "cpt_80_pct": 70.3, "apgr": 0.603, "source": "secondary: 1 write-up"},
        {"benchmark": "gsm8k", "router": "best router at CPT(50%)", "cost_saving_vs_always_gpt4": 1.49,
         "quality_pct_of_gpt4": 87, "source": "secondary: 1 write-up"},
        {"benchmark": "mt_bench", "router": "mf (served)",
         "claim": "reduces costs by up to 85% while maintaining 95% GPT-4 performance", "source": "readme"},
        {"benchmark": "all", "note": "paper's cost model: about $24.7 (GPT-4-1106) vs $0.24 (Mixtral) per "
         "million tokens, about 100x; this data set's price ratio is lower (see cost_ratio_strong_over_cheap)",
         "source": "secondary: 1 write-up"},
    ],
}


def summarize(rows: list[dict], prices: dict) -> dict:
    clean = [r for r in rows if not r["contaminated"]]
    per = {}
    for ds in ("mmlu", "gsm8k", "mt_bench"):
        rs = [r for r in clean if r["dataset"] == ds]
        st = dataset_stats(rs)
        st["n_contaminated_excluded"] = sum(1 for r in rows if r["dataset"] == ds and r["contaminated"])
        per[ds] = st
    overall = dataset_stats(clean)
    macro = {}
    for key in ("always_cheap", "oracle"):
        macro[key] = {
            "quality_pct_of_strong": r6(mean(per[d][key]["quality_pct_of_strong"] for d in per)),
            "cost_pct_of_strong": r6(mean(per[d][key]["cost_pct_of_strong"] for d in per)),
        }
    return {
        "generated_by": "benches/data/derive_replay.py",
        "sources": {
            "outcomes": "RouteLLM (lm-sys/RouteLLM, Apache-2.0): routellm/evals/{mmlu,gsm8k,mt_bench}",
            "prices": "LiteLLM model_prices_and_context_window.json (MIT)",
        },
        "models": {"strong": STRONG, "cheap": CHEAP},
        "prices": prices,
        "quality_definition": {
            "mmlu": "1 if the model's answer letter was correct else 0",
            "gsm8k": "1 if the final number matched else 0",
            "mt_bench": "(judge_score - 1) / 9, judge_score = GPT-4 single-answer rating 1..10",
        },
        "stats_exclude_contaminated": True,
        "n_rows": len(rows),
        "n_rows_clean": len(clean),
        "datasets": per,
        "overall_pooled": overall,
        "overall_macro_mean_of_datasets": macro,
        "routellm_reference": ROUTELLM_REFERENCE,
    }


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
# Characters some line readers treat as line breaks; escaped so every record
# is exactly one "\n"-terminated line for any reader.
LINE_BREAK_ESCAPES = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def dumps(obj) -> str:
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for raw, esc in LINE_BREAK_ESCAPES.items():
        s = s.replace(raw, esc)
    return s


def write_outputs(rows: list[dict], summary: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    body = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header identical on every run.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(body)
    tmp = os.path.join(out, "replay.jsonl.gz.tmp")
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, os.path.join(out, "replay.jsonl.gz"))
    tmp = os.path.join(out, "summary.json.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(summary, ensure_ascii=False, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, os.path.join(out, "summary.json"))


def derive(src: str, price_keys: dict[str, str]) -> tuple[list[dict], dict]:
    prices = load_prices(os.path.join(src, "model_prices.json"), price_keys)
    rows = mmlu_rows(src, prices) + gsm8k_rows(src, prices) + mt_bench_rows(src, prices)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids")
    return rows, summarize(rows, prices)


# ---------------------------------------------------------------------------
# RouterBench (withmartian/routerbench, MIT): three zero-shot tasks, 11 models,
# graded outcome and logged USD cost per prompt. Response texts are dropped;
# prompt text is kept (the prompt-level router needs it), gzipped.
# ---------------------------------------------------------------------------
ROUTERBENCH_TASKS = (
    ("arc_challenge", "routerbench_zs_arc_challenge_train.csv"),
    ("mbpp", "routerbench_zs_mbpp_train.csv"),
    ("winogrande", "routerbench_zs_winograde_train.csv"),
)
ROUTERBENCH_META = ("", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to")


def routerbench_rows(src: str) -> tuple[list[dict], dict]:
    d = os.path.join(src, "routerbench")
    rows, dropped = [], {}
    for task, fname in ROUTERBENCH_TASKS:
        with open(os.path.join(d, fname), newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            models = sorted(c for c in reader.fieldnames if "|" not in c and c not in ROUTERBENCH_META)
            n_drop = 0
            for r in reader:
                vals = [(m, r[m], r[m + "|total_cost"]) for m in models]
                if any(q == "" or c == "" for _, q, c in vals):
                    n_drop += 1  # a model without a graded outcome or cost: the row cannot be replayed
                    continue
                rows.append({
                    "id": f"{task}/{r['sample_id']}",
                    "task": task,
                    "prompt": r["prompt"],
                    "models": {m: {"quality": float(q), "cost_usd": round(float(c), 12)} for m, q, c in vals},
                })
            dropped[task] = n_drop
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("routerbench: duplicate ids")
    return rows, dropped


def write_gz(rows: list[dict], path: str) -> None:
    body = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(body)
    with open(path + ".tmp", "wb") as f:
        f.write(buf.getvalue())
    os.replace(path + ".tmp", path)


def write_routerbench(src: str, out: str) -> int:
    rows, dropped = routerbench_rows(src)
    write_gz(rows, os.path.join(out, "routerbench.jsonl.gz"))
    print(f"wrote {len(rows)} RouterBench rows to {out} (dropped for missing values: {dropped})")
    return len(rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="shared data dir holding routellm/ and model_prices.json")
    ap.add_argument("out", help="output dir (benches/data)")
    ap.add_argument("--cheap-price-key", default=DEFAULT_PRICE_KEYS[CHEAP],
                    help="model_prices.json key used for Mixtral-8x7B")
    ap.add_argument("--dump-texts", metavar="FILE",
                    help="also write every prompt/response text as JSONL (for token calibration)")
    a = ap.parse_args(argv)
    keys = dict(DEFAULT_PRICE_KEYS)
    keys[CHEAP] = a.cheap_price_key
    if a.dump_texts:
        dump_texts(a.src, a.dump_texts)
        return 0
    rows, summary = derive(a.src, keys)
    write_outputs(rows, summary, a.out)
    if os.path.isdir(os.path.join(a.src, "routerbench")):
        write_routerbench(a.src, a.out)
    print(f"wrote {len(rows)} rows ({summary['n_rows_clean']} uncontaminated) to {a.out}")
    return 0


def dump_texts(src: str, path: str) -> None:
    """Every distinct text whose length the estimate must predict, tagged by kind."""
    seen = set()
    out = []

    def add(kind, t):
        if t and (kind, t) not in seen:
            seen.add((kind, t))
            out.append({"kind": kind, "text": t})

    d = os.path.join(src, "routellm")
    for fname in sorted(os.listdir(os.path.join(d, "mmlu"))):
        if MMLU_FILE_RE.match(fname):
            for r in read_csv(os.path.join(d, "mmlu", fname)):
                add("mmlu_prompt", r["prompt"])
    for r in read_csv(os.path.join(d, "gsm8k", "gsm8k_responses.csv")):
        add("gsm8k_prompt", "Question: " + r["prompt"] + "\nAnswer:")
        for m in MODELS:
            add("gsm8k_response_" + m, r[SRC_NAME[m] + "_response"])
    for q in read_jsonl(os.path.join(d, "mt_bench", "question.jsonl")):
        for t in q["turns"]:
            add("mt_prompt", t)
    for j in read_jsonl(os.path.join(d, "mt_bench", "judgements.jsonl")):
        m = {v: k for k, v in SRC_NAME.items()}[j["model"]]
        for a in mt_answers(j):
            add("mt_response_" + m, a)
    with open(path, "w", encoding="utf-8") as f:
        for o in out:
            f.write(dumps(o) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
