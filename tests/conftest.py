"""Shared fixtures. Heavy artifacts are built once and cached under <repo>/.cache/fixtures."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".cache" / "fixtures"
# A change to any of these rebuilds the cached checkpoint.
_GENERATOR_SOURCES = (
    "scripts/make_checkpoint.py",
    "gptoss_mlx/checkpoint/safetensors.py",
    "gptoss_mlx/checkpoint/mxfp4.py",
    "gptoss_mlx/harmony/tokenizer.py",
)


def _sources_hash() -> str:
    h = hashlib.sha256()
    for rel in _GENERATOR_SOURCES:
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """A random-weight tiny gpt-oss checkpoint in the hub layout. Shared: copy it before changing it.

    Its folder is never written to after the build (harmony_encodings_dir keeps its derived
    vocabulary in the user cache dir), so its file list does not depend on which tests ran first.
    """
    from scripts.make_checkpoint import make_checkpoint

    FIXTURES.mkdir(parents=True, exist_ok=True)
    out = FIXTURES / f"tiny-{_sources_hash()}"
    with open(FIXTURES / "tiny.lock", "w") as lock:  # concurrent pytest runs build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "tokenizer.json").is_file():
            make_checkpoint(out, preset="tiny", seed=0)
            # Older builds go once no concurrent run can still be using them.
            for old in FIXTURES.glob("tiny-*"):
                if old != out and time.time() - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def harmony_encodings_env(tiny_checkpoint: Path) -> Iterator[Path]:
    """TIKTOKEN_ENCODINGS_BASE set to a folder holding o200k_base.tiktoken, for openai-harmony."""
    from gptoss_mlx.harmony.tokenizer import harmony_encodings_dir

    folder = harmony_encodings_dir(tiny_checkpoint)
    saved = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
    else:
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = saved


from .fixtures_harmony import harmony_model  # noqa: E402,F401  (the tiny harmony-speaking model)


def run_gptoss(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | str | None = b"",
    timeout: float = 300,
    text: bool = True,
    python: str = sys.executable,
    flags: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (`python -m gptoss_mlx ARGS`): the one runner the tests share.

    `env` is the whole environment (default: this one, with no user config file read); stdin is
    closed after `stdin`; output is text unless `text=False` (bytes, for exact byte checks)."""
    if env is None:
        env = {**os.environ, "GPTOSS_CONFIG": "/nonexistent/config.toml"}
    data = stdin.encode() if isinstance(stdin, str) else stdin
    r = subprocess.run(
        [python, *flags, "-m", "gptoss_mlx", *args],
        env=dict(env),
        input=data,
        capture_output=True,
        timeout=timeout,
    )
    if not text:
        return r
    out, err = (b.decode(errors="replace") for b in (r.stdout, r.stderr))
    return subprocess.CompletedProcess(r.args, r.returncode, out, err)


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This environment with the config, data and state dirs under `tmp` (nothing of the user's)."""
    return {
        **os.environ,
        "GPTOSS_CONFIG": "/nonexistent/config.toml",
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_STATE_HOME": str(tmp / "state"),
        **extra,
    }
