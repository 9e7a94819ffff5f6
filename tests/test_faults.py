"""Fault and bad-input catalogue: what a user types or what happens to their disk, run through the
real `gptoss` in a subprocess. Every case checks the exit code (errors.EXIT_CODES), one error
line that says what to do, that nothing was lost (the files the case planted are unchanged)
and nothing left behind (partials, chat locks, temporary files, processes), within a time
bound. Signals, full and read-only disks and concurrent chats are in tests/test_faults_io.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gptoss_mlx.errors import EXIT_CODES

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


def _model(home: Path, tiny: Path, name: str = "model") -> Path:
    """A private copy of the tiny checkpoint (weights linked, small files copied) to damage."""
    out = home / name
    out.mkdir()
    for p in tiny.iterdir():
        if p.suffix == ".safetensors":
            (out / p.name).symlink_to(p)
        elif p.is_file():
            shutil.copy(p, out / p.name)
    return out


def _config_edit(fn: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    def setup(home: Path, tiny: Path) -> None:
        m = _model(home, tiny)
        cfg = json.loads((m / "config.json").read_text())
        (m / "config.json").write_text(json.dumps(fn(cfg)))

    return setup


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda c: {k: v for k, v in c.items() if k != key}


def _with(key: str, value: object) -> Callable[[dict], dict]:
    return lambda c: {**c, key: value}


def _write(rel: str, data: str | bytes, model: bool = False) -> Callable[[Path, Path], None]:
    def setup(home: Path, tiny: Path) -> None:
        if model:
            _model(home, tiny)
        p = home / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink():
            p.unlink()
        p.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def _src(home: Path, tiny: Path) -> None:
    _model(home, tiny, "src")


def _chat(text: str) -> Callable[[Path, Path], None]:
    return _write("state/gptoss/chats/20260101-000000-abcd.json", text)


def _good_chat(model: str) -> str:
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


def _src_and(more: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(home: Path, tiny: Path) -> None:
        _src(home, tiny)
        more(home, tiny)

    return setup


def _mlx_src(home: Path, tiny: Path) -> None:
    src = _model(home, tiny, "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization"] = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    (src / "config.json").write_text(json.dumps(cfg))


def _user_folder(home: Path, tiny: Path) -> None:
    _src(home, tiny)
    (home / "dst").mkdir()
    (home / "dst" / "config.json").write_text("{}")
    (home / "dst" / "thesis.tex").write_text("years of work")


R = ["run", "hi"]  # settings are checked before any model is looked for
BAD_FLAG, BAD_SETTING, NO_MODEL, BAD_CKPT = 2, 1, 3, 4

CASES = [
    # usage: click's message as one line, exit 2
    Case("unknown-command", ["frobnicate"], BAD_FLAG, r"No such command 'frobnicate'.*--help"),
    Case("unknown-flag", ["run", "--bogus", "x"], BAD_FLAG, r"No such option: --bogus"),
    Case("missing-argument", ["convert"], BAD_FLAG, r"Missing argument"),
    Case("seed-not-a-number", ["run", "--seed", "abc", "x"], BAD_FLAG, r"'--seed'"),
    Case("temperature-not-a-number", ["run", "-t", "warm", "x"], BAD_FLAG, r"'--temperature'"),
    Case(
        "info-context-not-a-number",
        ["info", "-c", "many"],
        BAD_FLAG,
        r"'-c' / '--context'|--context",
    ),
    # hostile flag values: checked before the model loads, the flag named
    Case("temperature-nan", [*R, "-t", "nan"], BAD_SETTING, r"temperature.*nan.*--temperature"),
    Case("temperature-inf", [*R, "-t", "inf"], BAD_SETTING, r"temperature.*inf.*--temperature"),
    Case("temperature-negative", [*R, "-t", "-1"], BAD_SETTING, r"temperature.*--temperature"),
    Case("top-p-zero", [*R, "--top-p", "0"], BAD_SETTING, r"top-p.*--top-p"),
    Case("top-p-nan", [*R, "--top-p", "nan"], BAD_SETTING, r"top-p.*--top-p"),
    Case("min-p-one", [*R, "--min-p", "1"], BAD_SETTING, r"min-p.*--min-p"),
    Case("top-k-negative", [*R, "--top-k", "-5"], BAD_SETTING, r"top-k.*--top-k"),
    Case("top-k-huge", [*R, "--top-k", "9" * 30], BAD_SETTING, r"top-k.*--top-k"),
    Case("seed-negative", [*R, "--seed", "-1"], BAD_SETTING, r"seed.*2\^64-1.*--seed"),
    Case("seed-2-64", [*R, "--seed", str(2**64)], BAD_SETTING, r"seed.*--seed"),
    Case("max-tokens-zero", [*R, "-n", "0"], BAD_SETTING, r"max-tokens.*--max-tokens"),
    Case("context-tiny", [*R, "-c", "8"], BAD_SETTING, r"context.*--context"),
    Case("context-huge", [*R, "-c", "10000000"], BAD_SETTING, r"context.*--context"),
    Case("effort-unknown", [*R, "--effort", "extreme"], BAD_SETTING, r"effort.*--effort"),
    Case("dtype-unknown", [*R, "--dtype", "int8"], BAD_SETTING, r"dtype.*--dtype"),
    Case("model-empty", [*R, "-m", " "], BAD_SETTING, r"model is empty.*--model"),
    Case("model-missing", [*R, "-m", "/nonexistent/model"], NO_MODEL, r"/nonexistent/model"),
    Case("chat-reasoning-unknown", ["chat", "--reasoning", "loud"], BAD_SETTING, r"--reasoning"),
    Case("chat-id-without-resume", ["chat", "abc"], BAD_SETTING, r"gptoss chat --resume abc"),
    Case("info-context-zero", ["info", "-c", "0"], BAD_SETTING, r"--context"),
    Case(
        "info-missing-model", ["info", "/nonexistent"], NO_MODEL, r"does not exist.*gptoss models"
    ),
    Case("rm-missing-model", ["rm", "nothing-here", "--yes"], NO_MODEL, r"gptoss models"),
    Case("download-not-a-repo", ["download", "../../etc"], BAD_SETTING, r"repo id"),
    Case(
        "download-unreachable-hub",
        ["download", "openai/gpt-oss-20b", "--revision", "../x"],
        8,
        r".",
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
    ),
    Case(
        "download-offline-missing",
        ["download", "20b"],
        8,
        r"HF_HUB_OFFLINE",
        env={"HF_HUB_OFFLINE": "1"},
    ),
    # hostile environment variables: the variable named
    Case(
        "env-temperature-nan",
        R,
        BAD_SETTING,
        r"GPTOSS_TEMPERATURE",
        env={"GPTOSS_TEMPERATURE": "nan"},
    ),
    Case("env-seed-negative", R, BAD_SETTING, r"GPTOSS_SEED", env={"GPTOSS_SEED": "-3"}),
    Case(
        "env-context-text",
        R,
        BAD_SETTING,
        r"GPTOSS_CONTEXT.*whole number",
        env={"GPTOSS_CONTEXT": "lots"},
    ),
    Case(
        "env-max-tokens-float",
        R,
        BAD_SETTING,
        r"GPTOSS_MAX_TOKENS",
        env={"GPTOSS_MAX_TOKENS": "1e9"},
    ),
    Case("env-top-p-inf", R, BAD_SETTING, r"GPTOSS_TOP_P", env={"GPTOSS_TOP_P": "inf"}),
    Case("env-yes-maybe", R, BAD_SETTING, r"GPTOSS_YES.*yes or no", env={"GPTOSS_YES": "maybe"}),
    Case("env-effort-max", R, BAD_SETTING, r"GPTOSS_EFFORT", env={"GPTOSS_EFFORT": "max"}),
    Case("env-model-missing", ["run", "hi"], NO_MODEL, r"/nope", env={"GPTOSS_MODEL": "/nope"}),
    Case(
        "env-config-is-a-folder",
        R,
        BAD_SETTING,
        r"cannot read config file",
        env={"GPTOSS_CONFIG": "{home}"},
    ),
    Case(
        "env-home-is-a-file",  # nothing to list, and no crash
        ["models"],
        0,
        None,
        env={"GPTOSS_HOME": "{home}/file"},
        setup=_write("file", "not a folder"),
    ),
    Case(
        "env-cache-is-a-file",  # the vocabulary is derived into a temporary folder
        ["run", "-m", "{home}/model", "--show-prompt", "hi"],
        0,
        None,
        env={"XDG_CACHE_HOME": "{home}/file"},
        setup=lambda h, t: (_model(h, t), _write("file", "x")(h, t)),
    ),
    # damaged config file: the file and the key named
    Case(
        "config-not-toml",
        R,
        BAD_SETTING,
        r"config file",
        setup=_write("config/gptoss/config.toml", "temperature = = 1"),
    ),
    Case(
        "config-unknown-key",
        R,
        BAD_SETTING,
        r"unknown key.*colour",
        setup=_write("config/gptoss/config.toml", 'colour = "red"\n'),
    ),
    Case(
        "config-temperature-nan",
        R,
        BAD_SETTING,
        r"key temperature in .*config.toml",
        setup=_write("config/gptoss/config.toml", "temperature = nan\n"),
    ),
    Case(
        "config-seed-text",
        R,
        BAD_SETTING,
        r"key seed in",
        setup=_write("config/gptoss/config.toml", 'seed = "abc"\n'),
    ),
    Case(
        "config-temperature-bool",
        R,
        BAD_SETTING,
        r"temperature.*use a number",
        setup=_write("config/gptoss/config.toml", "temperature = true\n"),
    ),
    # damaged model files: bad checkpoint (4), the file or key named
    Case(
        "model-config-list",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"JSON list",
        setup=_write("model/config.json", "[1, 2]", model=True),
    ),
    Case(
        "model-config-not-json",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"not valid JSON",
        setup=_write("model/config.json", "{", model=True),
    ),
    Case(
        "model-config-binary",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"config.json",
        setup=_write("model/config.json", b"\xff\xfe\x00", model=True),
    ),
    Case(
        "model-config-no-hidden-size",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"'hidden_size'",
        setup=_config_edit(_drop("hidden_size")),
    ),
    Case(
        "model-config-wrong-type",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"'num_hidden_layers'",
        setup=_config_edit(_with("num_hidden_layers", "four")),
    ),
    Case(
        "model-config-rope-list",
        ["info", "{home}/model"],
        BAD_CKPT,
        r"'rope_scaling'",
        setup=_config_edit(_with("rope_scaling", [1])),
    ),
    Case(
        "model-config-negative",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"'vocab_size'",
        setup=_config_edit(_with("vocab_size", -1)),
    ),
    Case(
        "model-tokenizer-missing",
        ["run", "-m", "{home}/model", "--show-prompt", "hi"],
        BAD_CKPT,
        r"tokenizer",
        setup=lambda h, t: (_model(h, t) / "tokenizer.json").unlink(),
    ),
    Case(
        "model-tokenizer-garbage",
        ["run", "-m", "{home}/model", "--show-prompt", "hi"],
        BAD_CKPT,
        r"tokenizer",
        setup=_write("model/tokenizer.json", "{}", model=True),
    ),
    Case(
        "convert-index-garbage",
        ["convert", "{home}/src", "{home}/dst"],
        BAD_CKPT,
        r"index",
        setup=_src_and(_write("src/model.safetensors.index.json", "{")),
    ),
    Case(
        "convert-shard-garbage",
        ["convert", "{home}/src", "{home}/dst"],
        BAD_CKPT,
        r"safetensors",
        setup=_src_and(_write("src/model-00001-of-00001.safetensors", b"\x00" * 64)),
    ),
    # convert destinations: nothing of the user's is ever replaced
    Case(
        "convert-dst-is-src",
        ["convert", "{home}/src", "{home}/src", "--force"],
        BAD_SETTING,
        r"DST .* is SRC",
        setup=_src,
    ),
    Case(
        "convert-dst-inside-src",
        ["convert", "{home}/src", "{home}/src/out", "--force"],
        BAD_SETTING,
        r"inside SRC",
        setup=_src,
    ),
    Case(
        "convert-src-inside-dst",
        ["convert", "{home}/src", "{home}", "--force"],
        BAD_SETTING,
        r"contains SRC",
        setup=_src,
    ),
    Case(
        "convert-dst-is-a-file",
        ["convert", "{home}/src", "{home}/f", "--force"],
        BAD_SETTING,
        r"not a directory",
        setup=_src_and(_write("f", "mine")),
    ),
    Case(
        "convert-dst-user-folder",
        ["convert", "{home}/src", "{home}/dst", "--force"],
        BAD_SETTING,
        r"thesis.tex.*not even with --force",
        setup=_user_folder,
    ),
    Case(
        "convert-experts-q3",
        ["convert", "{home}/src", "{home}/dst", "--experts", "q3"],
        BAD_SETTING,
        r"--experts",
        setup=_src,
    ),
    Case(
        "convert-group-size-7",
        ["convert", "{home}/src", "{home}/dst", "--experts", "q4", "--group-size", "7"],
        BAD_SETTING,
        r"--group-size",
        setup=_src,
    ),
    Case(
        "convert-rest-q2",
        ["convert", "{home}/src", "{home}/dst", "--rest", "q2"],
        BAD_SETTING,
        r"--rest",
        setup=_src,
    ),
    Case(
        "convert-mlx-source",
        ["convert", "{home}/src", "{home}/dst"],
        BAD_SETTING,
        r"already in MLX format",
        setup=_mlx_src,
    ),
    # chats on disk
    Case(
        "chat-latest-damaged",
        ["chat", "--resume"],
        BAD_SETTING,
        r"latest saved chat is damaged.*move",
        setup=_chat("{"),
    ),
    Case(
        "chat-newer-version",
        ["chat", "--resume", "20260101-000000-abcd"],
        BAD_SETTING,
        r"upgrade",
        setup=_chat(json.dumps({"format": "gptoss-chat", "version": 99, "messages": []})),
    ),
    Case(
        "chat-unknown-id",
        ["chat", "--resume", "nope"],
        BAD_SETTING,
        r"gptoss chat --list",
        setup=_chat(_good_chat("")),
    ),
    Case(
        "chat-model-gone",
        ["chat", "--resume"],
        NO_MODEL,
        r"which is gone.*-m MODEL",
        setup=_chat(_good_chat("/gone/model")),
    ),
    Case(
        "chat-temperature-inf",
        ["chat", "--resume"],
        BAD_SETTING,
        r"temperature",
        setup=_chat(_good_chat("").replace('"effort": "low"', '"temperature": Infinity')),
    ),
    # --tools files
    Case(
        "tools-missing",
        [*R, "--tools", "{home}/none.json"],
        BAD_SETTING,
        r"cannot read --tools",
        setup=None,
    ),
    Case(
        "tools-not-json",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r"not valid JSON \(line 1",
        setup=_write("t.json", "[{"),
    ),
    Case(
        "tools-a-number",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r"JSON list",
        setup=_write("t.json", "42"),
    ),
    Case(
        "tools-no-name",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r'tool 1 has no "name"',
        setup=_write("t.json", '[{"description": "x"}]'),
    ),
    Case(
        "tools-bad-parameters",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r'"parameters"',
        setup=_write("t.json", '[{"name": "f", "parameters": 3}]'),
    ),
    Case(
        "tools-not-utf8",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r"UTF-8",
        setup=_write("t.json", b"\xff\xfe["),
    ),
    # stdin
    Case("stdin-not-utf8", ["run", "-"], BAD_SETTING, r"not UTF-8", stdin=b"caf\xe9"),
    Case("stdin-empty", ["run"], BAD_SETTING, r"no prompt", stdin=b"   \n"),
]


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
    r = subprocess.run(
        [sys.executable, "-m", "gptoss_mlx", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    )


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


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> Path:
    return Path(tiny_checkpoint)


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


@pytest.fixture(scope="module")
def ran(tiny: Path, tmp_path_factory) -> dict[str, Ran]:
    """Every case run once, three at a time: most of each run is Python starting up."""
    root = tmp_path_factory.mktemp("faults")
    before = snapshot(tiny)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c.id: pool.submit(_run_case, c, root / c.id, tiny) for c in CASES}
        out = {cid: f.result() for cid, f in futures.items()}
    assert snapshot(tiny) == before, "a case changed the shared checkpoint"
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, ran: dict[str, Ran]) -> None:
    r = ran[case.id]
    assert_clean_exit(r.result, case.code, case.says, r.home, r.env, r.planted)
    # The bound is for a lone run; three share the machine here.
    assert r.seconds < case.seconds * 2, f"took {r.seconds:.1f} s"


def test_the_catalogue_is_wide_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.code for c in CASES} >= {1, 2, 3, 4, 8}
