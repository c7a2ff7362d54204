"""The LLM firewall seen through the official OpenAI Python SDK (run by tests/firewall.rs).

Environment: LOOPGATE_BASE_URL (with /v1), LOOPGATE_KEY, LG_SECRET (a key-shaped secret).
Exit status 0 when every check passes.
"""

import os

import openai
from openai import OpenAI

client = OpenAI(
    base_url=os.environ["LOOPGATE_BASE_URL"],
    api_key=os.environ["LOOPGATE_KEY"],
    max_retries=0,
    timeout=20,
)
SECRET = os.environ["LG_SECRET"]
MODEL = "gpt-4o-mini"

# block: a 400 BadRequestError carrying the firewall's code and the rule, not the text.
try:
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about Project Falcon"}]
    )
    raise SystemExit("the blocked request was answered")
except openai.BadRequestError as e:
    assert e.status_code == 400, e.status_code
    assert e.code == "firewall_blocked", e.code
    assert e.type == "invalid_request_error", e.type
    assert "codename" in e.message and "Falcon" not in e.message, e.message

# mask: the request goes through with the secret masked.
r = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": f"my key is {SECRET}"}]
)
assert r.choices[0].message.content == "Hello!", r

# stream: whatever the model says back, the client never sees the secret.
text = ""
finish = None
with client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": f"say-secret:{SECRET}"}],
    stream=True,
) as stream:
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
assert "[REDACTED:secrets.openai_key]" in text, text
assert SECRET not in text, text
assert finish == "stop", finish
print("ok")
