"""Questions asked on the terminal. Lower layers take these as callbacks (`ask=`)."""

from __future__ import annotations

import sys


def confirm(question: str) -> bool:
    """A yes/no question on the terminal; no is the default."""
    from rich.prompt import Confirm

    return Confirm.ask(question, default=False)


def stdin_is_interactive() -> bool:
    """Whether a question can be asked: both ends of the conversation are a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()
