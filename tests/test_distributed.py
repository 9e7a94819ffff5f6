"""gpt-oss across ranks on one machine: `mlx.launch --backend ring` on localhost, CPU backend.

Each launch starts real ranks that talk over real sockets; the sharded results are compared with
the single-process model. Launches are slow on a busy 2-core machine, so each one checks several
things at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gptoss_mlx.errors import UserError
from gptoss_mlx.model.config import ModelConfig
from gptoss_mlx.model.sharding import (
    PIPELINE,
    TENSOR,
    Layout,
    check_layout,
    param_split,
    pipeline_ranges,
    tensor_sizes,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAUNCH = shutil.which("mlx.launch", path=str(BIN)) or shutil.which("mlx.launch")
needs_launch = pytest.mark.skipif(LAUNCH is None, reason="mlx.launch is not installed")
TIMEOUT = 240


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GPTOSS_CONFIG": "/nonexistent/config.toml",
    }


def launch(n: int, *cmd: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`mlx.launch --backend ring -n N -- python CMD` on localhost (a random port range)."""
    port = str(random.randrange(20000, 60000, 16))
    args = [LAUNCH, "--backend", "ring", "-n", str(n), "--starting-port", port, "--"]
    return subprocess.run(
        [*args, sys.executable, *cmd],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def rank_lines(r: subprocess.CompletedProcess, n: int) -> list[dict]:
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"rank"')]
    assert sorted(row["rank"] for row in rows) == list(range(n)), r.stdout + r.stderr
    return sorted(rows, key=lambda row: row["rank"])


# ---- arithmetic (no launch) ---------------------------------------------------------------------
def _cfg(**kw) -> ModelConfig:
    base = dict(
        hidden_size=2880,
        intermediate_size=2880,
        num_hidden_layers=36,
        num_attention_heads=64,
        num_key_value_heads=8,
        num_local_experts=128,
        layer_types=["sliding_attention", "full_attention"] * 18,
    )
    return ModelConfig(**{**base, **kw})


def test_120b_tensor_sizes_follow_kv_heads_and_down_proj_groups():
    cfg = _cfg()
    assert tensor_sizes(cfg, 32) == [2]  # 8 KV heads, 2880/32 = 90 groups
    assert tensor_sizes(cfg, 64) == []  # 45 groups: even 2 fails
    check_layout(cfg, TENSOR, 2, 32)
    with pytest.raises(UserError) as e:
        check_layout(cfg, TENSOR, 4, 32)
    msg = str(e.value)
    assert "\n" not in msg and "90 quantization groups" in msg and "work: 2;" in msg
    with pytest.raises(UserError, match="work: none; or use --strategy pipeline"):
        check_layout(cfg, TENSOR, 2, 64)
    with pytest.raises(UserError, match="does not divide the 8 KV heads"):
        check_layout(cfg, TENSOR, 3, 32)


def test_auto_falls_back_to_pipeline_when_tensor_cannot_split():
    from gptoss_mlx.model.sharding import settle_strategy

    assert settle_strategy(_cfg(), TENSOR, 2, 32) == (TENSOR, "")
    strategy, why = settle_strategy(_cfg(), TENSOR, 4, 32)
    assert strategy == PIPELINE and "90 quantization groups" in why
    assert settle_strategy(_cfg(), PIPELINE, 4, 32) == (PIPELINE, "")


def test_pipeline_ranges_and_what_each_rank_holds():
    assert pipeline_ranges(36, 2) == [(0, 18), (18, 36)]
    assert pipeline_ranges(5, 3) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(UserError, match="at most 4 ranks"):
        check_layout(_cfg(num_hidden_layers=4), PIPELINE, 5, 32)
    first, last = Layout(PIPELINE, 0, 2, 0, 18), Layout(PIPELINE, 1, 2, 18, 36)
    assert param_split("model.embed_tokens.weight", first) is not None
    assert param_split("model.embed_tokens.weight", last) is None
    assert param_split("lm_head.weight", first) is None
    assert param_split("model.layers.17.mlp.router.weight", first) is not None
    assert param_split("model.layers.18.mlp.router.weight", first) is None
    tp = Layout(TENSOR, 1, 2)
    assert param_split("model.layers.0.self_attn.sinks", tp).axis == 0
    assert param_split("model.layers.0.self_attn.o_proj.weight", tp).axis == -1
    assert param_split("model.layers.0.self_attn.o_proj.bias", tp).axis is None
    assert param_split("model.layers.0.mlp.experts.down_proj.bias", tp).scale == 0.5
    assert param_split("model.layers.0.mlp.experts.gate_proj.scales", tp).axis == 1
    assert param_split("model.layers.0.mlp.router.weight", tp).axis is None


def test_auto_strategy_follows_the_backend():
    from gptoss_mlx.backend.distributed import choose_strategy

    assert choose_strategy("auto", "jaccl")[0] == TENSOR
    strategy, why = choose_strategy("auto", "ring")
    assert strategy == PIPELINE and "ring" in why
    assert choose_strategy("tensor", "ring")[0] == TENSOR
    with pytest.raises(UserError):
        choose_strategy("experts", "ring")


# ---- real ranks ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_q8_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model converted to the MLX layout with 8-bit affine attention, embedding and head."""
    from gptoss_mlx.hub.convert import convert

    out = tmp_path_factory.mktemp("q8") / "tiny-q8"
    convert(tiny_checkpoint, out, rest="q8", verify=False)
    return out


def test_pipeline_cut_keeps_each_layers_mask_kind(tiny_checkpoint):
    from gptoss_mlx.checkpoint.safetensors import ShardedCheckpoint
    from gptoss_mlx.model import sharding as dist
    from gptoss_mlx.model.sharded_load import param_sources, skeleton

    cfg = ModelConfig.from_dir(tiny_checkpoint)
    meta = {k: m for k, (_s, m) in param_sources(ShardedCheckpoint(tiny_checkpoint), cfg).items()}
    for layout in (Layout(PIPELINE, 1, 2, 2, 4), Layout(PIPELINE, 1, 3, 2, 3)):
        model = skeleton(cfg, meta)
        dist.restructure(model, layout, group=None)
        kinds = cfg.layer_types[layout.first : layout.stop]
        assert model.config.layer_types == kinds and len(model.layers) == len(kinds)
        windows = [cfg.sliding_window if k == "sliding_attention" else 0 for k in kinds]
        assert [layer.self_attn.window for layer in model.layers] == windows
        assert [type(c).__name__ for c in model.make_cache()] == [
            "WindowKVCache" if k == "sliding_attention" else "FullKVCache" for k in kinds
        ]


@needs_launch
@pytest.mark.slow  # about 60 s (HF layout) and 110 s (q8) on a busy 2-core machine
@pytest.mark.parametrize("layout", ["hf", "mlx-q8"])
def test_sharded_logits_equal_single_process(request, layout):
    """Tensor and pipeline, loaded sharded and sharded in memory: whole prompt and KV-cache path,
    on the Hugging Face layout and on an MLX conversion with quantized dense layers."""
    fixture = "tiny_checkpoint" if layout == "hf" else "tiny_q8_checkpoint"
    path = str(request.getfixturevalue(fixture))
    r = launch(2, "-m", "tests.dist_worker", "logits", path, "tensor,pipeline")
    for row in rank_lines(r, 2):
        for key in ("loaded_tensor", "loaded_pipeline", "sharded_tensor"):
            assert row[key]["whole"] <= 1e-5, (key, row)
            assert row[key]["steps"] <= 1e-5, (key, row)


@needs_launch
def test_each_rank_holds_half_the_weights(tiny_checkpoint):
    single = subprocess.run(
        [sys.executable, "-m", "tests.dist_worker", "memory", str(tiny_checkpoint), "tensor"],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=TIMEOUT,
    )  # fmt: skip
    whole = json.loads(single.stdout)
    for strategy in ("tensor", "pipeline"):
        r = launch(2, "-m", "tests.dist_worker", "memory", str(tiny_checkpoint), strategy)
        for row in rank_lines(r, 2):
            assert 0.45 <= row["held"] / whole["held"] <= 0.55, (strategy, row, whole)
            # No rank ever held the whole model, not even while loading.
            assert row["peak"] <= 0.6 * whole["peak"], (strategy, row, whole)


def _run_json(r: subprocess.CompletedProcess) -> dict:
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout + r.stderr  # printed once, by rank 0
    return json.loads(lines[0])


@needs_launch
@pytest.mark.slow  # about 35 s each on a busy 2-core machine
@pytest.mark.parametrize("strategy", ["auto", "tensor"])
def test_run_json_under_mlx_launch_equals_single_process(tiny_checkpoint, strategy):
    args = ["-m", "gptoss_mlx", "run", "-m", str(tiny_checkpoint), "-t", "0", "-n", "16"]
    single = subprocess.run(
        [sys.executable, *args, "--json", "Hello there"],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=TIMEOUT,
    )  # fmt: skip
    r = launch(2, *args, "--json", "--strategy", strategy, "Hello there")
    got, want = _run_json(r), _run_json(single)
    assert got["final"] == want["final"] and got["usage"] == want["usage"]
    expected = "pipeline: on ring" if strategy == "auto" else "tensor parallel (asked for)"
    assert r.stderr.count(f"gptoss: 2 ranks, {expected}") == 1, r.stderr


@needs_launch
def test_stdin_prompt_is_refused_under_mlx_launch(tiny_checkpoint):
    r = launch(2, "-m", "gptoss_mlx", "run", "-m", str(tiny_checkpoint), "-", timeout=120)
    assert "give the prompt as an argument" in r.stderr and r.stdout == ""


def test_a_rank_that_dies_makes_the_other_exit_with_a_clear_error(tiny_checkpoint):
    """Ranks started without mlx.launch (MLX_RANK + MLX_HOSTFILE), so nothing kills the
    survivor for us: it must notice by itself, within the timeout."""
    port = random.randrange(20000, 60000, 2)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]], f)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.dist_worker", "die", str(tiny_checkpoint), "-"],
            env={**_env(), "MLX_RANK": str(rank), "MLX_HOSTFILE": f.name},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    start = time.monotonic()
    try:
        out0, err0 = procs[0].communicate(timeout=TIMEOUT)
        procs[1].wait(timeout=30)
    finally:
        for p in procs:
            p.kill()
        os.unlink(f.name)
    assert procs[1].returncode == 9
    assert procs[0].returncode not in (0, None) and out0 == ""
    assert "gptoss: error: rank 0 lost its connection to another rank" in err0, err0
    assert "Traceback" not in err0, err0
    assert time.monotonic() - start < TIMEOUT


# ---- four ranks ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_kv4_checkpoint(tiny_checkpoint) -> Path:
    """Like the tiny preset but with 8 query / 4 KV heads, so tensor parallelism splits 4 ways."""
    from scripts import make_checkpoint as mc

    from .conftest import FIXTURES

    out = FIXTURES / f"{tiny_checkpoint.name}-kv4"
    if not (out / "config.json").is_file():
        preset = {**mc.PRESETS["tiny"], "num_attention_heads": 8, "num_key_value_heads": 4}
        preset["head_dim"] = 16
        mc.PRESETS.setdefault("tiny-kv4", preset)
        mc.make_checkpoint(out, preset="tiny-kv4", seed=1)
    return out


@needs_launch
@pytest.mark.slow  # about 2 minutes on a busy 2-core machine: four ranks load and compare
def test_four_ranks_tensor_and_pipeline(tiny_kv4_checkpoint):
    r = launch(4, "-m", "tests.dist_worker", "logits", str(tiny_kv4_checkpoint), "tensor,pipeline")
    for row in rank_lines(r, 4):
        for key in ("loaded_tensor", "loaded_pipeline", "sharded_tensor"):
            assert row[key]["whole"] <= 1e-5 and row[key]["steps"] <= 1e-5, (key, row)


def test_memory_guard_reasons_per_rank(tiny_checkpoint):
    from gptoss_mlx.checkpoint.safetensors import ShardedCheckpoint
    from gptoss_mlx.errors import NotEnoughMemoryError
    from gptoss_mlx.model.sharded_load import check_rank_memory, param_sources, rank_bytes

    cfg = ModelConfig.from_dir(tiny_checkpoint)
    plan = param_sources(ShardedCheckpoint(tiny_checkpoint), cfg)
    whole = rank_bytes(plan, Layout(TENSOR, 0, 1))
    on_disk = sum(f.stat().st_size for f in tiny_checkpoint.glob("*.safetensors"))
    assert 0.95 <= whole / on_disk <= 1.0
    for layout in (
        Layout(TENSOR, 1, 2),
        Layout(PIPELINE, 0, 2, 0, 2),
        Layout(PIPELINE, 1, 2, 2, 4),
    ):
        assert 0.45 <= rank_bytes(plan, layout) / whole <= 0.55, layout
    with pytest.raises(NotEnoughMemoryError, match="this rank needs about") as e:
        check_rank_memory(10**15, force=False)
    assert "\n" not in str(e.value)
    check_rank_memory(10**15, force=True)
