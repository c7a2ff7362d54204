"""End-to-end checks of loopgate with the official OpenAI Python SDK.

Run by tests/sdk_e2e.rs against mock upstreams; one run checks one model (so one
provider dialect). Environment:
  LOOPGATE_BASE_URL   gateway base URL including /v1
  LOOPGATE_KEY        a gateway key with inference scope
  LG_MODEL            chat model to use (e.g. claude-sonnet-4-5, vertex/gemini-2.5-flash)
  LG_PROVIDER         expected `loopgate-provider` response header (optional)
  LG_EMBED_MODEL      embeddings model (optional; embeddings are skipped without it)
  LG_LISTED_MODEL     a model id that models.list() must contain (optional)
Exit status 0 when every check passes; the first failure raises with a message.
"""

import json
import os
import sys

import openai
from openai import OpenAI

BASE = os.environ["LOOPGATE_BASE_URL"]
KEY = os.environ["LOOPGATE_KEY"]
MODEL = os.environ["LG_MODEL"]
PROVIDER = os.environ.get("LG_PROVIDER")
EMBED_MODEL = os.environ.get("LG_EMBED_MODEL")
LISTED = os.environ.get("LG_LISTED_MODEL")

client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=20)
MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def check(cond, msg):
    if not cond:
        raise AssertionError(f"[python {MODEL}] {msg}")


def check_headers(raw):
    rid = raw.headers.get("loopgate-request-id")
    check(rid, "no loopgate-request-id header")
    if PROVIDER:
        check(raw.headers.get("loopgate-provider") == PROVIDER,
              f"loopgate-provider {raw.headers.get('loopgate-provider')!r} != {PROVIDER!r}")
    return rid


def non_stream():
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    rid = check_headers(raw)
    c = raw.parse()
    check(c.id == rid, f"id {c.id!r} != request id {rid!r}")
    check(c.object == "chat.completion", f"object {c.object!r}")
    check(isinstance(c.created, int) and c.created > 0, "created")
    check(c.choices[0].message.role == "assistant", "role")
    check(c.choices[0].message.content == "Hello!", f"content {c.choices[0].message.content!r}")
    check(c.choices[0].finish_reason == "stop", f"finish_reason {c.choices[0].finish_reason!r}")
    check(c.usage is not None, "no usage")
    check(c.usage.prompt_tokens == 11 and c.usage.completion_tokens == 3, f"usage {c.usage}")
    check(c.usage.total_tokens == 14, f"total_tokens {c.usage.total_tokens}")


def stream(include_usage):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, stream=True, **kwargs)
    rid = check_headers(raw)
    chunks = list(raw.parse())
    check(chunks, "empty stream")
    text, finish = "", None
    for ch in chunks:
        # The SDK does not check `object`; clients that switch on it break silently.
        check(ch.object == "chat.completion.chunk", f"chunk object {ch.object!r}")
        check(ch.id == rid, f"chunk id {ch.id!r} != {rid!r}")
        for choice in ch.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    check(text == "Hello!", f"stream content {text!r}")
    check(finish == "stop", f"stream finish_reason {finish!r}")
    if include_usage:
        last = chunks[-1]
        check(last.choices == [], f"last chunk has choices: {last}")
        check(last.usage is not None, "last chunk has no usage")
        check(last.usage.prompt_tokens == 11 and last.usage.completion_tokens == 3, f"stream usage {last.usage}")
        for ch in chunks[:-1]:
            check(ch.usage is None, f"usage before the last chunk: {ch}")
    else:
        for ch in chunks:
            check(ch.usage is None, f"usage without include_usage: {ch}")
            check(ch.choices != [], "a choices-less chunk without include_usage")


def tools_non_stream():
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=TOOL_MESSAGES, tools=TOOLS, tool_choice="auto")
    check_headers(raw)
    c = raw.parse()
    choice = c.choices[0]
    check(choice.finish_reason == "tool_calls", f"tool finish_reason {choice.finish_reason!r}")
    calls = choice.message.tool_calls
    check(calls and len(calls) == 1, f"tool_calls {calls}")
    call = calls[0]
    check(call.id, "tool call without id")
    check(call.type == "function", f"tool call type {call.type!r}")
    check(call.function.name == "get_weather", f"tool name {call.function.name!r}")
    check(json.loads(call.function.arguments) == {"city": "Paris"}, f"arguments {call.function.arguments!r}")
    check(c.usage.prompt_tokens == 20 and c.usage.completion_tokens == 9, f"tool usage {c.usage}")


def tools_stream():
    s = client.chat.completions.create(model=MODEL, messages=TOOL_MESSAGES, tools=TOOLS, stream=True,
                                       stream_options={"include_usage": True})
    calls, finish, usage = {}, None, None
    for ch in s:
        check(ch.object == "chat.completion.chunk", f"chunk object {ch.object!r}")
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                if tc.index not in calls:
                    # The first delta of a call carries its id and name.
                    check(tc.id, f"first delta of call {tc.index} has no id")
                    check(tc.function and tc.function.name, f"first delta of call {tc.index} has no name")
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "args": ""}
                else:
                    check(not tc.id or tc.id == calls[tc.index]["id"], "tool call id changed mid-stream")
                if tc.function and tc.function.arguments:
                    calls[tc.index]["args"] += tc.function.arguments
    check(list(calls) == [0], f"tool call indexes {list(calls)}")
    check(calls[0]["name"] == "get_weather", f"streamed tool name {calls[0]['name']!r}")
    check(json.loads(calls[0]["args"]) == {"city": "Paris"}, f"streamed arguments {calls[0]['args']!r}")
    check(finish == "tool_calls", f"streamed tool finish_reason {finish!r}")
    check(usage is not None and usage.completion_tokens == 9, f"streamed tool usage {usage}")


def errors():
    try:
        client.chat.completions.create(model="no-such-model-xyz", messages=MESSAGES)
        check(False, "unknown model did not raise")
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"status {e.status_code}")
        check(e.code == "model_not_found", f"code {e.code!r}")
    bad = OpenAI(base_url=BASE, api_key="lg-wrong-key", max_retries=0, timeout=20)
    try:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
        check(False, "bad key did not raise")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"status {e.status_code}")


def models():
    page = client.models.list()
    ids = [m.id for m in page.data]
    check(ids, "models.list() is empty")
    for m in page.data:
        check(m.object == "model", f"model object {m.object!r}")
    if LISTED:
        check(LISTED in ids, f"{LISTED} not in models.list()")


def embeddings():
    if not EMBED_MODEL:
        return
    # The SDK asks for base64 by default and decodes it.
    r = client.embeddings.create(model=EMBED_MODEL, input=["first text", "second text"])
    check(len(r.data) == 2, f"{len(r.data)} embeddings")
    for i, d in enumerate(r.data):
        check(d.index == i, f"embedding index {d.index}")
        check(isinstance(d.embedding, list) and d.embedding and all(isinstance(x, float) for x in d.embedding),
              f"embedding {i} is not a float list: {str(d.embedding)[:80]}")
    check(r.data[0].embedding != r.data[1].embedding, "both embeddings are equal")
    check(r.usage is not None, "embeddings without usage")
    f = client.embeddings.create(model=EMBED_MODEL, input="one text", encoding_format="float")
    check(len(f.data) == 1 and isinstance(f.data[0].embedding[0], float), "float embeddings")


def main():
    for name, fn in [
        ("non-stream", non_stream),
        ("stream+usage", lambda: stream(True)),
        ("stream", lambda: stream(False)),
        ("tools", tools_non_stream),
        ("tools-stream", tools_stream),
        ("errors", errors),
        ("models", models),
        ("embeddings", embeddings),
    ]:
        if name == "embeddings" and not EMBED_MODEL:
            print(f"python {openai.__version__} {MODEL}: embeddings not checked (no LG_EMBED_MODEL)")
            continue
        fn()
        print(f"python {openai.__version__} {MODEL}: {name} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
