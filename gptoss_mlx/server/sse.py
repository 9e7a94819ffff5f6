"""Server-sent events framing for the two APIs."""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def data_event(payload: Any) -> str:
    """Chat Completions: `data: {json}` (the stream ends with `data: [DONE]`)."""
    return f"data: {_dumps(payload)}\n\n"


DONE = "data: [DONE]\n\n"


class TypedEvents:
    """Responses: `event: {type}` plus `data: {json}` with an increasing `sequence_number`."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, type_: str, **fields: Any) -> str:
        payload = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {type_}\ndata: {_dumps(payload)}\n\n"
