"""Errors a user can cause. The CLI prints them as one line and exits non-zero.

EXIT_CODES is the one table of exit codes: every code the `gptoss` command can exit with, and
what it means. The README's table is checked against it (tests/test_exit_codes.py).
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; `str(err)` is one line that says what to do."""

    exit_code: int = 1
    # What to do, added to a message that gives no advice of its own (none after a ";").
    advice: str = ""

    def __str__(self) -> str:
        message = super().__str__()
        if self.advice and ";" not in message:
            return f"{message}; {self.advice}"
        return message


class UsageError(UserError):
    """The command line itself is wrong (unknown command or flag, missing argument)."""

    exit_code = 2


class ModelNotFoundError(UserError):
    exit_code = 3
    advice = "`gptoss models` lists the local ones"


class BadCheckpointError(UserError):
    exit_code = 4
    advice = "download or convert the model again"


class ContextFullError(UserError):
    exit_code = 5


class NotEnoughMemoryError(UserError):
    exit_code = 6


class NotEnoughDiskError(UserError):
    exit_code = 7


class DownloadError(UserError):
    exit_code = 8


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops work like Ctrl-C, and `requested` tells loops that would survive a Ctrl-C
    (the chat prompt) to save and leave."""

    requested = False


OK = 0
INTERRUPTED = 130  # Ctrl-C (SIGINT) and SIGTERM alike: the work stopped, nothing half-written kept
INTERNAL = 70  # a bug in gptoss, never a user's mistake

EXIT_CODES: dict[int, str] = {
    OK: "ok",
    UserError.exit_code: "bad input or setting (also a failed `gptoss doctor` check)",
    UsageError.exit_code: "bad usage: unknown command or flag, missing or malformed argument",
    ModelNotFoundError.exit_code: "model not found",
    BadCheckpointError.exit_code: "bad or damaged checkpoint",
    ContextFullError.exit_code: "context full (also a reply cut by the full context)",
    NotEnoughMemoryError.exit_code: "not enough memory",
    NotEnoughDiskError.exit_code: "not enough disk space",
    DownloadError.exit_code: "download failed",
    INTERNAL: "internal error: a bug in gptoss (GPTOSS_DEBUG=1 shows the traceback)",
    INTERRUPTED: "interrupted: Ctrl-C or SIGTERM (partial output removed; downloads resume)",
}


def exit_codes_help() -> str:
    """One line for `--help` epilogs, built from EXIT_CODES."""
    short = {code: text.split(" (")[0].split(":")[0] for code, text in EXIT_CODES.items()}
    return "Exit codes: " + "; ".join(f"{c} {t}" for c, t in sorted(short.items())) + "."


def user_error_classes() -> list[type[UserError]]:
    """UserError and every subclass defined anywhere in the package (for the table's test)."""
    out: list[type[UserError]] = []
    todo: list[type[UserError]] = [UserError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out
