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
)

# Options shared by `run` and `chat`: one definition, resolved by settings.resolve (flag > env > config > default).
ModelOpt = Annotated[
    str | None,
    typer.Option("-m", "--model", help="Model: 20b, 120b, a hub repo id or a path. Env GPTOSS_MODEL.", show_default=False),
]
EffortOpt = Annotated[
    str | None, typer.Option("--effort", "-e", help="Reasoning effort: low, medium (default) or high.", show_default=False)
]
InstructionsOpt = Annotated[
    str | None, typer.Option("--instructions", "-i", help="Developer instructions (system prompt).", show_default=False)
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", "-t", help="Sampling temperature (default 1.0; 0 = greedy).", show_default=False)
]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling (default 1.0).", show_default=False)]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Keep the k most likely tokens (default 0 = off).", show_default=False)]
MinPOpt = Annotated[float | None, typer.Option("--min-p", help="Drop tokens below min-p x the top probability (default 0).", show_default=False)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed for reproducible sampling.", show_default=False)]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-tokens", "-n", help="Most tokens to generate per reply (default: what the context allows).", show_default=False)]
ContextOpt = Annotated[int | None, typer.Option("--context", "-c", help="Context window cap in tokens (default 131072).", show_default=False)]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="Activation dtype: float32, bfloat16 (default: best for the device).", show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to questions (e.g. download a missing model).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Load even if the memory check says the model does not fit.")]


def settings_from(**flags: object):  # -> settings.Settings
    from .settings import resolve

    flags = {k: v for k, v in flags.items() if v is not None and v is not False}
    return resolve(flags)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gptoss {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Run OpenAI's gpt-oss models locally with MLX."""


def _register() -> None:
    from . import cli_chat, cli_engine, cli_models

    for module in (cli_engine, cli_chat, cli_models):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit; GPTOSS_DEBUG=1 shows tracebacks."""
    debug = os.environ.get("GPTOSS_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, standalone_mode=False)
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
        print(f"gptoss: internal error: {type(e).__name__}: {e} (set GPTOSS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 70
    return 0
