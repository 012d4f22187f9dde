"""A Claude Agent SDK agent behind the zero-trust gate.

The agent's environment holds only a short-lived session token
(BROKER_SESSION_TOKEN), the broker's URL (BROKER_URL) and the stack's public
data directory (ZT_DATA_DIR) for the hook: no database URL, no billing key.
Every tool call passes the PreToolUse hook in this process (`zt-policy hook`,
on PATH) and is checked again by the broker.

    zt-console up --data-dir ./stack               # prints broker_url=...
    export BROKER_URL=http://127.0.0.1:PORT/mcp
    export ZT_DATA_DIR=./stack
    export BROKER_SESSION_TOKEN=$(zt-approval token issue --data-dir ./stack --agent agent:support --for alice)
    python examples/agent_sdk.py ["the task for the agent"]

Fail closed, three ways over: the gate turns every failure of the hook
(crash, kill, timeout, output that is not a decision) into a deny;
`on_failure="block"` makes the CLI block a call if the gate itself raises or
times out; and no permission rule allows the broker's tools
(`permission_mode="dontAsk"`, no `allowed_tools`), so the hook's "allow" is
the only grant. An escalated call is allowed through to the broker, which
holds it for an operator and answers "awaiting approval req_..."; the agent
then follows up with the `approval_status` tool.

CLAUDE_CLI_PATH, when set, names the Claude Code CLI to drive (otherwise the
SDK's own bundled CLI).
"""

import asyncio
import json
import os
import subprocess
import sys

from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, query

HOOK_TIMEOUT_SECS = 10


async def gate(input_data, tool_use_id, context):
    """Runs `zt-policy hook`; anything but a well-formed decision blocks the call."""
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            ["zt-policy", "hook"],
            input=json.dumps(input_data),
            capture_output=True,
            text=True,
            timeout=HOOK_TIMEOUT_SECS,
        )
    except Exception as exc:  # not found, timed out, ...: never let the call through
        return _deny(f"blocked: the policy hook failed ({type(exc).__name__})")
    if proc.returncode != 0:
        return _deny(proc.stderr.strip()[:500] or "blocked by the policy hook")
    try:
        out = json.loads(proc.stdout)
        decision = out["hookSpecificOutput"]["permissionDecision"]
    except (ValueError, KeyError, TypeError):
        return _deny("blocked: the policy hook gave no decision")
    if decision not in ("allow", "deny"):
        return _deny("blocked: the policy hook gave no decision")
    return out


def _deny(reason):
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": reason,
        }
    }


async def main():
    prompt = (
        sys.argv[1]
        if len(sys.argv) > 1
        else "Customer acct_1001 was double-charged $30 on order ord_1001. Please refund it."
    )
    options = ClaudeAgentOptions(
        mcp_servers={
            "broker": {
                "type": "http",
                "url": os.environ["BROKER_URL"],
                "headers": {"Authorization": f"Bearer {os.environ['BROKER_SESSION_TOKEN']}"},
            }
        },
        permission_mode="dontAsk",
        hooks={
            "PreToolUse": [
                HookMatcher(
                    matcher="mcp__broker__.*",
                    hooks=[gate],
                    timeout=HOOK_TIMEOUT_SECS + 5,
                    on_failure="block",
                )
            ]
        },
        cli_path=os.environ.get("CLAUDE_CLI_PATH") or None,
    )
    async for message in query(prompt=prompt, options=options):
        print(message, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
