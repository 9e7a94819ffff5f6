"""Start-up and one-shot latency, as a user in a shell sees them (wall time of whole processes).

    python scripts/bench_cli.py [--rounds 5] [--model DIR]

- `gptoss --help` (target: <= 0.15 s; it must not import mlx);
- `gptoss run` end to end on the tiny model against `mlx_lm.generate` on the same checkpoint
  (same prompt, 16 greedy tokens; target: <= 0.5x);
- time to first token of turn 10 of a chat with ~2k tokens of history against turn 1
  (target: within 1.2x), measured in-process on the same model.
Medians of several rounds, printed and written to bench-results/cli-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def wall(cmd: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def turn_ttft(
    model_dir: Path, turns: int = 10, history_tokens: int = 2000
) -> tuple[float, float, int]:
    """TTFT of turn 1 and of turn `turns` after ~history_tokens of conversation."""
    from gptoss_mlx.session.open import open_session
    from gptoss_mlx.settings import resolve

    s = open_session(
        resolve({"temperature": 0, "max_tokens": 8}), interactive=False, path=model_dir
    )
    filler = "Here is some context about the project that the user pastes into the chat. " * 12
    s.turn("Warm-up: " + filler)  # first-call costs (kernel set-up) are not the turn's
    s.reset()
    s.drop_cache()
    first = s.turn("Hello! " + filler).stats.time_to_first_token
    for i in range(2, turns):
        s.turn(f"Turn {i}. " + filler)
    used = s.context_used()
    scale = max(1, history_tokens // max(used, 1))
    for i in range(scale - 1):
        s.turn(f"More {i}. " + filler)
    last = s.turn("And the last question?").stats.time_to_first_token
    return first, last, s.context_used()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--model", type=Path, help="model dir (default: the tiny test checkpoint, built if needed)"
    )
    ap.add_argument("--ttft-model", type=Path, help="model dir for the turn-10 TTFT (default: --model), e.g. "
                    ".cache/bench/gpt-oss-20b-width-4L (scripts/bench.py builds it)")  # fmt: skip
    args = ap.parse_args()
    model = args.model
    if model is None:
        from scripts.make_checkpoint import make_checkpoint

        model = ROOT / ".cache" / "bench" / "tiny"
        if not (model / "config.json").exists():
            make_checkpoint(model, preset="tiny", seed=0)
    gptoss = [sys.executable, "-m", "gptoss_mlx"]
    res: dict[str, float] = {}
    res["help_s"] = wall([*gptoss, "--help"], args.rounds)
    res["run_s"] = wall(
        [*gptoss, "run", "-m", str(model), "-t", "0", "-n", "16", "Hello"], args.rounds
    )
    res["mlx_lm_generate_s"] = wall(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "generate",
            "--model",
            str(model),
            "--prompt",
            "Hello",
            "-m",
            "16",
            "--temp",
            "0",
        ],
        args.rounds,
    )
    ttft_model = args.ttft_model or model
    first, last, used = turn_ttft(ttft_model)
    res |= {"ttft_turn1_s": first, "ttft_turn10_s": last, "turn10_context_tokens": used}
    print(f"gptoss --help            {res['help_s']:.3f} s (target <= 0.15)")
    print(f"gptoss run (16 tokens)   {res['run_s']:.3f} s")
    print(
        f"mlx_lm.generate (16)     {res['mlx_lm_generate_s']:.3f} s   ratio {res['run_s'] / res['mlx_lm_generate_s']:.2f}x (target <= 0.5x)"
    )
    print(
        f"TTFT turn 1 / turn 10    {first * 1000:.1f} ms / {last * 1000:.1f} ms with {used} tokens of history on {ttft_model.name}"
        f"   ratio {last / first:.2f}x (target <= 1.2x)"
    )
    out = ROOT / "bench-results" / f"cli-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"model": str(model), "ttft_model": str(ttft_model), "rounds": args.rounds, **res},
            indent=2,
        )
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
