"""The memory policy on Metal, with the machine faked: gpt-oss-20b and -120b at their real sizes
(header-only checkpoints built from scripts/make_checkpoint.py's 20b widths) against the GPU
working-set limits of 16, 24, 64 and 128 GB Macs."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pytest

from gptoss_mlx.backend import device
from gptoss_mlx.errors import NotEnoughMemoryError
from gptoss_mlx.model import memory
from scripts.make_checkpoint import VOCAB_SIZE, _write_layer, make_config

GiB = 2**30
METAL = device.DeviceInfo("gpu", True, "bfloat16", "Metal GPU: faked")


class _Headers:
    """Stands in for make_checkpoint's weight generator: records names, dtypes and shapes."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}

    def bf16(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        self.tensors[name] = ("BF16", shape)

    def mxfp4(self, name: str, experts: int, rows: int, cols: int) -> None:
        self.tensors[f"{name}_blocks"] = ("U8", (experts, rows, cols // 32, 16))
        self.tensors[f"{name}_scales"] = ("U8", (experts, rows, cols // 32))


def header_only_checkpoint(out: Path, layers: int, experts: int) -> Path:
    """A checkpoint whose safetensors header declares every tensor of the real model (sparse)."""
    cfg = make_config("20b", layers) | {"num_local_experts": experts}
    g = _Headers()
    for i in range(layers):
        _write_layer(g, cfg, i)
    h = cfg["hidden_size"]
    for name, shape in (
        ("model.embed_tokens.weight", (VOCAB_SIZE, h)),
        ("model.norm.weight", (h,)),
        ("lm_head.weight", (VOCAB_SIZE, h)),
    ):
        g.bf16(name, shape, 1.0)
    header, offset = {}, 0
    for name, (dtype, shape) in g.tensors.items():
        n = (2 if dtype == "BF16" else 1) * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg))
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sizes")
    return {
        "20b": header_only_checkpoint(base / "gpt-oss-20b", 24, 32),
        "120b": header_only_checkpoint(base / "gpt-oss-120b", 36, 128),
    }


def fake_mac(monkeypatch, ram_gb: int, working_set: float) -> None:
    monkeypatch.delenv("GPTOSS_MEMORY_LIMIT_BYTES", raising=False)
    monkeypatch.setattr(device, "device_info", lambda: METAL)
    monkeypatch.setattr(memory, "metal_available", lambda: True)
    monkeypatch.setattr(memory, "metal_working_set_bytes", lambda: int(working_set * GiB))
    monkeypatch.setattr(memory, "total_memory_bytes", lambda: ram_gb * GiB)


def auto(path: Path) -> tuple[int, memory.MemoryEstimate]:
    """What engine.open_session does without --context: pick the context, then check it."""
    fits = memory.largest_context_that_fits(path, dtype_bytes=2)
    context = min(131072, fits) if fits and fits >= 1024 else 131072
    return context, memory.check_memory(path, context, dtype_bytes=2)


def test_the_header_only_20b_has_the_real_download_size(models):
    est = memory.Estimator(models["20b"], 2, fused_attention=True)
    assert abs(est.weights - memory.WEIGHTS_20B) < 0.01 * memory.WEIGHTS_20B


def test_20b_runs_on_a_16gb_mac_past_the_working_set_with_the_sysctl_that_fits(models, monkeypatch):
    fake_mac(monkeypatch, 16, 10.7)
    context, est = auto(models["20b"])
    assert context >= 8192
    assert est.total > 10.7 * GiB and est.total <= 16 * GiB - memory.metal_reserve_bytes(16 * GiB)
    n = int(re.search(r"sudo sysctl iogpu.wired_limit_mb=(\d+)$", est.warning).group(1))
    assert n * 2**20 >= est.total > (n - 1) * 2**20
    assert "\n" not in est.warning and "GPU working-set limit" in est.warning
    # After that sysctl the working set holds it: no warning.
    monkeypatch.setattr(memory, "metal_working_set_bytes", lambda: n * 2**20)
    assert memory.check_memory(models["20b"], context, dtype_bytes=2).warning == ""
    # The whole 128k context is past what a 16 GB Mac can hold: refused, saying what runs.
    monkeypatch.setattr(memory, "metal_working_set_bytes", lambda: int(10.7 * GiB))
    with pytest.raises(NotEnoughMemoryError, match=r"physical RAM less .* kept for macOS"):
        memory.check_memory(models["20b"], 131072, dtype_bytes=2)


@pytest.mark.parametrize(("ram", "working_set", "least"), [(24, 16, 65536), (64, 48, 131072)])
def test_20b_fits_the_working_set_of_larger_macs(models, monkeypatch, ram, working_set, least):
    fake_mac(monkeypatch, ram, working_set)
    context, est = auto(models["20b"])
    assert context >= least and est.warning == "" and est.total <= working_set * GiB


def test_120b_on_each_mac(models, monkeypatch):
    fake_mac(monkeypatch, 16, 10.7)
    with pytest.raises(NotEnoughMemoryError, match=r"use the 20b model \(-m 20b\)"):
        auto(models["120b"])
    fake_mac(monkeypatch, 64, 48)
    with pytest.raises(NotEnoughMemoryError, match=r"physical RAM less"):
        auto(models["120b"])
    fake_mac(monkeypatch, 128, 96)
    context, est = auto(models["120b"])
    assert context == 131072 and est.warning == ""


def test_off_metal_the_budget_is_the_limit(models, monkeypatch):
    monkeypatch.setenv("GPTOSS_MEMORY_LIMIT_BYTES", "11GB")
    with pytest.raises(NotEnoughMemoryError, match=r"\(GPTOSS_MEMORY_LIMIT_BYTES\)"):
        memory.check_memory(models["20b"], 8192, dtype_bytes=2, fused_attention=True)


def test_open_session_passes_the_warning_on(tiny_checkpoint, monkeypatch):
    from gptoss_mlx.session.open import open_session
    from gptoss_mlx.settings import resolve

    need = memory.estimate(tiny_checkpoint, 1024, dtype_bytes=2, fused_attention=True).total
    fake_mac(monkeypatch, 16, (need - 1) / GiB)
    warnings: list[str] = []
    session = open_session(
        resolve({"context": 1024}), tiny_checkpoint, on_warning=warnings.append,
    )  # fmt: skip
    assert session.settings.context == 1024
    assert len(warnings) == 1 and warnings[0].endswith(
        f"sudo sysctl iogpu.wired_limit_mb={math.ceil(need / 2**20)}"
    )


def test_download_convert_uses_8_bit_rest_only_where_bf16_does_not_fit(models, monkeypatch):
    fake_mac(monkeypatch, 16, 10.7)
    assert memory.default_rest_layout(models["20b"]) == "q8"
    fake_mac(monkeypatch, 24, 16)
    assert memory.default_rest_layout(models["20b"]) == "bf16"
    assert memory.default_rest_layout(models["120b"]) == "q8"
    fake_mac(monkeypatch, 128, 96)
    assert memory.default_rest_layout(models["120b"]) == "bf16"
    monkeypatch.setattr(memory, "metal_working_set_bytes", lambda: None)  # the CPU backend
    monkeypatch.setenv("GPTOSS_MEMORY_LIMIT_BYTES", "1GB")
    assert memory.default_rest_layout(models["120b"]) == "bf16"
