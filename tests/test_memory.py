"""The memory estimate against what MLX actually allocates on the tiny model, and the guard."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from gptoss_mlx.backend.device import device_info, prefill_chunk
from gptoss_mlx.errors import NotEnoughMemoryError, UserError
from gptoss_mlx.model import memory
from gptoss_mlx.model.config import ModelConfig
from gptoss_mlx.model.memory import check_memory, estimate, largest_context_that_fits
from gptoss_mlx.units import parse_bytes


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    from gptoss_mlx import load_model
    from gptoss_mlx.model.generate import prefill

    model, _ = load_model(tiny_checkpoint, dtype="float32")
    return model, prefill


@pytest.fixture(scope="module")
def loaded_plain(tiny_checkpoint):
    """The model as loaded where the CPU fast path is unavailable (no C compiler): every float
    matmul weight cast to float32, run by plain MLX."""
    from gptoss_mlx import load_model
    from gptoss_mlx.backend import device as device

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device, "keeps_dense_weights_stored", lambda dtype: False)
        model, _ = load_model(tiny_checkpoint, dtype="float32")
    model.set_fast_path(False)
    return model


def tokens(n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(n).integers(0, 199_990, size=n)]


def test_constants_follow_the_code_they_describe(tiny_checkpoint):
    from gptoss_mlx.backend import device
    from gptoss_mlx.model.cache import FullKVCache

    assert FullKVCache.step == memory.KV_STEP
    assert device.prefill_chunk(metal=False) == memory.PREFILL_CHUNK_CPU == 512
    assert device.prefill_chunk(metal=True) == memory.PREFILL_CHUNK_METAL == 2048
    cfg = ModelConfig.from_dir(tiny_checkpoint)
    for fused, chunk in ((False, 512), (True, 2048)):
        assert memory.prefill_temporaries_bytes(cfg, 8192, 2, fused_attention=fused) == (
            memory.prefill_temporaries_bytes(cfg, 8192, 2, fused_attention=fused, chunk=chunk)
        )


def test_weights_estimate_equals_the_loaded_parameters(loaded, tiny_checkpoint):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from gptoss_mlx.backend import device
    from gptoss_mlx.backend import kernels as cpu_kernels
    from gptoss_mlx.checkpoint.layout import is_dense_matmul_weight

    model, _ = loaded
    params = dict(tree_flatten(model.parameters()))
    held = sum(v.nbytes for v in params.values())
    assert memory.Estimator(tiny_checkpoint, 4, False).weights == held
    # On the CPU fast path the loader keeps the dense matmul weights bf16 (read by our kernels).
    kept = {k: v for k, v in params.items() if is_dense_matmul_weight(k) and v.dtype != mx.float32}
    dense = sum(v.size for k, v in params.items() if is_dense_matmul_weight(k))
    assert dense == ModelConfig.from_dir(tiny_checkpoint).param_counts()["dense_matmul"]
    expect_kept = not device.device_info().metal and cpu_kernels.load() is not None
    assert memory.keeps_dense_stored(4) == expect_kept == bool(kept)
    if kept:
        assert "lm_head.weight" in kept and all(v.dtype == mx.bfloat16 for v in kept.values())
        # Cast to float32 they would take twice the bytes.
        assert memory.weights_bytes(tiny_checkpoint, 4, keep_dense_stored=False) == held + sum(
            v.nbytes for v in kept.values()
        )
    # In bf16 the weights are the checkpoint as stored.
    files = sum(f.stat().st_size for f in Path(tiny_checkpoint).glob("*.safetensors"))
    assert files - 1_000_000 < memory.weights_bytes(tiny_checkpoint, 2) <= files


@pytest.mark.parametrize("n", [40, 600])
def test_kv_estimate_matches_the_caches(loaded, tiny_checkpoint, n):
    model, prefill = loaded
    cfg = ModelConfig.from_dir(tiny_checkpoint)
    assert n > cfg.sliding_window
    cache = model.make_cache()
    prefill(model, tokens(n), cache)
    held = sum(c.nbytes for c in cache)
    per_token_layer = 2 * cfg.num_key_value_heads * cfg.head_dim * 4
    # Sliding layers keep window - 1 positions (all a later query can see); the config counts window.
    assert 0 <= cfg.kv_cache_bytes(n, 4) - held <= cfg.n_sliding_layers * per_token_layer
    allocated = sum(c.allocated_bytes for c in cache)
    assert held <= allocated <= memory.kv_cache_bytes(cfg, n, 4)


@pytest.mark.parametrize("n", [40, 600, 1500])
def test_activation_margin_covers_the_measured_peak(loaded, loaded_plain, tiny_checkpoint, n):
    import mlx.core as mx

    _, prefill = loaded
    # MLX's allocator sees only the plain MLX path's memory (the CPU fast path computes in
    # numpy/C buffers it does not count), so measure that path: it is the one the estimate models.
    model = loaded_plain
    cfg = ModelConfig.from_dir(tiny_checkpoint)
    cache = model.make_cache()
    mx.eval(model.parameters())
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    # This device's chunk; on Metal the attention kernel is fused (no score matrix).
    fused, chunk = device_info().metal, prefill_chunk()
    mx.eval(prefill(model, tokens(n), cache, chunk=chunk))
    measured = mx.get_peak_memory() - base - sum(c.allocated_bytes for c in cache)
    est = memory.prefill_temporaries_bytes(cfg, n, 4, fused_attention=fused, chunk=chunk)
    assert measured <= est
    if n >= 600:  # at 40 tokens the temporaries are a few MB: looseness there refuses nothing
        assert est <= 4 * measured, "an estimate this loose would refuse models that fit"


def test_refuses_when_it_does_not_fit_and_force_overrides(tiny_checkpoint):
    need = estimate(tiny_checkpoint, 4096, dtype_bytes=4, fused_attention=False)
    with pytest.raises(NotEnoughMemoryError) as e:
        check_memory(
            tiny_checkpoint, 4096, dtype_bytes=4, available=need.total - 1, fused_attention=False
        )
    msg = str(e.value)
    assert "\n" not in msg
    assert " needs about " in msg
    assert "available (given budget)" in msg and msg.endswith("pass --force to try anyway")
    got = check_memory(
        tiny_checkpoint, 4096, dtype_bytes=4, available=1, force=True, fused_attention=False
    )
    assert got == need
    assert (
        check_memory(
            tiny_checkpoint, 4096, dtype_bytes=4, available=need.total, fused_attention=False
        )
        == need
    )


def test_refusal_suggests_the_largest_context_that_fits(tiny_checkpoint):
    budget = estimate(tiny_checkpoint, 5000, dtype_bytes=4, fused_attention=False).total
    largest = largest_context_that_fits(
        tiny_checkpoint, dtype_bytes=4, available=budget, fused_attention=False
    )
    assert largest == 4864  # 5000 rounded down to the cache's 256-token steps
    assert estimate(tiny_checkpoint, largest, dtype_bytes=4, fused_attention=False).total <= budget
    with pytest.raises(NotEnoughMemoryError, match="use --context 4864, or pass --force"):
        check_memory(
            tiny_checkpoint, 131072, dtype_bytes=4, available=budget, fused_attention=False
        )


def test_largest_context_bounds(tiny_checkpoint):
    kw = {"dtype_bytes": 4, "fused_attention": False}
    assert largest_context_that_fits(tiny_checkpoint, available=1, **kw) is None
    assert largest_context_that_fits(tiny_checkpoint, available=2**50, **kw) == 131072
    # With a fused attention kernel (Metal) no score matrix is held, so more context fits.
    budget = estimate(tiny_checkpoint, 8192, **kw).total
    fused = largest_context_that_fits(
        tiny_checkpoint, available=budget, dtype_bytes=4, fused_attention=True
    )
    assert fused > 8192


def test_memory_limit_env_is_the_budget(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("GPTOSS_MEMORY_LIMIT_BYTES", "1MB")
    assert memory.available_memory() == memory.MemoryBudget(1024**2, "GPTOSS_MEMORY_LIMIT_BYTES")
    with pytest.raises(
        NotEnoughMemoryError, match=r"1\.0 MB is available \(GPTOSS_MEMORY_LIMIT_BYTES\)"
    ):
        check_memory(tiny_checkpoint, 1024, dtype_bytes=4)
    monkeypatch.setenv("GPTOSS_MEMORY_LIMIT_BYTES", "lots")
    with pytest.raises(UserError, match="cannot read 'lots' as a size"):
        memory.available_memory()


def test_parse_bytes():
    assert parse_bytes("1024") == 1024
    assert parse_bytes("24GB") == parse_bytes("24G") == parse_bytes("24 GiB") == 24 * 2**30
    assert parse_bytes("1.5g") == 3 * 2**29
    assert parse_bytes("512MB") == 512 * 2**20


def test_machine_facts_are_sane():
    total = memory.total_memory_bytes()
    assert total > 2**28
    assert 0 < memory.available_ram_bytes() <= total
    budget = memory.available_memory()
    assert budget.bytes > 0 and budget.source in (
        "available RAM",
        "GPU working-set limit",
        "GPTOSS_MEMORY_LIMIT_BYTES",
    )
    assert memory.suggested_wired_limit_mb(16 * 2**30) == 16384 - 4096
    assert memory.suggested_wired_limit_mb(128 * 2**30) == 131072 - 16384


def _sparse_120b(tiny_checkpoint: Path, out: Path) -> Path:
    """A checkpoint with 120b's layer count whose headers declare 61 GB of weights (a sparse file)."""
    shutil.copytree(
        tiny_checkpoint, out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json")
    )
    cfg = json.loads((out / "config.json").read_text())
    cfg["num_hidden_layers"] = 36
    cfg["layer_types"] = [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(36)
    ]
    (out / "config.json").write_text(json.dumps(cfg))
    n = 61 * 2**30
    header = json.dumps(
        {
            "model.layers.0.mlp.experts.gate_up_proj_blocks": {
                "dtype": "U8",
                "shape": [n],
                "data_offsets": [0, n],
            }
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + n)
    return out


def test_a_model_too_big_at_any_context_suggests_20b(tiny_checkpoint, tmp_path):
    big = _sparse_120b(Path(tiny_checkpoint), tmp_path / "gpt-oss-120b")
    with pytest.raises(NotEnoughMemoryError) as e:
        check_memory(big, 8192, dtype_bytes=2, available=24 * 2**30, fused_attention=True)
    msg = str(e.value)
    assert msg.startswith("gpt-oss-120b needs about 61.")
    assert "use the 20b model (-m 20b)" in msg and "--context" not in msg
