"""Benchmark one process against 2 ranks on localhost (mlx.launch --backend ring, CPU backend).

    python scripts/bench_distributed.py                    # 20b widths, 2 layers
    python scripts/bench_distributed.py --model PATH --prompt 256 --decode 32

Runs, each in fresh processes: one process as `gptoss run` builds it (the CPU fast path where
available), one process on plain MLX (the path the ranks use), then 2 ranks with the tensor split
and 2 with the pipeline split. Each reports prefill and decode tok/s (greedy) and its peak MLX
memory; for ranks the slowest rank's speed and every rank's peak are shown.
Localhost numbers measure the collectives' overhead, not a real link: see the README for what
two Macs over Thunderbolt should expect.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def checkpoint(preset: str, layers: int) -> Path:
    from scripts.make_checkpoint import make_checkpoint

    path = ROOT / ".cache" / "bench" / f"gpt-oss-{preset}-width-{layers}L"
    if not (path / "config.json").exists():
        print(f"building {path} ...", file=sys.stderr)
        make_checkpoint(path, preset=preset, num_layers=layers, seed=0)
    return path


def worker(model: str, strategy: str, prompt: int, decode: int, fast: str) -> None:
    """One rank (or the single process): load, prefill, greedy decode; print a JSON line."""
    import mlx.core as mx

    from gptoss_mlx.cli.doctor_hosts import long_prompt
    from gptoss_mlx.model.generate import prefill

    group = mx.distributed.init()
    t0 = time.perf_counter()
    if group.size() > 1:
        from gptoss_mlx.model.sharded_load import sharded_load

        m = sharded_load(model, group, strategy)[0]
    else:
        from gptoss_mlx.model.loader import load_model

        m = load_model(model)
        m.set_fast_path(None if fast == "on" else False)
    load_s = time.perf_counter() - t0
    mx.reset_peak_memory()
    cache = m.make_cache()
    t0 = time.perf_counter()
    logits = prefill(m, long_prompt(prompt), cache)
    mx.eval(logits)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(decode):
        token = mx.argmax(logits, axis=-1)
        logits = m(token.reshape(1, 1), cache, last_only=True)[:, -1, :]
        mx.eval(logits)
    decode_s = time.perf_counter() - t0
    print(json.dumps({
        "rank": group.rank(), "load_s": load_s, "prefill_tps": prompt / prefill_s,
        "decode_tps": decode / decode_s, "peak_memory": int(mx.get_peak_memory()),
        "held": int(mx.get_active_memory()),
    }), flush=True)  # fmt: skip


def run(n: int, model: Path, strategy: str, args: argparse.Namespace, fast: str = "off") -> list:
    cmd = [sys.executable, __file__, "--worker", strategy, "--model", str(model)]
    cmd += ["--prompt", str(args.prompt), "--decode", str(args.decode), "--fast", fast]
    if n > 1:
        launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent))
        port = str(random.randrange(20000, 60000, 16))
        cmd = [launcher, "--backend", "ring", "-n", str(n), "--starting-port", port, "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith('{"rank"')]
    if len(rows) != n:
        raise SystemExit(f"{strategy} x{n} failed:\n{r.stderr[-2000:]}")
    return sorted(rows, key=lambda x: x["rank"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: built)")
    ap.add_argument("--preset", default="20b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fast", default="off", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(str(args.model), args.worker, args.prompt, args.decode, args.fast)
        return 0
    model = args.model or checkpoint(args.preset, args.layers)
    runs = [
        ("1 process, fast path", run(1, model, "tensor", args, fast="on")),
        ("1 process, plain MLX", run(1, model, "tensor", args)),
        ("2 ranks, tensor", run(2, model, "tensor", args)),
        ("2 ranks, pipeline", run(2, model, "pipeline", args)),
    ]
    print(f"{model.name}: prompt {args.prompt}, decode {args.decode} (greedy)")
    print(f"{'run':22} {'prefill tok/s':>13} {'decode tok/s':>12}  peak memory per rank (MiB)")
    for name, rows in runs:
        peaks = ", ".join(f"{r['peak_memory'] / 2**20:.0f}" for r in rows)
        pre = min(r["prefill_tps"] for r in rows)
        dec = min(r["decode_tps"] for r in rows)
        print(f"{name:22} {pre:13.1f} {dec:12.2f}  {peaks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
