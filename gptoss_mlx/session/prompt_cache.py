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
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import harmony
from ..model.generate import GenerationStats, prefill
from .chat import ChatSession


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

    def find(self, prompt: list[int]) -> int | None:
        """The key of the entry whose conversation `prompt` continues (the longest one): the
        prompt starts with the entry's last prompt, up to its closing `<|start|>assistant`."""
        with self._lock:
            best_key, best_len = None, -1
            for key, entry in self._entries.items():
                if entry.prompt_len - 2 > len(prompt) or entry.prompt_len <= best_len:
                    continue
                # `- 2`: the previous prompt's closing `<|start|>assistant` may be missing (a client
                # that drops an empty or cut-off reply); the history before it still continues.
                if harmony.common_prefix_len(entry.tokens, prompt) >= entry.prompt_len - 2:
                    best_key, best_len = key, entry.prompt_len
            return best_key

    def take(self, prompt: list[int]) -> CacheEntry | None:
        """Remove and return the entry whose conversation `prompt` continues (see `find`)."""
        return self.take_key(self.find(prompt))

    def take_key(self, key: int | None) -> CacheEntry | None:
        with self._lock:
            return None if key is None else self._entries.pop(key, None)

    def keys(self) -> list[int]:
        with self._lock:
            return list(self._entries)

    def keep_only(self, keys: list[int]) -> None:
        """Drop the entries not in `keys`: a follower rank mirrors rank 0's evictions, since
        its own byte counts may differ (another share of the layers)."""
        wanted = set(keys)
        with self._lock:
            for key in [k for k in self._entries if k not in wanted]:
                del self._entries[key]

    def put(self, entry: CacheEntry) -> None:
        """Keep `entry` as the most recent; evict the least recent beyond the byte budget."""
        entry.nbytes = entry_bytes(entry.cache, entry.snapshots)
        with self._lock:
            key = self._next  # every put takes a key, kept or not: ranks number entries alike
            self._next += 1
            if entry.nbytes > self.max_bytes:
                return
            self._entries[key] = entry
            total = sum(e.nbytes for e in self._entries.values())
            while total > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                total -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RequestSession(ChatSession):
    """A chat session over a conversation given whole by a request, with its cache swapped in."""

    builtin: frozenset[str] = frozenset()  # namespaces of the built-in tools in the prompt

    def prompt_tokens(self, messages: list[harmony.Message] | None = None) -> list[int]:
        options = self.settings.prompt_options()
        options.python_tool = "python" in self.builtin
        options.browser_tool = "browser" in self.builtin
        return harmony.render_prompt(
            self.messages if messages is None else messages, options, self.encoding
        )

    def adopt(self, entry: CacheEntry | None) -> None:
        if entry is None:
            self.drop_cache()
        else:
            self.cache, self.cached_tokens, self._snapshots = (
                entry.cache,
                entry.tokens,
                entry.snapshots,
            )

    def entry(self, prompt_len: int) -> CacheEntry:
        prompt_len = min(prompt_len, len(self.cached_tokens))
        return CacheEntry(self.cache, self.cached_tokens, self._snapshots, prompt_len)

    def prepare(self) -> list[int]:
        """The prompt, checked to fit in the context (ContextFullError otherwise)."""
        prompt = self.prompt_tokens()
        self._check_fits(prompt)
        return prompt

    def stream(self, prompt: list[int], written_before: int = 0) -> Iterator[harmony.Event]:
        """The reply's events. The history (the prompt before its closing `<|start|>assistant`)
        is prefilled first and snapshotted: the next request of this conversation continues
        from there even when the client drops this reply or its reasoning. The prompt's last
        `written_before` tokens are the start of the reply, written for the model."""
        self.history_prefill = (0, 0.0)
        reused, _ = self._reuse(prompt)
        boundary = len(prompt) - 2
        if prompt[boundary:] == [harmony.START, harmony.ASSISTANT] and boundary > reused:
            t0 = time.perf_counter()
            try:
                prefill(self.model, prompt[reused:boundary], self.cache, progress=self.progress)
            except BaseException:
                self.drop_cache()  # part of the chunk may be in some layers only
                raise
            self.cached_tokens.extend(prompt[reused:boundary])
            self._snapshot(None)
            self.history_prefill = (boundary - reused, time.perf_counter() - t0)
        return self._reply(prompt, written_before)

    def count_history_prefill(self, stats: GenerationStats) -> None:
        """Fold the history prefill into the reply's statistics (prefilled tokens, TTFT)."""
        tokens, seconds = self.history_prefill
        stats.prefilled_tokens += tokens
        stats.time_to_first_token += seconds
        stats.prefill_seconds += seconds
