"""KV caches. MLX arrays are values, so a snapshot is a handful of references, never a copy.

- FullKVCache: full-attention layers; grows in steps, a snapshot is just the offset.
- WindowKVCache: sliding-window layers; keeps only the last `window - 1` keys (all a future
  query can see), so its memory never grows with the conversation. A snapshot keeps the arrays
  (compact: at most `window - 1` positions each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx


@dataclass(frozen=True)
class CacheState:
    offset: int
    keys: Any = None
    values: Any = None


class FullKVCache:
    step = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    @property
    def cached_len(self) -> int:
        return self.offset

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        prev = self.offset
        n = k.shape[2]
        if self.keys is None or prev + n > self.keys.shape[2]:
            B, H, _, D = k.shape
            grow = ((prev + n + self.step - 1) // self.step) * self.step
            new_k = mx.zeros((B, H, grow, D), k.dtype)
            new_v = mx.zeros((B, H, grow, D), v.dtype)
            if self.keys is not None and prev > 0:
                new_k[..., :prev, :] = self.keys[..., :prev, :]
                new_v[..., :prev, :] = self.values[..., :prev, :]
            self.keys, self.values = new_k, new_v
        self.keys[..., prev : prev + n, :] = k
        self.values[..., prev : prev + n, :] = v
        self.offset = prev + n
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values actually held (the allocation may be up to one step larger)."""
        if self.keys is None:
            return 0
        per_pos = self.keys.nbytes // self.keys.shape[2]
        return 2 * per_pos * self.offset

    @property
    def allocated_bytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    def snapshot(self) -> CacheState:
        return CacheState(self.offset)

    def restore(self, state: CacheState) -> None:
        if state.offset > self.offset:
            raise ValueError("cannot restore a full-attention cache forward")
        self.offset = state.offset

    def state_arrays(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]


class WindowKVCache:
    def __init__(self, window: int) -> None:
        self.window = window
        self.keep = window - 1
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    @property
    def cached_len(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        self.offset += k.shape[2]
        if self.keys is not None and self.keys.shape[2] > 0:
            k = mx.concatenate([self.keys, k], axis=2)
            v = mx.concatenate([self.values, v], axis=2)
        n = k.shape[2]
        start = max(0, n - self.keep)
        self.keys = k[..., start:, :]
        self.values = v[..., start:, :]
        if start > 0 and n > self.window:
            # After a multi-token update a view would pin the whole `keep + L` buffer (in the
            # cache and in every snapshot of it): keep a compact copy of the window instead.
            self.keys, self.values = mx.contiguous(self.keys), mx.contiguous(self.values)
        return k, v

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

    allocated_bytes = nbytes

    def snapshot(self) -> CacheState:
        return CacheState(self.offset, self.keys, self.values)

    def restore(self, state: CacheState) -> None:
        self.offset, self.keys, self.values = state.offset, state.keys, state.values

    def state_arrays(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]


def snapshot(cache: list) -> list[CacheState]:
    return [c.snapshot() for c in cache]


def restore(cache: list, states: list[CacheState]) -> None:
    for c, s in zip(cache, states, strict=True):
        c.restore(s)


def cache_offset(cache: list) -> int:
    return cache[0].offset if cache else 0


def cache_nbytes(cache: list) -> int:
    return sum(c.nbytes for c in cache)
