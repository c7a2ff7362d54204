"""End-to-end checks of loopgate's /v1/messages with the official Anthropic Python SDK.

Run by tests/messages_sdk.rs against mock upstreams (an OpenAI-dialect and a Gemini-dialect
one, so the answer is translated, and an Anthropic-dialect one). Environment:
  LOOPGATE_BASE_URL   gateway root URL (the SDK appends /v1/messages)
  LOOPGATE_KEY        a gateway key with inference scope
  LG_MODEL            chat model to use
  LG_PROVIDER         expected `loopgate-provider` response header
Exit status 0 when every check passes; the first failure raises with a message.
"""

import base64
import os

import anthropic
from anthropic import Anthropic

BASE = os.environ["LOOPGATE_BASE_URL"]
KEY = os.environ["LOOPGATE_KEY"]
MODEL = os.environ["LG_MODEL"]
PROVIDER = os.environ["LG_PROVIDER"]

client = Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=20)
HELLO = [{"role": "user", "content": "Say hello"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n not really an image").decode()


def check(cond, msg):
    if not cond:
        raise AssertionError(f"[anthropic {MODEL}] {msg}")


# ---- JSON, with a system prompt in blocks and an image
raw = client.messages.with_raw_response.create(
    model=MODEL,
    max_tokens=100,
    system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    metadata={"user_id": "user-42"},
    messages=[{"role": "user", "content": [
        {"type": "text", "text": "Say hello"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]}],
)
check(raw.headers.get("loopgate-provider") == PROVIDER,
      f"loopgate-provider {raw.headers.get('loopgate-provider')!r} != {PROVIDER!r}")
rid = raw.headers.get("loopgate-request-id")
check(rid, "no loopgate-request-id")
msg = raw.parse()
check(msg.type == "message" and msg.role == "assistant", f"not a message: {msg}")
check(msg.id == f"msg_{rid}", f"id {msg.id} vs request id {rid}")
check(msg.content[0].type == "text" and msg.content[0].text == "Hello!", f"content {msg.content}")
check(msg.stop_reason == "end_turn", f"stop_reason {msg.stop_reason}")
check(msg.usage.input_tokens > 0 and msg.usage.output_tokens == 3, f"usage {msg.usage}")
print("json ok", rid)

# ---- stream of text
with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
check(text == "Hello!", f"streamed text {text!r}")
check(final.stop_reason == "end_turn", f"stream stop_reason {final.stop_reason}")
check(final.usage.output_tokens == 3 and final.usage.input_tokens > 0, f"stream usage {final.usage}")
check(final.id.startswith("msg_"), f"stream id {final.id}")
print("stream ok")

# ---- tools, JSON, then the round trip with the tool result
msg = client.messages.create(model=MODEL, max_tokens=200, tools=TOOLS,
                             tool_choice={"type": "auto"}, messages=WEATHER)
check(msg.stop_reason == "tool_use", f"tool stop_reason {msg.stop_reason}")
uses = [b for b in msg.content if b.type == "tool_use"]
check(len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"},
      f"tool_use {msg.content}")
follow = client.messages.create(
    model=MODEL, max_tokens=200, tools=TOOLS,
    messages=WEATHER + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"},
        ]},
    ],
)
check(follow.type == "message", f"follow-up {follow}")
print("tools json ok", uses[0].id)

# ---- tools, streamed (arguments arrive in pieces where the upstream streams them so)
with client.messages.stream(model=MODEL, max_tokens=200, tools=TOOLS, messages=WEATHER) as s:
    deltas = [e for e in s if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    final = s.get_final_message()
# Gemini streams a functionCall whole (its wire format has no argument deltas): one piece.
want = 1 if PROVIDER == "gemini" else 2
check(len(deltas) >= want, f"expected the arguments in {want}+ pieces, got {len(deltas)} deltas")
uses = [b for b in final.content if b.type == "tool_use"]
check(len(uses) == 1 and uses[0].input == {"city": "Paris"}, f"streamed tool_use {final.content}")
check(final.stop_reason == "tool_use", f"streamed tool stop_reason {final.stop_reason}")
print("tools stream ok")

# ---- count_tokens
n = client.messages.count_tokens(model=MODEL, messages=WEATHER, tools=TOOLS)
check(n.input_tokens > 10, f"count_tokens {n}")
print("count_tokens ok", n.input_tokens)

# ---- errors, in Anthropic's shape
try:
    client.messages.create(model=MODEL, max_tokens=10, messages=HELLO,
                           tools=[{"type": "web_search_20250305", "name": "web_search"}])
    check(False, "a server tool was accepted")
except anthropic.BadRequestError as e:
    check(e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", f"400 body {e.body}")
    check("tools.0.type" in e.body["error"]["message"], f"400 names the field: {e.body}")
try:
    client.messages.create(model="no-such-model-xyz", max_tokens=10, messages=HELLO)
    check(False, "an unknown model was served")
except anthropic.NotFoundError as e:
    check(e.body["error"]["type"] == "not_found_error", f"404 body {e.body}")
try:
    Anthropic(base_url=BASE, api_key="wrong-key", max_retries=0).messages.create(
        model=MODEL, max_tokens=10, messages=HELLO)
    check(False, "a wrong key was accepted")
except anthropic.AuthenticationError as e:
    check(e.body["error"]["type"] == "authentication_error", f"401 body {e.body}")
# A bearer token (`auth_token`) works as well as `x-api-key`.
msg = Anthropic(base_url=BASE, auth_token=KEY, api_key=None, max_retries=0).messages.create(
    model=MODEL, max_tokens=10, messages=HELLO)
check(msg.content[0].text == "Hello!", f"bearer auth {msg}")
print("errors ok")
