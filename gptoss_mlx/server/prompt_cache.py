"""Prefix reuse across requests: the KV caches of recent conversations, an LRU bounded in bytes.

An entry is what a chat session holds after a reply: the caches, the token ids they hold and the
snapshots the session took (end of prefill, message boundaries). A request whose prompt starts
with an entry's last prompt continues that conversation (a follow-up, a tool result, a retry):
it takes the entry, the session restores the latest snapshot before the point where the prompt
diverges (the dropped reasoning of the previous reply) and prefills only the new tokens. Another
conversation never takes an entry it merely shares the system header with, so concurrent clients
do not destroy each other's caches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from .. import harmony


@dataclass
class CacheEntry:
    cache: list
    tokens: list[int]
    snapshots: list
    prompt_len: int  # the length of the prompt this entry last answered
    nbytes: int = field(default=0)


def entry_bytes(cache: list, snapshots: list) -> int:
    """Bytes an entry keeps alive: the caches as allocated plus the arrays its snapshots hold."""
    total = sum(int(getattr(c, "allocated_bytes", 0) or 0) for c in cache)
    for snap in snapshots:
        for state in snap.states:
            for name in ("keys", "values"):
                array = getattr(state, name, None)
                total += int(getattr(array, "nbytes", 0) or 0)
        total += int(getattr(snap.logits, "nbytes", 0) or 0)
    return total


class PromptCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def take(self, prompt: list[int]) -> CacheEntry | None:
        """Remove and return the entry whose conversation `prompt` continues (the longest one):
        the prompt starts with the entry's last prompt, up to its closing `<|start|>assistant`."""
        with self._lock:
            best_key, best_len = None, -1
            for key, entry in self._entries.items():
                if entry.prompt_len - 2 > len(prompt) or entry.prompt_len <= best_len:
                    continue
                # `- 2`: the previous prompt's closing `<|start|>assistant` may be missing (a client
                # that drops an empty or cut-off reply); the history before it still continues.
                if harmony.common_prefix_len(entry.tokens, prompt) >= entry.prompt_len - 2:
                    best_key, best_len = key, entry.prompt_len
            return None if best_key is None else self._entries.pop(best_key)

    def put(self, entry: CacheEntry) -> None:
        """Keep `entry` as the most recent; evict the least recent beyond the byte budget."""
        entry.nbytes = entry_bytes(entry.cache, entry.snapshots)
        with self._lock:
            if entry.nbytes > self.max_bytes:
                return
            self._entries[self._next] = entry
            self._next += 1
            total = sum(e.nbytes for e in self._entries.values())
            while total > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                total -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
