"""Baseline selectors: all, random (seeded), perplexity (tiny random LM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.tuner_support import save_tiny_llama

from critstep.selection import step_cap
from critstep.selector import build_selector
from critstep.trajectory import Message, Trajectory


def trajectories() -> list[Trajectory]:
    out = []
    for n in (1, 3, 10, 17):
        msgs = [Message("user", f"task {n}")]
        for i in range(n):
            msgs += [Message("assistant", f"action {i} " + "x" * (i % 4)), Message("user", f"observation {i}")]
        out.append(Trajectory(f"t{n}", msgs))
    out.append(Trajectory("empty", [Message("user", "no steps")]))
    return out


def test_all_selects_every_step() -> None:
    sel = build_selector("all").select(trajectories())
    assert sel["t10"].steps == list(range(10)) and sel["empty"].steps == []


def test_random_is_seeded_capped_and_order_independent() -> None:
    ts = trajectories()
    a = build_selector("random", seed=3).select(ts, ratio=0.3)
    assert a == build_selector("random", seed=3).select(list(reversed(ts)), ratio=0.3)
    assert a != build_selector("random", seed=4).select(ts, ratio=0.3)
    for t in ts:
        assert len(a[t.id].steps) == step_cap(t.n_steps, 0.3) and len(a[t.id].scores) == t.n_steps


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-lm"))


def test_perplexity_takes_the_highest_nll_steps(tiny_lm: Path, tmp_path: Path, capsys) -> None:
    selector = build_selector("perplexity", lm=str(tiny_lm), device="cpu", dtype="float32", cache=tmp_path, progress=True)
    ts = trajectories()
    sel = selector.select(ts, ratio=0.3)
    assert "token features: 100%" in capsys.readouterr().err  # the progress bar of the LM pass
    for t in ts:
        s = sel[t.id]
        assert len(s.steps) == step_cap(t.n_steps, 0.3) and len(s.scores) == t.n_steps
        if t.n_steps:
            top = np.argsort(-np.array(s.scores), kind="stable")[: len(s.steps)]
            assert s.steps == sorted(top.tolist())
