"""The tools a chat or run gets from its settings: python, the browser, MCP servers and user
functions.

Builds the `ToolTable` and tells the session what its prompt declares (the python text with
the real timeout and directory, the function specs). No terminal I/O: status lines go to
`on_status`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import harmony
from ..errors import UserError
from ..tools.base import Tool
from .tool_loop import ToolLoop, ToolTable

Status = Callable[[str], None]


def preflight(settings: Any) -> None:
    """Refuse bad tool settings before the model loads: no sandbox for --python, an unreadable
    --mcp or --tools file (each a one-line UserError)."""
    if settings.python and not settings.python_unsafe:
        from ..tools.sandbox import require_sandbox

        require_sandbox(unsafe=False)
    if settings.mcp:
        from ..tools.mcp_config import load_mcp_config

        load_mcp_config(Path(settings.mcp))
    if settings.browser:
        search_backend(settings)


def python_tool(settings: Any, chat_id: str) -> Tool:
    """The sandboxed python tool for one chat; UserError (one line, with the fix) if no sandbox
    can be set up and --python-unsafe was not given."""
    try:
        from ..tools.python import PythonTool, SandboxUnavailableError, scratch_dir
    except ImportError as err:
        raise UserError(f"this gptoss has no python tool ({err}); reinstall gptoss-mlx") from err
    try:
        return PythonTool(
            scratch_dir(chat_id),
            timeout=settings.python_timeout,
            network=settings.python_network,
            unsafe=settings.python_unsafe,
        )
    except SandboxUnavailableError as err:
        if isinstance(err, UserError):
            raise
        raise UserError(str(err)) from err


def search_backend(settings: Any) -> Any:  # -> tools.browser.SearchBackend
    """The search backend `--search`/GPTOSS_SEARCH names, or the first configured (SearXNG URL,
    BRAVE_API_KEY, EXA_API_KEY), else DuckDuckGo; UserError (one line, naming the source)."""
    from ..settings import origin
    from ..tools.browser import make_backend

    try:
        return make_backend(settings.search, searxng_url=settings.searxng_url, env=os.environ)
    except UserError as err:
        if settings.search is None:
            raise
        raise UserError(
            f"{err} (search {settings.search} from {origin(settings, 'search')})"
        ) from None


def browser_tool(settings: Any, encoding: Any = None) -> Tool:
    """A fresh browser for one chat (its own page stack and cookies); `encoding` (the session's
    harmony encoding) makes its ~1,024-token page windows exact."""
    from ..tools.browser import BrowserTool, Fetcher

    return BrowserTool(search_backend(settings), fetcher=Fetcher.from_env(), encoding=encoding)


def offline_note(table: ToolTable) -> str | None:
    """The one-line hint for the user when the browser is on but the machine is offline."""
    browser = table.tools.get("browser")
    if browser is None or not getattr(getattr(browser, "fetcher", None), "offline", False):
        return None
    return (
        "browser: offline (GPTOSS_OFFLINE or HF_HUB_OFFLINE is set); "
        "the model is told the web is unavailable"
    )


def mcp_tools(settings: Any, on_status: Status | None = None) -> Tool | None:
    """The MCP servers of --mcp FILE (or the default mcp.json when it exists), or None."""
    try:
        from ..tools.mcp_config import load_mcp_config
    except ImportError as err:
        if settings.mcp:
            raise UserError(
                f"this gptoss has no MCP support ({err}); reinstall gptoss-mlx"
            ) from err
        return None
    configs = load_mcp_config(Path(settings.mcp) if settings.mcp else None)
    if not configs:
        return None
    from ..tools.mcp import McpTools

    return McpTools(configs, on_status=on_status or (lambda line: None))


def build_table(
    settings: Any,
    user_functions: Sequence[harmony.ToolSpec] = (),
    *,
    chat_id: str,
    on_status: Status | None = None,
    mcp: bool = True,
    encoding: Any = None,
) -> ToolTable:
    tools: list[Tool] = []
    if settings.python:
        tools.append(python_tool(settings, chat_id))
    if settings.browser:
        tools.append(browser_tool(settings, encoding))
    if mcp:
        servers = mcp_tools(settings, on_status)
        if servers is not None:
            tools.append(servers)
    return ToolTable(tools, user_functions=user_functions)


def declare(session: Any, table: ToolTable) -> None:
    """Make the session's prompt declare exactly the tools in `table`."""
    python = table.tools.get("python")
    session.settings.python_tool = python is not None
    describe = getattr(python, "instruction", None)
    session.settings.python_description = describe() if callable(describe) else None
    session.settings.browser_tool = "browser" in table.tools
    session.settings.tools = table.function_specs()


def open_loop(
    session: Any,
    settings: Any,
    user_functions: Sequence[harmony.ToolSpec] = (),
    *,
    chat_id: str,
    on_status: Status | None = None,
    **loop_options: Any,
) -> ToolLoop:
    """The tool loop for `session` with every tool `settings` asks for, declared in its prompt."""
    table = build_table(
        settings,
        user_functions,
        chat_id=chat_id,
        on_status=on_status,
        encoding=getattr(session, "encoding", None),
    )
    declare(session, table)
    return ToolLoop(
        session,
        table,
        max_calls=settings.max_tool_calls,
        approve_all=settings.yes,
        **loop_options,
    )


def close_tools(table: ToolTable) -> None:
    """Stop every tool's processes and connections (at the end of a chat or run)."""
    for tool in list(table.tools.values()):
        with contextlib.suppress(Exception):  # best effort: never mask what ended the chat
            tool.close()
