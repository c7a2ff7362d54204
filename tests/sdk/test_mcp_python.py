"""loopgate's MCP server through the official MCP Python SDK (Streamable HTTP).

Run by tests/mcp_sdk.rs: argv = base URL, read token (filtered to route "ra"), mutate token
(filtered to route "ra"), a request id served on "ra" (untagged), a read token filtered to the
tag feature:search (one tagged request exists), an expired token. Prints one JSON line per
check; any failed assertion exits non-zero.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.client.streamable_http import streamable_http_client

URL, READ, MUTATE, REQUEST_ID, TAGGED, EXPIRED = sys.argv[1:7]


def dump(r):
    return r.model_dump(by_alias=True, mode="json", exclude_none=True)


def structured(r):
    d = dump(r)
    assert not d.get("isError"), d
    return d["structuredContent"]


async def with_client(token, body, mode="auto", version="2026-07-28"):
    """`mode="auto"` (the SDK's default) probes `server/discover` and speaks the 2026-07-28
    revision (no handshake, a per-request envelope); `mode="legacy"` uses the initialize
    handshake (2025-11-25)."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(f"{URL}/mcp", http_client=http), mode=mode) as c:
            assert c.protocol_version == version, (mode, c.protocol_version)
            return await body(c)


async def read_checks(c):
    tools = {t.name for t in (await c.list_tools()).tools}
    assert tools == {
        "get_analytics",
        "get_decision",
        "get_verification",
        "list_decisions",
        "explain_routing",
        "list_models",
    }, tools
    print(json.dumps({"check": "read_tools", "tools": sorted(tools)}))

    models = structured(await c.call_tool("list_models", {}))
    routes = [r["route"] for r in models["routes"]]
    assert routes == ["ra"], routes  # the filter hides "shared"
    assert any(p["models"] for p in models["providers"]), models
    print(json.dumps({"check": "list_models", "routes": routes}))

    a = structured(await c.call_tool("get_analytics", {"group_by": "model", "window": "1h", "resolved_nps": 9}))
    assert a["totals"]["requests"] >= 1, a
    assert "resolved_sessions" in a, a
    print(json.dumps({"check": "get_analytics", "requests": a["totals"]["requests"], "resolved": a["resolved_sessions"]}))

    f = structured(await c.call_tool("get_analytics", {"group_by": "feature", "window": "1h"}))
    groups = {g["group"]: g["requests"] for g in f["data"]}
    assert groups.get("search") == 1, f  # the request tagged loopgate-property-feature: search
    print(json.dumps({"check": "get_analytics_feature", "groups": groups}))

    k = structured(await c.call_tool("get_analytics", {"group_by": "key", "window": "1h"}))
    per_key = {g["group"]: g["requests"] for g in k["data"]}
    assert per_key and sum(per_key.values()) == k["totals"]["requests"], k
    print(json.dumps({"check": "get_analytics_key", "groups": per_key}))

    d = structured(await c.call_tool("get_decision", {"request_id": REQUEST_ID}))
    assert d["id"] == REQUEST_ID and d["route"] == "ra", d
    # The full audit: chosen vs baseline, the signals and the signed trace.
    assert d["chosen"] and d["baseline"] == "gpt-4o", d
    assert d["decision"]["signature"], d
    assert d["decision"]["firewall"]["policy"] == "std", d  # the firewall verdict
    print(json.dumps({"check": "get_decision", "route": d["route"], "chosen": d["chosen"]}))

    ls = structured(await c.call_tool("list_decisions", {"window": "1h", "max_latency_ms": 60000}))
    assert ls["count"] >= 1 and all(x["route"] == "ra" for x in ls["data"]), ls
    assert all("latency_ms" in x for x in ls["data"]), ls
    s1 = structured(await c.call_tool("list_decisions", {"session_id": "s1", "limit": 10}))
    none = structured(await c.call_tool("list_decisions", {"session_id": "no-such-session"}))
    assert s1["count"] >= 1 and none["count"] == 0, (s1, none)
    q = structured(await c.call_tool("list_decisions", {"min_quality": 0.0, "max_quality": 1.0}))
    assert all(x["route"] == "ra" for x in q["data"]), q
    print(json.dumps({"check": "list_decisions", "count": ls["count"], "session": s1["count"]}))

    v = structured(await c.call_tool("get_verification", {"route": "ra", "window": "1h"}))
    # Baseline vs served side by side, with the evidence counts.
    assert v["object"] == "report.shadow" and v["route"] == "ra", v
    assert v["baseline"]["model"] == "gpt-4o" and "requests" in v["baseline"], v
    assert "requests" in v["loopgate"] and "quality" in v["loopgate"], v
    assert v["routed_requests"] >= 1, v
    print(json.dumps({"check": "get_verification", "routed": v["routed_requests"]}))

    e = structured(
        await c.call_tool("explain_routing", {"route": "ra", "messages": [{"role": "user", "content": "hi"}]})
    )
    assert e["route"] == "ra" and e["chosen"] in ("gpt-4o", "gpt-4o-mini"), e
    print(json.dumps({"check": "explain_routing", "chosen": e["chosen"]}))

    # The filter: another route answers like an undefined one.
    out = dump(await c.call_tool("get_verification", {"route": "shared"}))
    assert out.get("isError") is True and "not defined" in out["content"][0]["text"], out
    print(json.dumps({"check": "filter", "text": out["content"][0]["text"]}))

    # A read token cannot call a mutating tool.
    try:
        r = await c.call_tool("pin_route", {"route": "ra"})
        raise AssertionError(f"read token pinned: {dump(r)}")
    except MCPError as ex:  # the SDK surfaces the 403 JSON-RPC error
        assert ex.code == -32003 and "mutate" in ex.error.message, repr(ex)
        print(json.dumps({"check": "read_cannot_mutate", "error": str(ex)[:200]}))

    # Bad arguments: a JSON-RPC invalid-params error (-32602) naming the argument.
    try:
        r = await c.call_tool("get_analytics", {"window": "forever"})
        raise AssertionError(f"bad argument accepted: {dump(r)}")
    except MCPError as ex:
        assert ex.code == -32602 and "window" in ex.error.message, repr(ex)
        assert (ex.error.data or {}).get("argument") == "window", repr(ex)
        print(json.dumps({"check": "bad_argument", "code": ex.code, "error": ex.error.message[:200]}))


async def mutate_checks(c):
    tools = {t.name for t in (await c.list_tools()).tools}
    assert {"create_experiment", "update_constraints", "pin_route"} <= tools, tools

    first = structured(await c.call_tool("pin_route", {"route": "ra", "model": "gpt-4o-mini", "reason": "mcp test"}))
    assert first["status"] == "confirmation_required", first
    assert first["would_apply"]["path"] == "/v1/routes/ra/pin", first
    cid = first["confirmation_id"]
    done = structured(await c.call_tool("pin_route", {"confirmation_id": cid}))
    assert done["status"] == "applied", done
    print(json.dumps({"check": "pin_confirmed", "result": done["result"].get("object")}))
    # Single use.
    try:
        r = await c.call_tool("pin_route", {"confirmation_id": cid})
        raise AssertionError(f"confirmation reused: {dump(r)}")
    except AssertionError:
        raise
    except Exception as ex:
        assert "confirmation_id" in str(ex), repr(ex)
        print(json.dumps({"check": "confirmation_single_use"}))

    prev = structured(
        await c.call_tool("update_constraints", {"route": "ra", "constraints": {"max_regression": 0.05}})
    )
    assert prev["status"] == "confirmation_required", prev
    ok = structured(await c.call_tool("update_constraints", {"confirmation_id": prev["confirmation_id"]}))
    assert ok["status"] == "applied", ok
    print(json.dumps({"check": "constraints_confirmed"}))

    exp = structured(await c.call_tool("create_experiment", {"route": "ra", "candidate": "gpt-4o-mini"}))
    assert exp["status"] == "confirmation_required", exp
    r = dump(await c.call_tool("create_experiment", {"confirmation_id": exp["confirmation_id"]}))
    assert not r.get("isError") and r["structuredContent"]["status"] == "applied", r
    print(json.dumps({"check": "experiment_confirmed", "isError": r.get("isError", False)}))

    out = dump(await c.call_tool("pin_route", {"route": "shared"}))
    assert out.get("isError") is True, out
    print(json.dumps({"check": "mutate_filter"}))


async def tag_checks(c):
    a = structured(await c.call_tool("get_analytics", {"window": "1h"}))
    assert a["totals"]["requests"] == 1, a  # only the tagged request
    ls = structured(await c.call_tool("list_decisions", {"window": "1h"}))
    assert ls["count"] == 1 and ls["data"][0]["id"] != REQUEST_ID, ls
    out = dump(await c.call_tool("get_decision", {"request_id": REQUEST_ID}))
    assert out.get("isError") is True, out  # the untagged request is outside the filter
    print(json.dumps({"check": "tag_filter", "requests": a["totals"]["requests"]}))


async def expired_check():
    async def never(c):
        raise AssertionError("connected with an expired token")

    try:
        await with_client(EXPIRED, never)
    except AssertionError:
        raise
    except BaseException as ex:  # the SDK surfaces the 401 JSON-RPC error (maybe in a group)
        text = repr(ex)
        for sub in getattr(ex, "exceptions", ()):
            text += repr(sub)
        assert "expired" in text or "401" in text, text
        print(json.dumps({"check": "expired_401", "error": text[:200]}))


async def main():
    await with_client(READ, read_checks)
    print(json.dumps({"check": "protocol_2026_07_28"}))
    await with_client(MUTATE, mutate_checks)
    # The handshake revision too: the same tools through `initialize`.
    await with_client(TAGGED, tag_checks, mode="legacy", version="2025-11-25")
    print(json.dumps({"check": "protocol_2025_11_25"}))
    await expired_check()
    print(json.dumps({"check": "done"}))


asyncio.run(main())
