"""Benchmark gptoss-mlx against mlx-lm and llama.cpp on one synthetic checkpoint with gpt-oss-20b widths.

Each runner runs in its own process, as a user would run it; rounds are interleaved (every peer
once per round, so a busy machine slows all of them alike); medians and ratios. A bandwidth probe
runs in every round too, so decode speed can be read against this machine's memory bandwidth now.

    python scripts/bench.py                       # 4 layers; prefill 512 and 4096; decode 128; 3 rounds
    python scripts/bench.py --peers ours,llama.cpp --rounds 1
    python scripts/bench.py --micro               # kernel micro-benchmarks (same process, medians)
    python scripts/bench.py --convert             # also: convert wall time and peak RSS

Peers: ours (gptoss-mlx as the loader builds it), ours-f32w (the previous loader, which cast the
dense matmul weights to float32 instead of keeping them bf16), mlx-lm (as installed, bf16),
mlx-lm-f32, mlx-lm-f32-blas (float32 with OpenBLAS loaded first), llama.cpp (llama-bench, built
on demand from the llama-cpp-python sdist on PyPI into .cache/llama.cpp; the checkpoint is
converted with its convert_hf_to_gguf.py). mlx-lm prefills at well under 1 tok/s here, so its
peers run a shorter prompt and decode (--slow-prompt, --slow-decode); rates are per token.

Results are printed and written to bench-results/bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LLAMA_DIR = ROOT / ".cache" / "llama.cpp"

PEERS = {
    "ours": "gptoss-mlx (default dtype and path for the device)",
    "ours-f32w": "gptoss-mlx with dense matmul weights cast to float32 (the previous loader)",
    "mlx-lm": "mlx-lm as installed (bf16 activations)",
    "mlx-lm-f32": "mlx-lm with float32 activations",
    "mlx-lm-f32-blas": "mlx-lm with float32 activations and OpenBLAS loaded before mlx",
    "llama.cpp": "llama.cpp llama-bench, MXFP4 experts, 2 threads",
}
SLOW = ("mlx-lm", "mlx-lm-f32", "mlx-lm-f32-blas")
METRICS = ("decode_tps", "peak_memory", "max_rss", "load_s")


def checkpoint(layers: int) -> Path:
    from scripts.make_checkpoint import make_checkpoint

    path = ROOT / ".cache" / "bench" / f"gpt-oss-20b-width-{layers}L"
    if not (path / "config.json").exists():
        print(
            f"building a {layers}-layer checkpoint with gpt-oss-20b widths at {path} ...",
            file=sys.stderr,
        )
        make_checkpoint(path, preset="20b", num_layers=layers, seed=0)
    return path


def prompt_ids(n: int) -> list[int]:
    import numpy as np

    return [int(t) for t in np.random.default_rng(0).integers(1000, 199_000, size=n)]


# -- workers (each in a fresh process) -------------------------------------------------------


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: dense layers, k of E experts, one embedding row."""
    from mlx.utils import tree_flatten

    cfg = model.config
    share = cfg.num_experts_per_tok / cfg.num_local_experts
    total = 0
    for name, a in tree_flatten(model.parameters()):
        if name == "model.embed_tokens.weight":
            total += a.nbytes // a.shape[0]
        elif ".mlp.experts." in name:
            total += int(a.nbytes * share)
        else:
            total += a.nbytes
    return total


def _cast_all_loader() -> None:
    """The previous loader: dense matmul weights cast to float32 too (for comparison)."""
    from gptoss_mlx.backend import device as device

    device.stored_dtype_params = lambda model, dtype: set()


def worker_ours(peer: str, ckpt: Path, prompts: list[int], n_decode: int) -> dict:
    from gptoss_mlx.backend.device import backend_report, prepare_backend

    prepare_backend()  # what gptoss_mlx/__init__.py does, before mlx is imported
    if peer == "ours-f32w":
        _cast_all_loader()
    import mlx.core as mx

    from gptoss_mlx import load_model
    from gptoss_mlx.model.generate import GenerationStats, generate
    from gptoss_mlx.model.sampling import SamplerSettings, make_sampler

    t0 = time.perf_counter()
    model, _ = load_model(ckpt)
    load_s = time.perf_counter() - t0
    sampler = make_sampler(SamplerSettings(temperature=0))
    for _ in generate(
        model,
        prompt_ids(16),
        model.make_cache(),
        sampler,
        max_tokens=2,
        stop_tokens={},
        context_limit=131072,
    ):
        pass  # warm-up: builds the kernels, touches the weights
    out: dict = {
        "prefill_tps": {},
        "load_s": load_s,
        "path": model.fast_path()[1],
        "backend": backend_report(),
    }
    for i, n in enumerate(prompts):
        stats = GenerationStats()
        for _ in generate(
            model,
            prompt_ids(n),
            model.make_cache(),
            sampler,
            max_tokens=n_decode if i == 0 else 1,
            stop_tokens={},
            context_limit=131072,
            stats=stats,
        ):
            pass
        out["prefill_tps"][str(n)] = stats.prefill_tps
        if i == 0:
            out["decode_tps"] = stats.decode_tps
    out["peak_memory"] = int(mx.get_peak_memory())
    out["weight_bytes_per_token"] = weight_bytes_per_token(model)
    return out


def worker_mlx_lm(peer: str, ckpt: Path, prompts: list[int], n_decode: int) -> dict:
    if peer == "mlx-lm-f32-blas":
        from gptoss_mlx.backend.blas import preload

        preload()
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler as lm_sampler
    from mlx_lm.utils import load

    t0 = time.perf_counter()
    model, tokenizer = load(str(ckpt))
    if peer != "mlx-lm":
        model.set_dtype(mx.float32)
    load_s = time.perf_counter() - t0
    tokenizer._eos_token_ids = set()  # never stop early: decode exactly n_decode tokens
    for _ in stream_generate(
        model, tokenizer, prompt_ids(16), max_tokens=2, sampler=lm_sampler(0.0)
    ):
        pass
    out: dict = {"prefill_tps": {}, "load_s": load_s}
    for i, n in enumerate(prompts):
        steps = list(
            stream_generate(
                model,
                tokenizer,
                prompt_ids(n),
                max_tokens=n_decode if i == 0 else 1,
                sampler=lm_sampler(0.0),
            )
        )
        last = steps[-1]
        out["prefill_tps"][str(n)] = last.prompt_tps
        if i == 0:
            out["decode_tps"] = last.generation_tps
    out["peak_memory"] = int(mx.get_peak_memory())
    return out


def worker_bandwidth() -> dict:
    """Streaming read bandwidth now: numpy sum over 1 GiB, on one thread and on two."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.ones(2**28, dtype=np.float32)
    halves = np.split(a, 2)

    def best(fn) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return a.nbytes / statistics.median(times)

    with ThreadPoolExecutor(2) as pool:
        two = best(lambda: list(pool.map(np.sum, halves)))
    return {"one_thread": best(a.sum), "two_threads": two}


def run_measured(cmd: list[str], quiet: bool = False) -> tuple[str, float, int]:
    """stdout, wall seconds and peak RSS of a child process (stderr passes through unless quiet)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None, text=True
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}")
    return out, time.perf_counter() - t0, usage.ru_maxrss * 1024


def run_worker(peer: str, ckpt: Path, prompts: list[int], n_decode: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", peer, "--checkpoint", str(ckpt),
           "--prompts", ",".join(map(str, prompts)), "--decode", str(n_decode)]  # fmt: skip
    out, wall, rss = run_measured(cmd)
    return json.loads(out.strip().splitlines()[-1]) | {"max_rss": rss, "wall_s": wall}


# -- llama.cpp ---------------------------------------------------------------------------------


def llama_bench_binary() -> Path:
    return llama_binary("llama-bench")


def llama_binary(target: str) -> Path:
    """A llama.cpp tool (llama-bench, llama-server) built from the llama-cpp-python sdist (which
    vendors llama.cpp), cached under .cache/llama.cpp."""
    binary = LLAMA_DIR / "build" / "bin" / target
    if binary.exists():
        return binary
    src = llama_source()
    print(f"building {target} (about 15 minutes on 2 cores) ...", file=sys.stderr, flush=True)
    build = LLAMA_DIR / "build"
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
                    "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run(["cmake", "--build", str(build), "--target", target, f"-j{os.cpu_count() or 2}"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return binary


def llama_source() -> Path:
    found = sorted(LLAMA_DIR.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[-1]
    LLAMA_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                    "llama-cpp-python", "-d", str(LLAMA_DIR)], check=True)  # fmt: skip
    sdist = sorted(LLAMA_DIR.glob("llama_cpp_python-*.tar.gz"))[-1]
    shutil.unpack_archive(sdist, LLAMA_DIR)
    return sorted(LLAMA_DIR.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]


def gguf_of(ckpt: Path) -> Path:
    out = LLAMA_DIR / "gguf" / f"{ckpt.name}.gguf"
    if out.exists():
        return out
    src = llama_source()
    out.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONPATH": str(src / "gguf-py")}
    tmp = out.with_suffix(".partial")
    subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(ckpt), "--outfile", str(tmp),
                    "--outtype", "auto"], check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    tmp.rename(out)
    return out


def run_llama(ckpt: Path, prompts: list[int], n_decode: int, threads: int) -> dict:
    binary, model = llama_bench_binary(), gguf_of(ckpt)
    cmd = [str(binary), "-m", str(model), "-p", ",".join(map(str, prompts)), "-n", str(n_decode),
           "-t", str(threads), "-r", "1", "-o", "json"]  # fmt: skip
    out, wall, rss = run_measured(cmd, quiet=True)
    rows = json.loads(out)
    r: dict = {"prefill_tps": {}, "load_s": float("nan"), "peak_memory": float("nan")}
    for row in rows:
        if row["n_prompt"] and not row["n_gen"]:
            r["prefill_tps"][str(row["n_prompt"])] = row["avg_ts"]
        elif row["n_gen"]:
            r["decode_tps"] = row["avg_ts"]
    r["max_rss"], r["wall_s"] = rss, wall
    r["model_bytes"] = model.stat().st_size
    return r


# -- micro-benchmarks ----------------------------------------------------------------------------


def micro(ckpt: Path, repeats: int) -> None:
    """Our kernels against the alternatives, in one process, on slices of the checkpoint."""
    from gptoss_mlx.backend.device import prepare_backend

    prepare_backend()
    import mlx.core as mx
    import numpy as np

    from gptoss_mlx.backend import kernels as ck
    from gptoss_mlx.backend.cpu_path import CpuFastPath, as_numpy
    from gptoss_mlx.model.config import ModelConfig
    from gptoss_mlx.model.gpt_oss import MLP
    from gptoss_mlx.model.loader import read_weights

    lib = ck.load()
    if lib is None:
        raise SystemExit(f"no kernels: {ck.status().reason}")
    cfg = ModelConfig.from_dir(ckpt)
    weights = read_weights(ckpt, cfg)

    def med(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def show(name: str, secs: float, extra: str = "") -> None:
        print(f"  {name:48s} {secs * 1e3:9.2f} ms  {extra}", flush=True)

    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, cfg.hidden_size)).astype(np.float32)

    print("lm_head gemv [1, 2880] x [201088, 2880]:")
    w = weights["lm_head.weight"]
    mx.eval(w)
    wb = as_numpy(w)
    show(
        "C kernel, bf16 weights",
        t := med(lambda: ck.linear(lib, wb, x1, None)),
        f"{wb.nbytes / t / 1e9:.1f} GB/s",
    )
    f32 = {"np": ck.bf16_to_f32(lib, wb)}
    nbytes = f32["np"].nbytes
    show(
        "C kernel, f32 weights",
        t := med(lambda: ck.linear(lib, f32["np"], x1, None)),
        f"{nbytes / t / 1e9:.1f} GB/s",
    )
    show(
        "numpy (OpenBLAS sgemv), f32",
        t := med(lambda: x1 @ f32["np"].T),
        f"{nbytes / t / 1e9:.1f} GB/s",
    )
    xm = mx.array(x1)
    f32["mx"] = mx.array(f32.pop("np"))
    show(
        "MLX x @ W.T, f32",
        t := med(lambda: mx.eval(xm @ f32["mx"].T)),
        f"{nbytes / t / 1e9:.1f} GB/s",
    )
    f32.clear()
    show("MLX x @ W.T, bf16 x bf16", med(lambda: mx.eval(xm.astype(mx.bfloat16) @ w.T)))

    prefix = "model.layers.0.mlp."
    mlp = MLP(cfg, 32, 4, "mxfp4")
    mlp.load_weights([(k[len(prefix) :], v) for k, v in weights.items() if k.startswith(prefix)])
    mlp.update({"router": {k: v.astype(mx.float32) for k, v in mlp.router.parameters().items()}})
    for p in ("gate_proj", "up_proj", "down_proj"):
        getattr(mlp.experts, p).bias = getattr(mlp.experts, p).bias.astype(mx.float32)
    mx.eval(mlp.parameters())
    fast = CpuFastPath(lib)
    for n in (1, 4, 16, 64, 512):
        x = mx.array(rng.standard_normal((n, cfg.hidden_size)).astype(np.float32))

        def run(x: mx.array = x) -> None:
            mx.eval(mlp(x))

        print(f"MoE block (router + top-4 of 32 experts), {n} tokens:")
        mlp._fast = None
        show("MLX mx.gather_qmm (sorted when >= 64 rows)", med(run) if n <= 64 else float("nan"))
        mlp._fast = fast
        show("CPU fast path", med(run))
    gp = mlp.experts.gate_proj
    wq, sq = as_numpy(gp.weight).view(np.uint8)[0], as_numpy(gp.scales)[0]
    out = np.empty((gp.weight.shape[1], cfg.hidden_size), dtype=np.float32)
    print("dequantize one expert's gate (2880 x 2880 MXFP4 -> f32):")
    show(
        "C kernel",
        t := med(lambda: ck.dequant_mxfp4(lib, wq, sq, out)),
        f"{out.size / t / 1e9:.2f} G values/s",
    )
    show(
        "mx.dequantize",
        med(
            lambda: mx.eval(
                mx.dequantize(
                    gp.weight[0],
                    gp.scales[0],
                    group_size=32,
                    bits=4,
                    mode="mxfp4",
                    dtype=mx.float32,
                )
            )
        ),
    )
    print("sgemm orientation, 64 tokens x one expert's gate+up (5760 x 2880):")
    wgu = np.concatenate([out, out])
    xe = rng.standard_normal((64, cfg.hidden_size)).astype(np.float32)
    show(
        "X @ W.T",
        t := med(lambda: xe @ wgu.T),
        f"{2 * xe.shape[0] * wgu.size / t / 1e9:.1f} GFLOPS",
    )
    show(
        "W @ X.T (used)",
        t := med(lambda: wgu @ xe.T),
        f"{2 * xe.shape[0] * wgu.size / t / 1e9:.1f} GFLOPS",
    )


# -- driver --------------------------------------------------------------------------------------


def summarize(runs: list[dict], prompts: list[str]) -> dict:
    row = {k: statistics.median(r[k] for r in runs) for k in METRICS if all(k in r for r in runs)}
    row["prefill_tps"] = {
        p: statistics.median(r["prefill_tps"][p] for r in runs)
        for p in prompts
        if all(p in r["prefill_tps"] for r in runs)
    }
    for k in ("weight_bytes_per_token", "path", "backend", "model_bytes"):
        if k in runs[0]:
            row[k] = runs[0][k]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument(
        "--prompts",
        default="512,4096",
        help="prompt lengths to prefill (the first one is also decoded from)",
    )
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument(
        "--slow-prompt", type=int, default=64, help="prompt length for the mlx-lm peers"
    )
    ap.add_argument(
        "--slow-decode", type=int, default=16, help="decoded tokens for the mlx-lm peers"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    ap.add_argument("--peers", default="ours,llama.cpp,mlx-lm-f32,mlx-lm")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--micro", action="store_true", help="kernel micro-benchmarks instead")
    ap.add_argument(
        "--convert", action="store_true", help="also time convert against mlx_lm.convert"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    prompts = [int(p) for p in args.prompts.split(",") if p]

    if args.worker:
        if args.worker == "bandwidth":
            result = worker_bandwidth()
        elif args.worker.startswith("ours"):
            result = worker_ours(args.worker, args.checkpoint, prompts, args.decode)
        else:
            result = worker_mlx_lm(args.worker, args.checkpoint, prompts, args.decode)
        print(json.dumps(result))
        return

    ckpt = args.checkpoint or checkpoint(args.layers)
    if args.micro:
        micro(ckpt, max(args.rounds, 5))
        return
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}; choose from {sorted(PEERS)}")
    runs: dict[str, list[dict]] = {p: [] for p in [*peers, "bandwidth"]}
    for rnd in range(args.rounds):
        runs["bandwidth"].append(run_worker("bandwidth", ckpt, [1], 0))
        for peer in peers:
            if peer == "llama.cpp":
                r = run_llama(ckpt, prompts, args.decode, args.threads)
            elif peer in SLOW:
                r = run_worker(peer, ckpt, [args.slow_prompt], args.slow_decode)
            else:
                r = run_worker(peer, ckpt, prompts, args.decode)
            runs[peer].append(r)
            pre = "  ".join(f"pp{p} {v:7.2f}" for p, v in r["prefill_tps"].items())
            print(f"round {rnd + 1} {peer:15s} {pre}  decode {r.get('decode_tps', float('nan')):6.2f} tok/s"
                  f"  rss {r['max_rss'] / 2**30:5.2f} GiB  ({r['wall_s']:.0f} s)", flush=True)  # fmt: skip

    bw = {
        k: statistics.median(r[k] for r in runs["bandwidth"]) for k in ("one_thread", "two_threads")
    }
    rows = {
        p: summarize(runs[p], [str(n) for n in prompts] + [str(args.slow_prompt)]) for p in peers
    }
    print(
        f"\ncheckpoint: {ckpt} ({size / 2**30:.2f} GiB of weights), decode {args.decode} tokens, {args.rounds} rounds (medians)"
    )
    print(
        f"streaming read bandwidth now: {bw['one_thread'] / 1e9:.1f} GB/s (1 thread), {bw['two_threads'] / 1e9:.1f} GB/s (2 threads)"
    )
    head = "".join(f"{'pp' + p:>10s}" for p in [str(n) for n in prompts] + [str(args.slow_prompt)])
    print(f"{'peer':16s}{head}{'decode':>9s}{'MLX peak':>10s}{'max RSS':>9s}  (tok/s, GiB)")
    for p, r in rows.items():
        cells = "".join(
            f"{r['prefill_tps'].get(k, float('nan')):10.2f}"
            for k in [str(n) for n in prompts] + [str(args.slow_prompt)]
        )
        print(
            f"{p:16s}{cells}{r.get('decode_tps', float('nan')):9.2f}{r.get('peak_memory', float('nan')) / 2**30:10.2f}{r['max_rss'] / 2**30:9.2f}"
        )
    for ours in [p for p in peers if p.startswith("ours")]:
        o = rows[ours]
        print(f"\n{ours}: max RSS {o['max_rss'] / size:.2f}x the weights; {o.get('path', '')}")
        if "weight_bytes_per_token" in o and o.get("decode_tps"):
            rate = o["weight_bytes_per_token"] * o["decode_tps"]
            print(f"  decode reads {o['weight_bytes_per_token'] / 1e9:.2f} GB of weights a token: {rate / 1e9:.1f} GB/s,"
                  f" {rate / bw['two_threads']:.0%} of the 2-thread streaming bandwidth")  # fmt: skip
        for peer in peers:
            if peer.startswith("ours"):
                continue
            r = rows[peer]
            ratios = [
                f"pp{k} x{o['prefill_tps'][k] / v:.2f}"
                for k, v in r["prefill_tps"].items()
                if k in o["prefill_tps"]
            ]
            if peer in SLOW:  # their prompt is shorter: compare with our shortest
                ratios = [
                    f"pp{args.slow_prompt} vs our pp{prompts[0]} x{o['prefill_tps'][str(prompts[0])] / v:.2f}"
                    for v in r["prefill_tps"].values()
                ]
            dec = f"decode x{o['decode_tps'] / r['decode_tps']:.2f}" if r.get("decode_tps") else ""
            print(
                f"  / {peer:15s} {', '.join(ratios)}, {dec}, max RSS x{o['max_rss'] / r['max_rss']:.2f}"
            )
    result = {
        "args": vars(args) | {"checkpoint": str(ckpt)},
        "weights_bytes": size,
        "bandwidth": bw,
        "results": rows,
        "runs": runs,
    }
    if args.convert:
        conv = bench_convert(ckpt)
        result["convert"] = conv
        for name, r in conv.items():
            print(
                f"convert {name:7s} {r['seconds']:7.1f} s  peak RSS {r['max_rss'] / 2**30:.2f} GiB"
            )
    out = ROOT / "bench-results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"written {out}")


def timed_rss(cmd: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS of a child process."""
    _, wall, rss = run_measured(cmd)
    return wall, rss


def bench_convert(ckpt: Path) -> dict:
    out = ROOT / ".cache" / "bench" / "convert-out"
    results = {}
    for name, cmd in (
        (
            "ours",
            [
                sys.executable,
                "-m",
                "gptoss_mlx",
                "convert",
                str(ckpt),
                str(out),
                "--force",
                "--no-verify",
            ],
        ),
        (
            "mlx-lm",
            [
                sys.executable,
                "-m",
                "mlx_lm",
                "convert",
                "--hf-path",
                str(ckpt),
                "--mlx-path",
                str(out),
            ],
        ),
    ):
        shutil.rmtree(out, ignore_errors=True)
        secs, rss = timed_rss(cmd)
        results[name] = {"seconds": secs, "max_rss": rss}
    shutil.rmtree(out, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
