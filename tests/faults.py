"""The fault catalogue's machinery (tests/test_faults*.py): a Case is one command a user might
type, with the files it finds; run_all runs them through the real CLI, three at a time, and
check_case asserts the exit code (errors.EXIT_CODES), one error line that says what to do, that
nothing was lost (the planted files unchanged) and nothing left behind (partials, chat locks,
temporary files, processes), within a time bound."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gptoss_mlx.errors import EXIT_CODES

from .conftest import run_gptoss
from .hub_server import cli_env

# A message "says what to do" when it holds one of these (the advice part of the line).
ADVICE = re.compile(
    r"\b(use|pass|run|choose|fix|remove|set|give|see|download|re-download|shorten|raise|make|"
    r"move|continue|delete|add|convert|free|upgrade|save|keep|unset|check|try|pick|resume|must be)\b",
    re.I,
)
MARK = "GPTOSS_FAULT_MARK"


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    says: str | None  # a regex the error line must match (None: a success)
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path, Path], None] | None = None  # (home, tiny checkpoint)
    stdin: bytes = b""
    seconds: float = 20.0


# -- what a case plants in its home -------------------------------------------------------------


def model_copy(home: Path, tiny: Path, name: str = "model") -> Path:
    """A private copy of the tiny checkpoint (weights linked, small files copied) to damage."""
    out = home / name
    out.mkdir()
    for p in tiny.iterdir():
        if p.suffix == ".safetensors":
            (out / p.name).symlink_to(p)
        elif p.is_file():
            shutil.copy(p, out / p.name)
    return out


def config_edit(fn: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def setup(home: Path, tiny: Path) -> None:
        m = model_copy(home, tiny)
        cfg = json.loads((m / "config.json").read_text())
        (m / "config.json").write_text(json.dumps(fn(cfg)))

    return setup


def drop_key(key: str) -> Callable[[dict], dict]:
    return lambda c: {k: v for k, v in c.items() if k != key}


def with_key(key: str, value: object) -> Callable[[dict], dict]:
    return lambda c: {**c, key: value}


def write_file(rel: str, data: str | bytes, model: bool = False) -> Callable[[Path, Path], None]:
    def setup(home: Path, tiny: Path) -> None:
        if model:
            model_copy(home, tiny)
        p = home / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink():
            p.unlink()
        p.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def src_copy(home: Path, tiny: Path) -> None:
    model_copy(home, tiny, "src")


def chat_file(text: str) -> Callable[[Path, Path], None]:
    return write_file("state/gptoss/chats/20260101-000000-abcd.json", text)


def good_chat(model: str) -> str:
    return json.dumps(
        {
            "format": "gptoss-chat",
            "version": 1,
            "id": "20260101-000000-abcd",
            "created": "2026-01-01T00:00:00+00:00",
            "updated": "2026-01-01T00:00:00+00:00",
            "model": model,
            "settings": {"effort": "low"},
            "messages": [{"role": "user", "content": "hi"}],
        }
    )


def src_and(more: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(home: Path, tiny: Path) -> None:
        src_copy(home, tiny)
        more(home, tiny)

    return setup


def mlx_src(home: Path, tiny: Path) -> None:
    src = model_copy(home, tiny, "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization"] = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    (src / "config.json").write_text(json.dumps(cfg))


def user_folder(home: Path, tiny: Path) -> None:
    src_copy(home, tiny)
    (home / "dst").mkdir()
    (home / "dst" / "config.json").write_text("{}")
    (home / "dst" / "thesis.tex").write_text("years of work")


R = ["run", "hi"]  # settings are checked before any model is looked for
BAD_FLAG, BAD_SETTING, NO_MODEL, BAD_CKPT = 2, 1, 3, 4


def _fmt(value: str, home: Path) -> str:
    return value.replace("{home}", str(home))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (not following links) with its size and mtime."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def leftovers(home: Path) -> list[str]:
    """What a failed command must never leave: partial outputs, chat locks, temporary files."""
    bad = []
    for dirpath, dirs, files in os.walk(home):
        for name in dirs + files:
            if name.endswith((".partial", ".tmp", ".old")) or (
                name.startswith(".") and name.endswith(".lock")
            ):
                bad.append(str(Path(dirpath, name).relative_to(home)))
    return bad


def marked_processes(mark: str) -> list[int]:
    """Processes still running with this case's marker in their environment."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if f"{MARK}={mark}".encode() in (d / "environ").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def gptoss(
    args: list[str], env: dict[str, str], stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; stdin as bytes (to send what is not UTF-8), output as text."""
    return run_gptoss(*args, env=env, stdin=stdin, timeout=timeout)


def fault_env(home: Path, **extra: str) -> dict[str, str]:
    env = cli_env(home)
    env.pop("GPTOSS_CONFIG", None)
    env.update(extra)
    env[MARK] = uuid.uuid4().hex
    return env


def one_error_line(stderr: str, says: str) -> str:
    """The single `gptoss: error:` line, last on stderr, matching `says` and giving advice."""
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("gptoss: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert re.search(says, errors[0]), errors[0]
    assert ADVICE.search(errors[0].removeprefix("gptoss: error: ")), f"no advice: {errors[0]}"
    return errors[0]


def assert_clean_exit(r, code: int, says: str | None, home: Path, env: dict, planted: dict) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert code in EXIT_CODES
    if says is not None:
        one_error_line(r.stderr, says)
    now = snapshot(home)
    lost = {k for k, v in planted.items() if now.get(k) != v}
    assert not lost, f"changed or removed: {sorted(lost)}"
    assert not leftovers(home), leftovers(home)
    assert not marked_processes(env[MARK])


@dataclass
class Ran:
    home: Path
    env: dict[str, str]
    planted: dict[str, tuple[int, int]]
    result: subprocess.CompletedProcess | None = None
    seconds: float = 0.0


def _run_case(case: Case, home: Path, tiny: Path) -> Ran:
    home.mkdir()
    if case.setup is not None:
        case.setup(home, tiny)
    env = fault_env(home, **{k: _fmt(v, home) for k, v in case.env.items()})
    ran = Ran(home, env, snapshot(home))
    started = time.monotonic()
    ran.result = gptoss(
        [_fmt(a, home) for a in case.args], env, stdin=case.stdin, timeout=case.seconds + 30
    )
    ran.seconds = time.monotonic() - started
    return ran


def run_all(cases: list[Case], tiny: Path, root: Path) -> dict[str, Ran]:
    """Every case run once, three at a time: most of each run is Python starting up."""
    assert len({c.id for c in cases}) == len(cases)
    before = snapshot(tiny)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c.id: pool.submit(_run_case, c, root / c.id, tiny) for c in cases}
        out = {cid: f.result() for cid, f in futures.items()}
    assert snapshot(tiny) == before, "a case changed the shared checkpoint"
    return out


def check_case(case: Case, r: Ran) -> None:
    assert_clean_exit(r.result, case.code, case.says, r.home, r.env, r.planted)
    # The bound is for a lone run; three share the machine here.
    assert r.seconds < case.seconds * 2, f"took {r.seconds:.1f} s"
