"""`-m MODEL` to a model directory, asking and downloading on the terminal when allowed."""

from __future__ import annotations

import sys
from pathlib import Path


def model_path(spec: str, *, yes: bool, interactive: bool) -> Path:
    """Resolve `spec`; a missing hub model is downloaded with progress bars (after a question when
    `interactive`, at once with `yes`), and Ctrl-C during the download exits at once."""
    from ..hub import download as hub
    from ..hub.local import resolve_model
    from ..ui.ask import confirm
    from ..ui.progress import DownloadBars
    from .interrupt import exit_on_interrupt

    def fetch(repo: str) -> Path:
        with exit_on_interrupt():
            return hub.download(repo, progress=DownloadBars())

    return resolve_model(spec, yes=yes, ask=confirm if interactive else None, download=fetch)


def stdio_is_terminal() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()
