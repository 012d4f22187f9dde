"""A Claude Agent SDK agent behind the zero-trust gate.

The agent's environment holds only a short-lived session token
(BROKER_SESSION_TOKEN) and the stack's public data directory (ZT_DATA_DIR)
for the hook: no database URL, no billing key. Every tool call passes the
PreToolUse hook in this process and is checked again by the broker.

    eval "$(zt-console up --data-dir ./stack | grep broker_url)"   # or read the printed line
    export ZT_DATA_DIR=./stack
    export BROKER_SESSION_TOKEN=$(zt-approval token issue --data-dir ./stack --agent agent:support --for alice)
    python examples/agent_sdk.py
"""

import asyncio
import json
import os
import subprocess

from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, query


async def gate(input_data, tool_use_id, context):
    """Runs `zt-policy hook`; any failure blocks the call (fail closed)."""
    try:
        proc = subprocess.run(
            ["zt-policy", "hook"],
            input=json.dumps(input_data),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except Exception as exc:  # the gate failing must never let a call through
        return _deny(f"policy hook failed: {exc}")
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    return _deny(proc.stderr.strip() or "blocked by policy")


def _deny(reason):
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": reason,
        }
    }


async def main():
    options = ClaudeAgentOptions(
        mcp_servers={
            "broker": {
                "type": "http",
                "url": os.environ["BROKER_URL"],
                "headers": {"Authorization": f"Bearer {os.environ['BROKER_SESSION_TOKEN']}"},
            }
        },
        allowed_tools=["mcp__broker__*"],
        hooks={"PreToolUse": [HookMatcher(matcher="mcp__broker__.*", hooks=[gate])]},
    )
    async for message in query(
        prompt="Customer acct_1001 was double-charged $30 on order ord_1001. Please refund it.",
        options=options,
    ):
        print(message)


if __name__ == "__main__":
    asyncio.run(main())
