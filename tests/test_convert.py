"""`gptoss convert`: round trips, every load path, mlx-lm compatibility, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx import load_model
from gptoss_mlx.hub.convert import convert

from .conftest import run_gptoss
from .reference import rel_max_err

TOKENS = [200006, 1428, 200008, 13225, 11, 1495, 382, 261, 1746, 13, 3253, 9, 17, 30, 5, 6, 7, 8, 9]


def logits(path: Path, tokens: list[int] = TOKENS) -> np.ndarray:
    model, _ = load_model(path, dtype="float32")
    return np.array(model(mx.array([tokens]))[0])


def incremental_logits(path: Path, tokens: list[int] = TOKENS) -> np.ndarray:
    model, _ = load_model(path, dtype="float32")
    cache = model.make_cache()
    out = [model(mx.array([tokens[:3]]), cache)[0]]
    out += [model(mx.array([[t]]), cache)[0] for t in tokens[3:]]
    return np.concatenate([np.array(o) for o in out], axis=0)


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for experts, rest, gs in (("mxfp4", "bf16", 32), ("q4", "bf16", 64), ("mxfp4", "q8", 32)):
        out[(experts, rest)] = convert(
            tiny_checkpoint, root / f"{experts}-{rest}", experts=experts, rest=rest, group_size=gs
        )
    return out


@pytest.fixture(scope="module")
def mlx_lm_converted(tiny_checkpoint, tmp_path_factory):
    """What `mlx_lm.convert` writes for gpt-oss (the mlx-community layout): experts mxfp4, rest 8-bit."""
    dst = tmp_path_factory.mktemp("mlxlm") / "q8"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "convert",
            "--hf-path",
            str(tiny_checkpoint),
            "--mlx-path",
            str(dst),
            "-q",
            "--q-bits",
            "8",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return dst


def test_mxfp4_conversion_is_lossless(tiny_checkpoint, converted):
    report = converted[("mxfp4", "bf16")]
    assert report.verify["tensors"] == "ok"
    assert report.verify["logits_rel_err"] == 0.0
    np.testing.assert_array_equal(logits(report.dst), logits(tiny_checkpoint))


def test_q4_reports_error_against_mxfp4(converted):
    report = converted[("q4", "bf16")]
    assert report.q4_rel_rms_error is not None and 0 < report.q4_rel_rms_error < 0.2
    cfg = json.loads((report.dst / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert "q4 experts vs MXFP4 originals" in report.summary()


def test_q8_rest_keeps_norms_and_router_at_8_bits(converted):
    dst = converted[("mxfp4", "q8")].dst
    cfg = json.loads((dst / "config.json").read_text())
    router = cfg["quantization"]["model.layers.0.mlp.router"]
    assert router["bits"] == 8
    index = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.mlp.router.scales" in index
    assert "model.layers.0.input_layernorm.scales" not in index


@pytest.mark.parametrize("kind", ["hf", "mxfp4-bf16", "q4-bf16", "mxfp4-q8", "mlx_lm.convert"])
def test_incremental_decode_equals_full_forward_for_every_load_path(
    kind, tiny_checkpoint, converted, mlx_lm_converted
):
    path = {
        "hf": tiny_checkpoint,
        "mxfp4-bf16": converted[("mxfp4", "bf16")].dst,
        "q4-bf16": converted[("q4", "bf16")].dst,
        "mxfp4-q8": converted[("mxfp4", "q8")].dst,
        "mlx_lm.convert": mlx_lm_converted,
    }[kind]
    full = logits(path)
    assert rel_max_err(incremental_logits(path), full) <= 1e-4


@pytest.mark.parametrize("variant", [("mxfp4", "bf16"), ("q4", "bf16"), ("mxfp4", "q8")])
def test_mlx_lm_loads_our_output_with_the_same_logits(converted, variant):
    from mlx_lm.utils import load_model as mlx_lm_load_model

    dst = converted[variant].dst
    theirs, _ = mlx_lm_load_model(dst)
    theirs.set_dtype(mx.float32)
    ours, _ = load_model(dst, dtype="float32")
    a = np.array(theirs(mx.array([TOKENS[:5]]))[0])
    b = np.array(ours(mx.array([TOKENS[:5]]))[0])
    # mlx-lm ignores YaRN's `truncate: false` (see test_model.py); over 5 positions that
    # difference stays below 3e-3.
    assert rel_max_err(a, b) <= 3e-3
    assert (a.argmax(-1) == b.argmax(-1)).mean() == 1.0


def test_refuses_existing_destination(tiny_checkpoint, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("keep me")
    (dst / "model.safetensors").write_text("and me")
    r = run_cli("convert", str(tiny_checkpoint), str(dst), "--no-verify")
    assert r.returncode == 1
    assert "already holds a converted model" in r.stderr and "--force" in r.stderr
    assert (dst / "config.json").read_text() == "keep me"


def test_force_replaces_a_converted_model(tiny_checkpoint, tmp_path):
    dst = tmp_path / "out"
    r = run_cli("convert", str(tiny_checkpoint), str(dst), "--no-verify")
    assert r.returncode == 0, r.stderr
    (dst / "model.safetensors.index.json").write_text("{}")  # damaged: worth replacing
    r = run_cli("convert", str(tiny_checkpoint), str(dst), "--force", "--no-verify")
    assert r.returncode == 0, r.stderr
    assert json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]


def test_force_never_replaces_a_folder_with_other_files(tiny_checkpoint, tmp_path):
    """Bug: `--force` deleted whatever DST was (the user's other files, even the source)."""
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    (dst / "notes.txt").write_text("mine")
    r = run_cli("convert", str(tiny_checkpoint), str(dst), "--force", "--no-verify")
    assert r.returncode == 1, r.stderr
    assert "notes.txt" in r.stderr and "not even with --force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (dst / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_missing_shard_is_one_clear_line(tiny_checkpoint, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint, src)
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    shard.unlink()
    r = run_cli("convert", str(src), str(tmp_path / "dst"))
    assert r.returncode == 4
    assert shard.name in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")]


def test_truncated_shard_is_one_clear_line(tiny_checkpoint, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint, src)
    shard = sorted(src.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    r = run_cli("convert", str(src), str(tmp_path / "dst"))
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists()


def test_not_gpt_oss_is_refused(tiny_checkpoint, tmp_path):
    src = tmp_path / "llama"
    shutil.copytree(tiny_checkpoint, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "llama"
    (src / "config.json").write_text(json.dumps(cfg))
    r = run_cli("convert", str(src), str(tmp_path / "dst"))
    assert r.returncode == 4
    assert "not a gpt-oss checkpoint" in r.stderr


def test_full_disk_leaves_nothing_behind(tiny_checkpoint, tmp_path):
    """A tmpfs too small for the output: a clear refusal before writing anything."""
    r = run_cli(
        "convert",
        str(tiny_checkpoint),
        str(tmp_path / "dst"),
        env={"GPTOSS_FAKE_FREE_BYTES": "1000000"},
    )
    assert r.returncode == 7, r.stderr
    assert "not enough disk space" in r.stderr
    assert not (tmp_path / "dst").exists()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_gptoss(*args, env={**os.environ, **(env or {})}, stdin=None)
