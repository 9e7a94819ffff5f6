"""Built-in tools inside a Responses request: python (`code_interpreter`) and browser
(`web_search`), run on the server between sampling rounds as the reference server does.

The tools are handed to `create_app(builtin_tools=...)` by namespace ("python", "browser"): a
`tools.base.Tool` shared by every request (python: one worker per server, so its variables persist
across requests), or a zero-argument factory called once per response (browser: each response has
its own page stack, so citation cursors are the response's own). A request enables one by asking
for its tool type. One the server was not started with is left out (the model is not told of it)
with a warning in the server's log naming the flag: Codex CLI sends `web_search` with every
request, and a 400 would make it unusable against a plain `gptoss serve`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import harmony
from ..tools.base import Tool, ToolResult
from .errors import warn_once

MAX_CALLS = 8  # built-in calls within one response
TOOL_TYPES = {
    "code_interpreter": "python",
    "web_search": "browser",
    "web_search_preview": "browser",
    "browser_search": "browser",
}
FLAGS = {"python": "--python", "browser": "--browser"}
OUTPUT_TYPES = ("code_interpreter_call", "web_search_call")


@dataclass(frozen=True)
class BuiltinResult:
    """A built-in tool ran: the call and its `ToolResult`."""

    call: harmony.ToolCall
    result: Any


def select(tools: list[dict[str, Any]] | None, available: Mapping[str, Any]) -> dict[str, Any]:
    """The built-in tools a request asks for that the server runs, by namespace (factories
    called); the others are left out, with a warning (once per tool type) naming the flag."""
    chosen: dict[str, Any] = {}
    for tool in tools or []:
        kind = str(tool.get("type"))
        namespace = TOOL_TYPES.get(kind)
        if namespace is None or namespace in chosen:
            continue
        if namespace not in available:
            warn_once(
                f"builtin:{kind}",
                "requests ask for the %s tool: left out; start the server as "
                "`gptoss serve %s` to run it",
                kind,
                FLAGS[namespace],
            )
            continue
        tool_or_factory = available[namespace]
        fresh = not isinstance(tool_or_factory, Tool)
        chosen[namespace] = tool_or_factory() if fresh else tool_or_factory
    return chosen


def close_fresh(enabled: Mapping[str, Any], available: Mapping[str, Any]) -> None:
    """Close the tools `select` made for one response (not the shared ones)."""
    for namespace, tool in enabled.items():
        if available.get(namespace) is not tool:
            with contextlib.suppress(Exception):
                tool.close()


def close_all(available: Mapping[str, Any]) -> None:
    """Close the shared tools (at shutdown)."""
    for tool in available.values():
        if isinstance(tool, Tool):
            with contextlib.suppress(Exception):
                tool.close()


def namespace(call: harmony.ToolCall) -> str:
    return call.recipient.split(".", 1)[0]


def as_builtin(
    call: harmony.ToolCall, enabled: Collection[str], functions: Collection[str]
) -> harmony.ToolCall | None:
    """The call as one to an enabled built-in tool, or None. As the reference server does,
    `functions.python` and `functions.browser.*` (the model sometimes adds the prefix) count as
    the built-ins unless the request declares a function of that name."""
    if namespace(call) in enabled:
        return call
    name = call.recipient.removeprefix("functions.")
    if name == call.recipient or name in functions:
        return None
    fixed = replace(call, recipient=name)
    return fixed if namespace(fixed) in enabled else None


class _CancelFlag(threading.Event):
    """A threading.Event that is also set once the response is cancelled (client gone)."""

    def __init__(self, cancelled: Callable[[], bool]) -> None:
        super().__init__()
        self._cancelled = cancelled

    def is_set(self) -> bool:
        return self._cancelled() or super().is_set()


def run(
    call: harmony.ToolCall, enabled: Mapping[str, Any], cancelled: Callable[[], bool] = bool
) -> BuiltinResult:
    """Run a call to an enabled built-in tool (on the generation thread, which is long-lived as
    the python worker needs); its failures come back as text for the model."""
    _, _, function = call.recipient.partition(".")
    try:
        tool = enabled[namespace(call)]
        result = tool.call(function, call.arguments, cancel=_CancelFlag(cancelled))
    except Exception as e:  # a tool must not raise, but one that does cannot take the server down
        result = ToolResult(text=f"Error: the tool failed: {type(e).__name__}: {e}", error=True)
    return BuiltinResult(call, result)


def output_item(done: BuiltinResult) -> dict[str, Any]:
    """The Responses output item for a built-in call."""
    call, text = done.call, done.result.text
    if namespace(call) == "python":
        code = done.result.details.get("code", call.arguments)
        return {"type": "code_interpreter_call", "id": f"ci_{uuid.uuid4().hex}",
                "status": "completed", "code": code, "container_id": "local",
                "outputs": [{"type": "logs", "logs": text}]}  # fmt: skip
    return {"type": "web_search_call", "id": f"ws_{uuid.uuid4().hex}", "status": "completed",
            "action": _action(done)}  # fmt: skip


def _action(done: BuiltinResult) -> dict[str, Any]:
    try:
        args = json.loads(done.call.arguments)
    except ValueError:
        args = {}
    args = args if isinstance(args, dict) else {}
    details = done.result.details or {}
    function = done.call.recipient.partition(".")[2]
    if function == "open":
        return {"type": "open_page", "url": str(details.get("url") or args.get("id", ""))}
    if function == "find":
        pattern = details.get("pattern") or args.get("pattern", "")
        return {"type": "find", "pattern": str(pattern), "url": str(details.get("url", ""))}
    return {"type": "search", "query": str(details.get("query") or args.get("query", ""))}


def citations(browser: Any) -> Any:
    """A Markdown CitationStream over `browser` (url_citation annotations), or None."""
    if browser is None:
        return None
    from ..tools.browser.citations import CitationStream

    return CitationStream(browser, style="markdown")
