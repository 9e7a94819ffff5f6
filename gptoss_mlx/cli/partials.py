"""Leftovers of stopped conversions (`.NAME.*.partial` folders) for `gptoss models` and `doctor`.

A convert that is killed cannot clean up after itself; the next convert into the same folder
removes such leftovers once their writer is provably gone (fsutil.leftover_partials). Until
then these commands show them, with their size and how to get the space back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple


class PartialCheck(NamedTuple):
    check: str
    status: str
    detail: str


def leftover_partials() -> list[tuple[Path, int]]:
    """(path, bytes) of stopped conversions' partial output in the models directory."""
    from ..fsutil import leftover_partials as leftovers
    from ..fsutil import tree_size
    from ..paths import models_dir

    return [(p, tree_size(p)) for p in leftovers(models_dir())]


def _advice(path: Path, size: int) -> str:
    from ..units import human_bytes

    return (
        f"{path} ({human_bytes(size)}): left by a stopped convert; the next convert removes it,"
        f" or delete it now: rm -r '{path}'"
    )


def print_partials() -> None:
    for path, size in leftover_partials():
        print(f"partial: {_advice(path, size)}", file=sys.stderr)


def check_partials() -> list[PartialCheck]:
    """`gptoss doctor` rows (the same shape as its Check rows)."""
    return [PartialCheck("partial convert", "warn", _advice(p, n)) for p, n in leftover_partials()]
