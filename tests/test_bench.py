"""`gptoss bench` on the tiny checkpoint with small token counts: gptoss and mlx-lm, each in its own
process, measured the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_mlx.model import benchmark

# The command as cli.py will register it (registration itself is wired in cli.py separately).
CLI = "import sys; from gptoss_mlx import cli; sys.exit(cli.main(sys.argv[1:]))"  # fmt: skip


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, "bench", *args], capture_output=True,
                          text=True, timeout=300, env=os.environ)  # fmt: skip


@pytest.mark.slow  # about 20 s: mlx-lm imports and loads in its own process
def test_bench_against_mlx_lm_on_the_same_weights(tiny_checkpoint):
    r = bench("-m", str(tiny_checkpoint), "--vs", "mlx-lm", "--prompt-tokens", "16,40",
              "--decode-tokens", "5", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert Path(d["model"]).resolve() == tiny_checkpoint.resolve()
    ours, theirs = (benchmark.BenchResult.from_dict(x) for x in d["results"])
    assert (ours.runner, theirs.runner) == ("gptoss", "mlx-lm")
    for res in (ours, theirs):
        assert set(res.prefill_tps) == set(res.time_to_first_token) == {16, 40}
        for n in (16, 40):
            assert res.prefill_tps[n] == pytest.approx(n / res.time_to_first_token[n])
        assert res.decode_tokens == 4 and res.decode_tps > 0
        assert res.peak_memory_bytes > 0 and res.max_rss_bytes > res.peak_memory_bytes // 2
    assert "mlx-lm" in theirs.detail and ours.detail
    assert d["ratios"]["decode"] == pytest.approx(ours.decode_tps / theirs.decode_tps)
    assert set(d["ratios"]) == {"prefill_16", "prefill_40", "decode", "peak_memory"}


def test_bench_table_and_errors(tiny_checkpoint):
    r = bench("-m", str(tiny_checkpoint), "--prompt-tokens", "12", "--decode-tokens", "3",
              "--dtype", "bfloat16")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "prefill 12 tok/s" in r.stdout and "decode tok/s" in r.stdout
    assert "gptoss vs mlx-lm" not in r.stdout and "gptoss: mlx.core.bfloat16: " in r.stdout
    r = bench("-m", str(tiny_checkpoint), "--vs", "llama.cpp")
    assert (
        r.returncode != 0
        and r.stderr.strip() == "gptoss: error: --vs takes mlx-lm, not 'llama.cpp'"
    )
    r = bench("-m", str(tiny_checkpoint), "--prompt-tokens", "0")
    assert r.returncode != 0 and "--prompt-tokens takes positive token counts" in r.stderr


def test_bench_rounds_report_medians(tiny_checkpoint):
    r = bench("-m", str(tiny_checkpoint), "--prompt-tokens", "12", "--decode-tokens", "3",
              "--rounds", "3", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    runs = [benchmark.BenchResult.from_dict(x) for x in d["runs"]["gptoss"]]
    [ours] = (benchmark.BenchResult.from_dict(x) for x in d["results"])
    assert d["rounds"] == 3 and len(runs) == 3
    assert ours.decode_tps == sorted(x.decode_tps for x in runs)[1]
    assert ours.prefill_tps[12] == sorted(x.prefill_tps[12] for x in runs)[1]
    r = bench("-m", str(tiny_checkpoint), "--rounds", "0")
    assert (
        r.returncode == 1
        and r.stderr.strip() == "gptoss: error: --rounds must be at least 1, not 0"
    )


def test_median_of_rounds():
    def result(tps: float, mem: int) -> benchmark.BenchResult:
        return benchmark.BenchResult("gptoss", {512: tps}, {512: 512 / tps}, tps / 10, 8, mem)

    med = benchmark.median([result(10, 3), result(30, 1), result(20, 2)])
    assert (med.prefill_tps, med.decode_tps, med.peak_memory_bytes) == ({512: 20}, 2.0, 2)
    assert med.time_to_first_token == {512: 512 / 20}
