"""One MCP token through the official MCP Python SDK (Streamable HTTP).

Run by tests/mcp_sdk.rs (persisted tokens: restart, two instances, revocation, expiry):
argv = base URL, token, expectation. "ok": the client connects, lists the read tools and
calls list_models. "revoked" / "expired" / "unknown": connecting fails with the gateway's 401
saying so. Prints one JSON line; any failed assertion exits non-zero.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL, TOKEN, EXPECT = sys.argv[1:4]


async def use(c):
    tools = {t.name for t in (await c.list_tools()).tools}
    assert "list_models" in tools and "pin_route" not in tools, tools
    r = (await c.call_tool("list_models", {})).model_dump(by_alias=True, mode="json", exclude_none=True)
    assert not r.get("isError") and r["structuredContent"]["providers"], r
    return sorted(tools)


async def main():
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        try:
            async with Client(streamable_http_client(f"{URL}/mcp", http_client=http)) as c:
                tools = await use(c)
        except BaseException as ex:  # the SDK surfaces a 401 JSON-RPC error (maybe in a group)
            if EXPECT == "ok":
                raise
            text = repr(ex)
            for sub in getattr(ex, "exceptions", ()):
                text += repr(sub)
            # The gateway's 401 carries the reason; the SDK may keep only the status.
            assert EXPECT in text or "401" in text, text
            print(json.dumps({"check": f"token_{EXPECT}", "error": text[:200]}))
            return
    assert EXPECT == "ok", f"connected with a token expected to be {EXPECT}"
    print(json.dumps({"check": "token_ok", "tools": tools}))


asyncio.run(main())
