#!/usr/bin/env python3
"""Regenerate the seed corpora in fuzz/corpus/ (wire samples transcribed from the test
mocks in tests/common/mocks.rs, mocks_more.rs and mod.rs). Crash reproducers kept in the
corpora (files named crash-*) are not touched. Run from anywhere: python3 fuzz/make_seeds.py
"""
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
DIALECTS = ["openai", "anthropic", "gemini", "vertex", "vertex-anthropic", "bedrock",
            "cohere", "ollama", "fireworks", "huggingface", "replicate"]
D = {name: i for i, name in enumerate(DIALECTS)}
PIECES = ["Hel", "lo", "!"]
ARGS = ['{"ci', 'ty": "Par', 'is"}']
TEXT_USAGE, TOOL_USAGE = (11, 3), (20, 9)


def j(v):
    return json.dumps(v, separators=(",", ":"))


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def nocut(payload):
    """The chunk-split header meaning 'one chunk'."""
    return b"\x00" + payload


def cuts(payload, offsets):
    return bytes([len(offsets)]) + b"".join(struct.pack("<H", o) for o in offsets) + payload


# ---------------------------------------------------------------- wire formats

def sse(v):
    return f"data: {j(v)}\n\n".encode()


def named(event, v):
    return f"event: {event}\ndata: {j(v)}\n\n".encode()


def openai_stream(tools=False, usage=True):
    def chunk(delta, finish):
        c = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000,
             "model": "gpt-4o-mini", "system_fingerprint": "fp_test",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage:
            c["usage"] = None
        return sse(c)
    if tools:
        out = [chunk({"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": "call_abc123",
               "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, None)]
        out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}, None) for a in ARGS]
        out.append(chunk({}, "tool_calls"))
    else:
        out = [chunk({"role": "assistant", "content": ""}, None)]
        out += [chunk({"content": p}, None) for p in PIECES]
        out.append(chunk({}, "stop"))
    if usage:
        out.append(sse({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000,
                        "model": "gpt-4o-mini", "choices": [],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def anthropic_message(content, stop, usage, model="claude-sonnet-4-5"):
    return {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": usage[1]}}


def anthropic_stream(tools=False, error=False):
    usage = TOOL_USAGE if tools else TEXT_USAGE
    start = anthropic_message([], None, (usage[0], 1))
    v = [named("message_start", {"type": "message_start", "message": start})]
    last = 0
    if tools:
        v.append(named("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
        v.append(named("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}))
        v.append(named("content_block_stop", {"type": "content_block_stop", "index": 0}))
        v.append(named("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {}}}))
        v.append(named("ping", {"type": "ping"}))
        v.append(named("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}))
        for a in ARGS:
            v.append(named("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": a}}))
        last = 1
    else:
        v.append(named("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
        v.append(named("ping", {"type": "ping"}))
        for i, p in enumerate(PIECES):
            v.append(named("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}))
            if error and i == 0:
                v.append(named("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
                return b"".join(v)
    v.append(named("content_block_stop", {"type": "content_block_stop", "index": last}))
    v.append(named("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tools else "end_turn", "stop_sequence": None}, "usage": {"output_tokens": usage[1]}}))
    v.append(named("message_stop", {"type": "message_stop"}))
    return b"".join(v)


def gemini_usage(u):
    return {"promptTokenCount": u[0], "candidatesTokenCount": u[1], "totalTokenCount": u[0] + u[1],
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u[0]}]}


def gemini_response(parts, finish, usage, model="gemini-2.0-flash"):
    cand = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand], "usageMetadata": usage, "modelVersion": model, "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"}


def gemini_stream(tools=False, error=False):
    ev = lambda v: f"data: {j(v)}\r\n\r\n".encode()
    if tools:
        return ev(gemini_response([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}], "STOP", gemini_usage(TOOL_USAGE)))
    v = []
    for i, p in enumerate(PIECES):
        last = i == len(PIECES) - 1
        usage = gemini_usage(TEXT_USAGE) if last else {"promptTokenCount": 11, "totalTokenCount": 11}
        v.append(ev(gemini_response([{"text": p}], "STOP" if last else None, usage)))
        if error and i == 0:
            v.append(ev({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}))
            break
    return b"".join(v)


def frame(headers, payload):
    h = b""
    for name, value in headers:
        n = name.encode()
        v = value.encode()
        h += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(h) + len(payload) + 4
    prelude = struct.pack(">II", total, len(h))
    out = prelude + struct.pack(">I", zlib.crc32(prelude)) + h + payload
    return out + struct.pack(">I", zlib.crc32(out))


def event_frame(kind, payload):
    return frame([(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")], payload)


def exception_frame(kind, message):
    return frame([(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")],
                 j({"message": message}).encode())


def bedrock_events(tools=False):
    """(event type, payload) pairs of a ConverseStream answer."""
    pad = lambda v: dict(v, p="abcdefghijklmnopqrstu")
    v = [("messageStart", pad({"role": "assistant"}))]
    last = 0
    if tools:
        v.append(("contentBlockDelta", pad({"contentBlockIndex": 0, "delta": {"text": "Let me check."}})))
        v.append(("contentBlockStop", pad({"contentBlockIndex": 0})))
        v.append(("contentBlockStart", pad({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather"}}})))
        for a in ARGS:
            v.append(("contentBlockDelta", pad({"contentBlockIndex": 1, "delta": {"toolUse": {"input": a}}})))
        last = 1
    else:
        for p in PIECES:
            v.append(("contentBlockDelta", pad({"contentBlockIndex": 0, "delta": {"text": p}})))
    usage = TOOL_USAGE if tools else TEXT_USAGE
    v.append(("contentBlockStop", pad({"contentBlockIndex": last})))
    v.append(("messageStop", pad({"stopReason": "tool_use" if tools else "end_turn"})))
    v.append(("metadata", pad({"usage": {"inputTokens": usage[0], "outputTokens": usage[1], "totalTokens": sum(usage)}, "metrics": {"latencyMs": 312}})))
    return v


def bedrock_stream(tools=False, fault=None):
    evs = bedrock_events(tools)
    frames = [event_frame(k, j(p).encode()) for k, p in evs]
    if fault == "exception":
        frames = frames[:2] + [exception_frame("modelStreamErrorException", "The model stream failed: internal error")]
    elif fault == "badcrc":
        bad = bytearray(frames[2])
        bad[-1] ^= 0xFF
        frames = frames[:2] + [bytes(bad)]
    return b"".join(frames)


def bedrock_structured(tools=False, exception=False):
    """The dialect_stream target's 0x40 mode: \\0-separated event type / payload pairs."""
    evs = bedrock_events(tools)
    parts = []
    for k, p in (evs[:2] if exception else evs):
        parts += [k.encode(), j(p).encode()]
    if exception:
        parts += [b"!throttlingException", b"Too many requests, please wait before trying again."]
    return b"\x00".join(parts)


def cohere_usage(u):
    return {"billed_units": {"input_tokens": u[0], "output_tokens": u[1]}, "tokens": {"input_tokens": u[0] + 200, "output_tokens": u[1]}}


def cohere_stream(tools=False, error=False):
    cid = "c14c80c3-18eb-4519-9460-6c92edd8cfb4"
    v = [named("message-start", {"id": cid, "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})]
    if tools:
        for p in ["I will look", " up the weather."]:
            v.append(named("tool-plan-delta", {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": p}}}))
        v.append(named("tool-call-start", {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "get_weather_4fq0jxmc1ktb", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}}))
        for a in ARGS:
            v.append(named("tool-call-delta", {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": a}}}}}))
        v.append(named("tool-call-end", {"type": "tool-call-end", "index": 0}))
    else:
        v.append(named("content-start", {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}))
        for i, p in enumerate(PIECES):
            v.append(named("content-delta", {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}}))
            if error and i == 0:
                v.append(named("message-end", {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal server error, this has been reported to our developers"}}))
                return b"".join(v)
        v.append(named("content-end", {"type": "content-end", "index": 0}))
    v.append(named("message-end", {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL" if tools else "COMPLETE", "usage": cohere_usage(TOOL_USAGE if tools else TEXT_USAGE)}}))
    return b"".join(v)


def ollama_line(message, done, usage, model="llama3.2"):
    v = {"model": model, "created_at": "2025-01-01T00:00:00.000000Z", "message": message, "done": done}
    if done:
        v.update({"done_reason": "stop", "total_duration": 4883583458, "load_duration": 1334875,
                  "prompt_eval_count": usage[0], "prompt_eval_duration": 342546000,
                  "eval_count": usage[1], "eval_duration": 4535599000})
    return (j(v) + "\n").encode()


def ollama_stream(tools=False, error=False):
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    if tools:
        return ollama_line(call, False, TOOL_USAGE) + ollama_line({"role": "assistant", "content": ""}, True, TOOL_USAGE)
    v = []
    for i, p in enumerate(PIECES):
        v.append(ollama_line({"role": "assistant", "content": p}, False, TEXT_USAGE))
        if error and i == 0:
            v.append((j({"error": "an error was encountered while running the model: unexpected EOF"}) + "\n").encode())
            return b"".join(v)
    v.append(ollama_line({"role": "assistant", "content": ""}, True, TEXT_USAGE))
    return b"".join(v)


def prediction(model, inp, status, output, error, tokens):
    pid = "rrr4f1yqxsrm80ckmgbt9v1cwm"
    metrics = {"predict_time": 0.41, "total_time": 0.52}
    if tokens:
        metrics.update({"input_token_count": tokens[0], "output_token_count": tokens[1], "tokens_per_second": 42.0, "time_to_first_token": 0.05})
    done = status in ("succeeded", "failed", "canceled")
    return {"id": pid, "model": model, "version": "hidden", "input": inp, "logs": "", "output": output,
            "data_removed": False, "error": error, "status": status, "source": "api",
            "created_at": "2026-11-23T01:00:00.000Z", "started_at": "2026-11-23T01:00:00.100Z",
            "completed_at": "2026-11-23T01:00:00.600Z" if done else None,
            "urls": {"cancel": f"https://api.replicate.com/v1/predictions/{pid}/cancel",
                     "get": f"https://api.replicate.com/v1/predictions/{pid}",
                     "stream": f"https://stream.replicate.com/v1/files/{pid}",
                     "web": f"https://replicate.com/p/{pid}"},
            "metrics": metrics if done else {}}


def chat_json(content="Hello!", model="gpt-4o-mini"):
    return {"id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}, "system_fingerprint": "fp_test"}


def openai_tool_json():
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None,
                         "tool_calls": [{"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                         "logprobs": None, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}


PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

# ---------------------------------------------------------------- request_json

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
put("request_json", "chat_basic", j({"model": "gpt-4o-mini", "messages": USER}))
put("request_json", "chat_stream_usage", j({"model": "auto", "messages": USER, "stream": True,
    "stream_options": {"include_usage": True}, "temperature": 0.2, "max_tokens": 256, "stop": ["\n\n"]}))
put("request_json", "chat_tools_roundtrip", j({"model": "claude-sonnet-4-5", "messages": [
    {"role": "system", "content": "Be brief."}, USER[0],
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_abc123", "content": "18C, cloudy"}],
    "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False}))
put("request_json", "chat_image_parts", j({"model": "gemini-2.0-flash", "messages": [
    {"role": "developer", "content": [{"type": "text", "text": "Describe images."}]},
    {"role": "user", "content": [{"type": "text", "text": "What is this?"},
     {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64, "detail": "low"}}]}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": {"type": "object"}}},
    "seed": 7, "n": 1, "top_p": 0.9, "user": "u-1", "reasoning_effort": "low"}))
put("request_json", "chat_invalid_type", j({"model": "m", "messages": USER, "temperature": "hot"}))
put("request_json", "embeddings_array", j({"model": "text-embedding-3-small", "input": ["hello", "world"], "encoding_format": "float", "dimensions": 256}))
put("request_json", "embeddings_string", j({"model": "cohere/embed-english-v3.0", "input": "hello", "input_type": "search_query"}))
put("request_json", "images", j({"model": "dall-e-3", "prompt": "a red fox in snow", "n": 1, "size": "1024x1024", "response_format": "b64_json", "aspect_ratio": "1:1", "seed": 3}))

# ---------------------------------------------------------------- sse_decoder

put("sse_decoder", "openai_stream", nocut(openai_stream()))
put("sse_decoder", "anthropic_tools_split", cuts(anthropic_stream(tools=True), [17, 300, 301, 900]))
put("sse_decoder", "gemini_crlf_split", cuts(gemini_stream(), [40, 41, 200, 201]))
put("sse_decoder", "cohere_stream", nocut(cohere_stream(tools=True)))
put("sse_decoder", "comments_multiline", cuts(b": keep-alive\r\n\r\nevent: a\r\ndata: x\r\ndata: y\rdata: z\n\nid: 1\nretry: 10\ndata\n\n", [15, 16]))
put("sse_decoder", "ndjson_ollama", cuts(ollama_stream(), [30, 31]))

# ---------------------------------------------------------------- bedrock_eventstream

put("bedrock_eventstream", "text_stream", nocut(bedrock_stream()))
put("bedrock_eventstream", "tools_split", cuts(bedrock_stream(tools=True), [5, 12, 13, 200, 401]))
put("bedrock_eventstream", "exception", nocut(bedrock_stream(fault="exception")))
put("bedrock_eventstream", "bad_crc", nocut(bedrock_stream(fault="badcrc")))
typed = struct.pack(">B", 5) + b":flag" + b"\x00" + struct.pack(">B", 4) + b":num" + b"\x04" + struct.pack(">i", -7) \
    + struct.pack(">B", 3) + b":ts" + b"\x08" + struct.pack(">q", 1700000000000) + struct.pack(">B", 2) + b":u" + b"\x09" + bytes(range(16)) \
    + struct.pack(">B", 2) + b":b" + b"\x06" + struct.pack(">H", 3) + b"\x00\xff\x10"
total = 12 + len(typed) + 2 + 4
pre = struct.pack(">II", total, len(typed))
f = pre + struct.pack(">I", zlib.crc32(pre)) + typed + b"{}"
f += struct.pack(">I", zlib.crc32(f))
put("bedrock_eventstream", "typed_headers", nocut(f))
put("bedrock_eventstream", "repair_mode", b"\x80" + f[:8] + b"\x00\x00\x00\x00" + f[12:-4] + b"\x00\x00\x00\x00")

# ---------------------------------------------------------------- dialect_response

def resp(dialect, op, body):
    return bytes([D[dialect], op]) + (body if isinstance(body, bytes) else body.encode())

put("dialect_response", "openai_chat", resp("openai", 0, j(chat_json())))
put("dialect_response", "openai_tools", resp("openai", 0, j(openai_tool_json())))
put("dialect_response", "openai_embeddings", resp("openai", 1, j({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25, 0.125]}], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 2, "total_tokens": 2}})))
put("dialect_response", "openai_images", resp("openai", 2, j({"created": 1700000000, "data": [{"b64_json": PNG_B64, "revised_prompt": "a fox"}]})))
put("dialect_response", "anthropic_tools", resp("anthropic", 0, j(anthropic_message([{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}}], "tool_use", TOOL_USAGE))))
put("dialect_response", "anthropic_overloaded_529", resp("anthropic", 3 | (43 << 2), j({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})))
put("dialect_response", "gemini_chat", resp("gemini", 0, j(gemini_response([{"text": "Hello!"}], "STOP", gemini_usage(TEXT_USAGE)))))
put("dialect_response", "gemini_embeddings", resp("gemini", 1, j({"embeddings": [{"values": [0.5, -0.25, 0.125]}, {"values": [1.5, -0.25, 0.125]}]})))
put("dialect_response", "gemini_exhausted_429", resp("gemini", 3 | (9 << 2), j({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}})))
put("dialect_response", "vertex_tools", resp("vertex", 0, j(gemini_response([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}], "STOP", gemini_usage(TOOL_USAGE)))))
put("dialect_response", "vertex_embeddings", resp("vertex", 1, j({"predictions": [{"embeddings": {"values": [0.5, -0.25, 0.125], "statistics": {"token_count": 4, "truncated": False}}}], "metadata": {"billableCharacterCount": 20}})))
put("dialect_response", "vertex_anthropic_chat", resp("vertex-anthropic", 0, j(anthropic_message([{"type": "text", "text": "Hello!"}], "end_turn", TEXT_USAGE))))
put("dialect_response", "bedrock_tools", resp("bedrock", 0, j({"output": {"message": {"role": "assistant", "content": [{"text": "Let me check."}, {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather", "input": {"city": "Paris"}}}]}}, "stopReason": "tool_use", "usage": {"inputTokens": 20, "outputTokens": 9, "totalTokens": 29}, "metrics": {"latencyMs": 312}})))
put("dialect_response", "bedrock_throttled_429", resp("bedrock", 3 | (9 << 2), j({"message": "Too many requests, please wait before trying again."})))
put("dialect_response", "cohere_tools", resp("cohere", 0, j({"id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4", "finish_reason": "TOOL_CALL", "message": {"role": "assistant", "tool_plan": "I will look up the weather.", "tool_calls": [{"id": "get_weather_4fq0jxmc1ktb", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}, "usage": cohere_usage(TOOL_USAGE)})))
put("dialect_response", "cohere_embeddings", resp("cohere", 1, j({"id": "da6e531f-54c6-4a73-bf92-f60566d8d753", "embeddings": {"float": [[0.5, -0.25, 0.125]]}, "texts": ["hello"], "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4}}, "response_type": "embeddings_by_type"})))
put("dialect_response", "ollama_chat", resp("ollama", 0, ollama_line({"role": "assistant", "content": "Hello!"}, True, TEXT_USAGE).strip()))
put("dialect_response", "ollama_embeddings", resp("ollama", 1, j({"model": "nomic-embed-text", "embeddings": [[0.5, -0.25, 0.125]], "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 3})))
put("dialect_response", "fireworks_images", resp("fireworks", 2, j({"id": "c5a0b4e7-7c62-4bb8-8f59-0f3f6b5b1a11", "base64": ["data:image/png;base64," + PNG_B64], "finishReason": "SUCCESS", "seed": 1234567890})))
put("dialect_response", "huggingface_embeddings", resp("huggingface", 1, j([[0.25, 0.5, 0.75, 0.25], [0.5, 0.5, 0.5, 0.5]])))
put("dialect_response", "huggingface_loading_503", resp("huggingface", 3 | (34 << 2), j({"error": "Model BAAI/bge-small-en-v1.5 is currently loading", "estimated_time": 20.0})))
put("dialect_response", "replicate_chat", resp("replicate", 0, j(prediction("meta/meta-llama-3-8b-instruct", {"prompt": "hi"}, "succeeded", PIECES, None, TEXT_USAGE))))
put("dialect_response", "replicate_images", resp("replicate", 2, j(prediction("black-forest-labs/flux-schnell", {"prompt": "fox", "num_outputs": 2}, "succeeded", ["https://replicate.delivery/xezq/kT3b9/out-0.webp", "https://replicate.delivery/xezq/kT3b9/out-1.webp"], None, None))))
put("dialect_response", "replicate_failed", resp("replicate", 0, j(prediction("meta/meta-llama-3-8b-instruct", {"prompt": "FAILME"}, "failed", None, "CUDA error: out of memory", None))))

# ---------------------------------------------------------------- dialect_stream

def stream(dialect, payload, usage=True, offsets=(), extra=0):
    return bytes([D[dialect] | (0x10 if usage else 0) | extra]) + cuts(payload, list(offsets))

put("dialect_stream", "openai_text", stream("openai", openai_stream()))
put("dialect_stream", "openai_tools_split", stream("openai", openai_stream(tools=True, usage=False), usage=False, offsets=[100, 101, 333]))
put("dialect_stream", "anthropic_tools", stream("anthropic", anthropic_stream(tools=True), offsets=[60, 700]))
put("dialect_stream", "anthropic_error", stream("anthropic", anthropic_stream(error=True)))
put("dialect_stream", "gemini_text_split", stream("gemini", gemini_stream(), offsets=[10, 11, 12]))
put("dialect_stream", "gemini_error", stream("gemini", gemini_stream(error=True)))
put("dialect_stream", "vertex_tools", stream("vertex", gemini_stream(tools=True), usage=False))
put("dialect_stream", "vertex_anthropic_text", stream("vertex-anthropic", anthropic_stream()))
put("dialect_stream", "bedrock_frames_split", stream("bedrock", bedrock_stream(tools=True), offsets=[3, 300, 301]))
put("dialect_stream", "bedrock_exception", stream("bedrock", bedrock_stream(fault="exception")))
put("dialect_stream", "bedrock_structured", stream("bedrock", bedrock_structured(), extra=0x40))
put("dialect_stream", "bedrock_structured_exception", stream("bedrock", bedrock_structured(tools=True, exception=True), extra=0x40))
put("dialect_stream", "cohere_tools", stream("cohere", cohere_stream(tools=True)))
put("dialect_stream", "cohere_error", stream("cohere", cohere_stream(error=True), usage=False))
put("dialect_stream", "ollama_text_split", stream("ollama", ollama_stream(), offsets=[50, 51]))
put("dialect_stream", "ollama_tools", stream("ollama", ollama_stream(tools=True)))
put("dialect_stream", "ollama_error", stream("ollama", ollama_stream(error=True)))
put("dialect_stream", "fireworks_text", stream("fireworks", openai_stream()))
put("dialect_stream", "huggingface_text_abort", stream("huggingface", openai_stream()[:400], extra=0x20))
put("dialect_stream", "replicate_prediction", stream("replicate", j(prediction("meta/meta-llama-3-8b-instruct", {"prompt": "hi"}, "succeeded", PIECES, None, TEXT_USAGE)).encode()))

# ---------------------------------------------------------------- webhook

event = {"id": "evt_" + "0" * 31 + "1", "type": "audit", "created_at": 1700000000000,
         "data": {"action": "pin", "route": "default", "model": "gpt-4o-mini", "actor": "key_ops", "reason": "incident 42"}}
decision = {"id": "evt_" + "0" * 31 + "2", "type": "decision", "created_at": 1700000000123,
            "data": {"request_id": "chatcmpl-a", "route": "default", "served": "gpt-4o-mini", "scores": {"gpt-4o-mini": 0.81, "claude-haiku": 0.79}}}
body = j({"delivery_id": "dlv_" + "ab" * 16, "events": [event, decision]})
put("webhook", "signed_delivery", "t=1700000000,v1=" + "5f" * 32 + "\n" + body)
put("webhook", "two_signatures", "t=1700000000, v1=" + "00" * 32 + ", v1=" + "ff" * 32 + "\n" + j({"delivery_id": "dlv_1", "events": []}))
put("webhook", "retry_after_seconds", "30\n")
put("webhook", "retry_after_date", "Wed, 21 Oct 2026 07:28:00 GMT\n")
put("webhook", "experiment_event", "t=abc,v1=zz\n" + j({"delivery_id": "dlv_2", "events": [{"id": "evt_3", "type": "experiment", "created_at": -1, "data": {"state": "promoted", "route": "default", "share": 0.25}}, {"id": "evt_4", "type": "rollback", "created_at": 5, "data": None}]}))

# ---------------------------------------------------------------- feedback_body

put("feedback_body", "thumbs", j({"id": "chatcmpl-a", "score": 1, "scale": "thumbs"}))
put("feedback_body", "one_to_five_comment", j({"request_id": "chatcmpl-b", "score": 4, "scale": "one_to_five", "comment": "good, but verbose"}))
put("feedback_body", "judge_detail", j({"id": "chatcmpl-a", "score": 0.8, "signal": "judge", "scale": "unit", "detail": {"accuracy": 0.9, "style": 0.7}}))
put("feedback_body", "admin_rating", j({"id": "chatcmpl-b", "score": 7, "scale": "zero_to_ten", "signal": "admin"}))
put("feedback_body", "session_nps", j({"session_id": "s1", "nps": 9, "comment": "helpful session"}))
put("feedback_body", "unknown_id", j({"id": "chatcmpl-zzz", "score": True}))
put("feedback_body", "mixed_invalid", j({"session_id": "s1", "nps": 3, "id": "chatcmpl-a", "score": 1}))
