"""Virtual keys' rate limits and budgets as the official OpenAI Python SDK sees them.

Run by tests/sdk_e2e.rs. Environment:
  LOOPGATE_BASE_URL   gateway base URL including /v1
  LG_RPM_KEY          a virtual key with limits.rpm = 1, unused so far
  LG_BUDGET_KEY       a virtual key with a total budget of $0
Exit status 0 when every check passes.
"""

import os

import openai
from openai import OpenAI

BASE = os.environ["LOOPGATE_BASE_URL"]
MESSAGES = [{"role": "user", "content": "Say hello"}]


def check(cond, msg):
    if not cond:
        raise AssertionError(f"[python key limits] {msg}")


rpm = OpenAI(base_url=BASE, api_key=os.environ["LG_RPM_KEY"], max_retries=0, timeout=20)
raw = rpm.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
check(raw.headers.get("x-ratelimit-limit-requests") == "1", dict(raw.headers))
check(raw.headers.get("x-ratelimit-remaining-requests") == "0", dict(raw.headers))
check(raw.parse().choices[0].message.content, "no answer")

try:
    rpm.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    check(False, "the second request within the minute was not refused")
except openai.RateLimitError as e:
    check(e.status_code == 429, e.status_code)
    check(e.code == "rate_limit_exceeded", e.body)
    check(e.type == "rate_limit_error", e.body)
    h = e.response.headers
    check(int(h.get("retry-after", "0")) >= 1, dict(h))
    check(h.get("x-ratelimit-remaining-requests") == "0", dict(h))
    check(h.get("x-ratelimit-reset-requests", "").endswith("s"), dict(h))

budget = OpenAI(base_url=BASE, api_key=os.environ["LG_BUDGET_KEY"], max_retries=0, timeout=20)
try:
    budget.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    check(False, "a key with a spent budget was served")
except openai.RateLimitError as e:
    check(e.code == "insufficient_quota", e.body)
    check("total budget" in e.message, e.message)

print("python key limits: ok")
