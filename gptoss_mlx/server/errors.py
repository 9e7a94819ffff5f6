"""OpenAI-shaped errors: every failure the server reports is `{"error": {message, type, param, code}}`;
and the warnings it logs about what requests ask for."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("gptoss.server")
_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log a warning the first time `key` comes up: a client that sends the same unsupported
    thing with every request (Codex CLI does) gets one line, not one per request."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class ApiError(Exception):
    """An error returned to the client with `status` and an OpenAI error object."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
