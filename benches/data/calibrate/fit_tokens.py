#!/usr/bin/env python3
"""Fit derive_replay.TOKEN_COEF from real token counts (calibration only).

    python3 benches/data/derive_replay.py SRC /tmp --dump-texts texts.jsonl
    node benches/data/calibrate/count_tokens.mjs texts.jsonl counts.jsonl   # see README
    python3 benches/data/calibrate/fit_tokens.py texts.jsonl counts.jsonl

Weighted least squares without intercept (weight 1/true_tokens, so short and
long texts count alike), MMLU subsampled to 3000 texts (seeded) so it does not
swamp the other kinds. Prints the coefficients and the error per kind.
"""
import json
import os
import random
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from derive_replay import text_features  # noqa: E402


def solve(a, b):
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for i in range(n):
        p = max(range(i, n), key=lambda r: abs(m[r][i]))
        m[i], m[p] = m[p], m[i]
        for r in range(n):
            if r != i:
                f = m[r][i] / m[i][i]
                for c in range(i, n + 1):
                    m[r][c] -= f * m[i][c]
    return [m[i][n] / m[i][i] for i in range(n)]


def main(texts_path, counts_path):
    texts = [json.loads(x) for x in open(texts_path, encoding="utf-8")]
    counts = [json.loads(x) for x in open(counts_path, encoding="utf-8")]
    feats = [text_features(t["text"]) for t in texts]
    idx = list(range(len(texts)))
    random.Random(1).shuffle(idx)
    fit_idx = [i for i in idx if texts[i]["kind"] != "mmlu_prompt"]
    fit_idx += [i for i in idx if texts[i]["kind"] == "mmlu_prompt"][:3000]
    k = len(feats[0])
    for key in ("gpt", "mistral"):
        a = [[0.0] * k for _ in range(k)]
        b = [0.0] * k
        for i in fit_idx:
            y = counts[i][key]
            w = 1.0 / max(y, 1)
            for p in range(k):
                b[p] += w * feats[i][p] * y
                for q in range(k):
                    a[p][q] += w * feats[i][p] * feats[i][q]
        coef = solve(a, b)
        print(key, "coef (chars, words, digits, punct, non_ascii):", [round(c, 4) for c in coef])
        errs = defaultdict(list)
        tot = defaultdict(lambda: [0, 0])
        for i in range(len(texts)):
            est = max(1, int(sum(c * f for c, f in zip(coef, feats[i])) + 0.5))
            y = counts[i][key]
            errs[texts[i]["kind"]].append(abs(est - y) / y)
            tot[texts[i]["kind"]][0] += est
            tot[texts[i]["kind"]][1] += y
        for kind in sorted(errs):
            e = sorted(errs[kind])
            print(f"  {kind:44s} n={len(e):5d} total {100 * (tot[kind][0] / tot[kind][1] - 1):+6.2f}%"
                  f"  median|err| {100 * e[len(e) // 2]:5.1f}%  p90|err| {100 * e[int(len(e) * 0.9)]:5.1f}%")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
