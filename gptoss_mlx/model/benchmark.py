"""`gptoss bench`: prefill and decode speed, time to first token and peak memory on this machine,
for gptoss and (optionally) mlx-lm on the same weights.

Each runner runs in a fresh process (`python -m gptoss_mlx.model.benchmark RUNNER ...`), as a user would
run it, and both are timed the same way from outside their generation loops: time to first token
is the wall time from the call to the first token; prefill tok/s is prompt tokens over that time;
decode tok/s is the tokens after the first over the time from the first to the last. mlx-lm runs
as installed (no BLAS preloaded; GPTOSS_BLAS=off in its process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError

RUNNERS = ("gptoss", "mlx-lm")
PROMPT_TOKENS = (512, 4096)
DECODE_TOKENS = 128


@dataclass
class BenchResult:
    runner: str
    prefill_tps: dict[int, float] = field(default_factory=dict)  # prompt tokens -> tok/s
    time_to_first_token: dict[int, float] = field(default_factory=dict)  # prompt tokens -> s
    decode_tps: float = 0.0
    decode_tokens: int = 0
    peak_memory_bytes: int = 0  # MLX's peak allocation
    max_rss_bytes: int = 0  # the process's peak resident set
    load_seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        d = dict(d)
        for key in ("prefill_tps", "time_to_first_token"):
            d[key] = {int(k): v for k, v in d[key].items()}
        return cls(**d)


def prompt_ids(n: int) -> list[int]:
    """A fixed pseudo-random prompt of `n` ordinary token ids (no special tokens)."""
    import numpy as np

    return [int(t) for t in np.random.default_rng(n).integers(1000, 199_000, size=n)]


def timed_tokens(
    tokens: Iterable[object], n_prompt: int, result: BenchResult, decode: bool
) -> None:
    """Drain a token stream, recording time to first token and, with `decode`, the decode rate."""
    t0 = time.perf_counter()
    first = last = None
    count = 0
    for _ in tokens:
        last = time.perf_counter()
        first = first or last
        count += 1
    if first is None:
        raise RuntimeError("the runner produced no token")
    result.time_to_first_token[n_prompt] = first - t0
    result.prefill_tps[n_prompt] = n_prompt / (first - t0)
    if decode and count > 1:
        result.decode_tps = (count - 1) / (last - first)
        result.decode_tokens = count - 1


def _run_gptoss(model_dir: Path, prompts: list[int], n_decode: int, dtype: str) -> BenchResult:
    import mlx.core as mx

    from . import generate as gen
    from .loader import load_model
    from .sampling import SamplerSettings, make_sampler

    t0 = time.perf_counter()
    model = load_model(model_dir, dtype=dtype or None)
    result = BenchResult("gptoss", load_seconds=time.perf_counter() - t0)
    result.detail = f"{model.dtype}: {model.fast_path()[1]}"
    sampler = make_sampler(SamplerSettings(temperature=0))

    def stream(n: int, max_tokens: int) -> Iterator[int]:
        return gen.generate(model, prompt_ids(n), model.make_cache(), sampler,
                            max_tokens=max_tokens, stop_tokens={}, context_limit=n + max_tokens)  # fmt: skip

    for _ in stream(16, 2):
        pass  # warm-up: compiles, touches the weights
    for i, n in enumerate(prompts):
        timed_tokens(stream(n, n_decode if i == 0 else 1), n, result, decode=i == 0)
    result.peak_memory_bytes = int(mx.get_peak_memory())
    return result


def _run_mlx_lm(model_dir: Path, prompts: list[int], n_decode: int, dtype: str) -> BenchResult:
    del dtype  # mlx-lm as installed: the checkpoint's dtype (bf16)
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load

    t0 = time.perf_counter()
    model, tokenizer = load(str(model_dir))
    result = BenchResult("mlx-lm", load_seconds=time.perf_counter() - t0)
    result.detail = f"mlx-lm, {model.model.embed_tokens.weight.dtype} weights"
    tokenizer._eos_token_ids = set()  # never stop early: decode exactly n_decode tokens

    def stream(n: int, max_tokens: int) -> Iterator[object]:
        return stream_generate(model, tokenizer, prompt_ids(n), max_tokens=max_tokens,
                               sampler=make_sampler(0.0))  # fmt: skip

    for _ in stream(16, 2):
        pass
    for i, n in enumerate(prompts):
        timed_tokens(stream(n, n_decode if i == 0 else 1), n, result, decode=i == 0)
    result.peak_memory_bytes = int(mx.get_peak_memory())
    return result


WORKERS: dict[str, Callable[[Path, list[int], int, str], BenchResult]] = {
    "gptoss": _run_gptoss,
    "mlx-lm": _run_mlx_lm,
}


def run(
    runner: str, model_dir: Path, prompts: list[int], n_decode: int, dtype: str | None = None
) -> BenchResult:
    """Measure `runner` in its own Python process (gptoss with activations in `dtype`, default:
    the device's); UserError if it fails."""
    if runner not in WORKERS:
        raise UserError(f"unknown runner {runner!r}; choose from {', '.join(RUNNERS)}")
    env = dict(os.environ)
    if runner == "mlx-lm":
        env["GPTOSS_BLAS"] = "off"  # mlx-lm as installed
    cmd = [sys.executable, "-m", "gptoss_mlx.model.benchmark", runner, str(model_dir),
           ",".join(map(str, prompts)), str(n_decode), dtype or ""]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()
        if said:
            last = said[-1]
        elif proc.returncode < 0:
            last = f"killed by signal {-proc.returncode} (out of memory?)"
        else:
            last = f"exit status {proc.returncode}, no output"
        raise UserError(f"the {runner} benchmark failed: {last}")
    return BenchResult.from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def median(results: list[BenchResult]) -> BenchResult:
    """One runner's rounds as one result: the median of each figure (the first round's detail)."""
    import statistics

    def med(values: Iterable[float]) -> float:
        return statistics.median(list(values))

    first = results[0]
    return BenchResult(
        first.runner,
        prefill_tps={n: med(r.prefill_tps[n] for r in results) for n in first.prefill_tps},
        time_to_first_token={
            n: med(r.time_to_first_token[n] for r in results) for n in first.time_to_first_token
        },
        decode_tps=med(r.decode_tps for r in results),
        decode_tokens=first.decode_tokens,
        peak_memory_bytes=int(med(r.peak_memory_bytes for r in results)),
        max_rss_bytes=int(med(r.max_rss_bytes for r in results)),
        load_seconds=med(r.load_seconds for r in results),
        detail=first.detail,
    )


def ratios(ours: BenchResult, theirs: BenchResult) -> dict[str, float]:
    """How much better gptoss does than `theirs` on each figure (> 1: gptoss is better)."""
    # (time to first token is prompt tokens over prefill rate: its ratio is the prefill one)
    out = {f"prefill_{n}": ours.prefill_tps[n] / theirs.prefill_tps[n] for n in ours.prefill_tps}
    if theirs.decode_tps:
        out["decode"] = ours.decode_tps / theirs.decode_tps
    if ours.peak_memory_bytes:
        out["peak_memory"] = theirs.peak_memory_bytes / ours.peak_memory_bytes
    return out


def _max_rss() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB


def _worker(argv: list[str]) -> int:
    runner, model_dir, prompts, n_decode, dtype = argv
    counts = [int(p) for p in prompts.split(",")]
    result = WORKERS[runner](Path(model_dir), counts, int(n_decode), dtype)
    result.max_rss_bytes = _max_rss()
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
