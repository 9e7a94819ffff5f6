"""Faults from outside the command line, through the real CLI: signals during convert and
generation (download's are in test_hub.py), full and read-only disks (small tmpfs mounts; root
only), a stdin pipe that never closes, the same chat in two terminals, a failed autosave, lists at
80 columns, a reply cut by the context, a failed doctor check. Each checks the exit code, the
message, that nothing was lost and nothing left behind, within a time bound."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .faults import (
    fault_env,
    gptoss,
    leftovers,
    marked_processes,
    one_error_line,
    snapshot,
)
from .hub_server import wait_for

REPO = Path(__file__).resolve().parents[1]


def popen(args: list[str], env: dict[str, str], stdin: int | None = subprocess.DEVNULL):
    return subprocess.Popen(
        [sys.executable, "-m", "gptoss_mlx", *args],
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class Reader:
    """Collects a pipe's bytes on a thread, so that a test can wait for output without blocking."""

    def __init__(self, pipe) -> None:
        self.data = b""
        self._t = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self._t.start()

    def _run(self, pipe) -> None:
        for chunk in iter(lambda: pipe.read1(4096), b""):
            self.data += chunk

    def text(self) -> str:
        self._t.join(timeout=10)
        return self.data.decode(errors="replace")


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".partial")] if folder.is_dir() else []


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> Path:
    return Path(tiny_checkpoint)


# -- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_convert_exits_130_and_removes_its_partial(tiny, tmp_path, sig):
    env = fault_env(tmp_path)
    before = snapshot(tiny)
    proc = popen(["convert", str(tiny), str(tmp_path / "out")], env)
    assert wait_for(lambda: partials(tmp_path), timeout=60, interval=0.01), proc.poll()
    proc.send_signal(sig)
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - stopped < 20
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == "gptoss: interrupted"
    assert not (tmp_path / "out").exists() and not partials(tmp_path)
    assert snapshot(tiny) == before
    assert not marked_processes(env["GPTOSS_FAULT_MARK"])


def test_a_killed_convert_is_listed_and_the_next_convert_removes_it(tiny, tmp_path):
    env = fault_env(tmp_path)
    models = tmp_path / "gptoss" / "models"
    dst = models / "tiny"
    proc = popen(["convert", str(tiny), str(dst)], env)
    assert wait_for(lambda: partials(models), timeout=60, interval=0.01), proc.poll()
    time.sleep(0.3)  # some bytes written
    proc.kill()
    proc.communicate(timeout=30)
    [left] = partials(models)

    r = gptoss(["models"], env)
    assert r.returncode == 0, r.stderr
    assert str(left) in r.stderr and "next convert removes it" in r.stderr
    r = gptoss(["doctor", "--json"], env, timeout=120)
    rows = [row for row in json.loads(r.stdout) if row["check"] == "partial convert"]
    assert len(rows) == 1 and str(left) in rows[0]["detail"]

    started = time.monotonic()
    r = gptoss(["convert", str(tiny), str(dst), "--no-verify"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"removed the partial output of an earlier, stopped convert: {left}" in r.stderr
    assert not partials(models) and (dst / "config.json").is_file()
    assert time.monotonic() - started < 60
    assert "partial" not in gptoss(["models"], env).stderr


def test_a_running_convert_keeps_its_partial_from_a_second_one(tiny, tmp_path):
    """Stale means provably abandoned: a partial whose writer still runs is not touched."""
    env = fault_env(tmp_path)
    a = popen(["convert", str(tiny), str(tmp_path / "a")], env)
    assert wait_for(lambda: partials(tmp_path), timeout=60, interval=0.01), a.poll()
    r = gptoss(["convert", str(tiny), str(tmp_path / "b"), "--no-verify"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "removed the partial" not in r.stderr
    _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err
    assert (tmp_path / "a" / "config.json").is_file() and not partials(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_reply_exits_130(tiny, tmp_path, sig):
    env = fault_env(tmp_path)
    proc = popen(["run", "-m", str(tiny), "-t", "0", "-n", "100000", "hi"], env)
    out, err = Reader(proc.stdout), Reader(proc.stderr)
    assert wait_for(lambda: len(out.data) > 20, timeout=60), proc.poll()
    proc.send_signal(sig)
    stopped = time.monotonic()
    proc.wait(timeout=30)
    assert time.monotonic() - stopped < 10
    assert proc.returncode == 130, err.text()
    assert err.text().strip().splitlines()[-1] == "gptoss: interrupted"
    assert out.text().strip()  # what was written stays written
    assert not marked_processes(env["GPTOSS_FAULT_MARK"])


# -- stdin ---------------------------------------------------------------------------------------


def test_run_with_a_prompt_never_waits_on_a_silent_pipe(tiny, tmp_path):
    """Bug: `gptoss run "prompt"` read stdin whenever it was not a terminal, so a pipe that never
    closes (a `while read` loop, mlx.launch) hung it forever."""
    env = fault_env(tmp_path)
    proc = popen(["run", "-m", str(tiny), "-t", "0", "-n", "3", "hi"], env, stdin=subprocess.PIPE)
    out, err = Reader(proc.stdout), Reader(proc.stderr)
    try:
        proc.wait(timeout=60)  # stdin stays open (communicate() would close it)
    except subprocess.TimeoutExpired:
        pytest.fail("gptoss run waited on a stdin pipe that had nothing to read")
    finally:
        proc.kill()
        proc.stdin.close()
    assert proc.returncode == 0, err.text()
    assert out.text().strip()


def test_run_reads_data_waiting_on_a_pipe(tiny, tmp_path):
    env = fault_env(tmp_path)
    r = gptoss(["run", "-m", str(tiny), "--show-prompt", "Summarize:"], env, stdin=b"the material")
    assert r.returncode == 0, r.stderr
    assert "Summarize:\n\nthe material" in r.stdout


# -- exit codes of whole runs --------------------------------------------------------------------


def test_a_reply_cut_by_the_full_context_exits_5(tiny, tmp_path):
    env = fault_env(tmp_path)
    r = gptoss(["run", "-m", str(tiny), "-t", "0", "-n", "1", "--json", "hi"], env)
    prompt = json.loads(r.stdout)["usage"]["prompt_tokens"]
    r = gptoss(["run", "-m", str(tiny), "-t", "0", "-c", str(prompt + 4), "hi"], env)
    assert r.returncode == 5, r.stderr
    one_error_line(r.stderr, r"context is full; raise --context \(up to 131072\)")
    assert "/undo" not in r.stderr


def test_doctor_exits_1_when_a_check_fails(tmp_path):
    """Bug: the exit code of `doctor` (and of Ctrl-C in run and convert) was dropped: always 0."""
    broken = tmp_path / "site"
    (broken / "mlx").mkdir(parents=True)
    (broken / "mlx" / "__init__.py").write_text("raise ImportError('mlx is broken here')\n")
    env = fault_env(tmp_path, PYTHONPATH=f"{broken}{os.pathsep}{REPO}")
    r = gptoss(["doctor", "--json"], env, timeout=120)
    assert r.returncode == 1, r.stderr
    fails = [row for row in json.loads(r.stdout) if row["status"] == "fail"]
    assert any("mlx is broken here" in row["detail"] for row in fails)


# -- chats ---------------------------------------------------------------------------------------


def _chat_file(home: Path, chat_id: str) -> dict:
    return json.loads((home / "state" / "gptoss" / "chats" / f"{chat_id}.json").read_text())


def _users(record: dict) -> list[str]:
    return [m["content"] for m in record["messages"] if m["role"] == "user"]


def _chat_ids(home: Path) -> list[str]:
    return sorted(p.stem for p in (home / "state" / "gptoss" / "chats").glob("*.json"))


def test_a_failed_autosave_says_not_saved(harmony_model, tmp_path):
    """Bug: chat printed "chat saved: resume with ..." after its autosave had failed."""
    (tmp_path / "state").write_text("a file where the state folder should be")
    env = fault_env(tmp_path, XDG_STATE_HOME=str(tmp_path / "state"))
    args = ["chat", "-m", str(harmony_model), "-t", "0", "-n", "8"]
    r = gptoss(args, env, stdin=b"hi\n", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "chat saved" not in r.stdout
    assert "chat not saved" in r.stdout and "/save PATH" in r.stdout
    assert not leftovers(tmp_path)


def test_the_same_chat_in_two_terminals_loses_no_turns(harmony_model, tmp_path):
    """Bug: resumed in two terminals, one chat's turns overwrote the other's while both said saved."""
    env = fault_env(tmp_path)
    base = ["chat", "-m", str(harmony_model), "-t", "0", "-n", "8"]
    r = gptoss(base, env, stdin=b"first question\n", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    [chat_id] = _chat_ids(tmp_path)

    a = popen([*base, "--resume", chat_id], env, stdin=subprocess.PIPE)
    a_out = Reader(a.stdout)
    a.stdin.write(b"from terminal A\n")
    a.stdin.flush()
    assert wait_for(
        lambda: "from terminal A" in _users(_chat_file(tmp_path, chat_id)), timeout=120
    ), a_out.data
    b = gptoss([*base, "--resume", chat_id], env, stdin=b"from terminal B\n", timeout=120)
    a.stdin.close()
    a.wait(timeout=60)
    assert a.returncode == 0 and b.returncode == 0, b.stdout + b.stderr
    assert f"chat {chat_id} is open in another gptoss" in b.stdout

    [other] = [c for c in _chat_ids(tmp_path) if c != chat_id]
    assert _users(_chat_file(tmp_path, chat_id)) == ["first question", "from terminal A"]
    # The fork starts from the chat as B found it (with A's turn so far), then B's own turns.
    assert _users(_chat_file(tmp_path, other)) == [
        "first question",
        "from terminal A",
        "from terminal B",
    ]
    assert f"resume with gptoss chat --resume {other}" in b.stdout
    assert not leftovers(tmp_path)


def test_lists_keep_ids_names_and_sizes_whole_at_80_columns(tiny, tmp_path):
    """Bug: `chat --list` and `models` cut ids, names and sizes at 80 columns and in a pipe."""
    chat_id = "20260101-000000-" + "a" * 40
    chats = tmp_path / "state" / "gptoss" / "chats"
    chats.mkdir(parents=True)
    record = {
        "format": "gptoss-chat",
        "version": 1,
        "id": chat_id,
        "updated": "2026-01-01T00:00:00+00:00",
        "messages": [{"role": "user", "content": "a long first message " * 10}],
    }
    (chats / f"{chat_id}.json").write_text(json.dumps(record))
    name = "my-gpt-oss-model-converted-with-a-long-descriptive-name"
    model = tmp_path / "gptoss" / "models" / name
    shutil.copytree(tiny, model, symlinks=True)
    for columns in ("80", "50"):
        env = fault_env(tmp_path, COLUMNS=columns)
        r = gptoss(["chat", "--list"], env)
        assert r.returncode == 0 and chat_id in r.stdout, r.stdout
        assert "a long first message" in r.stdout  # free text is cut, not dropped
        r = gptoss(["models"], env)
        [row] = [line for line in r.stdout.splitlines() if name in line]
        assert r.returncode == 0 and re.search(r" \d+(\.\d+)? [KMG]i?B ", row), r.stdout


# -- disks ---------------------------------------------------------------------------------------


@pytest.fixture
def mount(tmp_path) -> Iterator:
    """mount(name, size, read_only) -> a small tmpfs; skipped (with the reason) unless root."""
    mounted: list[Path] = []

    def make(name: str, size: str = "8m", read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("full and read-only disks need a tmpfs mount, which needs root")
        where = tmp_path / name
        where.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_convert_into_a_read_only_folder_is_one_line_naming_dst(tiny, tmp_path, mount):
    """Bug: an unwritable destination was an internal error naming a temporary directory."""
    ro = mount("ro", read_only=True)
    env = fault_env(tmp_path)
    r = gptoss(["convert", str(tiny), str(ro / "out")], env)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr, rf"cannot write to {ro / 'out'}: Read-only file system")
    assert ".partial" not in line and "tmp" not in line.split(str(ro))[1]


def test_convert_onto_a_full_disk_leaves_nothing(tiny, tmp_path, mount):
    small = mount("small", size="8m")
    # Pretend the free-space check passed, so that the disk really fills during the write.
    env = fault_env(tmp_path, GPTOSS_FAKE_FREE_BYTES=str(10**12))
    started = time.monotonic()
    r = gptoss(["convert", str(tiny), str(small / "out")], env, timeout=120)
    assert r.returncode == 7, r.stderr
    one_error_line(r.stderr, r"disk full while writing .*nothing was left behind")
    assert list(small.iterdir()) == []
    assert time.monotonic() - started < 60
    env = fault_env(tmp_path)
    r = gptoss(["convert", str(tiny), str(small / "out")], env)
    assert r.returncode == 7
    one_error_line(r.stderr, r"not enough disk space")


def test_autosave_onto_a_full_disk_says_not_saved(harmony_model, tmp_path, mount):
    state = mount("state", size="4k")
    (state / "filler").write_bytes(b"x" * 4096)
    env = fault_env(tmp_path, XDG_STATE_HOME=str(state))
    r = gptoss(["chat", "-m", str(harmony_model), "-t", "0", "-n", "8"], env, stdin=b"hi\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "chat not saved" in r.stdout and "chat saved" not in r.stdout
    assert [p.name for p in state.iterdir() if p.is_file()] == ["filler"]


def test_sigterm_ends_a_chat_and_keeps_it(harmony_model, tmp_path):
    """SIGTERM during a chat saves it and exits 130 (a Ctrl-C at the prompt only clears it)."""
    env = fault_env(tmp_path, COLUMNS="80")
    chat = popen(
        ["chat", "-m", str(harmony_model), "-t", "0", "-n", "8"], env, stdin=subprocess.PIPE
    )
    out, err = Reader(chat.stdout), Reader(chat.stderr)
    chat.stdin.write(b"hi\n")
    chat.stdin.flush()
    chats = tmp_path / "state" / "gptoss" / "chats"
    assert wait_for(lambda: list(chats.glob("*.json")), timeout=120), out.data
    chat.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    chat.wait(timeout=30)
    chat.stdin.close()
    assert time.monotonic() - stopped < 10
    assert chat.returncode == 130, err.text()
    [saved] = chats.glob("*.json")
    assert _users(json.loads(saved.read_text())) == ["hi"]
    assert f"chat saved: resume with gptoss chat --resume {saved.stem}" in out.text()
    assert not leftovers(tmp_path)
    # The banner fits an 80-column terminal instead of wrapping mid-word.
    banner = [ln for ln in out.text().splitlines() if ln.startswith("gptoss chat ·")]
    assert banner and all(len(ln) <= 80 for ln in banner)


def test_save_asks_for_force_before_replacing_another_file(harmony_model, tmp_path):
    env = fault_env(tmp_path)
    notes = tmp_path / "notes.json"
    notes.write_text("my notes")
    lines = f"hi\n/save {notes}\n/save {tmp_path / 'kept.json'}\n/save {tmp_path / 'kept.json'}\n"
    r = gptoss(["chat", "-m", str(harmony_model), "-t", "0", "-n", "4"], env, lines.encode())
    assert r.returncode == 0, r.stdout + r.stderr
    assert notes.read_text() == "my notes"
    assert f"{notes} already exists; /save {notes} --force replaces it" in r.stdout
    # The same chat saved again to its own file updates it without asking.
    assert r.stdout.count(f"saved 2 messages to {tmp_path / 'kept.json'}") == 2
    r = gptoss(
        ["chat", "-m", str(harmony_model), "-t", "0", "-n", "4"],
        env,
        f"hi\n/save {notes} --force\n".encode(),
    )
    assert json.loads(notes.read_text())["format"] == "gptoss-chat"


def test_a_read_only_cache_dir_costs_time_not_the_run_and_says_so(tiny, tmp_path, mount):
    """Weak spot: an unwritable cache dir silently disabled the C kernels."""
    ro = mount("cache", read_only=True)
    env = fault_env(tmp_path, XDG_CACHE_HOME=str(ro))
    r = gptoss(["run", "-m", str(tiny), "-t", "0", "-n", "2", "hi"], env, timeout=180)
    assert r.returncode == 0, r.stderr
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler: the kernels are off anyway")
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("gptoss: note: C kernels")]
    assert len(notes) == 1 and str(ro) in notes[0] and "not writable" in notes[0], r.stderr
    r = gptoss(["doctor", "--json"], env, timeout=180)
    [row] = [row for row in json.loads(r.stdout) if row["check"] == "kernels"]
    assert row["status"] == "warn" and "not writable" in row["detail"], row
    assert list(ro.iterdir()) == []


def test_a_killed_chat_resumes_under_its_own_id(harmony_model, tmp_path):
    """SIGKILL leaves a chat's lock file; the lock itself died with the process, so the next
    --resume takes the chat over (no fork) and removes the file when it leaves."""
    env = fault_env(tmp_path)
    base = ["chat", "-m", str(harmony_model), "-t", "0", "-n", "8"]
    chat = popen(base, env, stdin=subprocess.PIPE)
    chat.stdin.write(b"before the kill\n")
    chat.stdin.flush()
    chats = tmp_path / "state" / "gptoss" / "chats"
    assert wait_for(lambda: list(chats.glob("*.json")), timeout=120)
    chat.stdin.write(b"a turn the kill interrupts\n")
    chat.stdin.flush()
    chat.kill()
    chat.communicate(timeout=30)
    [saved] = chats.glob("*.json")
    assert list(chats.glob(".*.lock"))  # left by the killed process

    r = gptoss([*base, "--resume"], env, stdin=b"after the kill\n", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "open in another gptoss" not in r.stdout
    record = json.loads(saved.read_text())
    assert _users(record)[0] == "before the kill" and _users(record)[-1] == "after the kill"
    assert [p.name for p in chats.iterdir()] == [saved.name]
