"""`make demo`: the main job, offline, on a tiny model that really speaks harmony.

1. Build (once; cached) a tiny gpt-oss checkpoint in the exact Hugging Face layout, trained in
   MLX to answer a few prompts in the harmony format (reasoning, then an answer; a tool call).
2. Convert it to MLX format with `gptoss convert`.
3. Ask it a question with `gptoss run`, showing the reasoning on stderr.
4. On a terminal, open `gptoss chat` with it (try "What is 2+2?", "/effort high", "/retry").

    python scripts/demo.py [WORKDIR]     # default .cache/demo
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def gptoss(*args: str) -> None:
    cmd = [sys.executable, "-m", "gptoss_mlx", *args]
    print("$ gptoss " + " ".join(a if " " not in a else repr(a) for a in args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    from scripts.train_tiny_harmony import cached_harmony_model

    work = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / ".cache" / "demo")
    work.mkdir(parents=True, exist_ok=True)
    say("building the tiny harmony-speaking model (trained once, then cached)")
    hf = cached_harmony_model(ROOT / ".cache" / "fixtures", log=lambda m: print(m, flush=True))
    print(f"Hugging Face layout: {hf}")

    say("converting it to MLX format (into the models directory, so `gptoss models` lists it)")
    from gptoss_mlx.paths import models_dir

    mlx_dir = models_dir() / "gptoss-demo-tiny"
    gptoss("convert", str(hf), str(mlx_dir), "--force")
    gptoss("models")

    say("one-shot prompt (the answer on stdout, the reasoning on stderr)")
    gptoss("run", "-m", str(mlx_dir), "--temperature", "0", "--show-reasoning", "What is 2+2?")
    say("machine-readable output: the whole reply as one JSON object")
    gptoss("run", "-m", str(mlx_dir), "--temperature", "0", "--json", "Say hello.")

    if sys.stdin.isatty() and sys.stdout.isatty() and not os.environ.get("CI"):
        say("interactive chat: try 'What is 2+2?', '/effort high', '/retry', '/help'; Ctrl-D exits")
        gptoss("chat", "-m", str(mlx_dir), "--temperature", "0")
    else:
        say(f"not a terminal: run `gptoss chat -m {mlx_dir} --temperature 0` to chat")
    print(f"(remove the demo model with `gptoss rm {mlx_dir.name} --yes`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
