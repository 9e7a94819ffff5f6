"""`gptoss models`, `rm`, `info` and `doctor`, run as the real CLI in a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gptoss_mlx.backend.device import device_info
from gptoss_mlx.model import memory
from gptoss_mlx.model.config import ModelConfig
from gptoss_mlx.units import human_bytes

from .conftest import run_gptoss
from .hub_server import FakeHub, cli_env, gpt_oss_decoys, repo_from_dir, run_cli


@pytest.fixture(scope="module")
def home(tiny_checkpoint, tmp_path_factory) -> Path:
    """A home with openai/gpt-oss-20b downloaded (from the fake hub) and a copy in the models dir."""
    home = tmp_path_factory.mktemp("home")
    with FakeHub() as hub:
        hub.add(repo_from_dir("openai/gpt-oss-20b", Path(tiny_checkpoint), gpt_oss_decoys()))
        r = run_cli(["download", "20b"], cli_env(home, hub))
        assert r.returncode == 0, r.stderr
    shutil.copytree(tiny_checkpoint, home / "gptoss" / "models" / "gpt-oss-20b-mlx")
    return home


@pytest.fixture
def scratch(home, tmp_path) -> Path:
    """A copy of `home` a test may change."""
    shutil.copytree(home, tmp_path / "home", symlinks=True)
    return tmp_path / "home"


def test_help_does_not_import_mlx_or_huggingface_hub():
    r = run_gptoss("--help", flags=["-X", "importtime"], stdin=None)
    assert r.returncode == 0
    imported = {
        ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")
    }
    heavy = {
        m
        for m in imported
        if m.split(".")[0] in ("mlx", "huggingface_hub", "httpx2", "mlx_lm", "numpy")
    }
    assert not heavy, sorted(heavy)


def test_models_lists_downloads_and_converted_models(home, tiny_checkpoint):
    env = cli_env(home)
    size = human_bytes(
        sum(f.stat().st_size for f in Path(tiny_checkpoint).iterdir() if f.is_file())
    )
    r = run_cli(["models"], env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "format", "quantization", "size", "path"]
    hf = next(ln for ln in lines if ln.startswith("openai/gpt-oss-20b "))
    assert "HF MXFP4" in hf and "mxfp4 experts, bf16 rest" in hf and f" {size} " in hf
    assert str(home / "hf" / "hub" / "models--openai--gpt-oss-20b" / "snapshots") in hf
    assert any(ln.startswith("gpt-oss-20b-mlx ") for ln in lines)

    data = json.loads(run_cli(["models", "--json"], env).stdout)
    assert {m["name"] for m in data} == {"gpt-oss-20b-mlx", "openai/gpt-oss-20b"}
    assert all(m["complete"] and m["size_bytes"] > 100_000_000 for m in data)


def test_models_when_there_are_none(tmp_path):
    r = run_cli(["models"], cli_env(tmp_path))
    assert r.returncode == 0
    models = tmp_path / "gptoss" / "models"
    assert r.stdout.strip() == f"no local models in {models}; run `gptoss download 20b`"
    assert json.loads(run_cli(["models", "--json"], cli_env(tmp_path)).stdout) == []


def test_rm_asks_first_and_removes_one_copy_at_a_time(scratch):
    env = cli_env(scratch)
    r = run_cli(["rm", "20b"], env)
    assert r.returncode == 1
    assert r.stderr.startswith("gptoss: error: pass --yes to remove ") and r.stderr.count("\n") == 1
    assert (scratch / "gptoss" / "models" / "gpt-oss-20b-mlx").exists()

    r = run_cli(["rm", "20b", "--yes"], env)
    assert r.returncode == 0, r.stderr
    assert not (scratch / "gptoss" / "models" / "gpt-oss-20b-mlx").exists()
    assert "another copy of openai/gpt-oss-20b is still at" in r.stdout

    r = run_cli(["rm", "20b", "-y"], env)
    assert r.returncode == 0, r.stderr
    assert not (scratch / "hf" / "hub" / "models--openai--gpt-oss-20b").exists()
    assert json.loads(run_cli(["models", "--json"], env).stdout) == []

    r = run_cli(["rm", "20b", "-y"], env)
    assert r.returncode == 3
    assert "is not here; nothing to remove" in r.stderr


def test_rm_refuses_directories_it_does_not_manage(scratch, tiny_checkpoint):
    outside = scratch / "mine"
    shutil.copytree(tiny_checkpoint, outside)
    r = run_cli(["rm", str(outside), "--yes"], cli_env(scratch))
    assert r.returncode == 1
    assert (
        "is not in the models directory or the Hugging Face cache; delete it yourself" in r.stderr
    )
    assert outside.exists()


def test_info(home, tiny_checkpoint):
    env = cli_env(home)
    r = run_cli(["info", "openai/gpt-oss-20b", "--context", "4096", "--json"], env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    cfg = ModelConfig.from_dir(tiny_checkpoint)
    counts = cfg.param_counts()
    assert (d["layers"], d["sliding_layers"], d["full_layers"]) == (4, 2, 2)
    assert (d["experts"], d["experts_per_token"]) == (8, 4)
    assert (d["params_total"], d["params_active"]) == (counts["total"], counts["active"])
    assert d["format"] == "HF MXFP4" and d["quantization"] == "mxfp4 experts, bf16 rest"
    dtype = device_info().default_dtype  # float32 on the CPU backend, bfloat16 on Metal
    nbytes = 4 if dtype == "float32" else 2
    assert d["activation_dtype"] == dtype
    assert d["memory_kv_cache"] == memory.kv_cache_bytes(cfg, 4096, nbytes)
    assert d["memory_weights"] == memory.weights_bytes(
        tiny_checkpoint, nbytes, keep_dense_stored=memory.keeps_dense_stored(nbytes)
    )
    assert d["memory_total"] == d["memory_weights"] + d["memory_kv_cache"] + d["memory_overhead"]
    assert d["path"] == str(home / "gptoss" / "models" / "gpt-oss-20b-mlx")  # converted wins

    text = run_cli(["info", "gpt-oss-20b-mlx", "-c", "4096"], env)
    assert text.returncode == 0, text.stderr
    for needle in (
        "layers",
        "4 (2 sliding-window of 8 tokens, 2 full)",
        "8, 4 active per token",
        "memory at 4096 tokens",
        "KV cache",
        "fits",
    ):
        assert needle in text.stdout, needle


def test_info_of_a_missing_model(tmp_path):
    r = run_cli(["info", "120b"], cli_env(tmp_path))
    assert r.returncode == 3
    assert r.stderr == "gptoss: error: model 120b is not downloaded; run `gptoss download 120b`\n"


def test_doctor_says_which_compute_path_is_active_and_why(home):
    env = cli_env(home)
    r = run_cli(["doctor", "--json"], env)
    assert r.returncode == 0, r.stderr
    rows = {row["check"]: row for row in json.loads(r.stdout)}
    if device_info().metal:  # MLX's own kernels and Accelerate; no CPU parts to switch off
        assert rows["compute path"]["status"] == rows["experts"]["status"] == "ok"
        assert "fast path" not in rows and "kernels" not in rows
        return
    if shutil.which("cc") or shutil.which("gcc"):
        assert rows["fast path"]["status"] == "ok", rows["fast path"]
        assert rows["kernels"]["status"] == "ok" and "threads" in rows["kernels"]["detail"]
        assert "bf16" in rows["dense weights"]["detail"]
    # Each part switched off says so, and how the path falls back.
    r = run_cli(["doctor", "--json"], {**env, "GPTOSS_BLAS": "off", "GPTOSS_KERNELS": "off"})
    assert r.returncode == 0, r.stderr
    rows = {row["check"]: row for row in json.loads(r.stdout)}
    assert rows["blas"]["status"] == "warn" and "GPTOSS_BLAS=off" in rows["blas"]["detail"]
    assert rows["kernels"]["status"] == "warn"
    assert "GPTOSS_KERNELS" in rows["kernels"]["detail"]
    assert "plain MLX" in rows["kernels"]["detail"]
    assert rows["fast path"]["status"] == "warn" and "dense weights" not in rows


def test_doctor_rows(home, monkeypatch):
    from gptoss_mlx.cli.doctor import Check, doctor_checks

    for k, v in cli_env(home).items():
        monkeypatch.setenv(k, v)
    rows = doctor_checks()
    assert all(isinstance(r, Check) and r.status in ("ok", "warn", "fail", "info") for r in rows)
    names = [r.check for r in rows]
    for expected in (
        "platform",
        "python",
        "mlx",
        "compute path",
        "memory",
        "model budget",
        "HF cache",
        "models dir",
        "hub",
        "model openai/gpt-oss-20b",
        "model gpt-oss-20b-mlx",
    ):
        assert expected in names, names
    by = {r.check: r for r in rows}
    assert "CPU" in by["mlx"].detail and "float32" in by["compute path"].detail
    assert by["model openai/gpt-oss-20b"].detail.startswith("fits")
    assert not [r for r in rows if r.status == "fail"]

    monkeypatch.setenv("GPTOSS_MEMORY_LIMIT_BYTES", "64MB")
    by = {r.check: r for r in doctor_checks()}
    assert by["model budget"].detail == "64.0 MB (GPTOSS_MEMORY_LIMIT_BYTES)"
    assert by["model openai/gpt-oss-20b"].detail.startswith("does not fit")


def test_doctor_cli(home):
    r = run_cli(["doctor"], cli_env(home))
    assert r.returncode == 0, r.stderr
    assert "compute path" in r.stdout and "model openai/gpt-oss-20b" in r.stdout
    rows = json.loads(run_cli(["doctor", "--json"], cli_env(home)).stdout)
    assert {"check", "status", "detail"} == set(rows[0])
