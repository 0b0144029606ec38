"""Shared fixtures. Tests never reach a network: hub look-ups are switched off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from critstep.runtime import configure_cpu_threads

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the command line does: torch threads for the free cores, idle ones asleep (a loaded CI
# machine otherwise spends most of the suite spinning; see critstep/runtime.py).
configure_cpu_threads()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmark"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared/benchmark, or a skip saying why (it is not part of the repository)."""
    if not (SHARED / "corpus.jsonl").exists():
        pytest.skip(f"shared benchmark data not found at {SHARED} (it lives beside the checkout, not in it)")
    return SHARED
