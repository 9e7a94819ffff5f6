"""Real escape attempts from the python tool's sandbox, and the macOS profile as text."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptoss_mlx.errors import UserError
from gptoss_mlx.tools import sandbox, seatbelt
from gptoss_mlx.tools.python import PythonTool, SandboxUnavailableError, scratch_dir
from gptoss_mlx.tools.sandbox import Limits, MemoryWatchdog

MISSING_BWRAP = "/nonexistent/bin/bwrap"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A world-readable directory outside /tmp (which the sandbox replaces anyway)."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else None
    path = Path(tempfile.mkdtemp(prefix="gptoss-sandbox-test-", dir=base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def secret_home(outside: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = outside / "home"
    home.mkdir(mode=0o755)
    (home / "secret.txt").write_text("s3cret")
    (home / "secret.txt").chmod(0o644)
    monkeypatch.setenv("HOME", str(home))
    return home


def run(tool: PythonTool, code: str) -> str:
    return tool.call("", code).text


READ_SECRET = (
    "try:\n    print(open({path!r}).read())\nexcept OSError as e:\n    print(type(e).__name__)"
)
WRITE = "try:\n    open({path!r}, 'w').write('no')\n    print('wrote')\nexcept OSError as e:\n    print(type(e).__name__)\n"


def test_home_is_unreadable_but_python_works(
    secret_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPTOSS_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    scratch = scratch_dir("chat-1")  # under the home, as for a real user
    assert scratch.is_relative_to(secret_home)
    secret = str(secret_home / "secret.txt")
    with PythonTool(scratch) as tool:
        text = run(tool, READ_SECRET.format(path=secret))
        assert "s3cret" not in text and "Error" in text
        listing = f"import os\nos.listdir({str(secret_home)!r})"
        assert run(tool, listing) == "['.local']\n"  # only the way to the scratch dir
        code = "open('mine.txt', 'w').write('ok')\n" + WRITE.format(path=str(secret_home / "x.txt"))
        assert run(tool, code) == "OSError\n"
    assert (scratch / "mine.txt").read_text() == "ok"
    assert not (secret_home / "x.txt").exists()
    with PythonTool(scratch, unsafe=True, bwrap=MISSING_BWRAP) as unsafe:
        assert run(unsafe, READ_SECRET.format(path=secret)) == "s3cret\n"  # the test can fail


def test_writes_only_inside_the_scratch_dir(outside: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    with PythonTool(scratch) as tool:
        code = "import os\nopen('inside.txt', 'w').write('ok')\nprint(os.getcwd())\n"
        for target in (outside / "x.txt", tmp_path / "x.txt", Path.home() / "x.txt"):
            code += WRITE.format(path=str(target))
        text = run(tool, code)
    assert (scratch / "inside.txt").read_text() == "ok"
    assert text.splitlines()[0] == str(scratch.resolve())
    assert text.splitlines()[1] == "OSError"  # read-only file system
    assert not (outside / "x.txt").exists() and not (tmp_path / "x.txt").exists()
    assert not (Path.home() / "x.txt").exists()


@pytest.fixture
def http_server() -> Iterator[int]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


FETCH = (
    "import urllib.request\ntry:\n"
    "    print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3).read())\n"
    "except OSError as e:\n    print('blocked', type(e).__name__)"
)


def test_network_is_off_unless_enabled(http_server: int, tmp_path: Path) -> None:
    with PythonTool(tmp_path / "s") as offline:
        assert run(offline, FETCH.format(port=http_server)).startswith("blocked")
    with PythonTool(tmp_path / "s", network=True) as online:
        assert run(online, FETCH.format(port=http_server)) == "b'hello'\n"


def test_huge_allocation_fails_inside_and_the_next_call_works(tmp_path: Path) -> None:
    with PythonTool(tmp_path / "s") as tool:
        run(tool, "kept = 7")
        text = run(tool, "big = bytearray(64 * 2**30)")
        assert text.rstrip().endswith("MemoryError")
        assert run(tool, "kept * 6") == "42\n"


def test_fork_storm_is_bounded(tmp_path: Path) -> None:
    code = (
        "import os, time\nn = 0\ntry:\n    for _ in range(2000):\n"
        "        if os.fork() == 0:\n            time.sleep(2)\n            os._exit(0)\n"
        "        n += 1\nexcept OSError as e:\n    print('stopped', n, type(e).__name__)"
    )
    with PythonTool(tmp_path / "s", limits=Limits(processes=24)) as tool:
        text = run(tool, code)
        assert text.startswith("stopped") and "BlockingIOError" in text
        assert int(text.split()[1]) < 24
        assert run(tool, "n < 24") == "True\n"


def test_parent_secrets_do_not_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak")
    with PythonTool(tmp_path / "s") as tool:
        text = run(tool, "import os\nsorted(os.environ), os.environ['HOME']")
    assert "leak" not in text and "OPENAI" not in text and "HF_TOKEN" not in text
    names = ["HOME", "LANG", "MPLBACKEND", "PATH", "PWD", "PYTHONIOENCODING", "TMPDIR"]
    assert text == f"({names!r}, {str((tmp_path / 's').resolve())!r})\n"


def test_worker_runs_without_privileges(tmp_path: Path) -> None:
    with PythonTool(tmp_path / "s") as tool:
        text = run(tool, "open('/proc/self/status').read().split('CapEff:')[1].split()[0]")
        assert text == "'0000000000000000'\n"


def test_no_sandbox_is_refused_unless_unsafe(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailableError) as refused:
        PythonTool(tmp_path / "s", bwrap=MISSING_BWRAP)
    message = str(refused.value)
    assert isinstance(refused.value, UserError) and "\n" not in message
    assert "apt install bubblewrap" in message and "--python-unsafe" in message
    with PythonTool(tmp_path / "s", unsafe=True, bwrap=MISSING_BWRAP) as tool:
        assert tool.mode == "none" and tool.needs_approval
        assert run(tool, "6 * 7") == "42\n"


def test_sandbox_status_for_doctor() -> None:
    mode, line = sandbox.sandbox_status()
    assert mode == "bubblewrap" and "bwrap" in line
    mode, line = sandbox.sandbox_status(bwrap=MISSING_BWRAP)
    assert mode == "none" and "--python-unsafe" in line
    mode, line = sandbox.sandbox_status(bwrap="/bin/false")  # present but failing
    assert mode == "none" and "cannot create a sandbox" in line
    if not Path(sandbox.SANDBOX_EXEC).exists():
        assert sandbox.sandbox_status(platform="darwin")[0] == "none"


def test_seatbelt_profile_text() -> None:
    scratch, tmp = Path("/Users/me/Library/gptoss/python/c1"), Path('/private/tmp/we"ird')
    text = seatbelt.profile(readable=[Path("/opt/py")], writable=[scratch, tmp], network=False)
    assert text.startswith("(version 1)\n(deny default)\n")
    assert "(allow process-fork)" in text and "(allow ipc-posix-sem)" in text
    assert "(allow sysctl-read" in text and '(path "/dev/null")' in text
    writable = text.split("(allow file-read* file-write*\n")[1].split(")\n\n")[0]
    assert f'(subpath "{scratch}")' in writable and '(subpath "/private/tmp/we\\"ird")' in writable
    assert '(subpath "/opt/py")' in text.split("(allow file-read* file-write*")[0]
    assert text.count("file-write*") == 1 and "network" not in text
    online = seatbelt.profile(readable=[], writable=[scratch], network=True)
    assert "(allow network-outbound)" in online and "(allow system-socket)" in online


def test_macos_launch_uses_sandbox_exec_and_no_rlimit_as(tmp_path: Path) -> None:
    launch = sandbox.build_launch(
        "sandbox-exec",
        scratch=tmp_path,
        tmpdir=tmp_path / "t",
        network=False,
        limits=Limits(memory=2**30),
        platform="darwin",
    )
    assert launch.argv[:2] == ["/usr/bin/sandbox-exec", "-p"]
    assert f'(subpath "{tmp_path.resolve()}")' in launch.argv[2]
    assert launch.argv[3:6] == [sys.executable, "-I", "-u"] and launch.watchdog
    assert launch.env["HOME"] == str(tmp_path) and launch.env["TMPDIR"] == str(tmp_path / "t")
    probe = [sys.executable, "-c", "import resource as r; print(r.getrlimit(r.RLIMIT_AS)[0])"]
    for platform, expected in (("darwin", -1), ("linux", 2**30)):
        preexec = sandbox.make_preexec(Limits(memory=2**30), platform)
        out = subprocess.run(probe, preexec_fn=preexec, capture_output=True, text=True)  # noqa: PLW1509
        assert int(out.stdout) == expected


def test_memory_watchdog_kills_a_growing_process() -> None:
    grow = (
        "import time\nx = []\nwhile True:\n    x.append(bytearray(8 * 2**20))\n    time.sleep(0.01)"
    )
    proc = subprocess.Popen([sys.executable, "-c", grow], start_new_session=True)
    watchdog = MemoryWatchdog(proc.pid, 200 * 2**20, interval=0.1).start()
    try:
        assert proc.wait(timeout=20) == -9
        assert watchdog.fired
    finally:
        watchdog.stop()
        proc.kill()
