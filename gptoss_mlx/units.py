"""Sizes for people: one way to print bytes and one way to read them."""

from __future__ import annotations

import re

from .errors import UserError

MiB = 2**20
GiB = 2**30


def human_bytes(n: float) -> str:
    # Binary units, labelled the way Macs are sold ("16 GB" of memory is 16 GiB), so model sizes
    # compare directly with the memory figures users know.
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_bytes(text: str) -> int:
    """ "24GB", "24G", "24GiB", "512MB" or a plain number of bytes (units are binary)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise UserError(f"cannot read {text!r} as a size; use bytes or e.g. 24GB, 512MB")
    scale = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024**4}[m.group(2)]
    return int(float(m.group(1)) * scale)
