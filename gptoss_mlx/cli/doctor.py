"""`gptoss doctor`: what this machine can run. Each check is a function returning rows; other
commands add theirs to DOCTOR_CHECKS (the python sandbox row comes from cli/tools.py)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import typer

from ..errors import UserError
from .partials import check_partials


class Check(NamedTuple):
    check: str
    status: str  # "ok", "warn", "fail" or "info"
    detail: str


def _out() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _check_platform() -> list[Check]:
    mac_arm = sys.platform == "darwin" and platform.machine() == "arm64"
    detail = f"{platform.system()} {platform.release()} {platform.machine()}"
    if sys.platform == "darwin":
        detail = f"macOS {platform.mac_ver()[0]} {platform.machine()}"
    return [
        Check(
            "platform",
            "ok" if mac_arm else "warn",
            detail + ("" if mac_arm else "; no Apple GPU: runs on the CPU, slowly"),
        )
    ]


def _check_python() -> list[Check]:
    ok = sys.version_info >= (3, 11)
    return [
        Check("python", "ok" if ok else "fail", f"{platform.python_version()} ({sys.executable})")
    ]


def _check_mlx() -> list[Check]:
    try:
        import mlx.core as mx
    except ImportError as e:
        return [Check("mlx", "fail", f"not importable ({e}); pip install mlx")]
    from ..backend.device import backend_report, device_info

    dev = device_info()
    version = getattr(mx, "__version__", "?")
    device = "Metal GPU" if dev.metal else "CPU"
    return [
        Check("mlx", "ok", f"{version}, default device {device} ({mx.default_device()})"),
        *(Check(*row) for row in backend_report()),
    ]


def _check_memory() -> list[Check]:
    from ..model.memory import (
        available_memory,
        available_ram_bytes,
        suggested_wired_limit_mb,
        total_memory_bytes,
        wired_limit_mb,
    )
    from ..units import human_bytes

    total = total_memory_bytes()
    rows = [
        Check(
            "memory",
            "info",
            f"{human_bytes(total)} total, {human_bytes(available_ram_bytes())} available",
        )
    ]
    budget = available_memory()
    rows.append(Check("model budget", "info", f"{human_bytes(budget.bytes)} ({budget.source})"))
    if sys.platform == "darwin":
        wl = wired_limit_mb()
        raise_to = suggested_wired_limit_mb(total)
        how = f"raise it with `sudo sysctl iogpu.wired_limit_mb={raise_to}` (until reboot)"
        if wl is None:
            rows.append(Check("GPU wired limit", "info", "iogpu.wired_limit_mb not readable"))
        elif wl == 0:
            rows.append(
                Check("GPU wired limit", "info", f"default (about 2/3 to 3/4 of RAM); {how}")
            )
        else:
            rows.append(
                Check("GPU wired limit", "info", f"{wl} MB; {how}" if wl < raise_to else f"{wl} MB")
            )
    return rows


def _check_storage() -> list[Check]:
    from ..fsutil import free_disk_bytes
    from ..hub.cache import hf_cache_dir, is_offline
    from ..paths import models_dir
    from ..units import human_bytes

    rows = []
    for label, d in (("HF cache", hf_cache_dir()), ("models dir", models_dir())):
        rows.append(Check(label, "info", f"{d} ({human_bytes(free_disk_bytes(d))} free)"))
    token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    hub_state = "offline (HF_HUB_OFFLINE)" if is_offline() else "online"
    rows.append(Check("hub", "info", f"{hub_state}; HF_TOKEN {'set' if token else 'not set'}"))
    return rows


def _check_models() -> list[Check]:
    from ..backend.device import device_info, dtype_nbytes
    from ..hub.local import list_local_models
    from ..model.memory import Estimator, available_memory
    from ..units import human_bytes

    models = [m for m in list_local_models() if m.complete]
    if not models:
        return [Check("models", "warn", "none downloaded; run `gptoss download 20b`")]
    dev = device_info()
    dbytes = dtype_nbytes(dev.default_dtype)
    budget = available_memory().bytes
    rows = []
    for m in models:
        try:
            est = Estimator(m.path, dbytes, dev.metal)
        except UserError as e:
            rows.append(Check(f"model {m.name}", "warn", str(e)))
            continue
        top = est.cfg.max_position_embeddings
        largest = est.largest_context(budget)
        if largest is None:
            need = est.at(min(top, 4096)).total
            rows.append(
                Check(
                    f"model {m.name}",
                    "warn",
                    f"does not fit (needs {human_bytes(need)} at 4096 tokens)",
                )
            )
        elif largest >= top:
            rows.append(
                Check(
                    f"model {m.name}",
                    "ok",
                    f"fits at its full {top}-token context ({human_bytes(est.at(top).total)})",
                )
            )
        else:
            rows.append(Check(f"model {m.name}", "ok", f"fits up to {largest} tokens of context"))
    return rows


DOCTOR_CHECKS: list[Callable[[], list[Check]]] = [
    _check_platform,
    _check_python,
    _check_mlx,
    _check_memory,
    _check_storage,
    _check_models,
    check_partials,
]


def doctor_checks() -> list[Check]:
    """All doctor rows; a probe that crashes becomes a "fail" row instead of stopping the others."""
    rows: list[Check] = []
    for fn in DOCTOR_CHECKS:
        try:
            rows.extend(fn())
        except Exception as e:
            rows.append(
                Check(fn.__name__.removeprefix("_check_"), "fail", f"{type(e).__name__}: {e}")
            )
    return rows


def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check this machine: platform, MLX and device, memory and GPU limit, which models fit."""
    from rich.table import Table

    rows = doctor_checks()
    if as_json:
        print(json.dumps([r._asdict() for r in rows], indent=2))
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "red", "info": "cyan"}
        table = Table(box=None, pad_edge=False)
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for r in rows:
            table.add_row(r.check, f"[{styles.get(r.status, '')}]{r.status}[/]", r.detail)
        _out().print(table)
    if any(r.status == "fail" for r in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_cmd)
