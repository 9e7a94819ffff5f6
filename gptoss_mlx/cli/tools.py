"""`gptoss tools`: see and try what the model gets (list, python, call); tool lines for `run`."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UserError
from .options import McpOpt, PythonNetworkOpt, PythonTimeoutOpt, ToolsFileOpt

NOTE_CHARS = 2000

tools_app = typer.Typer(
    name="tools",
    help="See and try the tools the model gets: python, the browser, MCP servers, functions.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


# ---- what `run --show-reasoning` and `run --json` show of tool calls ----------------------------


def _clip(text: str, n: int = NOTE_CHARS) -> str:
    text = text.rstrip("\n")
    return text if len(text) <= n else text[: n - 1] + "…"


def tool_note(ev: Any) -> str | None:
    """A line (or a few) for stderr about a tool call or its result; None for other events."""
    from .. import harmony
    from ..session.tool_loop import ToolFinished

    if isinstance(ev, harmony.ToolCall):
        return f"[tool call] {ev.recipient}: {_clip(ev.arguments.strip())}"
    if isinstance(ev, ToolFinished):
        status = " (error)" if ev.result.error else ""
        return f"[tool result] {ev.author} · {ev.seconds:.1f} s{status}: {_clip(ev.result.text)}"
    return None


def with_tool_records(data: dict[str, Any], loop: Any) -> dict[str, Any]:
    """`run --json` with every call and its result, and usage summed over the turn's replies."""
    data["tool_calls"] = [r.to_dict() for r in loop.records]
    stats = [s for s in loop.stats if s is not None]
    if len(stats) > 1:
        from ..model.generate import GenerationStats

        total = GenerationStats(
            prompt_tokens=sum(s.prompt_tokens for s in stats),
            generated_tokens=sum(s.generated_tokens for s in stats),
            reasoning_tokens=sum(s.reasoning_tokens for s in stats),
        )
        data["usage"] = {**total.usage(), "replies": len(stats)}
        data["timings"]["total_s"] = round(sum(s.wall_seconds for s in stats), 4)
    return data


def citation_stream(loop: Any, style: str) -> Any:
    """A CitationStream over the loop's browser pages (`markdown` or `footnotes`), or None
    when the browser is off."""
    browser = loop.table.tools.get("browser") if loop is not None else None
    if browser is None:
        return None
    from ..tools.browser import CitationStream

    return CitationStream(browser, style=style)


def with_citations(data: dict[str, Any], loop: Any) -> dict[str, Any]:
    """`run --json` with the final answer's citations as Markdown links and `url_citation`
    annotations (start/end indices into the new `final`)."""
    browser = loop.table.tools.get("browser") if loop is not None else None
    if browser is not None:
        from ..tools.browser import normalize_citations

        data["final"], data["annotations"] = normalize_citations(data["final"], browser)
    return data


# ---- gptoss chat ---------------------------------------------------------------------------------


def chat_loop(session: Any, settings: Any, chat_id: str, on_status: Any) -> Any:
    """The chat's tool loop with every tool its settings ask for (approval is the REPL's)."""
    from ..session.tool_setup import open_loop

    return open_loop(
        session, settings, _user_functions(settings.tools), chat_id=chat_id, on_status=on_status
    )


def run_chat(repl: Any, settings: Any, chat_id: str) -> bool:
    """Run the REPL; `/tools python on` can start python; every tool is closed at the end.
    False when the chat could not be saved (Repl.run)."""
    from ..session.tool_setup import browser_tool, close_tools, python_tool

    repl.tools.factories["python"] = lambda: python_tool(settings, chat_id)
    repl.tools.factories["browser"] = lambda: browser_tool(settings, repl.session.encoding)
    try:
        return repl.run()
    finally:
        close_tools(repl.loop.table)
        for tool in repl.tools.off.values():
            tool.close()


# ---- gptoss tools ... -----------------------------------------------------------------------------


def _settings(**given: Any) -> Any:
    from ..settings import resolve

    return resolve({k: v for k, v in given.items() if v is not None and v is not False})


def _user_functions(path: str | None) -> list[Any]:
    from .run import read_tools

    return read_tools(Path(path)) if path else []


def _status(line: str) -> None:
    print(f"gptoss: {line}", file=sys.stderr)


@tools_app.command("list")
def list_cmd(
    mcp: McpOpt = None,
    tools: ToolsFileOpt = None,
) -> None:
    """One tool per line: the name the model sees, then what it does."""
    from ..session.tool_loop import ToolTable
    from ..session.tool_setup import close_tools, mcp_tools

    settings = _settings(mcp=mcp, tools=tools)
    servers = mcp_tools(settings, _status)
    table = ToolTable([servers] if servers else [], _user_functions(settings.tools))
    try:
        print(f"python\t{_python_line()}")
        print(
            "browser\tsearches and reads the web, read-only (--browser; try: gptoss tools browser)"
        )
        for spec in table.function_specs():
            first = (spec.description or "").strip().splitlines()
            print(f"functions.{spec.name}\t{first[0] if first else ''}")
    finally:
        close_tools(table)


def _sandbox() -> tuple[str, str]:
    """(mode, one line): "bubblewrap", "sandbox-exec" or "none" with the reason and the fix."""
    try:
        from ..tools.sandbox import sandbox_status
    except ImportError:
        return "none", "no python sandbox support in this build; reinstall gptoss-mlx"
    return sandbox_status()


def _python_line() -> str:
    mode, line = _sandbox()
    where = "in a sandbox" if mode != "none" else "only with --python-unsafe"
    return f"runs Python statefully {where} (--python): {line}"


@tools_app.command("python")
def python_cmd(
    code: Annotated[
        list[str],
        typer.Option("-c", "--code", help="Code to run; several -c share one session."),
    ],
    python_timeout: PythonTimeoutOpt = None,
    python_network: PythonNetworkOpt = False,
) -> None:
    """Run code exactly as the model's python tool would and print what the model would read."""
    from ..session.store import new_id
    from ..session.tool_loop import run_cancellable
    from ..session.tool_setup import python_tool

    settings = _settings(python_timeout=python_timeout, python_network=python_network)
    tool = python_tool(settings, f"tools-{new_id()}")
    failed = False
    try:
        for i, source in enumerate(code):
            if len(code) > 1:
                print(f"--- [{i + 1}]")
            result = run_cancellable(tool, "", source, threading.Event())
            print(result.text.rstrip("\n"))
            failed = failed or result.error
    finally:
        tool.close()
        shutil.rmtree(getattr(tool, "workdir", ""), ignore_errors=True)  # a throwaway session
    if failed:
        raise typer.Exit(1)


@tools_app.command("call")
def call_cmd(
    name: Annotated[str, typer.Argument(help="The function, e.g. files__read_file or python.")],
    arguments: Annotated[str, typer.Argument(help="Its arguments: JSON (code for python).")] = "{}",
    mcp: McpOpt = None,
    tools: ToolsFileOpt = None,
) -> None:
    """Call a function or MCP tool as the model would and print the result it would read."""
    from ..session.tool_loop import run_cancellable
    from ..session.tool_setup import build_table, close_tools
    from ..tools.arguments import parse_arguments

    settings = _settings(mcp=mcp, tools=tools, python=name.removeprefix("functions.") == "python")
    table = build_table(settings, _user_functions(settings.tools), chat_id="tools-call")
    try:
        route = table.route(name) or table.route(f"functions.{name}")
        if route is None:
            known = ", ".join(table.names()) or "none (give --mcp FILE or --tools FILE)"
            raise UserError(f"no tool {name!r}; the model can call: {known}")
        if route.tool is None:
            raise UserError(
                f"{route.author} comes from --tools and has no executor: the user answers it"
            )
        if route.spec is not None:
            _, problem = parse_arguments(arguments, route.spec.parameters)
            if problem is not None:
                raise UserError(f"bad arguments for {route.author}: {problem}")
        result = run_cancellable(route.tool, route.function, arguments, threading.Event())
    finally:
        close_tools(table)
    print(result.text.rstrip("\n"))
    if result.error:
        raise typer.Exit(1)


def check_sandbox() -> list[Any]:
    """The `gptoss doctor` row: which python sandbox `--python` would use."""
    from .doctor import Check

    mode, line = _sandbox()
    return [Check("python sandbox", "warn" if mode == "none" else "ok", line)]


def check_search() -> list[Any]:
    """The `gptoss doctor` row: the search backend `--browser` would use."""
    from ..session.tool_setup import search_backend
    from ..tools.browser import is_offline
    from .doctor import Check

    try:
        backend = search_backend(_settings())
    except UserError as err:
        return [Check("search backend", "warn", str(err))]
    if is_offline():
        return [
            Check(
                "search backend",
                "warn",
                f"{backend.label}, but offline (GPTOSS_OFFLINE or HF_HUB_OFFLINE)",
            )
        ]
    return [Check("search backend", "ok", f"{backend.label} (--search or GPTOSS_SEARCH to change)")]


def register(app: typer.Typer) -> None:
    from . import doctor as cli_doctor
    from .tools_browser import browser_app

    if not any(group.name == "browser" for group in tools_app.registered_groups):
        tools_app.add_typer(browser_app, name="browser")
    app.add_typer(tools_app, name="tools")
    for check in (check_sandbox, check_search):
        if check not in cli_doctor.DOCTOR_CHECKS:
            cli_doctor.DOCTOR_CHECKS.append(check)
