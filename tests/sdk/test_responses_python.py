"""End-to-end checks of loopgate's /v1/responses with the official OpenAI Python SDK.

Run by tests/responses_sdk.rs against mock upstreams (OpenAI, Anthropic and Gemini
dialects behind the gateway). Environment:
  LOOPGATE_BASE_URL   gateway base URL including /v1
  LOOPGATE_KEY        a gateway key with inference scope
  LG_MODEL            chat model to use
  LG_PROVIDER         expected `loopgate-provider` response header
Exit status 0 when every check passes; the first failure raises with a message.
"""

import json
import os

import openai
from openai import OpenAI

BASE = os.environ["LOOPGATE_BASE_URL"]
KEY = os.environ["LOOPGATE_KEY"]
MODEL = os.environ["LG_MODEL"]
PROVIDER = os.environ["LG_PROVIDER"]

client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=20)
TOOLS = [{
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]


def check(cond, msg):
    if not cond:
        raise AssertionError(f"[responses {MODEL}] {msg}")


# ---- JSON, instructions and an image input
raw = client.responses.with_raw_response.create(
    model=MODEL,
    instructions="Be brief.",
    metadata={"k": "v"},
    input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Say hello"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
    ]}],
)
check(raw.headers.get("loopgate-provider") == PROVIDER, f"provider {raw.headers.get('loopgate-provider')!r}")
rid = raw.headers.get("loopgate-request-id")
r = raw.parse()
check(r.id == f"resp_{rid}", f"id {r.id!r}")
check(r.object == "response" and r.status == "completed", f"{r.object} {r.status}")
check(r.output_text == "Hello!", f"output_text {r.output_text!r}")
check(r.output[0].type == "message" and r.output[0].content[0].type == "output_text", f"{r.output}")
check(r.usage.input_tokens > 0 and r.usage.output_tokens > 0, f"usage {r.usage}")
check(r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, f"usage {r.usage}")
check(r.metadata == {"k": "v"}, f"metadata {r.metadata}")
first_id = r.id

# ---- previous_response_id: the stored exchange continues
r2 = client.responses.create(model=MODEL, input="And again", previous_response_id=first_id)
check(r2.output_text == "Hello!", f"continued {r2.output_text!r}")
check(r2.previous_response_id == first_id, f"previous_response_id {r2.previous_response_id!r}")
try:
    client.responses.create(model=MODEL, input="x", previous_response_id="resp_unknown-id")
    check(False, "unknown previous_response_id accepted")
except openai.NotFoundError as e:
    check(e.body["param"] == "previous_response_id", f"404 body {e.body}")

# ---- stream (raw events)
events = list(client.responses.create(model=MODEL, input="Say hello", stream=True))
types = [e.type for e in events]
check(types[0] == "response.created" and types[1] == "response.in_progress", f"{types}")
check(types[-1] == "response.completed", f"{types}")
check([e.sequence_number for e in events] == list(range(len(events))), "sequence numbers")
text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
check(text == "Hello!", f"streamed {text!r}")
done = events[-1].response
check(done.usage is not None and done.usage.output_tokens > 0, f"stream usage {done.usage}")

# ---- stream through the SDK's stream helper (checks the event sequence as it goes)
with client.responses.stream(model=MODEL, input="Say hello") as s:
    for _ in s:
        pass
    final = s.get_final_response()
check(final.output_text == "Hello!", f"helper final {final.output_text!r}")

# ---- function tools round trip, JSON then streamed
for streamed in (False, True):
    if streamed:
        with client.responses.stream(model=MODEL, input="What is the weather in Paris?", tools=TOOLS) as s:
            for _ in s:
                pass
            r = s.get_final_response()
    else:
        r = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=TOOLS)
    calls = [o for o in r.output if o.type == "function_call"]
    check(len(calls) == 1, f"function calls {r.output}")
    call = calls[0]
    check(call.name == "get_weather", f"name {call.name}")
    check(json.loads(call.arguments) == {"city": "Paris"}, f"arguments {call.arguments!r}")
    follow = client.responses.create(
        model=MODEL,
        tools=TOOLS,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
    )
    check(follow.status == "completed", f"follow-up {follow.status}")

# ---- unsupported built-in tool and a bad input item: 400 naming them
try:
    client.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}])
    check(False, "web_search accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "web_search" in e.message, f"{e}")
    check(e.body["param"] == "tools[0].type", f"{e.body}")
try:
    client.responses.create(model=MODEL, input=[{"type": "computer_call_output", "call_id": "c"}])
    check(False, "bad input item accepted")
except openai.BadRequestError as e:
    check(e.body["param"] == "input[0].type" and "computer_call_output" in e.message, f"{e.body}")

print(f"responses python SDK ok against {MODEL} ({PROVIDER})")
