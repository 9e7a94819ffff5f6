"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; `str(err)` is one line that says what to do."""

    exit_code: int = 1


class ModelNotFoundError(UserError):
    exit_code = 3


class BadCheckpointError(UserError):
    exit_code = 4


class ContextFullError(UserError):
    exit_code = 5


class NotEnoughMemoryError(UserError):
    exit_code = 6


class NotEnoughDiskError(UserError):
    exit_code = 7


class DownloadError(UserError):
    exit_code = 8
