"""The `gptoss` command. Heavy modules (mlx, mlx-lm, huggingface_hub) are imported inside commands."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

import typer

from .. import __version__
from ..errors import INTERNAL, INTERRUPTED, Terminated, UsageError, UserError

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
    from . import bench as cli_bench
    from . import chat as cli_chat
    from . import convert as cli_engine
    from . import distributed as cli_distributed
    from . import doctor as cli_doctor
    from . import models as cli_models
    from . import serve as cli_serve
    from . import tools as cli_tools

    for module in (
        cli_engine,
        cli_chat,
        cli_models,
        cli_doctor,
        cli_distributed,
        cli_serve,
        cli_tools,
        cli_bench,
    ):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit; GPTOSS_DEBUG=1 shows
    tracebacks. Every code returned here is in errors.EXIT_CODES."""
    debug = os.environ.get("GPTOSS_DEBUG", "") not in ("", "0")
    if not (sys.argv[1:] if argv is None else argv):
        return _bare()
    previous = _terminate_as_interrupt()
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="gptoss")
    except UserError as e:
        if debug:
            raise
        print(f"gptoss: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("gptoss: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        code = _click_exit(e)
        if code is not None:
            return code
        if debug:
            raise
        print(
            f"gptoss: internal error: {type(e).__name__}: {e} (set GPTOSS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return INTERNAL
    finally:
        signal.signal(signal.SIGTERM, previous)
    # standalone_mode=False hands back typer.Exit's code (e.g. a failed doctor check) as the result;
    # typer turns a KeyboardInterrupt (Ctrl-C, SIGTERM) into Exit(130) itself.
    code = rc if isinstance(rc, int) else 0
    if code == INTERRUPTED:
        print("gptoss: interrupted", file=sys.stderr)
    return code


def _bare() -> int:
    """A bare `gptoss`: the help on stderr and the usage-error code, with every typer/click version
    (click 8.1 exits 0 with the help on stdout, 8.2+ exits 2 with it on stderr)."""
    command = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="gptoss", **app.info.context_settings)
    print(command.get_help(ctx), file=sys.stderr)
    return UsageError.exit_code


def _raise_interrupt(signum: int, frame: object) -> None:
    Terminated.requested = True
    raise Terminated


def _terminate_as_interrupt() -> Any:
    """SIGTERM stops long work the way Ctrl-C does: partial output removed, exit 130."""
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _click_exit(e: Exception) -> int | None:
    """The exit code for click's exceptions, from click itself or the copy typer 0.26+ vendors
    (matched by class name, since the two copies share no classes); None for anything else."""
    names = {c.__name__ for c in type(e).__mro__}
    code = getattr(e, "exit_code", None)
    if "Abort" in names:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, KeyboardInterrupt):
            print("gptoss: interrupted", file=sys.stderr)
            return INTERRUPTED
        print("gptoss: aborted", file=sys.stderr)
        return UserError.exit_code
    if "Exit" in names and isinstance(code, int):
        return code
    if "ClickException" not in names or not isinstance(code, int):
        return None
    if "NoArgsIsHelpError" in names:  # a bare `gptoss`: the help, and the usage-error code
        print(str(e).rstrip(), file=sys.stderr)
        return UsageError.exit_code
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    message = " ".join(message.split())
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", None) or "gptoss"
    hint = f" (see `{path} --help`)" if "UsageError" in names else ""
    print(f"gptoss: error: {message}{hint}", file=sys.stderr)
    return code
