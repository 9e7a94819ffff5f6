"""The CPU fast path (C kernels, BLAS, dequantize-for-prefill) gives the reference path's numbers.

The reference is plain MLX on the same weights (mx.gather_qmm for the experts). Speed is measured
in scripts/bench.py, never here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx.backend import device
from gptoss_mlx.backend import kernels as ck
from gptoss_mlx.backend.device import backend_report, cpu_fast_path
from gptoss_mlx.model.loader import load_model

from .reference import rel_max_err

REPO = Path(__file__).resolve().parents[1]
BENCH_CKPT = REPO / ".cache" / "bench" / "gpt-oss-20b-width-4L"

METAL = device.device_info().metal  # on Metal the product never loads the CPU kernels
lib = None if METAL else ck.load()
needs_kernels = pytest.mark.skipif(
    lib is None,
    reason="Metal: no CPU fast path" if METAL else f"no CPU kernels: {ck.status().reason}",
)
rng = np.random.default_rng(3)
TOKENS = [int(t) for t in rng.integers(0, 199_990, size=40)]


def bf16_bits(a: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bits_to_f32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


@needs_kernels
@pytest.mark.parametrize("k", [128, 2880, 100])  # 100: not a multiple of the vector width
@pytest.mark.parametrize("m", [1, 3, 9])
@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
def test_linear_kernel_equals_numpy(k, m, bf16):
    check_linear(lib, k, m, bf16)


def check_linear(kernels, k: int, m: int, bf16: bool) -> None:
    """`kernels`' gptoss_linear against numpy in float64 (also used per SIMD level)."""
    w = rng.standard_normal((37, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(37).astype(np.float32)
    if bf16:
        w, b = bf16_bits(w), bf16_bits(b)
    got = ck.linear(kernels, w, x, b)
    wf, bf = (bits_to_f32(w), bits_to_f32(b)) if bf16 else (w, b)
    ref = x.astype(np.float64) @ wf.T.astype(np.float64) + bf
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    m = load_model(tiny_checkpoint, dtype="float32")
    yield m
    m.set_fast_path(None)


def both_paths(model, fn):
    """(fast path result, plain MLX result); every layer really switches between the two."""
    model.set_fast_path(False)
    assert all(x._fast is None for layer in model.layers for x in (layer.mlp, layer.self_attn))
    ref = fn()
    model.set_fast_path(True)
    assert all(x._fast is not None for layer in model.layers for x in (layer.mlp, layer.self_attn))
    got = fn()
    model.set_fast_path(None)
    return got, ref


@needs_kernels
def test_fast_path_is_the_cpu_default(model):
    model.set_fast_path(None)
    active, reason = model.fast_path()
    assert active, reason
    assert model.layers[0].mlp._fast is not None


@needs_kernels
@pytest.mark.parametrize(
    ("n", "dequant_min"),
    [(1, 32), (3, 32), (40, 10**9), (40, 1), (40, 24)],
    ids=["decode-kernel", "per-expert-kernel", "all-direct", "all-dequant-blas", "mixed"],
)
def test_moe_equals_gather_qmm(model, monkeypatch, n, dequant_min):
    from gptoss_mlx.backend import cpu_path as cpu_path

    monkeypatch.setattr(cpu_path, "DEQUANT_MIN_TOKENS", dequant_min)
    mlp = model.layers[1].mlp
    x = mx.random.normal((1, n, model.config.hidden_size), key=mx.random.key(n))
    got, ref = both_paths(model, lambda: np.array(mlp(x)))
    assert rel_max_err(got, ref) <= 1e-5


@needs_kernels
def test_moe_with_bf16_biases(model):
    """Experts' biases kept as stored (bf16) give the same numbers as float32 copies of them."""
    experts = model.layers[0].mlp.experts
    saved = {p: getattr(experts, p).bias for p in ("gate_proj", "up_proj", "down_proj")}
    x = mx.random.normal((1, 12, model.config.hidden_size), key=mx.random.key(5))
    for p, b in saved.items():
        getattr(experts, p).bias = b.astype(mx.bfloat16).astype(mx.float32)
    _, ref = both_paths(model, lambda: np.array(model.layers[0].mlp(x)))
    try:
        for p, b in saved.items():
            getattr(experts, p).bias = b.astype(mx.bfloat16)
        model.set_fast_path(True)
        for n in (1, 12):
            got = np.array(model.layers[0].mlp(x[:, :n]))
            assert rel_max_err(got, ref[:, :n]) <= 1e-5
    finally:
        for p, b in saved.items():
            getattr(experts, p).bias = b
        model.set_fast_path(None)


@needs_kernels
def test_bf16_linear_weights_equal_their_f32_copies(model):
    """Dense weights read as bf16 (what the loader can keep in memory) equal float32 copies."""
    attn = model.layers[0].self_attn
    saved = attn.q_proj.weight
    x = mx.random.normal((1, 11, model.config.hidden_size), key=mx.random.key(1))
    try:
        attn.q_proj.weight = saved.astype(mx.bfloat16)
        model.set_fast_path(True)
        got = [np.array(attn._proj(attn.q_proj, x[:, :n])) for n in (1, 11)]
        attn.q_proj.weight = saved.astype(mx.bfloat16).astype(mx.float32)
        ref = np.array(attn.q_proj(x))
    finally:
        attn.q_proj.weight = saved
        model.set_fast_path(None)
    assert rel_max_err(got[0], ref[:, :1]) <= 1e-5
    assert rel_max_err(got[1], ref) <= 1e-5


@needs_kernels
def test_logits_equal_reference_path(model):
    got, ref = both_paths(model, lambda: np.array(model(mx.array([TOKENS]))[0]))
    assert rel_max_err(got, ref) <= 1e-4
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@needs_kernels
def test_chunked_prefill_and_decode_equal_reference_path(model):
    def run() -> np.ndarray:
        cache = model.make_cache()
        parts = [model(mx.array([TOKENS[:17]]), cache), model(mx.array([TOKENS[17:30]]), cache)]
        parts += [model(mx.array([[t]]), cache) for t in TOKENS[30:]]
        return np.concatenate([np.array(p[0]) for p in parts])

    got, ref = both_paths(model, run)
    assert rel_max_err(got, ref) <= 1e-4


def test_bf16_activations_keep_plain_mlx():
    fast, reason = cpu_fast_path(mx.bfloat16)
    assert fast is None and ("Metal GPU" if METAL else "bfloat16") in reason


@pytest.fixture
def fake_metal(monkeypatch):
    monkeypatch.setattr(device, "device_info", lambda: device.DeviceInfo(
        "gpu", True, "bfloat16", "Metal GPU: bf16 activations with MLX's fused kernels"))  # fmt: skip


def test_the_metal_branches(fake_metal, model):
    assert device.default_dtype() == "bfloat16"
    for dtype in (mx.float32, mx.bfloat16):
        fast, reason = cpu_fast_path(dtype)
        assert fast is None and reason.startswith("Metal GPU")
    assert not device.keeps_dense_weights_stored("float32")
    assert device.stored_dtype_params(model, mx.float32) == set()
    rows = {name: (status, detail) for name, status, detail in backend_report()}
    assert set(rows) == {"compute path", "blas", "experts"}
    assert rows["compute path"] == (
        "ok",
        "gpu: Metal GPU: bf16 activations with MLX's fused kernels",
    )
    assert rows["blas"][1] == "Accelerate (macOS)" and "gather_qmm" in rows["experts"][1]
    assert device.prefill_chunk() == 2048


def test_backend_report_names_every_choice():
    rows = {name: (status, detail) for name, status, detail in backend_report()}
    if METAL:
        assert set(rows) == {"compute path", "blas", "experts"}
        return
    assert {"compute path", "blas", "kernels", "fast path"} <= set(rows)
    assert all(status in ("ok", "warn", "info") for status, _ in rows.values())
    fast, _ = cpu_fast_path(mx.float32)
    assert rows["fast path"][0] == ("ok" if fast is not None else "warn")
    if fast is not None:
        assert "bf16" in rows["dense weights"][1]
    blas_status, blas_detail = rows["blas"]
    assert blas_status == "ok" and "/" in blas_detail or "reference BLAS" in blas_detail


def run_python(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=os.environ | env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


BLAS_PROBE = """
import json
from gptoss_mlx.backend.device import prepare_backend
st = prepare_backend()
import mlx.core as mx, numpy as np
a = mx.random.normal((64, 96), key=mx.random.key(0)); b = mx.random.normal((96, 80), key=mx.random.key(1))
err = float(np.abs(np.array(a @ b) - np.array(a, dtype=np.float64) @ np.array(b, dtype=np.float64)).max())
print(json.dumps({"loaded": st.loaded, "reason": st.reason, "err": err}))
"""


def test_blas_preload_gives_the_same_matmul():
    r = run_python(BLAS_PROBE)
    assert r["err"] < 1e-3
    if sys.platform.startswith("linux"):
        # Loaded, or a reason that names the library and how to get it.
        assert r["loaded"] or "libopenblas0-pthread" in r["reason"] or "OpenBLAS" in r["reason"], r


def test_blas_can_be_turned_off():
    r = run_python(BLAS_PROBE, GPTOSS_BLAS="off")
    assert r == r | {"loaded": False, "reason": "disabled by GPTOSS_BLAS=off"}


def test_kernels_can_be_turned_off(tiny_checkpoint):
    code = f"""
import json
from gptoss_mlx import load_model
m, _ = load_model({str(tiny_checkpoint)!r}, dtype="float32")
print(json.dumps(m.fast_path()))
"""
    active, reason = run_python(code, GPTOSS_KERNELS="off")
    assert not active and ("Metal GPU" if METAL else "GPTOSS_KERNELS") in reason


@needs_kernels
@pytest.mark.skipif(
    not (BENCH_CKPT / "config.json").exists(), reason="no 20b-width bench checkpoint"
)
@pytest.mark.parametrize("n", [1, 9])
def test_real_width_experts_equal_gather_qmm(n):
    """One layer of the 20b-width checkpoint (2880 wide, 32 experts, real MXFP4 scales)."""
    from gptoss_mlx.backend.cpu_path import CpuFastPath
    from gptoss_mlx.model.config import ModelConfig
    from gptoss_mlx.model.gpt_oss import MLP
    from gptoss_mlx.model.loader import read_weights

    cfg = ModelConfig.from_dir(BENCH_CKPT)
    weights = read_weights(BENCH_CKPT, cfg)
    prefix = "model.layers.0.mlp."
    mlp = MLP(cfg, 32, 4, "mxfp4")
    mlp.load_weights([(k[len(prefix) :], v) for k, v in weights.items() if k.startswith(prefix)])
    mlp.update({"router": {k: v.astype(mx.float32) for k, v in mlp.router.parameters().items()}})
    for p in ("gate_proj", "up_proj", "down_proj"):
        getattr(mlp.experts, p).bias = getattr(mlp.experts, p).bias.astype(mx.float32)
    mx.eval(mlp.parameters())
    x = mx.random.normal((n, cfg.hidden_size), key=mx.random.key(7))
    ref = np.array(mlp(x))
    mlp._fast = CpuFastPath(lib)
    got = np.array(mlp(x))
    assert rel_max_err(got, ref) <= 1e-5


@needs_kernels
@pytest.mark.parametrize(
    ("L", "S", "window"),
    [
        (1, 300, 0),
        (1, 300, 128),
        (40, 40, 0),
        (40, 167, 128),
        (5, 9, 0),
        # full attention from BLAS_ATTENTION_MIN_QUERIES on goes through BLAS: cached keys,
        # blocks of queries (600 over 5000 keys: six blocks of at most 104)
        (64, 64, 0),
        (200, 700, 0),
        (200, 327, 128),
        (300, 300, 128),
        (600, 5000, 0),
    ],
)
def test_attention_kernel_equals_mlx_sdpa(L, S, window):
    check_attention(lib, L, S, window)


def check_attention(kernels, L: int, S: int, window: int) -> None:
    """gpt-oss shapes (64 heads of 64 over 8 KV heads), cached keys, sliding window or not:
    `kernels`' attention against MLX's sdpa (also used per SIMD level)."""
    from gptoss_mlx.backend.cpu_path import CpuFastPath
    from gptoss_mlx.model.gpt_oss import _window_mask

    keys = mx.random.split(mx.random.key(L + S + window), 4)
    q = mx.random.normal((1, 64, L, 64), key=keys[0])
    k = mx.random.normal((1, 8, S, 64), key=keys[1])
    v = mx.random.normal((1, 8, S, 64), key=keys[2])
    sinks = mx.random.normal((64,), key=keys[3])
    q_start = 1000  # keys cover positions q_start + L - S .. q_start + L - 1
    causal = "causal" if L > 1 else None
    mask = _window_mask(L, S - L, window) if window else causal
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask, sinks=sinks)
    ref = np.array(ref.transpose(0, 2, 1, 3).reshape(1, L, -1))
    got = np.array(CpuFastPath(kernels).attention(q, k, v, sinks, 0.125, q_start, window))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
