"""Built-in tools inside a Responses request: python (`code_interpreter`) and browser
(`web_search`), run on the server between sampling rounds as the reference server does.

The tools themselves are `tools.base.Tool` objects handed to `create_app(builtin_tools=...)`
by namespace ("python", "browser"); a request enables one by asking for its tool type.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import harmony

MAX_CALLS = 8  # built-in calls within one response
TOOL_TYPES = {
    "code_interpreter": "python",
    "web_search": "browser",
    "web_search_preview": "browser",
    "browser_search": "browser",
}


@dataclass(frozen=True)
class BuiltinResult:
    """A built-in tool ran: the call and its `ToolResult`."""

    call: harmony.ToolCall
    result: Any


def select(tools: list[dict[str, Any]] | None, available: Mapping[str, Any]) -> dict[str, Any]:
    """The built-in tools a request asks for and the server has, by namespace."""
    chosen = {}
    for tool in tools or []:
        namespace = TOOL_TYPES.get(str(tool.get("type")))
        if namespace in available:
            chosen[namespace] = available[namespace]
    return chosen


def namespace(call: harmony.ToolCall) -> str:
    return call.recipient.split(".", 1)[0]


def run(call: harmony.ToolCall, enabled: Mapping[str, Any]) -> BuiltinResult:
    """Run a call to an enabled built-in tool; its failures come back as text for the model."""
    _, _, function = call.recipient.partition(".")
    try:
        result = enabled[namespace(call)].call(function, call.arguments)
    except Exception as e:  # a tool must not raise, but one that does cannot take the server down
        from ..tools.base import ToolResult

        result = ToolResult(text=f"Error: the tool failed: {type(e).__name__}: {e}", error=True)
    return BuiltinResult(call, result)


def output_item(done: BuiltinResult) -> dict[str, Any]:
    """The Responses output item for a built-in call."""
    call, text = done.call, done.result.text
    if namespace(call) == "python":
        return {"type": "code_interpreter_call", "id": f"ci_{uuid.uuid4().hex}",
                "status": "completed", "code": call.arguments, "container_id": "local",
                "outputs": [{"type": "logs", "logs": text}]}  # fmt: skip
    try:
        args = json.loads(call.arguments)
    except ValueError:
        args = {}
    args = args if isinstance(args, dict) else {}
    function = call.recipient.partition(".")[2]
    action: dict[str, Any] = {"type": "search", "query": args.get("query", "")}
    if function == "open":
        action = {"type": "open_page", "url": str(args.get("id", ""))}
    elif function == "find":
        action = {"type": "find", "pattern": args.get("pattern", ""), "url": ""}
    return {"type": "web_search_call", "id": f"ws_{uuid.uuid4().hex}", "status": "completed",
            "action": action}  # fmt: skip
