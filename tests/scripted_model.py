"""`ScriptedModel`: a test double that writes given replies token by token (like llm's MockModel).

It stands in for `Model` wherever exact token sequences matter (the tool loop, the server): every
time the tokens fed so far end with `<|start|>assistant` (the end of a completion prompt, also
after a tool result), perhaps followed by a header written for the model, the next scripted
reply starts; each following decode step emits its next
token. Its cache records the token ids it was fed, so snapshots and restores behave like the real
caches, and `calls` records what each forward pass was given (for exact prefill counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx

START, ASSISTANT, END, MESSAGE = 200006, 173781, 200007, 200008
VOCAB = 201088


@dataclass(frozen=True)
class _State:
    offset: int
    tokens: tuple[int, ...]


class ScriptCache:
    """One layer's worth of cache: the token ids fed so far."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    @property
    def offset(self) -> int:
        return len(self.tokens)

    cached_len = offset

    @property
    def nbytes(self) -> int:
        return 4 * len(self.tokens)

    allocated_bytes = nbytes

    def snapshot(self) -> _State:
        return _State(len(self.tokens), tuple(self.tokens))

    def restore(self, state: _State) -> None:
        self.tokens = list(state.tokens)

    def state_arrays(self) -> list[mx.array]:
        return []


class ScriptedModel:
    """`ScriptedModel([reply1, reply2, ...])`: each reply is a list of token ids (usually
    `encoding.encode(text, allowed_special="all")`, ending in `<|return|>` or `<|call|>`)."""

    def __init__(self, replies: Sequence[Sequence[int]], vocab: int = VOCAB) -> None:
        self.replies = [list(r) for r in replies]
        self.vocab = vocab
        self.calls: list[list[int]] = []
        self._next = 0
        self._reply: list[int] = []
        self._pos = 0

    def make_cache(self) -> list[ScriptCache]:
        return [ScriptCache()]

    def set_fast_path(self, enabled: bool | None) -> None:
        pass

    @property
    def replies_started(self) -> int:
        return self._next

    def _next_token(self) -> int:
        # Past the script (a speculative step after a stop): anything harmless.
        tok = self._reply[self._pos] if self._pos < len(self._reply) else END
        self._pos += 1
        return tok

    def __call__(self, tokens: mx.array, cache: list | None = None, last_only: bool = False):
        ids = [int(t) for t in tokens.reshape(-1).tolist()]
        self.calls.append(ids)
        if cache is not None:
            for c in cache:
                c.tokens.extend(ids)
        fed = cache[0].tokens if cache else ids
        decode_step = (
            len(ids) == 1
            and 0 < self._pos <= len(self._reply)
            and ids[0] == self._reply[self._pos - 1]
        )
        if _opens_reply(fed) and not decode_step:
            if self._next >= len(self.replies):
                raise AssertionError(f"ScriptedModel: only {len(self.replies)} replies scripted")
            self._reply, self._pos = self.replies[self._next], 0
            self._next += 1
        tok = self._next_token()
        logits = mx.full((1, 1, self.vocab), -1e9, dtype=mx.float32)
        logits[0, 0, tok] = 0.0
        if not last_only and len(ids) > 1:
            logits = mx.repeat(logits, len(ids), axis=1)
        return logits


def _opens_reply(fed: list[int]) -> bool:
    """The tokens fed end a prompt: `<|start|>assistant`, perhaps followed by (part of) a header
    written for the model (a forced tool call)."""
    if START not in fed:
        return False
    i = len(fed) - 1 - fed[::-1].index(START)
    tail = fed[i + 2 :]
    return fed[i + 1 : i + 2] == [ASSISTANT] and len(tail) <= 24 and MESSAGE not in tail[:-1]
