"""Run by tests/test_distributed.py under `mlx.launch`: one rank's side of a check.

    python -m tests.dist_worker MODE MODEL STRATEGIES

MODE logits: load the full model, compute reference logits (one prompt, then an incremental
prefill + decode through the KV cache); for each strategy (comma-separated) load this rank's
shard with sharded_load and compute the same; then shard the full model in memory with the first
strategy (shard_model) and compute again. Prints the largest relative error of each.
MODE memory: only the (sharded) load in bfloat16, then the bytes this rank holds.
MODE die: `gptoss run` on every rank, except that rank 1 exits after three sampled tokens.
Every rank prints one JSON line tagged with its rank (die: what `gptoss run` prints).
"""

from __future__ import annotations

import json
import os
import resource
import sys

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from gptoss_mlx.model.loader import load_model
from gptoss_mlx.model.sharded_load import sharded_load
from gptoss_mlx.model.sharding import shard_model

PROMPT = [200006, 17360, 200008, 3575, 553, 261, 10297, 20994, 13, 200007] * 3


def rel_err(a: mx.array, b: mx.array) -> float:
    a, b = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run(model, tokens: list[int]) -> tuple[mx.array, list[mx.array]]:
    """Logits of the whole prompt at once, and of a chunked prefill + token-by-token decode."""
    whole = model(mx.array([tokens]))
    cache = model.make_cache()
    steps = [model(mx.array([tokens[:7]]), cache)]
    steps.append(model(mx.array([tokens[7:20]]), cache))
    for t in tokens[20:]:
        steps.append(model(mx.array([[t]]), cache, last_only=True))
    mx.eval(whole, steps)
    return whole, steps


def held_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def compare(model, ref: tuple) -> dict[str, float]:
    whole, steps = run(model, PROMPT)
    return {
        "whole": rel_err(whole, ref[0]),
        "steps": max(rel_err(a, b) for a, b in zip(steps, ref[1], strict=True)),
    }


def die(path: str, rank: int) -> None:
    import gptoss_mlx.session.chat as session
    from gptoss_mlx.cli import main as gptoss

    make = session.make_sampler

    def dying_sampler(settings):
        sample, n = make(settings), [0]

        def f(logits):
            n[0] += 1
            if n[0] > 3:
                os._exit(9)
            return sample(logits)

        return f

    if rank == 1:
        session.make_sampler = dying_sampler
    sys.exit(gptoss(["run", "-m", path, "-t", "0", "-n", "40", "--json", "Hello"]))


def main(mode: str, path: str, strategies: str) -> None:
    if mode == "die":
        die(path, int(os.environ["MLX_RANK"]))
    group = mx.distributed.init()
    out: dict = {"rank": group.rank(), "size": group.size()}
    if mode == "logits":
        model = load_model(path, dtype="float32")
        model.set_fast_path(False)
        ref = run(model, PROMPT)
        names = strategies.split(",")
        for strategy in names:
            out[f"loaded_{strategy}"] = compare(sharded_load(path, group, strategy)[0], ref)
        shard_model(model, group, names[0])
        out[f"sharded_{names[0]}"] = compare(model, ref)
    elif mode == "memory":
        if group.size() == 1:
            model = load_model(path, dtype="bfloat16")
        else:
            model, _layout = sharded_load(path, group, strategies, dtype="bfloat16")
        out["held"] = held_bytes(model)
        out["peak"] = int(mx.get_peak_memory())
        out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
