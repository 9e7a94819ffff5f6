"""Measure the 8-bit non-expert layout (`convert --rest q8`) against bf16 on test checkpoints:
logit error, greedy agreement and weight bytes read per decoded token.

    python scripts/measure_rest_q8.py CHECKPOINT [CHECKPOINT ...] [--tokens 48]

Each checkpoint is converted twice (rest bf16, rest q8) into a temporary folder. Logits are
compared teacher-forced on a fixed prompt (relative max error, top-1 agreement), and greedy
replies of `--tokens` tokens (positions until the first difference, share of equal tokens), in the
activation dtype of each device: bfloat16 (Metal's) and float32 (the CPU's). Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = [200006, 17360, 200008, 3575, 553, 261, 10297, 29186, 13, 200007, 200006, 1428,
          200008, 13225, 11, 1495, 382, 290, 9710, 328, 10128, 30, 200007, 200006, 173781]  # fmt: skip


def bytes_per_token(model) -> int:
    from scripts.bench import weight_bytes_per_token

    return weight_bytes_per_token(model)


def greedy(model, n: int) -> list[int]:

    from gptoss_mlx.model.generate import generate
    from gptoss_mlx.model.sampling import SamplerSettings, make_sampler

    return list(generate(model, PROMPT, model.make_cache(), make_sampler(SamplerSettings(0)),
                         max_tokens=n, stop_tokens={}, context_limit=10_000))  # fmt: skip


def measure(ckpt: Path, n: int, work: Path) -> list[dict]:
    import mlx.core as mx
    import numpy as np

    from gptoss_mlx.hub.convert import convert
    from gptoss_mlx.model.loader import load_model

    dirs = {rest: work / f"{ckpt.name}-{rest}" for rest in ("bf16", "q8")}
    for rest, d in dirs.items():
        convert(ckpt, d, rest=rest, verify=False)
    rows = []
    for dtype in ("bfloat16", "float32"):
        models = {rest: load_model(d, dtype=dtype) for rest, d in dirs.items()}
        ids = PROMPT + greedy(models["bf16"], n)
        logits = {r: np.array(m(mx.array([ids]))[0].astype(mx.float32)) for r, m in models.items()}
        a, b = logits["bf16"], logits["q8"]
        ga, gb = greedy(models["bf16"], n), greedy(models["q8"], n)
        first = next((i for i, (x, y) in enumerate(zip(ga, gb, strict=True)) if x != y), n)
        rows.append({
            "checkpoint": ckpt.name, "dtype": dtype,
            "logits_rel_max_err": float(np.abs(a - b).max() / np.abs(a).max()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "greedy_equal_prefix": first, "greedy_tokens": n,
            "greedy_equal_share": float(np.mean([x == y for x, y in zip(ga, gb, strict=True)])),
            "bytes_per_token_bf16": bytes_per_token(models["bf16"]),
            "bytes_per_token_q8": bytes_per_token(models["q8"]),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in args.checkpoints:
            for row in measure(ckpt, args.tokens, Path(tmp)):
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
