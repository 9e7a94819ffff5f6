"""The tiny harmony-speaking model (scripts/train_tiny_harmony.py), built once and cached.

The cache key hashes the checkpoint generator's and the trainer's sources, and those of the
browser pages its browsing example shows (scripts/tiny_browser_pages.py), so editing any of them
rebuilds the model (one to three minutes); otherwise every session reuses
`.cache/fixtures/harmony-<hash>`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.train_tiny_harmony import cached_harmony_model

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".cache" / "fixtures"


@pytest.fixture(scope="session")
def harmony_model() -> Path:
    """The trained model's folder (Hugging Face layout, plus harmony_examples.json listing each
    example's messages, prompt options and exact greedy reply). Shared: copy it to change it."""
    return cached_harmony_model(FIXTURES, log=lambda _: None)
