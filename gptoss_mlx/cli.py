"""The `gptoss` command. Heavy modules (mlx, mlx-lm, huggingface_hub) are imported inside commands."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from . import __version__
from .errors import UserError

app = typer.Typer(
    name="gptoss",
    help="Run OpenAI's gpt-oss models locally with MLX.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs ~0.1 s of imports, and `gptoss --help` must be instant.
    rich_markup_mode=None,
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gptoss {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Run OpenAI's gpt-oss models locally with MLX."""


def _register() -> None:
    from . import cli_chat, cli_engine, cli_models, cli_tools

    for module in (cli_engine, cli_chat, cli_models, cli_tools):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit; GPTOSS_DEBUG=1 shows tracebacks."""
    debug = os.environ.get("GPTOSS_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, standalone_mode=False, prog_name="gptoss")
    except UserError as e:
        if debug:
            raise
        print(f"gptoss: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("gptoss: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("gptoss: aborted", file=sys.stderr)
        return 1
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if debug:
            raise
        print(
            f"gptoss: internal error: {type(e).__name__}: {e} (set GPTOSS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70
    return 0
