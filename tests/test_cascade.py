"""The cascade: uncertainty, routing under call and dollar budgets (never over), ties, empty input."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from oracle_server import FakeOpenAI, Reply, sample_trajectories

from critstep.distill.persistence import SHIPPED_MODEL
from critstep.errors import ConfigError
from critstep.formats import read_trajectories
from critstep.io import write_jsonl
from critstep.labels import CriticalStep, TrajectoryLabels
from critstep.selection import DEFAULT_RATIO, Selection, expected_disagreement, top_k
from critstep.selector.base import Selector
from critstep.selector.cascade import (
    Budget,
    Candidate,
    CascadeSelector,
    RecordedOracle,
    boundary_margin,
    plan_routes,
    uncertainty,
)
from critstep.selector.oracle import OracleConfig, OracleLabeler
from critstep.trajectory import Message, Trajectory


def make_traj(tid: str, n_steps: int) -> Trajectory:
    messages = [Message("user", f"task {tid}")]
    for k in range(n_steps):
        messages += [Message("assistant", f"step {k} of {tid}"), Message("user", f"observation {k}")]
    return Trajectory(tid, messages, {"env": "test"})


class FixedScores(Selector):
    """A distilled selector stand-in: given probabilities, top-k selection, scores attached."""

    name = "fixed"

    def __init__(self, scores: dict[str, list[float]]):
        self.scores = scores

    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]:
        return {t.id: Selection(t.id, top_k(self.scores[t.id], ratio), scores=self.scores[t.id]) for t in trajectories}


def teacher(tid: str, n: int, steps: list[int]) -> TrajectoryLabels:
    return TrajectoryLabels(tid, n, [CriticalStep(s, "critical_action") for s in steps])


def test_budget_parse_and_errors() -> None:
    assert Budget.parse("25%") == Budget(share=0.25)
    assert Budget.parse("$2.50") == Budget(usd=2.5)
    assert Budget.parse(" 40 ") == Budget(calls=40)
    assert Budget.parse("10%").max_calls(15) == 1  # rounded down: never over
    assert Budget(calls=3, share=0.5).max_calls(100) == 3  # the tightest limit wins
    assert Budget(usd=1.0).max_calls(10) is None
    for bad in ("ten", "$x", "-1", "150%"):
        with pytest.raises(ConfigError):
            Budget.parse(bad)
    with pytest.raises(ConfigError, match="needs calls, dollars"):
        Budget()


def test_uncertainty_measures() -> None:
    # Chosen {0}: wrong with 0.1; skipped 0.2 and 0.4 wrong with their probabilities.
    assert expected_disagreement([0.9, 0.2, 0.4], [0]) == pytest.approx(0.1 + 0.2 + 0.4)
    assert boundary_margin([0.9, 0.2, 0.4], [0]) == pytest.approx(0.5)
    assert boundary_margin([0.5, 0.5, 0.1], [0]) == 0.0  # a tie at the boundary is a coin toss
    assert boundary_margin([0.7], [0]) == pytest.approx(0.7)  # nothing skipped: gap to 0
    assert uncertainty(Selection("a", [], scores=[])) == 0.0
    with pytest.raises(ConfigError, match="needs step scores"):
        uncertainty(Selection("a", [0]))
    with pytest.raises(ConfigError, match="unknown uncertainty"):
        uncertainty(Selection("a", [0], scores=[0.5]), "entropy")


def test_plan_routes_calls_ties_and_zero() -> None:
    cands = [Candidate("a", 1.0), Candidate("b", 3.0), Candidate("c", 1.0), Candidate("d", 0.0), Candidate("e", 3.0)]
    assert plan_routes(cands, max_calls=3) == ["b", "e", "a"]  # ties keep the input order
    assert plan_routes(cands, max_calls=10) == ["b", "e", "a", "c"]  # nothing to fix: never routed
    assert plan_routes(cands, max_calls=0) == []
    assert plan_routes([], max_calls=5) == []


def test_plan_routes_dollars_skips_what_does_not_fit() -> None:
    cands = [Candidate("big", 4.0, cost=1.0), Candidate("small", 1.0, cost=0.2), Candidate("free", 0.5, cost=0.0)]
    # Per dollar: free first, then big (4/$), then small (5/$ beats big: small first).
    assert plan_routes(cands, max_cost=0.5) == ["free", "small"]
    assert plan_routes(cands, max_cost=1.2) == ["free", "small", "big"]
    assert plan_routes(cands, max_cost=0.0) == ["free"]


def test_cascade_routes_the_least_certain_first() -> None:
    trajs = [make_traj("sure", 4), make_traj("unsure", 4), make_traj("middle", 4)]
    scores = {"sure": [0.99, 0.01, 0.01, 0.01], "unsure": [0.5, 0.5, 0.5, 0.5], "middle": [0.8, 0.3, 0.2, 0.1]}
    gold = {t.id: teacher(t.id, 4, [3]) for t in trajs}
    cascade = CascadeSelector(budget=Budget(calls=1), distilled=FixedScores(scores), oracle=RecordedOracle(gold))
    out = cascade.select(trajs, 0.3)
    assert cascade.run_ is not None and cascade.run_.routed == ["unsure"]
    assert out["unsure"].steps == [3] and out["unsure"].scores == scores["unsure"]
    assert out["sure"].steps == [0] and out["middle"].steps == [0]
    assert cascade.run_.calls == 1 and cascade.run_.share_routed == pytest.approx(1 / 3)


def test_cascade_zero_and_full_budget() -> None:
    rng = np.random.default_rng(0)
    trajs = [make_traj(f"t{i}", 6) for i in range(10)]
    scores = {t.id: rng.uniform(0.01, 0.99, 6).tolist() for t in trajs}
    gold = {t.id: teacher(t.id, 6, [5]) for t in trajs}
    distilled = FixedScores(scores)
    none = CascadeSelector(budget="0%", distilled=distilled, oracle=RecordedOracle(gold)).select(trajs)
    assert none == distilled.select(trajs)
    full = CascadeSelector(budget="100%", distilled=distilled, oracle=RecordedOracle(gold)).select(trajs)
    assert all(full[t.id].steps == [5] for t in trajs)


def test_cascade_empty_input_and_stepless_trajectories() -> None:
    cascade = CascadeSelector(budget="100%", distilled=FixedScores({"z": []}), oracle=RecordedOracle({}))
    assert cascade.select([]) == {}
    assert cascade.run_ is not None and cascade.run_.calls == 0 and cascade.run_.share_routed == 0.0
    out = cascade.select([make_traj("z", 0)])
    assert out["z"].steps == [] and cascade.run_.routed == []


def test_cascade_failed_answers_keep_the_distilled_choice() -> None:
    trajs = [make_traj("a", 3), make_traj("b", 3)]
    scores = {"a": [0.5, 0.5, 0.4], "b": [0.6, 0.5, 0.4]}
    cascade = CascadeSelector(budget="100%", distilled=FixedScores(scores), oracle=RecordedOracle({"b": teacher("b", 3, [2])}))
    out = cascade.select(trajs)
    assert out["a"].steps == [0] and out["b"].steps == [2]
    assert cascade.run_ is not None and cascade.run_.failed == ["a"] and cascade.run_.answered == ["b"]


@pytest.mark.parametrize("seed", range(20))
def test_never_over_budget_in_calls_or_dollars(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(0, 30)
    trajs = [make_traj(f"t{i}", rng.randint(0, 12)) for i in range(n)]
    scores = {t.id: [rng.random() for _ in range(t.n_steps)] for t in trajs}
    gold = {t.id: teacher(t.id, t.n_steps, [0] if t.n_steps else []) for t in trajs}
    costs = {t.id: rng.choice([0.0, 0.001, 0.01, 0.05]) * max(1, t.n_steps) for t in trajs}
    budget = Budget(calls=rng.choice([None, 0, 1, 3, 100]), usd=rng.choice([None, 0.0, 0.01, 0.1, 1.0]), share=rng.choice([None, 0.1, 0.5]))
    if budget.calls is None and budget.usd is None and budget.share is None:
        budget = Budget(calls=2)
    oracle = RecordedOracle(gold, costs)
    cascade = CascadeSelector(budget=budget, distilled=FixedScores(scores), oracle=oracle)
    cascade.select(trajs)
    run = cascade.run_
    assert run is not None
    limit = budget.max_calls(n)
    if limit is not None:
        assert run.calls <= limit
    if budget.usd is not None:
        assert run.cost_usd <= budget.usd + 1e-12
        assert sum(costs[i] for i in run.answered) <= budget.usd + 1e-12


def test_constructor_errors() -> None:
    with pytest.raises(ConfigError, match="either a budget"):
        CascadeSelector(budget="10%", max_calls=3, distilled=FixedScores({}), oracle=RecordedOracle({}))
    assert CascadeSelector(budget="10%", oracle=RecordedOracle({})).distilled.model_dir.name == SHIPPED_MODEL  # the default model
    with pytest.raises(ConfigError, match="unknown uncertainty"):
        CascadeSelector(budget="10%", uncertainty="entropy", distilled=FixedScores({}), oracle=RecordedOracle({}))


class UnderEstimating(RecordedOracle):
    """An oracle whose estimates say 'free' but whose answers cost money: the hard stop must hold."""

    def estimate(self, trajectories: Sequence[Trajectory]) -> float:
        return 0.0


def test_oracle_hard_stop_holds_when_estimates_are_wrong() -> None:
    trajs = [make_traj(f"t{i}", 4) for i in range(6)]
    scores = {t.id: [0.5, 0.4, 0.3, 0.2] for t in trajs}
    gold = {t.id: teacher(t.id, 4, [1]) for t in trajs}
    oracle = UnderEstimating(gold, {t.id: 0.3 for t in trajs})
    cascade = CascadeSelector(budget=Budget(usd=1.0), distilled=FixedScores(scores), oracle=oracle)
    cascade.select(trajs)
    run = cascade.run_
    assert run is not None
    assert len(run.routed) == 6 and len(run.answered) == 3 and len(run.unsent) == 3
    assert run.cost_usd == pytest.approx(0.9) and run.calls == 3


# --- the real OracleLabeler against the loopback OpenAI server ----------------------------------


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """The loopback OpenAI server of tests/server.py, stopped after the test."""
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def loopback(tmp_path, server, n: int = 8) -> tuple[list[Trajectory], dict[str, list[float]], OracleLabeler]:
    write_jsonl(tmp_path / "t.jsonl", sample_trajectories(n, steps=10))
    trajs = read_trajectories(tmp_path / "t.jsonl")
    # Trajectory i is less certain the larger i is: its probabilities sit closer to 0.5.
    scores = {t.id: [0.5 + (0.45 - 0.05 * i) * (1 if k < 3 else -1) for k in range(10)] for i, t in enumerate(trajs)}
    config = OracleConfig(model="gpt-4o", base_url=server.url, api_key="test-key", cache_path=tmp_path / "cache.jsonl", backoff_base=0.0)
    return trajs, scores, OracleLabeler(config)


def test_loopback_call_budget(tmp_path, server) -> None:
    trajs, scores, oracle = loopback(tmp_path, server)
    cascade = CascadeSelector(budget=Budget(calls=3), distilled=FixedScores(scores), oracle=oracle)
    out = cascade.select(trajs)
    run = cascade.run_
    assert run is not None and server.count() == 3 and run.calls == 3 and run.requests == 3
    assert run.routed == ["traj-7", "traj-6", "traj-5"] and sorted(run.answered) == sorted(run.routed)
    assert out["traj-7"].steps == [0, 1, 2]  # the fake oracle's answer: the first `cap` steps
    assert run.cost_usd > 0


def test_loopback_dollar_budget_never_exceeded(tmp_path, server) -> None:
    trajs, scores, oracle = loopback(tmp_path, server)
    one = oracle.estimate(trajs[:1]).cost_usd
    budget = Budget(usd=round(3.5 * one, 6))
    cascade = CascadeSelector(budget=budget, distilled=FixedScores(scores), oracle=oracle)
    cascade.select(trajs)
    run = cascade.run_
    assert run is not None and run.answered
    assert run.cost_usd <= budget.usd
    assert server.count() == run.requests == len(run.answered)
    # Answers now in the cache cost nothing: a second pass routes them first and pays $0 for them.
    again = CascadeSelector(budget=budget, distilled=FixedScores(scores), oracle=oracle)
    again.select(trajs)
    assert again.run_ is not None and set(run.answered) <= set(again.run_.answered) and again.run_.cost_usd <= budget.usd


def test_loopback_repair_counts_one_call_and_is_paid_from_the_budget(tmp_path, server) -> None:
    trajs, scores, oracle = loopback(tmp_path, server, n=2)
    server.queue(Reply(content="not json"))  # the first answer is invalid: one repair request follows
    cascade = CascadeSelector(budget=Budget(calls=1, usd=1.0), distilled=FixedScores(scores), oracle=oracle)
    cascade.select(trajs)
    run = cascade.run_
    assert run is not None and run.calls == 1 and run.requests == 2 == server.count()
    assert run.answered == ["traj-1"] and run.cost_usd <= 1.0
