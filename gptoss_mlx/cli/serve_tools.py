"""The built-in tools `gptoss serve --python / --browser` gives the Responses API.

Built before the model loads, so a missing sandbox (or a bad search backend setting) is refused
at once with one line. Python is one sandboxed worker for the whole server (working directory
<data dir>/python/serve): its variables persist across requests, as in a chat. The browser is
made per response (its own page stack).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import UserError


def build(settings: Any, browser: bool, *, bwrap: str | None = None) -> dict[str, Any]:
    """namespace -> a shared Tool (python) or a per-response factory (browser), for
    `create_app(builtin_tools=...)`. UserError when python has no sandbox here."""
    tools: dict[str, Any] = {}
    if settings.python:
        tools["python"] = _python(settings, bwrap)
    if browser:
        tools["browser"] = _browser_factory()
    return tools


def _python(settings: Any, bwrap: str | None) -> Any:
    from ..tools.python import PythonTool, SandboxUnavailableError, scratch_dir
    from ..tools.sandbox import require_sandbox

    try:
        require_sandbox(unsafe=settings.python_unsafe, bwrap=bwrap)  # before making any directory
        tool = PythonTool(
            scratch_dir("serve"),
            timeout=settings.python_timeout,
            network=settings.python_network,
            unsafe=settings.python_unsafe,
            bwrap=bwrap,
        )
    except SandboxUnavailableError as err:
        raise UserError(str(err).splitlines()[0]) from None
    if tool.mode == "none":
        print(
            "gptoss serve: warning: --python-unsafe and no sandbox here: code the model writes "
            "runs unsandboxed, without asking, for every client of this server",
            file=sys.stderr,
        )
    return tool


def _browser_factory() -> Callable[[], Any]:
    from ..tools.browser import BrowserTool, make_backend

    env = os.environ
    backend = make_backend(
        env.get("GPTOSS_SEARCH") or None, searxng_url=env.get("GPTOSS_SEARXNG_URL"), env=env
    )
    return lambda: BrowserTool(backend, env=env)
