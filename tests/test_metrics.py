"""Agreement metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from critstep.distill.metrics import evaluate_selections, expected_calibration_error
from critstep.errors import InputError
from critstep.labels import CriticalStep, TrajectoryLabels
from critstep.selection import Selection
from critstep.trajectory import Message, Trajectory


def _gold() -> dict[str, TrajectoryLabels]:
    return {
        "a": TrajectoryLabels("a", 5, [CriticalStep(0, "plan_creation"), CriticalStep(3, "critical_action")]),
        "b": TrajectoryLabels("b", 5, [CriticalStep(2, "critical_action")]),
    }


def _traj(tid: str, env: str) -> Trajectory:
    return Trajectory(tid, [Message("user", "task"), *[Message("assistant", f"s{i}") for i in range(5)]], {"env": env})


def test_counts_by_hand() -> None:
    # 10 steps; gold {a0, a3, b2}; predicted {a0, a1, b2, b4}: TP 2, FP 2, FN 1, TN 5.
    pred = {"a": Selection("a", [0, 1]), "b": Selection("b", [2, 4])}
    m = evaluate_selections(pred, _gold(), {"a": _traj("a", "x"), "b": _traj("b", "y")})
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    # kappa: observed agreement 7/10; chance = 0.4*0.3 + 0.6*0.7 = 0.54 -> (0.7-0.54)/0.46.
    assert m["kappa"] == pytest.approx((0.7 - 0.54) / 0.46)
    assert m["n_steps"] == 10 and m["share_selected"] == pytest.approx(0.4)
    assert m["per_env"]["x"]["recall"] == pytest.approx(0.5)
    assert m["per_env"]["y"]["precision"] == pytest.approx(0.5)
    assert m["per_category_recall"]["plan_creation"]["recall"] == 1.0
    assert m["per_category_recall"]["critical_action"]["recall"] == pytest.approx(0.5)
    assert "auroc" not in m  # no scores, no threshold-free metrics


def test_score_metrics_by_hand() -> None:
    pred = {
        "a": Selection("a", [0, 3], scores=[0.9, 0.1, 0.2, 0.8, 0.3]),
        "b": Selection("b", [2], scores=[0.1, 0.2, 0.7, 0.0, 0.4]),
    }
    m = evaluate_selections(pred, _gold())
    assert m["f1"] == 1.0 and m["kappa"] == pytest.approx(1.0)
    assert m["auroc"] == 1.0 and m["average_precision"] == 1.0
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.1, 0.2, 0.7, 0.0, 0.4])
    gold = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    assert m["brier"] == pytest.approx(((scores - gold) ** 2).mean())
    assert m["per_env"] == {"unknown": pytest.approx(m["per_env"]["unknown"])}


def test_ece_by_hand() -> None:
    # Two bins used: [0.1, 0.2) holds 0.1, 0.1 (mean 0.1, gold rate 0.5); [0.9, 1] holds 0.9, 0.9 (gold 1.0).
    ece = expected_calibration_error(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 1, 1, 1]))
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


def test_perplexity_like_scores_get_no_brier() -> None:
    pred = {"a": Selection("a", [0], scores=[3.0, 1.0, 2.0, 5.0, 0.5]), "b": Selection("b", [2], scores=[1, 2, 3, 4, 5])}
    m = evaluate_selections(pred, _gold())
    assert m["auroc"] is not None and m["brier"] is None and m["ece"] is None


def test_missing_and_out_of_range_predictions() -> None:
    with pytest.raises(InputError, match="no prediction"):
        evaluate_selections({"a": Selection("a", [0])}, _gold())
    with pytest.raises(InputError, match="outside"):
        evaluate_selections({"a": Selection("a", [7]), "b": Selection("b", [0])}, _gold())


def test_all_selected_kappa_is_zero_not_nan() -> None:
    pred = {k: Selection(k, list(range(5))) for k in ("a", "b")}
    m = evaluate_selections(pred, _gold())
    assert m["recall"] == 1.0 and not math.isnan(m["kappa"]) and m["kappa"] == pytest.approx(0.0)
