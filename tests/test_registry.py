"""Finding local models and resolving `-m` specs (paths, names, aliases, repo ids)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptoss_mlx.checkpoint.contents import tensors
from gptoss_mlx.errors import BadCheckpointError, ModelNotFoundError, UserError
from gptoss_mlx.hub import cache as hub
from gptoss_mlx.hub import local as registry
from gptoss_mlx.hub.local import resolve_model

from .hub_server import FakeHub, cli_env, gpt_oss_decoys, repo_from_dir


@pytest.fixture
def fake_hub(tiny_checkpoint):
    with FakeHub() as h:
        h.add(repo_from_dir("openai/gpt-oss-20b", Path(tiny_checkpoint), gpt_oss_decoys()))
        yield h


@pytest.fixture
def env(tmp_path, monkeypatch, fake_hub):
    """This process's environment pointed at a fresh HF cache, models dir and the fake hub."""
    for k, v in cli_env(tmp_path, fake_hub).items():
        monkeypatch.setenv(k, v)
    for k in (
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "GPTOSS_MODEL",
    ):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


@pytest.fixture
def downloaded(env) -> Path:
    from gptoss_mlx.hub.download import download

    return download("openai/gpt-oss-20b")


def fake_converted(tiny_checkpoint: Path, name: str = "gpt-oss-20b-mlx") -> Path:
    """A directory in the models dir that looks complete (a copy of the tiny checkpoint)."""
    dst = registry.models_dir() / name
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def test_repo_id_for():
    assert hub.repo_id_for("20b") == "openai/gpt-oss-20b"
    assert hub.repo_id_for("120B") == "openai/gpt-oss-120b"
    assert hub.repo_id_for("gpt-oss-20b") == "openai/gpt-oss-20b"
    assert (
        hub.repo_id_for("mlx-community/gpt-oss-20b-MXFP4-Q8")
        == "mlx-community/gpt-oss-20b-MXFP4-Q8"
    )
    for bad in ("foo", "a/b/c", "/abs/path", "./x", "", "a b/c"):
        assert hub.repo_id_for(bad) is None, bad


def test_a_path_resolves_to_itself(env, tiny_checkpoint):
    assert resolve_model(str(tiny_checkpoint), yes=False) == Path(tiny_checkpoint).resolve()


def test_a_path_without_config_is_refused(env, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadCheckpointError, match="has no config.json: not a model directory"):
        resolve_model(str(tmp_path / "empty"), yes=False)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"), yes=False)


def test_alias_resolves_to_the_cached_snapshot(downloaded):
    assert downloaded.parent.name == "snapshots"
    assert resolve_model("20b", yes=False) == downloaded
    assert resolve_model("openai/gpt-oss-20b", yes=False) == downloaded


def test_cache_is_read_without_huggingface_hub(downloaded):
    code = (
        "import sys; from gptoss_mlx.hub.local import resolve_model; "
        "p = resolve_model('20b', yes=False); "
        "assert 'huggingface_hub' not in sys.modules and 'mlx' not in sys.modules; print(p)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(downloaded)


def test_converted_model_is_preferred_over_the_download(downloaded, tiny_checkpoint):
    conv = fake_converted(Path(tiny_checkpoint))
    assert resolve_model("20b", yes=False) == conv
    assert resolve_model("gpt-oss-20b-mlx", yes=False) == conv


def test_incomplete_snapshot_is_not_used(downloaded):
    from gptoss_mlx.checkpoint.safetensors import shard_paths

    shard = shard_paths(downloaded)[0]
    shard.unlink()
    assert registry.cached_snapshot("openai/gpt-oss-20b") is None
    with pytest.raises(ModelNotFoundError):
        resolve_model("20b", yes=False)
    [m] = registry.list_local_models()
    assert not m.complete and m.format == "incomplete"


def test_missing_model_not_interactive(env, fake_hub):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("20b", yes=False)
    assert str(e.value) == "model 20b is not downloaded; run `gptoss download 20b` (or pass --yes)"
    assert fake_hub.requests == []


def test_missing_model_with_yes_downloads_it(env, fake_hub):
    path = resolve_model("20b", yes=True)
    assert registry.is_complete(path)
    assert path == registry.cached_snapshot("openai/gpt-oss-20b")
    assert not [r for r in fake_hub.requests if "original/" in r.path or "metal/" in r.path]


def test_missing_model_offline(env, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="is not downloaded and HF_HUB_OFFLINE is set"):
        resolve_model("20b", yes=True)
    assert fake_hub.requests == []


def test_unknown_spec(env):
    with pytest.raises(ModelNotFoundError, match="unknown model 'foo'"):
        resolve_model("foo", yes=True, ask=lambda q: True)
    with pytest.raises(UserError, match="no model given"):
        resolve_model(" ", yes=True, ask=lambda q: True)


def _ask_in_a_terminal(answer: str, env: dict[str, str]) -> tuple[int, str]:
    """Run resolve_model on a pseudo-terminal, answer its question, return (exit code, output)."""
    import pty

    code = (
        "from gptoss_mlx.cli.resolve import model_path\n"
        "from gptoss_mlx.ui.ask import stdin_is_interactive\n"
        "from gptoss_mlx.errors import UserError\n"
        "try:\n"
        "    print('RESULT', model_path('20b', yes=False, interactive=stdin_is_interactive()))\n"
        "except UserError as e:\n"
        "    print('ERROR', e)\n"
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        if not answered and b"Download it now?" in out:
            os.write(master, answer.encode() + b"\n")
            answered = True
        if proc.poll() is not None and not ready:
            break
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, out.decode(errors="replace")


def test_terminal_asks_before_downloading(env, fake_hub):
    code, out = _ask_in_a_terminal("n", dict(os.environ))
    assert "gpt-oss-20b is not downloaded (12.8 GB). Download it now? [y/n]" in out.replace(
        "\r", ""
    )
    assert "ERROR model 20b is not downloaded; run `gptoss download 20b` when you want it" in out
    assert not [r for r in fake_hub.requests if "/resolve/" in r.path]

    code, out = _ask_in_a_terminal("y", dict(os.environ))
    assert code == 0
    result = [ln for ln in out.replace("\r", "").splitlines() if ln.startswith("RESULT ")]
    assert result and Path(result[0].removeprefix("RESULT ")) == registry.cached_snapshot(
        "openai/gpt-oss-20b"
    )


def test_list_local_models(downloaded, tiny_checkpoint):
    conv = fake_converted(Path(tiny_checkpoint), "my-model")
    # A non-gpt-oss repo in the same cache is not listed.
    other = hub.hf_cache_dir() / "models--someone--bert" / "snapshots" / ("a" * 40)
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    models = {m.name: m for m in registry.list_local_models()}
    assert set(models) == {"my-model", "openai/gpt-oss-20b"}
    hf = models["openai/gpt-oss-20b"]
    assert (hf.kind, hf.format, hf.quantization, hf.path) == (
        "hf-cache",
        "HF MXFP4",
        "mxfp4 experts, bf16 rest",
        downloaded,
    )
    assert hf.size_bytes == sum(f.stat().st_size for f in downloaded.iterdir())
    assert models["my-model"].path == conv and models["my-model"].kind == "converted"


def test_quantization_of_converted_models(tiny_checkpoint, tmp_path):
    from gptoss_mlx.hub.convert import convert

    for rest, expected in (
        ("bf16", "mxfp4 experts, bf16 rest"),
        ("q8", "mxfp4 experts, 8-bit rest"),
    ):
        dst = tmp_path / rest
        convert(tiny_checkpoint, dst, rest=rest, verify=False)
        assert registry.describe_quantization(dst) == expected
        assert registry.format_label(dst) == "MLX"


def test_tensors_of_a_damaged_checkpoint(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(BadCheckpointError, match="download or convert it again"):
        tensors(tmp_path)
