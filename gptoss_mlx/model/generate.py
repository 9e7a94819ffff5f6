"""The generation loop: chunked prefill, pipelined decode, and per-reply statistics (sampling
is in sampling.py).

It knows token ids only; the chat format lives in harmony.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import mlx.core as mx

from .cache import cache_offset

PREFILL_CHUNK = 512


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens in the prompt
    prefilled_tokens: int = 0  # of those, tokens that had to be run (the rest came from the cache)
    generated_tokens: int = 0
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tps"] = round(self.prefill_tps, 2)
        d["decode_tps"] = round(self.decode_tps, 2)
        return d


@dataclass
class Generation:
    """One reply being generated; iterate to get token ids; `stats` fills in as it goes."""

    tokens: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)


def peak_memory() -> int:
    try:
        return int(mx.get_peak_memory())
    except AttributeError:  # older MLX
        return int(mx.metal.get_peak_memory())


def prefill(
    model,
    tokens: Sequence[int],
    cache: list,
    chunk: int = PREFILL_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> mx.array:
    """Run `tokens` through the model into `cache`; return the last position's logits [1, V]."""
    if not tokens:
        raise ValueError("nothing to prefill")
    done = 0
    logits = None
    while done < len(tokens):
        part = tokens[done : done + chunk]
        logits = model(mx.array([part]), cache, last_only=True)
        done += len(part)
        if done < len(tokens):
            # Materialise the cache chunk by chunk so memory stays bounded by one chunk.
            mx.eval([a for c in cache for a in c.state_arrays()])
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

    def step(token: mx.array) -> mx.array:
        logits = model(token.reshape(1, 1), cache, last_only=True)
        return sampler(logits[:, -1, :])

    try:
        if new_tokens:
            logits = prefill(model, new_tokens, cache, progress=progress)
            fed.extend(new_tokens)
            if on_prefilled is not None:
                on_prefilled(logits)
        elif first_logits is not None:
            logits = first_logits
        else:
            raise ValueError("no prompt tokens to run and no logits to start from")
        y = sampler(logits)
        mx.async_eval(y)
        t_first = None
        n = 0
        while True:
            token = int(y.item())
            if t_first is None:
                t_first = time.perf_counter()
                stats.time_to_first_token = t_first - t0
                stats.prefill_seconds = stats.time_to_first_token
            n += 1
            stats.generated_tokens = n
            if token in stop_tokens:
                stats.finish_reason = stop_tokens[token]
                yield token
                break
            if cache_offset(cache) + 1 > context_limit:
                stats.finish_reason = "context_full"
                yield token
                break
            if n >= max_tokens:
                stats.finish_reason = "length"
                yield token
                break
            # Build and start the next step before handing this token out (pipelined decode).
            next_y = step(y)
            fed.append(token)
            mx.async_eval(next_y)
            yield token
            y = next_y
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
