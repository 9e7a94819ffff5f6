"""One process in charge: finding the distributed group, sharing rank 0's decisions, choosing a
strategy, and turning a lost peer into a clear error.

Rank 0 owns the terminal; every other rank computes the same thing from what rank 0 shares
(settings, the prompt, the sampling seed), so their collectives stay in step. Sharing uses the
pickled-bytes all_sum of mlx-lm's `_share_object`: rank 0 contributes the bytes, the others zeros.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
from collections.abc import Iterator
from typing import Any

from ..errors import UserError

TENSOR, PIPELINE = "tensor", "pipeline"  # the ways a model is split across ranks

LAUNCH_ENV = ("MLX_RANK", "MLX_HOSTFILE", "MLX_JACCL_COORDINATOR")


class PeerLostError(UserError):
    """A collective failed because another rank stopped."""


def launched() -> bool:
    """Whether this process was started as one rank of a group (mlx.launch or the env vars)."""
    return "MLX_RANK" in os.environ


def backend_name() -> str:
    if os.environ.get("MLX_JACCL_COORDINATOR") or os.environ.get("MLX_IBV_DEVICES"):
        return "jaccl"
    if os.environ.get("MLX_HOSTFILE"):
        return "ring"
    return "any"


def current_group() -> Any | None:
    """The distributed group if this process is one of several ranks, else None."""
    if not launched():
        return None
    import mlx.core as mx

    backend = backend_name()
    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except RuntimeError as e:
        raise UserError(
            f"MLX_RANK is set but the {backend} backend did not start ({e}); "
            "launch with `mlx.launch` or check the hostfile"
        ) from e
    return group if group.size() > 1 else None


def choose_strategy(requested: str, backend: str) -> tuple[str, str]:
    """(strategy, why) for `--strategy tensor|pipeline|auto` on `backend`."""
    if requested in (TENSOR, PIPELINE):
        return requested, f"{requested} parallel (asked for)"
    if requested != "auto":
        raise UserError(f"unknown --strategy {requested!r}; use tensor, pipeline or auto")
    if backend == "jaccl":
        return TENSOR, "tensor parallel: JACCL's low latency pays for two all_sums per layer"
    return PIPELINE, (
        f"pipeline: on {backend} links two all_sums per layer cost more than they save "
        "(slower than one machine for a single stream; it splits the memory)"
    )


def share_object(obj: Any, group: Any) -> Any:
    """Rank 0's `obj` on every rank (two all_sums: size, then the pickled bytes)."""
    import mlx.core as mx
    import numpy as np

    if group is None or group.size() == 1:
        return obj
    with peer_errors():
        if group.rank() == 0:
            data = mx.array(np.frombuffer(pickle.dumps(obj), dtype=np.uint8))
            size = mx.array([data.size], dtype=mx.int32)
        else:
            size = mx.zeros((1,), dtype=mx.int32)
        size = mx.distributed.all_sum(size, group=group, stream=mx.cpu)
        n = int(size.item())
        if group.rank() != 0:
            data = mx.zeros((n,), dtype=mx.uint8)
        data = mx.distributed.all_sum(data, group=group, stream=mx.cpu)
        raw = np.array(data).tobytes()
    return obj if group.rank() == 0 else pickle.loads(raw)


def share_outcome(group: Any, make: Any) -> Any:
    """Run `make()` on rank 0 and give every rank its result, or raise its UserError everywhere
    (so a bad prompt on rank 0 does not leave the other ranks waiting)."""
    result: tuple[str, Any] = ("ok", None)
    if group is None or group.rank() == 0:
        try:
            result = ("ok", make())
        except UserError as e:
            result = ("error", (type(e), str(e)))
    kind, value = share_object(result, group)
    if kind == "error":
        cls, message = value
        raise cls(message)
    return value


def sync_seed(group: Any, seed: int | None) -> int:
    """Seed MLX's RNG with rank 0's seed (a fresh random one if none was given) on every rank."""
    import mlx.core as mx

    chosen = share_object(seed if seed is not None else secrets.randbits(31), group)
    mx.random.seed(chosen)
    return chosen


def any_rank(group: Any, flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (one all_sum of one integer)."""
    import mlx.core as mx

    if group is None or group.size() == 1:
        return flag
    with peer_errors():
        total = mx.distributed.all_sum(
            mx.array([1 if flag else 0], dtype=mx.int32), group=group, stream=mx.cpu
        )
        return int(total.item()) > 0


def launcher() -> str | None:
    """The `mlx.launch` beside this Python, else the one on PATH."""
    import shutil
    import sys
    from pathlib import Path

    return shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which(
        "mlx.launch"
    )


def barrier(group: Any) -> None:
    import mlx.core as mx

    with peer_errors():
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))


@contextlib.contextmanager
def peer_errors() -> Iterator[None]:
    """A collective that fails because a peer went away becomes a one-line PeerLostError."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if any(s in text for s in ("[ring]", "[jaccl]", "[mpi]", "peer", "connection")):
            rank = os.environ.get("MLX_RANK", "?")
            raise PeerLostError(
                f"rank {rank} lost its connection to another rank ({text}); that rank stopped "
                "or crashed: see its error above, fix it and launch again"
            ) from e
        raise
