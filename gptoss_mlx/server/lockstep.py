"""Several ranks serving one model: rank 0 takes the HTTP requests, the others follow in step.

Every rank must run the same collectives in the same order, so every rank runs the same
generation: rank 0 shares each request's work (the rendered prompt, the settings with a sampling
seed, which prompt-cache entry it continues and which entries rank 0 still holds) and all ranks
generate it. Stopping early (a client that went away, a stop string, shutdown) is decided on
rank 0 and agreed at fixed points: after each prefill chunk and every `STOP_EVERY` items, so all
ranks stop after the same token. One request runs at a time (the generation queue's thread).

The group itself is behind two callables (cli/ wires them to backend.distributed): `share(obj)`
gives rank 0's `obj` to every rank, `any_rank(flag)` is true on every rank if any rank's flag is.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..errors import UserError
from .errors import ApiError

log = logging.getLogger("gptoss.server")

STOP_EVERY = 4  # items between agreed stop checks: one tiny all_sum each
SHUTDOWN = "shutdown"


@dataclass
class Work:
    """One request as rank 0 shares it."""

    gen: Any  # engine.Generation, its prompt rendered and a seed set
    take: int | None  # the prompt-cache entry this request continues
    keep: list[int]  # the prompt-cache entries rank 0 holds (followers drop the rest)


class Lockstep:
    def __init__(
        self,
        share: Callable[[Any], Any],
        any_rank: Callable[[bool], bool],
        every: int = STOP_EVERY,
    ) -> None:
        self.share = share
        self.any_rank = any_rank
        self.every = every

    def lead(self, engine: Any, gen: Any, cancelled: Callable[[], bool]) -> Iterator[Any]:
        """Rank 0: share the request, then generate it with the others (see `ServerEngine.run`)."""
        if gen.builtin:
            raise ApiError(400, "built-in tools are not served when the model spans several ranks")
        sampler = gen.settings.sampler
        if sampler.seed is None:  # the ranks' RNGs must draw the same tokens
            sampler = replace(sampler, seed=secrets.randbits(31))
            gen = replace(gen, settings=replace(gen.settings, sampler=sampler))
        key = engine.prompt_cache.find(gen.prompt)
        self.share(Work(gen, key, engine.prompt_cache.keys()))
        yield from self._step(engine, gen, key, cancelled)

    def follow(self, engine: Any) -> None:
        """Other ranks: generate what rank 0 shares, in step, until it shares SHUTDOWN."""
        while True:
            work = self.share(None)
            if work == SHUTDOWN:
                return
            engine.prompt_cache.keep_only(work.keep)
            try:
                for _ in self._step(engine, work.gen, work.take, lambda: False):
                    pass
            except UserError:  # a lost peer: nothing more to follow
                raise
            except Exception:  # rank 0 met it too and reported it to its client
                log.exception("generation failed")

    def shutdown(self) -> None:
        """Rank 0, on the generation thread after the last request: the followers return."""
        self.share(SHUTDOWN)

    def _step(
        self, engine: Any, gen: Any, key: int | None, stop: Callable[[], bool]
    ) -> Iterator[Any]:
        items = engine.generate(
            gen, lambda: self.any_rank(stop()), engine.prompt_cache.take_key(key)
        )
        closing = False  # rank 0's consumer stopped reading: go on to the next agreed check
        try:
            for n, item in enumerate(items, 1):
                if not closing:
                    try:
                        yield item
                    except GeneratorExit:
                        closing = True
                if n % self.every == 0 and self.any_rank(closing or stop()):
                    break
        finally:
            items.close()
