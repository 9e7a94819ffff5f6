"""How much memory a model needs at a context length, how much this machine has, and the guard
that refuses to load what will not fit (saying what would).

The estimate is weights + KV cache + overhead:
- weights: the checkpoint's tensors as the loader keeps them (float tensors other than the
  embedding table, and on the CPU fast path other than the dense matmul weights, are cast to the
  activation dtype);
- KV cache: `ModelConfig.kv_cache_bytes` (sliding layers hold only their window), with full
  layers rounded up to the cache's allocation step;
- overhead: one prefill chunk's activations, the attention scores when the backend materialises
  them (MLX's CPU backend does; Metal's fused kernel does not), the copy a full-layer cache makes
  when it grows, last-token logits and sampling buffers, and a fixed runtime margin.
The activation terms were checked against MLX's peak-memory counter on the tiny model
(tests/test_memory.py) and carry a 1.5x margin.

The budget: GPTOSS_MEMORY_LIMIT_BYTES if set (e.g. "24GB"; handy to keep room for other apps),
else on a Mac with Metal the GPU working-set limit (raised with `sysctl iogpu.wired_limit_mb`),
else the RAM the OS reports available.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..backend.device import PREFILL_CHUNK_CPU, PREFILL_CHUNK_METAL
from ..errors import NotEnoughMemoryError
from ..paths import model_name
from ..units import MiB, human_bytes, parse_bytes
from .config import ModelConfig

KV_STEP = 256  # a full-attention cache grows by this many tokens at a time (cache.FullKVCache.step)
RUNTIME_MARGIN = 512 * MiB  # MLX runtime, Python, the tokenizer
ACTIVATION_SAFETY = 1.5
MIN_USEFUL_CONTEXT = 1024
# On Metal a model past the GPU working-set limit still runs (macOS pages what is not wired),
# as with mlx-lm; it is refused only past physical RAM less this reserve for macOS itself.
METAL_RESERVE_MIN = 1536 * MiB
AUTO_CONTEXT_ON_METAL = 8192  # below this the working set is too small: use the run limit
WORKING_SET = "GPU working-set limit"
FLOAT_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
# 20b, for suggesting it when 120b does not fit: download size of its weights, config defaults.
WEIGHTS_20B = 13_762_000_000


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    overhead: int
    context: int
    dtype_bytes: int
    warning: str = ""  # set when it runs past the GPU working-set limit (what to do about it)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


@dataclass(frozen=True)
class MemoryBudget:
    bytes: int
    source: str


# -- machine facts ----------------------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return out


def _sysctl(name: str) -> str | None:
    try:
        r = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def total_memory_bytes() -> int:
    if sys.platform == "darwin":
        v = _sysctl("hw.memsize")
        if v and v.isdigit():
            return int(v)
    mi = _meminfo()
    if "MemTotal" in mi:
        return mi["MemTotal"]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _vm_stat_available() -> int | None:
    try:
        out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"page size of (\d+) bytes", out)
    page = int(m.group(1)) if m else 4096
    pages = 0
    for key in ("Pages free", "Pages inactive", "Pages speculative", "Pages purgeable"):
        m = re.search(rf"{key}:\s+(\d+)", out)
        if m:
            pages += int(m.group(1))
    return pages * page if pages else None


def available_ram_bytes() -> int:
    if sys.platform == "darwin":
        v = _vm_stat_available()
        if v:
            return v
        return total_memory_bytes()
    mi = _meminfo()
    if "MemAvailable" in mi:
        return mi["MemAvailable"]
    return total_memory_bytes()


def metal_available() -> bool:
    try:
        import mlx.core as mx

        return bool(mx.metal.is_available())
    except Exception:
        return False


def metal_working_set_bytes() -> int | None:
    """The GPU working-set limit Metal recommends (what the wired limit sysctl raises)."""
    if not metal_available():
        return None
    from ..backend.device import metal_working_set_limit

    return metal_working_set_limit()


def wired_limit_mb() -> int | None:
    """macOS `iogpu.wired_limit_mb` (0 = the default, about 2/3 to 3/4 of RAM); None elsewhere."""
    if sys.platform != "darwin":
        return None
    v = _sysctl("iogpu.wired_limit_mb")
    return int(v) if v and v.isdigit() else None


def suggested_wired_limit_mb(total: int | None = None) -> int:
    """A wired limit that leaves the OS room: all RAM but max(4 GB, 1/8 of it)."""
    total_mb = (total if total is not None else total_memory_bytes()) // MiB
    return int(total_mb - max(4096, total_mb // 8))


def available_memory() -> MemoryBudget:
    """What a model may use on this machine, and where that number comes from."""
    env = os.environ.get("GPTOSS_MEMORY_LIMIT_BYTES")
    if env:
        return MemoryBudget(parse_bytes(env), "GPTOSS_MEMORY_LIMIT_BYTES")
    ws = metal_working_set_bytes()
    if ws:
        return MemoryBudget(ws, WORKING_SET)
    return MemoryBudget(available_ram_bytes(), "available RAM")


def metal_reserve_bytes(total: int) -> int:
    """RAM left to macOS when a model runs past the GPU working-set limit."""
    return max(METAL_RESERVE_MIN, total // 10)


def run_limit(budget: MemoryBudget) -> int:
    """The most a model may need and still run: past the GPU working-set limit, physical RAM less
    the reserve (with a warning); elsewhere the budget itself."""
    if budget.source != WORKING_SET:
        return budget.bytes
    total = total_memory_bytes()
    return max(budget.bytes, total - metal_reserve_bytes(total))


def wired_limit_hint(need: int) -> str:
    """The sysctl that raises the GPU working-set limit to `need` bytes."""
    return f"sudo sysctl iogpu.wired_limit_mb={math.ceil(need / MiB)}"


# -- the estimate ----------------------------------------------------------------------------------


def weights_bytes(model_dir: Path, dtype_bytes: int, *, keep_dense_stored: bool = False) -> int:
    """Bytes of the tensors once loaded with activations in a `dtype_bytes` float type, as
    loader.cast_activations keeps them: the embedding table (and, with `keep_dense_stored`, the
    dense matmul weights) as stored, other float tensors in the activation type."""
    from ..checkpoint.contents import tensors
    from ..checkpoint.layout import is_dense_matmul_weight

    total = 0
    for name, t in tensors(model_dir).items():
        per = FLOAT_DTYPES.get(t["dtype"])
        if (
            per is None
            or name.startswith("model.embed_tokens")
            or (keep_dense_stored and is_dense_matmul_weight(name))
        ):
            total += t["nbytes"]
        else:
            total += t["nbytes"] // per * dtype_bytes
    return total


def kv_cache_bytes(cfg: ModelConfig, context: int, dtype_bytes: int) -> int:
    """`cfg.kv_cache_bytes` with full layers counted at their allocated size."""
    per_token_layer = 2 * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes
    rounded = math.ceil(context / KV_STEP) * KV_STEP
    return cfg.kv_cache_bytes(context, dtype_bytes) + per_token_layer * cfg.n_full_layers * (
        rounded - context
    )


def prefill_temporaries_bytes(
    cfg: ModelConfig,
    context: int,
    dtype_bytes: int,
    *,
    fused_attention: bool,
    chunk: int | None = None,
) -> int:
    """Peak temporaries while prefilling one chunk at `context` (without the runtime margin).
    The chunk defaults to what generate.prefill uses where attention is fused (Metal) or not."""
    chunk = chunk or (PREFILL_CHUNK_METAL if fused_attention else PREFILL_CHUNK_CPU)
    h, i, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts_per_tok
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    n = min(chunk, context)
    per_token = 4 * h + 2 * q + 2 * kv + 2 * cfg.num_local_experts + k * (3 * h + 3 * i)
    layer = n * per_token * dtype_bytes
    scores = 0 if fused_attention else 3 * n * cfg.num_attention_heads * (context + 1) * 4
    growth = (
        2 * kv * dtype_bytes * math.ceil(context / KV_STEP) * KV_STEP if cfg.n_full_layers else 0
    )
    logits = 4 * cfg.vocab_size * 4
    return int(ACTIVATION_SAFETY * (layer + scores)) + growth + logits


def keeps_dense_stored(dtype_bytes: int) -> bool:
    """Whether the loader will keep the dense matmul weights as stored on this machine."""
    from ..backend.device import keeps_dense_weights_stored

    return dtype_bytes == 4 and keeps_dense_weights_stored("float32")


class Estimator:
    def __init__(
        self,
        model_dir: Path,
        dtype_bytes: int,
        fused_attention: bool | None,
        keep_dense_stored: bool | None = None,
    ) -> None:
        """`fused_attention` and `keep_dense_stored` default (None) to what this machine does."""
        self.cfg = ModelConfig.from_dir(model_dir)
        self.dtype_bytes = dtype_bytes
        self.fused = metal_available() if fused_attention is None else fused_attention
        if keep_dense_stored is None:
            keep_dense_stored = keeps_dense_stored(dtype_bytes)
        self.keep_dense_stored = keep_dense_stored
        self.weights = weights_bytes(model_dir, dtype_bytes, keep_dense_stored=keep_dense_stored)

    def at(self, context: int) -> MemoryEstimate:
        kv = kv_cache_bytes(self.cfg, context, self.dtype_bytes)
        over = RUNTIME_MARGIN + prefill_temporaries_bytes(
            self.cfg, context, self.dtype_bytes, fused_attention=self.fused
        )
        return MemoryEstimate(self.weights, kv, over, context, self.dtype_bytes)

    def largest_context(self, budget: int) -> int | None:
        top = self.cfg.max_position_embeddings
        if self.at(top).total <= budget:
            return top
        if self.at(16).total > budget:
            return None
        lo, hi = 16, top  # fits at lo, not at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.at(mid).total <= budget else (lo, mid)
        return lo if lo < KV_STEP else lo // KV_STEP * KV_STEP


def estimate(
    model_dir: Path, context: int, *, dtype_bytes: int, fused_attention: bool | None = None
) -> MemoryEstimate:
    """Memory to run the model in `model_dir` with `context` tokens of context."""
    return Estimator(Path(model_dir), dtype_bytes, fused_attention).at(context)


def largest_context_that_fits(
    model_dir: Path,
    *,
    dtype_bytes: int,
    available: int | None = None,
    fused_attention: bool | None = None,
) -> int | None:
    """The longest context (a multiple of 256 when above it) that fits the budget; None if none does.
    On Metal, when the GPU working set holds less than AUTO_CONTEXT_ON_METAL tokens, the longest
    that runs within physical RAM less the reserve (check_memory then warns)."""
    est = Estimator(Path(model_dir), dtype_bytes, fused_attention)
    if available is not None:
        return est.largest_context(available)
    budget = available_memory()
    fits = est.largest_context(budget.bytes)
    if budget.source == WORKING_SET and (fits or 0) < AUTO_CONTEXT_ON_METAL:
        fits = est.largest_context(run_limit(budget)) or fits
    return fits


def _fits_20b(context: int, dtype_bytes: int, budget: int, fused: bool, keep_dense: bool) -> bool:
    cfg = ModelConfig()  # its defaults are gpt-oss-20b's
    cfg.layer_types = [
        "sliding_attention" if n % 2 == 0 else "full_attention"
        for n in range(cfg.num_hidden_layers)
    ]
    counts = cfg.param_counts()
    expert_matrices = (
        cfg.num_hidden_layers * cfg.num_local_experts * 3 * cfg.hidden_size * cfg.intermediate_size
    )
    cast = counts["total"] - counts["embedding"] - expert_matrices  # bf16 on disk, dtype in memory
    if keep_dense:
        cast -= counts["dense_matmul"]
    need = (
        WEIGHTS_20B
        + cast * (dtype_bytes - 2)
        + kv_cache_bytes(cfg, context, dtype_bytes)
        + RUNTIME_MARGIN
        + prefill_temporaries_bytes(cfg, context, dtype_bytes, fused_attention=fused)
    )
    return need <= budget


def check_memory(
    model_dir: Path,
    context: int,
    *,
    dtype_bytes: int,
    force: bool = False,
    available: int | None = None,
    fused_attention: bool | None = None,
) -> MemoryEstimate:
    """Return the estimate if the model fits (or `force`); else NotEnoughMemoryError saying what fits."""

    est = Estimator(Path(model_dir), dtype_bytes, fused_attention)
    need = est.at(context)
    budget = (
        MemoryBudget(available, "given budget") if available is not None else available_memory()
    )
    if force or need.total <= budget.bytes:
        return need

    name = model_name(Path(model_dir))
    limit = run_limit(budget)
    if need.total <= limit:
        return replace(need, warning=_past_working_set(name, need, budget))
    cfg = est.cfg
    options = []
    largest = est.largest_context(limit)
    if largest is not None and largest >= min(MIN_USEFUL_CONTEXT, context):
        options.append(f"use --context {largest}")
    # 20b is worth suggesting if it runs with a useful context (the user can lower --context).
    if cfg.num_hidden_layers > 24 and _fits_20b(
        min(context, AUTO_CONTEXT_ON_METAL), dtype_bytes, limit, est.fused, est.keep_dense_stored
    ):
        options.append("use the 20b model (-m 20b)")
    options.append("pass --force to try anyway")
    raise NotEnoughMemoryError(
        f"{name} needs about {human_bytes(need.total)} at {context} tokens of context "
        f"(weights {human_bytes(need.weights)}, KV cache {human_bytes(need.kv_cache)}) but "
        f"{human_bytes(limit)} is available ({_source(budget, limit)}); " + ", or ".join(options)
    )


def _source(budget: MemoryBudget, limit: int) -> str:
    if limit == budget.bytes:
        return budget.source
    return f"physical RAM less {human_bytes(total_memory_bytes() - limit)} kept for macOS"


def _past_working_set(name: str, need: MemoryEstimate, budget: MemoryBudget) -> str:
    return (
        f"{name} needs about {human_bytes(need.total)} at {need.context} tokens of context, more "
        f"than the {human_bytes(budget.bytes)} GPU working-set limit: it runs, but macOS may page "
        f"it and decoding can be slow; to make it fit: {wired_limit_hint(need.total)}"
    )


def default_rest_layout(model_dir: Path) -> str:
    """The non-expert weights' layout `download --convert` writes on this machine: "q8" on a Mac
    whose GPU working set cannot hold the model with bf16 ones at 8k context (8-bit reads and holds
    about 30 % fewer bytes a token, but measurably changes replies: README, Apple Silicon), else
    "bf16" (on the CPU our kernels read bf16 directly)."""
    budget = available_memory()
    if budget.source != WORKING_SET:
        return "bf16"
    need = Estimator(Path(model_dir), 2, fused_attention=True).at(AUTO_CONTEXT_ON_METAL)
    return "q8" if need.total > budget.bytes else "bf16"
