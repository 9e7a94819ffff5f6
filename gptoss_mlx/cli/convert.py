"""`gptoss convert` and `gptoss run` (imports of mlx and friends stay inside the commands)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import exit_codes_help

EXIT_CODES_HELP = exit_codes_help()


def convert_cmd(
    src: Annotated[
        Path, typer.Argument(help="Hugging Face gpt-oss checkpoint directory (as downloaded).")
    ],
    dst: Annotated[Path, typer.Argument(help="Output MLX model directory.")],
    experts: Annotated[
        str,
        typer.Option(help="Experts: mxfp4 (original values, lossless) or q4 (MLX affine 4-bit)."),
    ] = "mxfp4",
    group_size: Annotated[
        int, typer.Option("--group-size", help="Group size for --experts q4: 32 or 64.")
    ] = 32,
    rest: Annotated[
        str, typer.Option(help="Non-expert weights: bf16 or q8 (8-bit affine).")
    ] = "bf16",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace DST if it holds a converted model (never a folder with other files).",
        ),
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip checking the output against the source.")
    ] = False,
) -> None:
    """Convert a Hugging Face gpt-oss checkpoint to an MLX model directory (streams tensor by tensor)."""
    from ..hub.convert import convert
    from ..ui.progress import ConvertBar

    with ConvertBar(sys.stderr.isatty()) as bar:
        report = convert(
            src,
            dst,
            experts=experts,
            group_size=group_size,
            rest=rest,
            force=force,
            verify=not no_verify,
            progress=bar,
        )
    print(report.summary(), file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("convert", epilog=EXIT_CODES_HELP)(convert_cmd)
    from .run import run_cmd

    app.command("run", epilog=EXIT_CODES_HELP)(run_cmd)
