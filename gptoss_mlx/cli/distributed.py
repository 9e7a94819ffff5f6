"""`gptoss doctor --hostfile`: the machine checks plus whether a group of hosts can run a model
together; and the hidden per-host commands it starts (`doctor-probe`, `doctor-selftest`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .doctor import Check, doctor_checks

HostfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--hostfile",
        help="mlx.launch hostfile: also check that these hosts can run --model together.",
        show_default=False,
    ),
]
StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy", help="tensor, pipeline or auto (tensor on jaccl, pipeline on ring)."
    ),
]


def _print_rows(rows: list[Check], as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if as_json:
        print(json.dumps([r._asdict() for r in rows], indent=2))
        return
    styles = {"ok": "green", "warn": "yellow", "fail": "red", "info": "cyan"}
    table = Table(box=None, pad_edge=False)
    for name in ("check", "status", "detail"):
        table.add_column(name, no_wrap=name != "detail", overflow="fold")
    for r in rows:
        table.add_row(r.check, f"[{styles.get(r.status, '')}]{r.status}[/]", r.detail)
    Console().print(table)


def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    hostfile: HostfileOpt = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model the hosts must share (with --hostfile).")
    ] = "120b",
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="ring or jaccl (default: the hostfile's, else ring)."),
    ] = None,
    strategy: StrategyOpt = "auto",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds the multi-host self-test may take.")
    ] = 900.0,
    port: Annotated[
        int | None,
        typer.Option("--starting-port", help="First port the ranks use (mlx.launch's option)."),
    ] = None,
) -> None:
    """Check this machine; with --hostfile also every host, versions, model files, the backend
    (a collective on known data) and a temperature-0 fidelity self-test across the ranks."""
    rows = doctor_checks()
    if hostfile is not None:
        from . import doctor_hosts as dist_doctor

        hosts, file_backend = dist_doctor.read_hostfile(hostfile)
        found, ok = dist_doctor.host_rows(hosts, model)
        rows += [Check(*r) for r in found]
        if ok:
            chosen = backend or file_backend or "ring"
            test = dist_doctor.launch_selftest(hostfile, chosen, model, strategy, timeout, port)
            rows += [Check(*r) for r in test]
        else:
            rows.append(Check("self-test", "fail", "skipped: fix the hosts above first"))
    _print_rows(rows, as_json)
    if any(r.status == "fail" for r in rows):
        raise typer.Exit(1)


def probe_cmd(model: Annotated[str, typer.Option("--model", "-m")] = "120b") -> None:
    """(used by doctor --hostfile) This host's versions and model fingerprint, as JSON."""
    from .doctor_hosts import probe

    print(json.dumps(probe(model)))


def selftest_cmd(
    model: Annotated[str, typer.Option("--model", "-m")] = "120b",
    strategy: StrategyOpt = "auto",
) -> None:
    """(used by doctor --hostfile, under mlx.launch) The collective and fidelity self-test."""
    from ..backend.distributed import peer_errors
    from .doctor_hosts import selftest

    with peer_errors():
        rows = selftest(model, strategy)
    import mlx.core as mx

    if mx.distributed.init().rank() == 0:
        print(json.dumps({"rows": rows}))
        sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Registered after cli_models: this `doctor` (a superset) replaces the plain one."""
    app.command("doctor")(doctor_cmd)
    app.command("doctor-probe", hidden=True)(probe_cmd)
    app.command("doctor-selftest", hidden=True)(selftest_cmd)
