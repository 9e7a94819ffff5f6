"""The generation loop: chunked prefill, pipelined decode, and per-reply statistics (sampling
is in sampling.py).

It knows token ids only; the chat format lives in harmony.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import mlx.core as mx

from ..backend.device import prefill_chunk, wired_limit
from .cache import cache_offset, restore, snapshot

CLEAR_CACHE_EVERY = 256  # decode tokens between returns of MLX's buffer cache (as mlx-lm)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens in the prompt
    prefilled_tokens: int = 0  # of those, tokens that had to be run (the rest came from the cache)
    generated_tokens: int = 0
    reasoning_tokens: int = 0  # of those, tokens of analysis messages (set by the session)
    time_to_first_token: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    peak_memory_bytes: int = 0
    finish_reason: str = ""  # stop, tool_call, length, context_full, interrupted
    wall_seconds: float = 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # The first token comes from the prefill; the rest are decode steps.
        n = self.generated_tokens - 1
        return n / self.decode_seconds if self.decode_seconds > 0 and n > 0 else 0.0

    def usage(self, cached: bool = False) -> dict[str, Any]:
        """Token usage as OpenAI's chat completions report it (`cached`: with the prompt
        tokens that came from the cache)."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.generated_tokens,
            "total_tokens": self.prompt_tokens + self.generated_tokens,
        }
        if cached:
            out["prompt_tokens_details"] = {
                "cached_tokens": self.prompt_tokens - self.prefilled_tokens
            }
        out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tps"] = round(self.prefill_tps, 2)
        d["decode_tps"] = round(self.decode_tps, 2)
        return d


def peak_memory() -> int:
    try:
        return int(mx.get_peak_memory())
    except AttributeError:  # older MLX
        return int(mx.metal.get_peak_memory())


def prefill(
    model,
    tokens: Sequence[int],
    cache: list,
    chunk: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> mx.array:
    """Run `tokens` through the model into `cache` in chunks of `chunk` tokens (default: this
    device's, device.prefill_chunk()); return the last position's logits [1, V]."""
    if not tokens:
        raise ValueError("nothing to prefill")
    chunk = chunk or prefill_chunk()
    done = 0
    logits = None
    while done < len(tokens):
        part = tokens[done : done + chunk]
        logits = model(mx.array([part]), cache, last_only=True)
        done += len(part)
        if done < len(tokens):
            # Materialise the cache chunk by chunk so memory stays bounded by one chunk.
            mx.eval([a for c in cache for a in c.state_arrays()])
            mx.clear_cache()  # the chunk's temporaries: keep the footprint at weights + KV
        if progress is not None:
            mx.eval(logits)
            progress(done, len(tokens))
    return logits[:, -1, :]


def generate(
    model,
    new_tokens: Sequence[int],
    cache: list,
    sampler: Callable[[mx.array], mx.array],
    *,
    max_tokens: int,
    stop_tokens: dict[int, str],
    context_limit: int,
    prompt_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    fed: list[int] | None = None,
    stats: GenerationStats | None = None,
    first_logits: mx.array | None = None,
    on_prefilled: Callable[[mx.array], None] | None = None,
) -> Iterator[int]:
    """Prefill `new_tokens` (the prompt part not in `cache`), then yield sampled token ids.

    `stop_tokens` maps a stop id to its finish reason ("stop", "tool_call"); the stop token is
    yielded too. `fed` (if given) receives every token id actually run through the model, so the
    caller always knows what the cache holds. Stops at `max_tokens` ("length") or when the cache
    reaches `context_limit` ("context_full"). On KeyboardInterrupt the finish reason is
    "interrupted" and the exception propagates after the stats are filled in.
    With no `new_tokens` (all of the prompt is cached) `first_logits` gives the next-token
    logits; `on_prefilled(logits)` is called once the prompt is in the cache (for snapshots).
    """
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = prompt_tokens if prompt_tokens is not None else len(new_tokens)
    stats.prefilled_tokens = len(new_tokens)
    fed = fed if fed is not None else []
    t0 = time.perf_counter()
    try:
        with wired_limit():
            if new_tokens:
                logits = prefill(model, new_tokens, cache, progress=progress)
                fed.extend(new_tokens)
                if on_prefilled is not None:
                    on_prefilled(logits)
            elif first_logits is not None:
                logits = first_logits
            else:
                raise ValueError("no prompt tokens to run and no logits to start from")
            limits = (max_tokens, stop_tokens, context_limit)
            yield from _decode(model, cache, sampler, logits, limits, fed, stats, t0)
    except KeyboardInterrupt:
        stats.finish_reason = "interrupted"
        raise
    except GeneratorExit:
        stats.finish_reason = stats.finish_reason or "interrupted"
        raise
    finally:
        if stats.time_to_first_token:
            stats.decode_seconds = time.perf_counter() - t0 - stats.time_to_first_token
        stats.peak_memory_bytes = peak_memory()


def _decode(
    model,
    cache: list,
    sampler: Callable[[mx.array], mx.array],
    logits: mx.array,
    limits: tuple[int, dict[int, str], int],
    fed: list[int],
    stats: GenerationStats,
    t0: float,
) -> Iterator[int]:
    """The decode loop of `generate`, pipelined: step n+1 (feeding token n) is queued before token
    n is read, so the device never waits for Python to build a graph; if token n ends the reply
    (or the wait is interrupted) the queued step is taken back out of the caches."""
    max_tokens, stop_tokens, context_limit = limits

    def step(token: mx.array) -> mx.array:
        return sampler(model(token.reshape(1, 1), cache, last_only=True)[:, -1, :])

    y = sampler(logits)
    mx.async_eval(y)
    pending: _Pending | None = None  # a queued step whose input token is not yet read
    n = 0
    try:
        while True:
            n += 1
            room = cache_offset(cache) + 1 <= context_limit
            if room and n < max_tokens:
                pending = _Pending(snapshot(cache), mx.random.state[0])
                next_y = step(y)
                mx.async_eval(next_y)
            token = read_token(y)
            if n == 1:
                stats.time_to_first_token = time.perf_counter() - t0
                stats.prefill_seconds = stats.time_to_first_token
            stats.generated_tokens = n
            reason = _finish_reason(token, stop_tokens, room, n, max_tokens)
            if reason:
                _undo(cache, pending)
                pending = None
                stats.finish_reason = reason
                yield token
                return
            fed.append(token)
            pending = None
            yield token
            if n == 1 or n % CLEAR_CACHE_EVERY == 0:
                mx.clear_cache()  # after the token is out, as mlx-lm: it can wait on the device
            y = next_y
    finally:
        _undo(cache, pending)


def read_token(y: mx.array) -> int:
    """Wait for a sampled token (the one host sync a decode step makes)."""
    return int(y.item())


@dataclass(frozen=True)
class _Pending:
    states: list
    random_key: mx.array


def _finish_reason(
    token: int, stop_tokens: dict[int, str], room: bool, n: int, max_tokens: int
) -> str:
    if token in stop_tokens:
        return stop_tokens[token]
    if not room:
        return "context_full"
    return "length" if n >= max_tokens else ""


def _undo(cache: list, pending: _Pending | None) -> None:
    """Take a queued step back out of the caches, and give back the random key it drew."""
    if pending is None:
        return
    restore(cache, pending.states)
    hi, lo = pending.random_key.tolist()
    mx.random.seed((hi << 32) | lo)
