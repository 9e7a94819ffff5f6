"""`gptoss chat`: the interactive REPL, resuming and listing saved chats."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_options import (
    ContextOpt,
    DtypeOpt,
    EffortOpt,
    ForceOpt,
    InstructionsOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    SeedOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    YesOpt,
    settings_from,
)
from .errors import UserError

# Settings a saved chat brings back unless given again on the command line.
_CHAT_SETTINGS = (
    "effort",
    "instructions",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
)
_SAMPLER = ("temperature", "top_p", "top_k", "min_p", "seed")


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
) -> None:
    """Chat with a model. Type /help inside for commands; Ctrl-C stops a reply, Ctrl-D exits."""
    from . import chatstore
    from .render import REASONING_MODES

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

    from .engine import open_session

    session = open_session(
        settings,
        interactive=sys.stdin.isatty(),
        path=model_dir,
        on_warning=lambda text: print(f"warning: {text}", file=sys.stderr),
    )
    saver = chatstore.Autosaver()
    if record is not None:
        chatstore.apply_record(session, record)
        _reapply_flags(session, settings)
        saver.adopt(record)

    from .paths import state_dir
    from .repl import Repl

    repl = Repl(
        session,
        history=state_dir() / "history",
        saver=saver,
        reasoning=reasoning or "collapse",
        model_name=_model_name(session, settings.model),
        lines=None if sys.stdin.isatty() else sys.stdin,
    )
    if record is not None:
        turns = sum(1 for m in session.messages if m.role == "user")
        repl.renderer.info(f"resumed chat {saver.id} ({turns} turn{'s' if turns != 1 else ''})")
        repl.renderer.recap(session.messages)
    repl.run()


def _saved_model(record: dict[str, Any]) -> Path | None:
    saved = record.get("model")
    return Path(saved) if saved and Path(saved).is_dir() else None


def _reapply_flags(session: Any, settings: Any) -> None:
    """Options given on the command line win over those stored in the resumed chat."""
    for key in _CHAT_SETTINGS:
        if settings.sources.get(key) != "flag":
            continue
        target = session.settings.sampler if key in _SAMPLER else session.settings
        setattr(target, key, getattr(settings, key))


def _model_name(session: Any, requested: str) -> str:
    path = getattr(session, "model_path", None)
    return Path(path).name if path else requested


def print_chat_list(chats: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from .chatstore import chats_dir

    console = Console()
    if not chats:
        console.print(f"no saved chats yet (they are kept in {chats_dir()})", soft_wrap=True)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("ID", no_wrap=True)
    table.add_column("UPDATED", no_wrap=True)
    table.add_column("TURNS", justify="right")
    table.add_column("FIRST MESSAGE", overflow="ellipsis", no_wrap=True)
    for c in chats:
        table.add_row(c.id, _when(c.updated), str(c.turns), c.first_line)
    console.print(table)


def _when(stamp: str) -> str:
    try:
        return _dt.datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)
