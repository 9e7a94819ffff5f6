"""`gptoss tools browser search|open|find`: what the model's browser would read, to check a search
backend and the page rendering."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from .options import ModelOpt, SearchOpt

browser_app = typer.Typer(
    name="browser",
    help="Search, open and find as the model's browser would; prints exactly what it reads.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

LocOpt = Annotated[
    int | None,
    typer.Option("--loc", help="First line to show (default: the top).", show_default=False),
]
NumLinesOpt = Annotated[
    int | None,
    typer.Option(
        "--num-lines", help="Lines to show (default: a ~1,024-token window).", show_default=False
    ),
]


def _encoding(model: str) -> Any:
    """The harmony encoding of a model already on disk (for exact token windows), or None."""
    from .. import harmony
    from ..hub.cache import cached_snapshot, repo_id_for

    try:
        path = Path(model).expanduser()
        if not path.is_dir():
            repo = repo_id_for(model)
            path = cached_snapshot(repo) if repo else None
        return harmony.encoding_for_model(path) if path is not None else None
    except Exception:  # no usable tokenizer files: fall back to the estimate
        return None


def _browser(model: str | None, search: str | None) -> Any:
    from ..session.tool_setup import browser_tool
    from .tools import _settings

    settings = _settings(model=model, search=search)
    encoding = _encoding(settings.model)
    if encoding is None:
        print(
            f"gptoss: note: no local model {settings.model!r} for the tokenizer; the page window "
            "is estimated (~4 characters a token); give -m MODEL for the exact one",
            file=sys.stderr,
        )
    return browser_tool(settings, encoding)


def _show(tool: Any, function: str, args: dict[str, Any]) -> bool:
    """Call `function` and print what the model would read; True if it was an error."""
    from ..session.tool_loop import run_cancellable

    result = run_cancellable(tool, function, json.dumps(args), threading.Event())
    print(result.text.rstrip("\n"))
    return result.error


def _args(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


@browser_app.command("search")
def search_cmd(
    query: Annotated[str, typer.Argument(help="What to search for.")],
    search: SearchOpt = None,
    model: ModelOpt = None,
) -> None:
    """Search with the configured backend and print the results page the model would read."""
    if _show(_browser(model, search), "search", {"query": query}):
        raise typer.Exit(1)


@browser_app.command("open")
def open_cmd(
    url: Annotated[str, typer.Argument(help="The page to open (http or https).")],
    loc: LocOpt = None,
    num_lines: NumLinesOpt = None,
    model: ModelOpt = None,
) -> None:
    """Open a page and print the numbered window the model would read."""
    if _show(_browser(model, None), "open", _args(id=url, loc=loc, num_lines=num_lines)):
        raise typer.Exit(1)


@browser_app.command("find")
def find_cmd(
    pattern: Annotated[str, typer.Argument(help="Text to find (case-insensitive).")],
    url: Annotated[str, typer.Option("--url", help="The page to search in.")],
    model: ModelOpt = None,
) -> None:
    """Open URL (not shown), then print the find results the model would read."""
    tool = _browser(model, None)
    from ..session.tool_loop import run_cancellable

    opened = run_cancellable(tool, "open", json.dumps({"id": url}), threading.Event())
    if opened.error:
        print(opened.text.rstrip("\n"))
        raise typer.Exit(1)
    if _show(tool, "find", {"pattern": pattern}):
        raise typer.Exit(1)
