"""Agent-style replay against OpenAI-compatible servers: a conversation resent in full each turn,
as clients do; time to first token per turn and total time, for `gptoss serve` and
`mlx_lm.server` on the same checkpoint.

    python scripts/bench_server.py MODEL_DIR [--turns 10] [--words 400] [--max-tokens 48]

Each turn adds a user message of about `--words` words plus the previous reply (its reasoning
sent back as `reasoning`, as the OpenRouter convention asks). Prints a table and the ratios
(turn-N TTFT / turn-1 TTFT per server, and mlx_lm / gptoss per turn); `--json` writes them.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "model",
    "cache",
    "token",
    "prefix",
    "layer",
    "window",
    "answer",
    "server",
    "request",
    "stream",
    "reply",
    "agent",
    "tool",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(model: Path, port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "gptoss": [py, "-m", "gptoss_mlx", "serve", "-m", str(model), "--port", str(port),
                   "--temperature", "0"],
        "mlx_lm": [py, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port)],
    }  # fmt: skip


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[2]} exited; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{cmd[2]} did not start; see {log}")


def served_model(url: str) -> str:
    try:
        return httpx.get(url + "/v1/models").json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError):
        return "default_model"  # mlx_lm.server's name for the model it was started with


def turn(
    url: str, messages: list[dict[str, Any]], max_tokens: int, model: str
) -> tuple[float, dict]:
    """One streamed request: (time to first token, the assistant message to send back)."""
    body = {"model": model, "messages": messages, "stream": True,
            "max_tokens": max_tokens, "temperature": 0.0,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0, ttft = time.perf_counter(), None
    content, reasoning = [], []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                u = chunk["usage"]
                cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
                print(f"  prompt {u['prompt_tokens']} cached {cached}", file=sys.stderr)
            for choice in chunk.get("choices") or []:
                d = choice.get("delta") or {}
                thought = d.get("reasoning") or d.get("reasoning_content") or ""
                if (thought or d.get("content")) and ttft is None:
                    ttft = time.perf_counter() - t0
                reasoning.append(thought)
                content.append(d.get("content") or "")
    reply = {"role": "assistant", "content": "".join(content)}
    if "".join(reasoning):
        reply["reasoning"] = "".join(reasoning)
    return ttft if ttft is not None else time.perf_counter() - t0, reply


def replay(
    url: str, turns: int, words: int, max_tokens: int, model: str
) -> tuple[list[float], float]:
    rng = random.Random(0)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent."}]
    ttfts, t0 = [], time.perf_counter()
    for t in range(turns):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        messages.append({"role": "user", "content": f"Step {t + 1}. Tool output: {text}"})
        ttft, reply = turn(url, messages, max_tokens, model)
        ttfts.append(ttft)
        messages.append(reply)
    return ttfts, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--words", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--servers", default="gptoss,mlx_lm")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for name in args.servers.split(","):
        port = free_port()
        proc = start(
            commands(args.model.resolve(), port)[name], port, Path(f"/tmp/bench-{name}.log")
        )
        try:
            url = f"http://127.0.0.1:{port}"
            model = served_model(url)
            turn(url, [{"role": "user", "content": "warm up"}], 4, model)
            ttfts, total = replay(url, args.turns, args.words, args.max_tokens, model)
        finally:
            proc.terminate()
            proc.wait(30)
        results[name] = {"ttft": ttfts, "total": total, "last_over_first": ttfts[-1] / ttfts[0]}
    names = list(results)
    print("turn  " + "  ".join(f"{n:>10}" for n in names) + "  (TTFT, s)")
    for t in range(args.turns):
        print(f"{t + 1:>4}  " + "  ".join(f"{results[n]['ttft'][t]:>10.3f}" for n in names))
    for n in names:
        r = results[n]
        print(
            f"{n}: total {r['total']:.2f} s; turn {args.turns} TTFT / turn 1 = {r['last_over_first']:.2f}x"
        )
    if {"gptoss", "mlx_lm"} <= set(results):
        ratio = results["mlx_lm"]["ttft"][-1] / results["gptoss"]["ttft"][-1]
        results["mlx_lm_over_gptoss_last_turn"] = ratio
        print(f"turn {args.turns} TTFT: mlx_lm.server / gptoss serve = {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
