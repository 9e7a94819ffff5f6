"""Commands of `gptoss` registered by this module (imports of heavy modules stay inside commands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
