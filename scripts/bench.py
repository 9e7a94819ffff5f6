"""Benchmark gptoss-mlx against mlx-lm on the same synthetic checkpoint with gpt-oss-20b widths.

Each runner runs in its own process, as a user would run it; several rounds; medians and ratios.

    python scripts/bench.py                      # 4 layers, 512-token prompt, 128 decoded tokens
    python scripts/bench.py --layers 2 --prompt 128 --decode 32 --rounds 1 --peers ours,mlx-lm-f32
    python scripts/bench.py --convert            # also: convert wall time and peak RSS

Results are printed and written to bench-results/bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEERS = {
    "ours": "gptoss-mlx (default dtype for the device)",
    "mlx-lm": "mlx-lm as installed (bf16 activations)",
    "mlx-lm-f32": "mlx-lm with float32 activations",
}


def checkpoint(layers: int) -> Path:
    from scripts.make_checkpoint import make_checkpoint

    path = ROOT / ".cache" / "bench" / f"gpt-oss-20b-width-{layers}L"
    if not (path / "config.json").exists():
        print(f"building a {layers}-layer checkpoint with gpt-oss-20b widths at {path} ...", file=sys.stderr)
        make_checkpoint(path, preset="20b", num_layers=layers, seed=0)
    return path


def prompt_ids(n: int) -> list[int]:
    import numpy as np

    return [int(t) for t in np.random.default_rng(0).integers(1000, 199_000, size=n)]


def worker(peer: str, ckpt: Path, n_prompt: int, n_decode: int) -> dict:
    """Run inside a fresh process: load, one warm-up, then prefill + decode."""
    ids = prompt_ids(n_prompt)
    t0 = time.perf_counter()
    if peer == "ours":
        from gptoss_mlx import load_model
        from gptoss_mlx.generate import GenerationStats, generate, make_sampler, SamplerSettings

        model, _ = load_model(ckpt)
        load_s = time.perf_counter() - t0
        sampler = make_sampler(SamplerSettings(temperature=0))
        # warm-up (compiles kernels, touches weights)
        for _ in generate(model, ids[:16], model.make_cache(), sampler, max_tokens=2, stop_tokens={}, context_limit=131072):
            pass
        stats = GenerationStats()
        for _ in generate(model, ids, model.make_cache(), sampler, max_tokens=n_decode, stop_tokens={},
                          context_limit=131072, stats=stats):
            pass
        prefill_tps, decode_tps, peak = stats.prefill_tps, stats.decode_tps, stats.peak_memory_bytes
    else:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler as lm_sampler
        from mlx_lm.utils import load

        model, tokenizer = load(str(ckpt))
        if peer == "mlx-lm-f32":
            model.set_dtype(mx.float32)
        load_s = time.perf_counter() - t0
        tokenizer._eos_token_ids = set()  # never stop early: decode exactly n_decode tokens
        for _ in stream_generate(model, tokenizer, ids[:16], max_tokens=2, sampler=lm_sampler(0.0)):
            pass
        mx.reset_peak_memory()
        last = None
        for last in stream_generate(model, tokenizer, ids, max_tokens=n_decode, sampler=lm_sampler(0.0)):
            pass
        prefill_tps, decode_tps, peak = last.prompt_tps, last.generation_tps, int(last.peak_memory * 1e9)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peer": peer, "prefill_tps": prefill_tps, "decode_tps": decode_tps, "peak_memory": peak,
            "max_rss": rss, "load_s": load_s}


def run_worker(peer: str, ckpt: Path, n_prompt: int, n_decode: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", peer, "--checkpoint", str(ckpt), "--prompt", str(n_prompt),
           "--decode", str(n_decode)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{peer} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed_rss(cmd: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS of a child process."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024


def bench_convert(ckpt: Path) -> dict:
    import shutil

    out = ROOT / ".cache" / "bench" / "convert-out"
    results = {}
    for name, cmd in (
        ("ours", [sys.executable, "-m", "gptoss_mlx", "convert", str(ckpt), str(out), "--force", "--no-verify"]),
        ("mlx-lm", [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(ckpt), "--mlx-path", str(out)]),
    ):
        shutil.rmtree(out, ignore_errors=True)
        secs, rss = timed_rss(cmd)
        results[name] = {"seconds": secs, "max_rss": rss}
    shutil.rmtree(out, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", default="ours,mlx-lm-f32,mlx-lm")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--convert", action="store_true", help="also time convert against mlx_lm.convert")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.checkpoint, args.prompt, args.decode)))
        return

    ckpt = args.checkpoint or checkpoint(args.layers)
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    peers = [p for p in args.peers.split(",") if p]
    rows = {}
    for peer in peers:
        runs = [run_worker(peer, ckpt, args.prompt, args.decode) for _ in range(args.rounds)]
        rows[peer] = {k: statistics.median(r[k] for r in runs) for k in ("prefill_tps", "decode_tps", "peak_memory", "max_rss", "load_s")}
        print(f"{peer:12s} prefill {rows[peer]['prefill_tps']:8.2f} tok/s  decode {rows[peer]['decode_tps']:7.2f} tok/s"
              f"  peak {rows[peer]['peak_memory'] / 2**30:6.2f} GiB  rss {rows[peer]['max_rss'] / 2**30:6.2f} GiB", flush=True)
    print(f"\ncheckpoint: {ckpt} ({size / 1e9:.2f} GB), prompt {args.prompt}, decode {args.decode}, rounds {args.rounds}")
    if "ours" in rows:
        for peer in peers:
            if peer == "ours":
                continue
            r, o = rows[peer], rows["ours"]
            print(f"ours / {peer}: prefill x{o['prefill_tps'] / r['prefill_tps']:.2f}, decode x{o['decode_tps'] / r['decode_tps']:.2f},"
                  f" peak memory x{o['peak_memory'] / r['peak_memory']:.2f}")
    result = {"args": vars(args) | {"checkpoint": str(ckpt)}, "weights_bytes": size, "results": rows}
    if args.convert:
        conv = bench_convert(ckpt)
        result["convert"] = conv
        for name, r in conv.items():
            print(f"convert {name:7s} {r['seconds']:7.1f} s  peak RSS {r['max_rss'] / 2**30:.2f} GiB")
    out = ROOT / "bench-results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
