"""ASGI middleware: the bearer key and the request body limit, both answered with OpenAI errors."""

from __future__ import annotations

import hmac
import json
from typing import Any

from .errors import error_body

Scope = dict[str, Any]


async def send_error(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """With a key, every /v1 request needs `Authorization: Bearer KEY` (401 otherwise)."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self.expected is not None and scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send_error(
                    send,
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                    "with the key the server was started with (--api-key)",
                    "invalid_api_key",
                )
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads the request body up front (at most `max_body` bytes; 413 beyond), then hands it on;
    later receives (the client disconnecting) pass straight through."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = f"the request body is larger than the server's limit of {self.max_body} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await send_error(send, 413, too_big, "request_too_large")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await send_error(send, 413, too_big, "request_too_large")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
