"""`store` and `previous_response_id`: recent responses' conversations, in memory and bounded."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .errors import ApiError


class ResponseStore:
    def __init__(self, max_responses: int = 256) -> None:
        self.max_responses = max_responses
        self._items: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, response_id: str, items: list[dict[str, Any]]) -> None:
        """Keep the conversation up to and including a response (its input and output items)."""
        with self._lock:
            self._items[response_id] = items
            while len(self._items) > self.max_responses:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> list[dict[str, Any]]:
        with self._lock:
            items = self._items.get(response_id)
            if items is not None:
                self._items.move_to_end(response_id)
        if items is None:
            raise ApiError(
                404,
                f"previous response {response_id!r} is not stored here (it expired, the server "
                "restarted, or it was created with store=false); send the whole input instead",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return list(items)
