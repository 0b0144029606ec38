"""Offline agent evaluation: every step generated from its gold prefix and scored against the gold turn.

    trajectories ──► agent (local model or server) ──► generated turn per step ──► action match
                                                     └► gold turn NLL (local)     (exact, normalized)

Figures are micro-averages over steps (action match) and over tokens (NLL, as the tuner's eval
loss), per env and overall, on all steps and on the teacher's critical steps when labels are
given, each with a 95% interval from a bootstrap over trajectories.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from critstep.evaluation.actions import actions_match, parse_action
from critstep.evaluation.agent import Agent
from critstep.evaluation.stats import interval, ratio_of, resample_weights
from critstep.labels import TrajectoryLabels
from critstep.trajectory import Trajectory


@dataclass
class StepRecord:
    """One step's verdict (a line of predictions.jsonl)."""

    id: str
    env: str
    step: int
    critical: bool | None
    gold: str
    predicted: str
    generated: str
    exact: bool
    normalized: bool
    nll_sum: float | None
    n_tokens: int | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["nll"] = self.nll_sum / self.n_tokens if self.nll_sum is not None and self.n_tokens else None
        return d


@dataclass
class OfflineRun:
    records: list[StepRecord]
    seconds: float
    skipped: list[str] = field(default_factory=list)  # trajectories without a step


def spread_steps(n_steps: int, at_most: int | None) -> list[int] | None:
    """`at_most` step indices spread evenly from the first step to the last (None: every step)."""
    if at_most is None or n_steps <= at_most:
        return None
    return sorted({round(i * (n_steps - 1) / max(1, at_most - 1)) for i in range(at_most)})


def evaluate_offline(
    trajectories: Sequence[Trajectory],
    agent: Agent,
    labels: Mapping[str, TrajectoryLabels] | None = None,
    progress: bool = True,
    steps_per_trajectory: int | None = None,
    records: list[StepRecord] | None = None,
) -> OfflineRun:
    """Generate and score the steps of `trajectories` with `agent`: every step, or at most
    `steps_per_trajectory` spread over each trajectory (long ScienceWorld runs would otherwise
    outweigh every other env). Records are appended to `records` (if given) as each trajectory is
    done, so a caller keeps them when the run stops midway."""
    from tqdm.auto import tqdm

    records = [] if records is None else records
    started = time.perf_counter()
    chosen = {t.id: spread_steps(t.n_steps, steps_per_trajectory) for t in trajectories}
    total = sum(t.n_steps if chosen[t.id] is None else len(chosen[t.id] or []) for t in trajectories)
    bar = tqdm(total=total, unit="step", desc="eval", disable=not progress)
    with_steps = [t for t in trajectories if t.n_steps > 0]
    skipped = [t.id for t in trajectories if t.n_steps == 0]
    for t, outputs in agent.evaluate_trajectories((t, chosen[t.id]) for t in with_steps):
        critical = set(labels[t.id].steps) if labels is not None and t.id in labels else None
        steps = t.steps()
        for out in outputs:
            message = steps[out.step].message
            gold = parse_action(t.env, message.content, message.tool_calls)
            predicted = parse_action(t.env, out.generated, out.tool_calls)
            exact, normalized = actions_match(gold, predicted)
            records.append(StepRecord(
                t.id, t.env, out.step, None if critical is None else out.step in critical, gold.text, predicted.text,
                out.generated, exact, normalized, out.nll_sum, out.n_tokens, out.error,
            ))
        bar.update(len(outputs))
        elapsed = time.perf_counter() - started
        bar.set_postfix(steps_per_s=f"{len(records) / elapsed:.2f}" if elapsed else "-")
    bar.close()
    return OfflineRun(records, time.perf_counter() - started, skipped)


def figures(records: Sequence[StepRecord], seed: int = 0) -> dict[str, Any]:
    """action_match, action_match_normalized, nll, counts and 95% intervals for one group of steps."""
    by_trajectory: dict[str, list[StepRecord]] = defaultdict(list)
    for r in records:
        by_trajectory[r.id].append(r)
    groups = list(by_trajectory.values())
    exact = ratio_of([(sum(r.exact for r in g), len(g)) for g in groups])
    normalized = ratio_of([(sum(r.normalized for r in g), len(g)) for g in groups])
    scored = all(r.nll_sum is not None for r in records)
    nll = ratio_of([(sum(r.nll_sum or 0.0 for r in g), sum(r.n_tokens or 0 for r in g)) for g in groups]) if scored else None
    weights = resample_weights(len(groups), seed=seed)
    return {
        "action_match": exact.value,
        "action_match_normalized": normalized.value,
        "nll": nll.value if nll is not None else None,
        "n_steps": len(records),
        "n_trajectories": len(groups),
        "n_tokens": sum(r.n_tokens or 0 for r in records) if scored else None,
        "ci95": {
            "action_match": interval(exact, weights),
            "action_match_normalized": interval(normalized, weights),
            "nll": interval(nll, weights) if nll is not None else None,
        },
    }


def summarize(records: Sequence[StepRecord], seed: int = 0) -> dict[str, Any]:
    """Figures overall and per env, each with the same figures on the critical steps where labeled."""

    def with_critical(group: Sequence[StepRecord]) -> dict[str, Any]:
        out = figures(group, seed)
        labeled = [r for r in group if r.critical is not None]
        if labeled:
            out["critical"] = figures([r for r in labeled if r.critical], seed)
            out["critical"]["n_labeled_trajectories"] = len({r.id for r in labeled})
        return out

    envs = sorted({r.env for r in records})
    return {"overall": with_critical(records), "per_env": {e: with_critical([r for r in records if r.env == e]) for e in envs}}
