"""MCP servers as gpt-oss function tools: each server's tool `t` becomes `functions.<server>__<t>`.

Names are cleaned to what harmony's TypeScript-like function namespace accepts, the way ollama
does it (ollama/ollama:harmony/harmonyparser.go `convertToValidChars`), with a reverse map to the
real server and tool names. Servers start on first use and run until `close()`; one that fails to
start or dies is reported in one line through `on_status` and the others keep working.
"""

from __future__ import annotations

import base64
import json
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gptoss_mlx import harmony

from .base import Tool, ToolResult
from .mcp_config import McpServerConfig
from .mcp_servers import CallCancelled, CallFailed, McpConnections, ServerDown, ServerHandle

MAX_OUTPUT_CHARS = 16_000  # what the model reads of one result; head and tail are kept


@dataclass(frozen=True)
class _Function:
    server: ServerHandle
    tool: Any  # mcp_types.Tool


class McpTools(Tool):
    """The `functions` namespace filled from MCP servers.

    `on_status` gets one line per server that fails to start or dies. It is only ever called on
    the thread that calls `specs`, `call`, `describe` or `close` (never from the background loop).
    """

    name = "functions"
    needs_approval = True

    def __init__(
        self,
        configs: list[McpServerConfig],
        *,
        call_timeout: float = 60.0,
        start_timeout: float = 30.0,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self._configs = list(configs)
        self._call_timeout = call_timeout
        self._on_status = on_status
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self._conns = McpConnections(
            self._configs, start_timeout=start_timeout, report=self._queue_status
        )
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._functions: dict[str, _Function] = {}

    # -- what the model sees

    def specs(self) -> list[harmony.ToolSpec]:
        """Every tool of every running server, as harmony function specs (in config order)."""
        self._ensure_started()
        specs = [
            harmony.ToolSpec(name, _description(f.tool), _schema(f.tool))
            for name, f in self._functions.items()
            if f.server.up
        ]
        self._flush_status()
        return specs

    def describe(self) -> list[tuple[str, str]]:
        """(model-visible name, one-line description) of every running tool, for `tools list`."""
        return [(s.name, s.description.strip().split("\n")[0]) for s in self.specs()]

    def approved(self, function: str) -> bool:
        """True when the server's config lists the tool (its real name) in autoApprove or
        alwaysAllow."""
        self._ensure_started()
        f = self._functions.get(function)
        return f is not None and f.tool.name in f.server.config.auto_approve

    def resolve(self, function: str) -> tuple[str, str] | None:
        """The real (server name, tool name) behind a model-visible function name."""
        self._ensure_started()
        f = self._functions.get(function)
        return (f.server.config.name, f.tool.name) if f else None

    # -- calling

    def call(
        self, function: str, arguments: str, *, cancel: threading.Event | None = None
    ) -> ToolResult:
        self._ensure_started()
        try:
            return self._call(function, arguments, cancel)
        finally:
            self._flush_status()

    def _call(self, function: str, arguments: str, cancel: threading.Event | None) -> ToolResult:
        f = self._functions.get(function)
        if f is None:
            available = [n for n, g in self._functions.items() if g.server.up]
            return _error(f"Unknown function: {function}", available=available)
        args = _parse_arguments(arguments)
        if isinstance(args, str):
            return _error(f"Invalid function arguments: {args}", parameters=_schema(f.tool))
        server = f.server.config.name
        details = {"server": server, "tool": f.tool.name, "arguments": args}
        try:
            result = self._conns.call(
                f.server, f.tool.name, args, timeout=self._call_timeout, cancel=cancel
            )
        except ServerDown as exc:
            text = f"Error: the MCP server '{server}' is not running ({exc}); its tools are gone."
            return ToolResult(text, error=True, summary=f"{server} is down", details=details)
        except TimeoutError:
            text = f"Error: {function} did not answer within {self._call_timeout:g} s."
            return ToolResult(text, error=True, summary="timed out", details=details)
        except CallCancelled:
            return ToolResult("Error: the call was cancelled.", error=True, summary="cancelled")
        except CallFailed as exc:
            return ToolResult(f"Error: {exc}", error=True, summary="failed", details=details)
        text = _result_text(result)
        return ToolResult(
            text, error=bool(result.is_error), summary=_summary(text), details=details
        )

    # -- lifetime

    def close(self) -> None:
        """Stop every server; their child processes are gone when this returns."""
        with self._start_lock:
            self._closed = True
            self._conns.close()
        self._flush_status()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._started = True
            self._conns.start()
            self._functions = _name_functions(self._conns.servers)
        self._flush_status()

    def _queue_status(self, line: str) -> None:
        with self._pending_lock:
            self._pending.append(line)

    def _flush_status(self) -> None:
        with self._pending_lock:
            lines, self._pending = self._pending, []
        if self._on_status is not None:
            for line in lines:
                self._on_status(line)


def clean_name(name: str) -> str:
    """`name` as a TypeScript identifier harmony accepts: space, `-` and `.` become `_`; letters,
    digits, `_` and `$` stay; the rest goes; a leading digit gets a `_` in front."""
    out = []
    for ch in name:
        if ch in " -.":
            out.append("_")
        elif ch in "_$" or ch.isalpha() or _is_digit(ch):
            out.append(ch)
    cleaned = "".join(out) or "unnamed"
    return "_" + cleaned if _is_digit(cleaned[0]) else cleaned


def _is_digit(ch: str) -> bool:
    return unicodedata.category(ch) == "Nd"


def _name_functions(servers: list[ServerHandle]) -> dict[str, _Function]:
    functions: dict[str, _Function] = {}
    for srv in servers:
        for tool in srv.tools:
            base = f"{clean_name(srv.config.name)}__{clean_name(tool.name)}"
            name, n = base, 2
            while name in functions:
                name, n = f"{base}_{n}", n + 1
            functions[name] = _Function(srv, tool)
    return functions


def _description(tool: Any) -> str:
    return (tool.description or getattr(tool, "title", None) or "").strip()


def _schema(tool: Any) -> dict[str, Any]:
    schema = tool.input_schema
    return (
        clean_schema(schema) if isinstance(schema, dict) else {"type": "object", "properties": {}}
    )


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_LITERALS = ("default", "enum", "const", "examples")


def clean_schema(schema: Any) -> Any:
    """`schema` without `title` keywords: harmony renders each as a comment, and the titles
    pydantic-based servers generate ("A", "City", "addArguments") only restate the names."""
    if isinstance(schema, list):
        return [clean_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: clean_schema(sub) for name, sub in value.items()}
        else:
            out[key] = value if key in _LITERALS else clean_schema(value)
    return out


def _parse_arguments(text: str) -> dict[str, Any] | str:
    """The arguments object, or (as a str) what is wrong with the text."""
    if not text.strip():
        return {}  # the model writes nothing for a function without parameters
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    return value


def _error(message: str, **extra: Any) -> ToolResult:
    body = {"error": message, **extra}
    return ToolResult(json.dumps(body, ensure_ascii=False), error=True, summary=message[:80])


def _result_text(result: Any) -> str:
    """The result as the model reads it: text blocks joined, others described, errors marked."""
    parts = [_block_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts) if parts else "(no output)"
    if result.is_error:
        text = "Error: " + text
    return _cap(text, MAX_OUTPUT_CHARS)


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return block.text
    if kind in ("image", "audio"):
        return f"[{kind}: {block.mime_type}, {_b64_size(block.data)} bytes]"
    if kind == "resource":
        res = block.resource
        if hasattr(res, "text"):
            return f"[resource: {res.uri}]\n{res.text}"
        mime = res.mime_type or "application/octet-stream"
        return f"[resource: {res.uri}, {mime}, {_b64_size(res.blob)} bytes]"
    if kind == "resource_link":
        return f"[resource link: {block.name} {block.uri}]"
    return f"[{kind or 'unknown'} content]"


def _b64_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except ValueError:
        return len(data) * 3 // 4


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head, tail = limit * 3 // 4, limit // 4
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[-tail:]}"


def _summary(text: str) -> str:
    line = text.strip().split("\n")[0] if text.strip() else ""
    return line if len(line) <= 80 else line[:77] + "..."
