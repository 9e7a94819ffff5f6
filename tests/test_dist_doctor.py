"""`gptoss doctor --hostfile`: hostfile parsing, model fingerprints, an unreachable host, and the
whole check (versions, collective, fidelity) over two local ranks."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from gptoss_mlx.cli.doctor_hosts import Host, model_fingerprint, read_hostfile
from gptoss_mlx.errors import UserError

from .conftest import run_gptoss

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}


def doctor(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPTOSS_CONFIG": "/nonexistent/config.toml"}
    return run_gptoss("doctor", "--json", *args, env=env, stdin=None, timeout=timeout)


def test_hostfile_formats_and_errors(tmp_path):
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"backend": "jaccl", "hosts": [LOCAL, {"ssh": "m2", "ips": []}]}))
    assert read_hostfile(new) == ([Host("127.0.0.1", ("127.0.0.1",)), Host("m2", ())], "jaccl")
    old = tmp_path / "old.json"
    old.write_text(json.dumps([LOCAL, LOCAL]))
    assert read_hostfile(old)[1] is None
    for text, match in (("[", "not mlx.launch's format"), (json.dumps([LOCAL]), "at least 2")):
        old.write_text(text)
        with pytest.raises(UserError, match=match):
            read_hostfile(old)
    with pytest.raises(UserError, match="cannot read hostfile"):
        read_hostfile(tmp_path / "missing.json")


def test_fingerprint_follows_model_files(tiny_checkpoint, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_checkpoint, a)
    shutil.copytree(tiny_checkpoint, b)
    assert model_fingerprint(a) == model_fingerprint(b)
    weights = sorted(b.glob("*.safetensors"))[-1]
    with open(weights, "r+b") as f:  # one byte in the last MiB changes
        f.seek(-10, os.SEEK_END)
        byte = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    assert model_fingerprint(a) != model_fingerprint(b)


def test_unreachable_host_fails_without_a_self_test(tiny_checkpoint, tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([LOCAL, {"ssh": "no-such-host.invalid", "ips": ["10.255.0.1"]}]))
    r = doctor("--hostfile", str(hosts), "-m", str(tiny_checkpoint))
    assert r.returncode == 1, r.stderr
    rows = {row["check"]: row for row in json.loads(r.stdout)}
    assert rows["host 0 127.0.0.1"]["status"] == "ok"
    assert rows["host 1 no-such-host.invalid"]["status"] == "fail"
    assert "unreachable" in rows["host 1 no-such-host.invalid"]["detail"]
    assert rows["self-test"]["detail"].startswith("skipped")


@pytest.mark.slow  # about 80 s on a busy 2-core machine: probes, then two ranks load twice
def test_doctor_over_two_local_ranks(tiny_checkpoint, tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"backend": "ring", "hosts": [LOCAL, LOCAL]}))
    port = str(random.randrange(20000, 60000, 16))
    args = ("--hostfile", str(hosts), "-m", str(tiny_checkpoint), "--strategy", "tensor")
    r = doctor(*args, "--starting-port", port, timeout=600)
    rows = {row["check"]: row for row in json.loads(r.stdout)}
    for check in ("model files", "mlx version", "collective", "fidelity"):
        assert rows[check]["status"] == "ok", (check, rows[check], r.stderr)
    assert "equal a single process" in rows["fidelity"]["detail"]
