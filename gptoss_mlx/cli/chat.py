"""`gptoss chat`: the interactive REPL, resuming and listing saved chats."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UserError
from .options import (
    BrowserOpt,
    ContextOpt,
    DtypeOpt,
    EffortOpt,
    ForceOpt,
    InstructionsOpt,
    MaxTokensOpt,
    MaxToolCallsOpt,
    McpOpt,
    MinPOpt,
    ModelOpt,
    PythonNetworkOpt,
    PythonOpt,
    PythonTimeoutOpt,
    PythonUnsafeOpt,
    SearchOpt,
    SeedOpt,
    TemperatureOpt,
    ToolsFileOpt,
    TopKOpt,
    TopPOpt,
    YesOpt,
    settings_from,
)


class LaunchedChatError(UserError):
    """`gptoss chat` started by mlx.launch: no terminal, stdin broadcast to every rank."""

    exit_code = 2


def refuse_under_launch() -> None:
    """Rank 0 says why in one line and exits 2; the other ranks leave quietly with 0 (a non-zero
    exit would make mlx.launch kill rank 0, maybe before it has said why)."""
    from ..backend.distributed import launched

    if not launched():
        return
    if os.environ.get("MLX_RANK") != "0":
        raise typer.Exit(0)
    raise LaunchedChatError(
        "gptoss chat does not run under mlx.launch; start the ranks with "
        "`gptoss serve --hostfile hosts.json`, then `gptoss chat --server http://HOST:8000/v1`"
    )


def chat_cmd(
    chat: Annotated[
        str | None,
        typer.Argument(
            help="With --resume: a chat id (or its start) or a chat file; default the latest.",
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    effort: EffortOpt = None,
    instructions: InstructionsOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    context: ContextOpt = None,
    dtype: DtypeOpt = None,
    yes: YesOpt = False,
    force: ForceOpt = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", "-r", help="Resume the latest saved chat, or the one named by CHAT."
        ),
    ] = False,
    list_chats: Annotated[
        bool, typer.Option("--list", "-l", help="List saved chats and exit.")
    ] = False,
    reasoning: Annotated[
        str | None,
        typer.Option(
            "--reasoning",
            help="Show the reasoning: collapse (default), show or hide.",
            show_default=False,
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Chat with a running `gptoss serve` (or any OpenAI-compatible server) at URL.",
            show_default=False,
        ),
    ] = None,
    tools: ToolsFileOpt = None,
    python: PythonOpt = False,
    python_timeout: PythonTimeoutOpt = None,
    python_network: PythonNetworkOpt = False,
    python_unsafe: PythonUnsafeOpt = False,
    max_tool_calls: MaxToolCallsOpt = None,
    mcp: McpOpt = None,
    browser: BrowserOpt = False,
    search: SearchOpt = None,
) -> None:
    """Chat with a model. Type /help inside for commands; Ctrl-C stops a reply, Ctrl-D exits."""
    from ..session import store as chatstore
    from ..ui.render import REASONING_MODES

    refuse_under_launch()
    if list_chats:
        print_chat_list(chatstore.list_chats())
        return
    if chat and not resume:
        raise UserError(f"to resume chat {chat!r}, run: gptoss chat --resume {chat}")
    if reasoning is not None and reasoning not in REASONING_MODES:
        raise UserError(f"--reasoning must be collapse, show or hide, not {reasoning!r}")
    settings = settings_from(locals())
    record = chatstore.read(chatstore.find(chat)) if resume else None
    model_dir = (
        _saved_model(record)
        if record is not None and settings.sources.get("model") != "flag"
        else None
    )

    session = _open_session(settings, server, model, model_dir)
    saver = chatstore.Autosaver()
    if record is not None:
        chatstore.apply_record(session, record)
        _reapply_flags(session, settings)
        saver.adopt(record)

    from ..paths import state_dir
    from ..ui.repl import Repl
    from .tools import chat_loop, run_chat

    loop = chat_loop(session, settings, saver.id, lambda line: repl.renderer.warn(line))
    repl = Repl(
        session,
        history=state_dir() / "history",
        saver=saver,
        reasoning=reasoning or "collapse",
        model_name=_model_name(session, settings.model),
        lines=None if sys.stdin.isatty() else sys.stdin,
        loop=loop,
    )
    if record is not None:
        turns = sum(1 for m in session.messages if m.role == "user")
        repl.note_fork()
        repl.renderer.info(f"resumed chat {saver.id} ({turns} turn{'s' if turns != 1 else ''})")
        repl.renderer.recap(session.messages)
    if not run_chat(repl, settings, saver.id):
        raise typer.Exit(UserError.exit_code)  # scripts must not take a lost chat for a kept one


def _open_session(settings: Any, server: str | None, model: str | None, model_dir: Any) -> Any:
    """The chat's session: over HTTP with --server, else the model (a resumed chat's own model
    unless -m says otherwise), after the tools' preflight checks."""
    from ..session.open import open_session
    from ..session.tool_setup import preflight
    from .resolve import model_path
    from .run import note_slow_start

    if server and (settings.python or settings.browser or settings.mcp or settings.tools):
        raise UserError(
            "tools run where the model runs: start the server with them instead of "
            "`chat --server` (tools over --server are not supported yet)"
        )
    preflight(settings)
    if server:
        from ..model.config import MAX_CONTEXT
        from ..session.open import session_settings
        from ..session.remote import RemoteSession

        session = RemoteSession(
            server, model=model or "", settings=session_settings(settings, MAX_CONTEXT)
        )
    else:
        path = model_dir or model_path(
            settings.model, yes=settings.yes, interactive=sys.stdin.isatty()
        )
        session = open_session(
            settings, path, on_warning=lambda text: print(f"warning: {text}", file=sys.stderr)
        )
    note_slow_start()
    return session


def _saved_model(record: dict[str, Any]) -> Path | None:
    saved = record.get("model")
    if not saved:
        return None
    if not Path(saved).is_dir():
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError(
            f"chat {record.get('id', '')} was with the model at {saved}, which is gone;"
            " continue it with another one: gptoss chat --resume -m MODEL"
        )
    return Path(saved)


def _reapply_flags(session: Any, settings: Any) -> None:
    """Options given on the command line win over those stored in the resumed chat."""
    from ..model.sampling import SAMPLER_KEYS
    from ..session.chat import RESTORED_SETTINGS

    for key in (*RESTORED_SETTINGS, *SAMPLER_KEYS):
        if key == "date" or settings.sources.get(key) != "flag":
            continue
        target = session.settings.sampler if key in SAMPLER_KEYS else session.settings
        setattr(target, key, getattr(settings, key))


def _model_name(session: Any, requested: str) -> str:
    path = getattr(session, "model_path", None)
    return Path(path).name if path else requested


def print_chat_list(chats: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..session.store import chats_dir

    console = Console()
    if not chats:
        console.print(f"no saved chats yet (they are kept in {chats_dir()})", soft_wrap=True)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    rows = [(c.id, _when(c.updated), str(c.turns), c.first_line) for c in chats]

    def widest(i: int, title: str) -> int:
        return max(len(title), *(len(r[i]) for r in rows))

    # Ids, dates and counts keep their full width at any terminal width (a pipe too); only the
    # first message is cut to fit.
    table.add_column("ID", no_wrap=True, min_width=widest(0, "ID"))
    table.add_column("UPDATED", no_wrap=True, min_width=widest(1, "UPDATED"))
    table.add_column("TURNS", justify="right", no_wrap=True, min_width=widest(2, "TURNS"))
    table.add_column("FIRST MESSAGE", overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    # A table never squeezes a column below its content: rich would cut the id instead. Wider
    # than the terminal, lines wrap there, whole.
    fixed = sum(widest(i, t) for i, t in enumerate(("ID", "UPDATED", "TURNS"))) + 3 * 2 + 12
    if console.width < fixed:
        console = Console(width=fixed)
    console.print(table)


def _when(stamp: str) -> str:
    try:
        return _dt.datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
