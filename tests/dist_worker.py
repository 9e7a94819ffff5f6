"""Run by tests/test_distributed.py under `mlx.launch`: one rank's side of a check.

    python -m tests.dist_worker MODE MODEL STRATEGY

MODE logits: load the full model, compute reference logits (one prompt, then an incremental
prefill + decode through the KV cache), load this rank's shard, compute the same, and print the
largest relative errors. MODE memory: only the sharded load, then the bytes this rank holds.
Every rank prints one JSON line tagged with its rank.
"""

from __future__ import annotations

import json
import resource
import sys

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from gptoss_mlx.distributed import shard_model
from gptoss_mlx.loader import load_model
from gptoss_mlx.sharded_load import sharded_load

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


def main(mode: str, path: str, strategy: str) -> None:
    group = mx.distributed.init()
    out: dict = {"rank": group.rank(), "size": group.size()}
    if mode == "logits":
        model, _ = load_model(path, dtype="float32")
        model.set_fast_path(False)
        ref_whole, ref_steps = run(model, PROMPT)
        shard_model(model, group, strategy)
        whole, steps = run(model, PROMPT)
        out["whole"] = rel_err(whole, ref_whole)
        out["steps"] = max(rel_err(a, b) for a, b in zip(steps, ref_steps, strict=True))
        model2, _layout = sharded_load(path, group, strategy, dtype="float32")
        whole2, steps2 = run(model2, PROMPT)
        out["loaded_whole"] = rel_err(whole2, ref_whole)
        out["loaded_steps"] = max(rel_err(a, b) for a, b in zip(steps2, ref_steps, strict=True))
    elif mode == "memory":
        if group.size() == 1:
            model, _ = load_model(path, dtype="float32")
        else:
            model, _layout = sharded_load(path, group, strategy, dtype="float32")
        out["held"] = held_bytes(model)
        out["peak"] = int(mx.get_peak_memory())
        out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
