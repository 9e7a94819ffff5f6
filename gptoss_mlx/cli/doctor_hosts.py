"""`gptoss doctor --hostfile`: can these hosts run one model together?

Checks, as (check, status, detail) rows: every host answers over ssh (127.0.0.1 runs locally,
as in mlx.launch) with the same gptoss, mlx and Python and the same model files (a fingerprint
of names, sizes and content hashes); then the ranks are started with mlx.launch for a self-test:
a collective on known data, and a temperature-0 greedy continuation of a long prompt (several
prefill chunks, the case behind JACCL's corruption bugs) compared with a single process (or,
when the whole model does not fit on rank 0, with the pipeline split, which only moves data).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

Row = tuple[str, str, str]
PROBE_TIMEOUT = 60
HEAD_TAIL = 1 << 20


@dataclass(frozen=True)
class Host:
    ssh: str
    ips: tuple[str, ...]


def read_hostfile(path: Path) -> tuple[list[Host], str | None]:
    """Hosts and backend of an mlx.launch hostfile (the {"hosts": [...]} or the plain-list format)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        backend = data.get("backend") if isinstance(data, dict) else None
        entries = data["hosts"] if isinstance(data, dict) else data
        hosts = [Host(str(h["ssh"]), tuple(h.get("ips") or ())) for h in entries]
    except OSError as e:
        raise UserError(f"cannot read hostfile {path}: {e.strerror or e}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f'hostfile {path} is not mlx.launch\'s format ({{"hosts": [{{"ssh": ..., "ips": [...]}}]}}): {e}'
        ) from e
    if len(hosts) < 2:
        raise UserError(f"hostfile {path} lists {len(hosts)} host; a group needs at least 2")
    return hosts, backend


def model_fingerprint(path: Path) -> str:
    """A short hash of a model folder: file names, sizes, and content hashes (a hub blob's name
    is already its sha256; other files hash their first and last MiB, not all 65 GB)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith(".")):
        real = f.resolve()
        h.update(f"{f.name}\0{real.stat().st_size}\0".encode())
        if real.parent.name == "blobs" and len(real.name) == 64:
            h.update(real.name.encode())
            continue
        with open(real, "rb") as fh:
            h.update(fh.read(HEAD_TAIL))
            fh.seek(max(0, real.stat().st_size - HEAD_TAIL))
            h.update(fh.read(HEAD_TAIL))
    return h.hexdigest()[:16]


def probe(model: str) -> dict[str, Any]:
    """This host's versions and model fingerprint (what `gptoss doctor-probe` prints)."""
    import platform

    import mlx.core as mx

    from .. import __version__
    from ..hub.local import resolve_model

    out: dict[str, Any] = {
        "gptoss": __version__,
        "mlx": getattr(mx, "__version__", "?"),
        "python": platform.python_version(),
        "executable": sys.executable,
    }
    try:
        path = Path(model) if Path(model).is_dir() else resolve_model(model, yes=False)
        out["model"], out["fingerprint"] = str(path), model_fingerprint(path)
    except UserError as e:
        out["model_error"] = str(e)
    return out


def _on_host(host: Host, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    if host.ssh != "127.0.0.1":
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", host.ssh, shlex.join(argv)]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def host_rows(hosts: list[Host], model: str) -> tuple[list[Row], bool]:
    """One row per host plus agreement rows; and whether the self-test can go ahead."""
    rows: list[Row] = []
    seen: list[dict[str, Any]] = []
    for i, host in enumerate(hosts):
        argv = [sys.executable, "-m", "gptoss_mlx", "doctor-probe", "--model", model]
        try:
            r = _on_host(host, argv, PROBE_TIMEOUT)
            info = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            info, r = None, None
        if info is None:
            why = (r.stderr.strip().splitlines() or ["no answer"])[-1] if r else "timed out"
            rows.append(
                (
                    f"host {i} {host.ssh}",
                    "fail",
                    f"unreachable or no gptoss at {sys.executable}: {why}",
                )
            )
            continue
        seen.append(info)
        state = "fail" if "model_error" in info else "ok"
        model_part = info.get("model_error") or f"model {info['model']} ({info['fingerprint']})"
        rows.append((
            f"host {i} {host.ssh}",
            state,
            f"gptoss {info['gptoss']}, mlx {info['mlx']}, python {info['python']}; {model_part}",
        ))  # fmt: skip
    ok = len(seen) == len(hosts) and all("model_error" not in s for s in seen)
    for key, what in (
        ("gptoss", "gptoss version"),
        ("mlx", "mlx version"),
        ("fingerprint", "model files"),
    ):
        values = {s.get(key) for s in seen}
        if len(values) > 1:
            ok = False
            rows.append(
                (
                    what,
                    "fail",
                    f"differs between hosts: {sorted(map(str, values))}; make them equal",
                )
            )
        elif seen:
            rows.append((what, "ok", f"same on every host that answered ({values.pop()})"))
    return rows, ok


def launch_selftest(
    hostfile: Path, backend: str, model: str, strategy: str, timeout: float, port: int | None = None
) -> list[Row]:
    """Run `gptoss doctor-selftest` on every rank through mlx.launch; rows from rank 0's report."""
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which(
        "mlx.launch"
    )
    if launcher is None:
        return [("self-test", "fail", "mlx.launch not found; pip install mlx")]
    argv = [launcher, "--hostfile", str(hostfile), "--backend", backend]
    if port:
        argv += ["--starting-port", str(port)]
    argv += ["--", sys.executable, "-m", "gptoss_mlx", "doctor-selftest", "--model", model]
    argv += ["--strategy", strategy]
    try:
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return [
            (
                "self-test",
                "fail",
                f"no answer within {timeout:.0f} s: a rank hangs (check the links)",
            )
        ]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return [("self-test", "fail", f"the ranks did not finish: {tail}")]
    report = json.loads(lines[-1])
    return [tuple(row) for row in report["rows"]]  # type: ignore[misc]


def long_prompt(n: int) -> list[int]:
    """A fixed prompt of `n` ordinary token ids (several prefill chunks)."""
    return [1000 + (i * 7919) % 90000 for i in range(n)]


def greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    import mlx.core as mx

    from ..model.generate import prefill

    cache = model.make_cache()
    logits = prefill(model, prompt, cache)
    out: list[int] = []
    for _ in range(n):
        out.append(int(mx.argmax(logits, axis=-1).item()))
        logits = model(mx.array([[out[-1]]]), cache, last_only=True)[:, -1, :]
    return out


def collective_row(group: Any) -> Row:
    import mlx.core as mx

    n, r = group.size(), group.rank()
    got = mx.distributed.all_sum(mx.arange(4096, dtype=mx.float32) * (r + 1), group=group)
    gathered = mx.distributed.all_gather(mx.full((3,), r, dtype=mx.int32), group=group)
    want = mx.arange(4096, dtype=mx.float32) * (n * (n + 1) // 2)
    ok = bool(mx.array_equal(got, want)) and gathered.tolist() == [
        i for i in range(n) for _ in range(3)
    ]
    return ("collective", "ok" if ok else "fail", f"all_sum and all_gather over {n} ranks " + (
        "gave the exact results" if ok else "gave WRONG results: the backend corrupts data"))  # fmt: skip


def selftest(model: str, strategy: str, prompt_len: int = 2100, new: int = 8) -> list[Row]:
    """Run on every rank: the collective check and the fidelity check (rows valid on rank 0)."""
    from ..backend.distributed import (
        PIPELINE,
        TENSOR,
        backend_name,
        barrier,
        choose_strategy,
        current_group,
    )
    from ..hub.local import resolve_model
    from ..model.sharded_load import sharded_load

    group = current_group()
    if group is None:
        raise UserError("doctor-selftest runs under mlx.launch (MLX_RANK is not set)")
    rows = [collective_row(group)]
    path = Path(model) if Path(model).is_dir() else resolve_model(model, yes=False)
    chosen, _why = choose_strategy(strategy, backend_name())
    prompt = long_prompt(prompt_len)
    sharded = greedy(sharded_load(path, group, chosen)[0], prompt, new)
    reference, what = _reference(path, group, prompt, new)
    if reference is None and chosen == TENSOR:
        reference, what = (
            greedy(sharded_load(path, group, PIPELINE)[0], prompt, new),
            "the pipeline split",
        )
    barrier(group)
    if reference is None:
        rows.append(("fidelity", "warn", "no reference: the whole model does not fit on rank 0"))
    else:
        same = sharded == reference
        rows.append(("fidelity", "ok" if same else "fail", (
            f"{chosen} split: greedy tokens after a {prompt_len}-token prompt equal {what}" if same
            else f"{chosen} split differs from {what} ({sharded} vs {reference}): do not trust it"
        )))  # fmt: skip
    return rows


def _reference(path: Path, group: Any, prompt: list[int], new: int) -> tuple[list[int] | None, str]:
    """Rank 0's single-process greedy tokens if the model fits there (the others wait)."""
    from ..backend.device import default_dtype, dtype_nbytes
    from ..backend.distributed import barrier, share_object
    from ..errors import NotEnoughMemoryError
    from ..model.loader import load_model
    from ..model.memory import check_memory

    tokens = None
    if group.rank() == 0:
        try:
            check_memory(path, len(prompt) + new, dtype_bytes=dtype_nbytes(default_dtype()))
            model = load_model(path)
            model.set_fast_path(False)
            tokens = greedy(model, prompt, new)
            del model
        except NotEnoughMemoryError:
            tokens = None
    barrier(group)
    tokens = share_object(tokens, group)
    return tokens, "a single process"
