"""The cascade selector: the distilled model decides, the oracle is asked only where it is unsure.

This is the LONDI idea (call the large model only where it is needed) applied to step selection.
The distilled selector scores every step of every trajectory. Each trajectory gets an
*uncertainty*: how likely its distilled selection is to differ from the teacher's. The most
uncertain trajectories go to the oracle, one call each, until the budget (calls, dollars, or
both) would be exceeded; every other trajectory keeps its distilled selection.

Budgets are accounted conservatively. A call is one trajectory sent to the oracle (the oracle's
own unit; an invalid answer gets at most one repair request, charged in dollars). The routing is
planned with the oracle's per-trajectory cost estimates, and the same limits go to the oracle as
hard stops: it reserves each request's worst case (prompt estimate + 25%, full max_tokens)
before sending it, so the spend never exceeds the budget even when an estimate is off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from critstep.errors import ConfigError
from critstep.labels import TrajectoryLabels
from critstep.selection import DEFAULT_RATIO, Selection, expected_disagreement
from critstep.selector.base import Selector
from critstep.trajectory import Trajectory

UNCERTAINTIES = ("disagreement", "margin")


class Oracle(Protocol):
    """What the cascade needs from an oracle: `OracleLabeler` and `RecordedOracle` both fit."""

    def label(self, trajectories: Sequence[Trajectory], max_cost: float | None = None, max_calls: int | None = None) -> Any: ...

    def estimate(self, trajectories: Sequence[Trajectory]) -> Any: ...


@dataclass(frozen=True)
class Budget:
    """How much the cascade may spend on the oracle: calls, dollars, a share of trajectories.

    Several limits may be set together; the tightest one wins. `share` turns into calls once the
    number of trajectories is known (rounded down, so a 10% budget on 15 trajectories is 1 call).
    """

    calls: int | None = None
    usd: float | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if self.calls is None and self.usd is None and self.share is None:
            raise ConfigError("a cascade budget needs calls, dollars or a share of trajectories")
        if self.calls is not None and self.calls < 0:
            raise ConfigError(f"budget calls must be >= 0, got {self.calls}")
        if self.usd is not None and not (self.usd >= 0 and math.isfinite(self.usd)):
            raise ConfigError(f"budget dollars must be a finite number >= 0, got {self.usd}")
        if self.share is not None and not 0 <= self.share <= 1:
            raise ConfigError(f"budget share must be between 0 and 1, got {self.share}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`25%` (share of trajectories), `$2.50` (dollars) or `40` (calls)."""
        s = text.strip()
        try:
            if s.endswith("%"):
                return cls(share=float(s[:-1]) / 100)
            if s.startswith("$"):
                return cls(usd=float(s[1:]))
            return cls(calls=int(s))
        except ValueError:
            raise ConfigError(f"cannot read budget {text!r}: use 25% (share of trajectories), $2.50 (dollars) or 40 (calls)") from None

    def max_calls(self, n_trajectories: int) -> int | None:
        limits = [c for c in (self.calls, None if self.share is None else math.floor(self.share * n_trajectories + 1e-9)) if c is not None]
        return min(limits) if limits else None

    def label(self) -> str:
        parts = []
        if self.share is not None:
            parts.append(f"{self.share * 100:g}%")
        if self.calls is not None:
            parts.append(f"{self.calls} calls")
        if self.usd is not None:
            parts.append(f"${self.usd:g}")
        return " + ".join(parts)


def boundary_margin(probabilities: Sequence[float] | np.ndarray, steps: Sequence[int]) -> float:
    """Gap between the weakest chosen step and the strongest skipped one (0 = a coin toss).

    A missing side counts as certain: with every step chosen the gap is to 0, with none chosen
    it is from 1. Negative gaps (a selection that is not the top scores) count as 0.
    """
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    if len(p) == 0:
        return 1.0
    chosen = np.zeros(len(p), dtype=bool)
    chosen[list(steps)] = True
    low = p[chosen].min() if chosen.any() else 1.0
    high = p[~chosen].max() if (~chosen).any() else 0.0
    return float(max(0.0, low - high))


def uncertainty(selection: Selection, method: str = "disagreement") -> float:
    """How unsure the distilled model is of this selection; higher = ask the oracle first."""
    if selection.scores is None:
        raise ConfigError(f"the cascade needs step scores, but the selection of {selection.trajectory_id!r} has none")
    if len(selection.scores) == 0:
        return 0.0
    if method == "disagreement":
        return expected_disagreement(selection.scores, selection.steps)
    if method == "margin":
        return 1.0 - boundary_margin(selection.scores, selection.steps)
    raise ConfigError(f"unknown uncertainty {method!r} (known: {', '.join(UNCERTAINTIES)})")


@dataclass(frozen=True)
class Candidate:
    id: str
    uncertainty: float
    cost: float = 0.0


def plan_routes(candidates: Sequence[Candidate], max_calls: int | None = None, max_cost: float | None = None) -> list[str]:
    """The ids to send to the oracle: most uncertain first while the budget lasts.

    With a dollar budget, candidates are ranked by uncertainty per estimated dollar (the
    knapsack greedy) and one that no longer fits is skipped, so cheaper ones behind it can still
    be asked. Ties keep the input order. Candidates with nothing to fix (uncertainty 0) are
    never routed.
    """
    by_dollar = max_cost is not None

    def key(item: tuple[int, Candidate]) -> tuple[float, int]:
        i, c = item
        if not by_dollar:
            return (-c.uncertainty, i)
        return (-c.uncertainty / c.cost if c.cost > 0 else -math.inf, i)

    chosen: list[str] = []
    spent = 0.0
    for _, c in sorted(enumerate(candidates), key=key):
        if max_calls is not None and len(chosen) >= max_calls:
            break
        if c.uncertainty <= 0:
            continue
        if max_cost is not None and spent + c.cost > max_cost:
            continue
        chosen.append(c.id)
        spent += c.cost
    return chosen


@dataclass
class CascadeRun:
    """What one cascade pass did and spent, for reports (`CascadeSelector.run_`).

    `routed` is the plan; `unsent` those of it the oracle's own hard stop kept back (their worst-
    case reservation did not fit the budget left). A call is one trajectory sent; `requests`
    counts HTTP requests, which include the oracle's single repair request for an invalid answer.
    """

    budget: Budget
    n_trajectories: int
    routed: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    requests: int = 0
    cost_usd: float = 0.0
    estimated_cost_usd: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.routed) - len(self.unsent)

    @property
    def share_routed(self) -> float:
        return self.calls / self.n_trajectories if self.n_trajectories else 0.0


class CascadeSelector(Selector):
    """Distilled selector everywhere, oracle on the least certain trajectories within a budget.

    `distilled` is any selector whose selections carry calibrated step probabilities (built from
    `model_dir` when not given, in the model's default selection mode; without `model_dir`, the
    model shipped with critstep); `oracle` anything with `label`/`estimate` like `OracleLabeler`
    (built from `oracle_config` when not given). After `select`, `run_` says what was routed
    and spent. `route` does the same for selections scored earlier.
    """

    name = "cascade"
    streamable = False

    def __init__(
        self,
        model_dir: str | None = None,
        budget: Budget | str | None = None,
        max_calls: int | None = None,
        max_cost: float | None = None,
        uncertainty: str = "disagreement",
        distilled: Selector | None = None,
        oracle: Oracle | None = None,
        oracle_config: Any = None,
        device: str | None = None,
    ):
        if isinstance(budget, str):
            budget = Budget.parse(budget)
        if budget is None:
            budget = Budget(calls=max_calls, usd=max_cost)
        elif max_calls is not None or max_cost is not None:
            raise ConfigError("give the cascade either a budget or max_calls/max_cost, not both")
        if uncertainty not in UNCERTAINTIES:
            raise ConfigError(f"unknown uncertainty {uncertainty!r} (known: {', '.join(UNCERTAINTIES)})")
        if distilled is None:
            from critstep.selector.distilled import DistilledSelector

            distilled = DistilledSelector(model_dir=model_dir, device=device)  # without model_dir: the shipped model
        if oracle is None:
            from critstep.selector.oracle.config import OracleConfig
            from critstep.selector.oracle.labeler import OracleLabeler

            oracle = OracleLabeler(oracle_config or OracleConfig())
        self.budget = budget
        self.uncertainty = uncertainty
        self.distilled = distilled
        self.oracle = oracle
        self.run_: CascadeRun | None = None

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        selections, self.run_ = route(trajectories, self.distilled.select(trajectories, ratio), self.oracle, self.budget, self.uncertainty)
        return selections


def route(
    trajectories: Sequence[Trajectory],
    distilled: Mapping[str, Selection],
    oracle: Oracle,
    budget: Budget,
    uncertainty_method: str = "disagreement",
) -> tuple[dict[str, Selection], CascadeRun]:
    """Send the least certain of existing distilled selections to `oracle` within `budget`.

    The function behind `CascadeSelector.select`, open so that one scoring pass can serve several
    budgets (`compare` and the budget benchmark do this). Answered trajectories take the
    oracle's steps (keeping the distilled scores); failed or unsent ones keep the distilled choice.
    """
    by_id = {t.id: t for t in trajectories}
    run = CascadeRun(budget, len(trajectories))
    max_calls = budget.max_calls(len(trajectories))
    costs = estimate_costs(oracle, trajectories) if budget.usd is not None else {}
    candidates = [Candidate(t.id, uncertainty(distilled[t.id], uncertainty_method), costs.get(t.id, 0.0)) for t in trajectories]
    run.routed = plan_routes(candidates, max_calls, budget.usd)
    run.estimated_cost_usd = sum(costs.get(i, 0.0) for i in run.routed)
    out = dict(distilled)
    pending = [by_id[i] for i in run.routed]
    # The oracle stops at the first request whose worst case no longer fits beside those in
    # flight; asking again with what is left sends the rest that fit one at a time.
    while pending:
        left_usd = None if budget.usd is None else budget.usd - run.cost_usd
        left_calls = None if max_calls is None else max_calls - (len(run.answered) + len(run.failed))
        result = oracle.label(pending, max_cost=left_usd, max_calls=left_calls)
        if getattr(result, "interrupted", False):
            raise KeyboardInterrupt  # Ctrl-C: what the oracle answered is in its cache
        run.requests += int(result.calls)
        run.cost_usd += float(result.cost_usd)
        for t in pending:
            if t.id in result.labels:
                sel = result.labels[t.id].to_selection()
                sel.scores = distilled[t.id].scores
                out[t.id] = sel
                run.answered.append(t.id)
            elif t.id in result.failed:
                run.failed.append(t.id)
        unsent = set(result.unlabeled)
        still = [t for t in pending if t.id in unsent]
        if len(still) == len(pending) or getattr(result, "fatal", False):
            break
        pending = still
    done = set(run.answered) | set(run.failed)
    run.unsent = [i for i in run.routed if i not in done]
    return out, run


def estimate_costs(oracle: Oracle, trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Dollar cost of one oracle call per trajectory, from the oracle's own offline estimate.

    The estimate plans the routing (cached answers cost 0, so they go first); it is not trusted
    as a bound: the oracle reserves each request's worst case against the budget and stops.
    """
    return {t.id: _estimated_usd(oracle.estimate([t])) for t in trajectories}


def _estimated_usd(estimate: Any) -> float:
    value = estimate if isinstance(estimate, (int, float)) else getattr(estimate, "cost_usd", None)
    if value is None:
        raise ConfigError(f"the oracle's estimate has no cost_usd: {estimate!r}")
    return float(value)


class RecordedOracle:
    """Recorded labels acting as the oracle's answers (a "recorded oracle").

    Benchmarks use the seed labels this way, and `compare` uses labels bought earlier, so a
    cascade can be measured without spending. `costs` (dollars per trajectory, e.g. from the
    recorded token usage) makes dollar budgets meaningful; without it every answer is free.
    The same hard stops as the live oracle apply: no answer past `max_calls` or `max_cost`.
    """

    def __init__(self, labels: Mapping[str, TrajectoryLabels], costs: Mapping[str, float] | None = None):
        self.labels = labels
        self.costs = dict(costs or {})

    def estimate(self, trajectories: Sequence[Trajectory]) -> float:
        return sum(self.costs.get(t.id, 0.0) for t in trajectories)

    def label(self, trajectories: Sequence[Trajectory], max_cost: float | None = None, max_calls: int | None = None) -> Any:
        from critstep.selector.oracle.labeler import LabelRun

        run = LabelRun("recorded")
        for t in trajectories:
            cost = self.costs.get(t.id, 0.0)
            if (max_calls is not None and run.calls >= max_calls) or (max_cost is not None and run.cost_usd + cost > max_cost):
                run.unlabeled.append(t.id)
                continue
            run.calls += 1
            run.cost_usd += cost
            if t.id in self.labels:
                run.labels[t.id] = self.labels[t.id]
            else:
                run.failed[t.id] = "no recorded label"
        return run
