"""Interop check with the official Python MCP SDK (a client nobody here wrote).

Usage: mcp_client.py BROKER_URL SESSION_TOKEN
Prints one JSON object with what it saw; the Rust test asserts on it.
"""

import asyncio
import json
import sys

import httpx2 as httpx  # the HTTP client the mcp 2.x SDK is built on
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


CALLS = [
    ("lookup_account", {"account_id": "acct_1001"}),
    ("list_orders", {"account_id": "acct_1001", "limit": 50}),
    ("issue_refund", {"order_id": "ord_1001", "amount": 100}),
    ("change_plan", {"account_id": "acct_1001", "new_plan": "basic"}),
    ("fetch_document", {"doc_id": "doc_refund_policy"}),
    ("lookup_account", {"account_id": "acct_2001"}),
    ("issue_refund", {"order_id": "ord_1001", "amount": 100, "sneaky": True}),
]


async def main(url, token):
    seen = {}
    async with httpx.AsyncClient() as bare:
        resp = await bare.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream"},
        )
        seen["no_token_status"] = resp.status_code
        seen["no_token_challenge"] = resp.headers.get("www-authenticate", "")

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, streamable_http_client(url, http_client=http) as streams, ClientSession(
        streams[0], streams[1]
    ) as session:
        init = await session.initialize()
        seen["server"] = init.server_info.name
        tools = await session.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        seen["schemas_strict"] = all(
            t.input_schema.get("additionalProperties") is False for t in tools.tools
        )
        results = []
        for name, args in CALLS:
            r = await session.call_tool(name, args)
            results.append(
                {
                    "tool": name,
                    "is_error": bool(r.is_error),
                    "status": (r.structured_content or {}).get("status", "ok"),
                }
            )
        seen["calls"] = results
    print(json.dumps(seen))


asyncio.run(main(sys.argv[1], sys.argv[2]))
