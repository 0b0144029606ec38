"""Regressions found in the pre-release review."""

from __future__ import annotations

import numpy as np
import pytest

from critstep.distill.estimator import StepClassifier
from critstep.distill.features import FeatureConfig
from critstep.distill.persistence import DistilledModel, load_model, save_model
from critstep.errors import InputError


def _model() -> DistilledModel:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] > 0.3).astype(int)
    clf = StepClassifier("logreg", calibration_folds=0).fit(X, y)
    return DistilledModel(clf, FeatureConfig(groups=("structural",)), [f"f{i}" for i in range(4)])


def test_save_model_does_not_wipe_an_unrelated_directory(tmp_path):
    # `critstep distill --out models` on a folder holding other things used to rmtree it whole.
    target = tmp_path / "models"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to replace"):
        save_model(_model(), target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_save_model_still_replaces_a_previous_model_or_an_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    save_model(_model(), empty)
    save_model(_model(), empty)  # a previous model is replaced
    assert load_model(empty).feature_names == ["f0", "f1", "f2", "f3"]


def test_merge_refuses_to_replace_an_unrelated_directory(tmp_path):
    from critstep.tuner.merge import merge_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    # --out pointing at the adapter itself (or any folder with other files) must not delete it.
    with pytest.raises(InputError, match="refusing to replace"):
        merge_adapter(adapter, adapter)
    assert (adapter / "adapter_config.json").exists()


def test_an_ok_that_already_acts_is_a_step(tmp_path):
    import json

    from critstep.formats import read_trajectories

    conv = [
        {"from": "human", "value": "You are web shopping. Task: buy red shoes."},
        {"from": "gpt", "value": "OK. Action: search[red shoes]"},
        {"from": "human", "value": "Observation: results"},
        {"from": "gpt", "value": "Action: click[item 1]"},
    ]
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"id": "a", "conversations": conv}]))
    (t,) = read_trajectories(p)
    assert t.n_steps == 2


def test_compare_prices_an_answer_by_what_it_cost():
    from critstep.compare.pipeline import LabelPricer
    from critstep.labels import TrajectoryLabels
    from critstep.selector.oracle.config import OracleConfig
    from critstep.selector.oracle.pricing import load_prices
    from critstep.trajectory import Message, Trajectory

    t = Trajectory("x", [Message("user", "task"), Message("assistant", "act")])
    batch_answer = TrajectoryLabels("x", 1, [], extra={"usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0, "cost_usd": 1.25}})
    pricer = LabelPricer(OracleConfig(), load_prices())
    assert pricer(batch_answer, t) == 1.25  # the Batch API's half price, not the list price
    assert pricer.estimated == 0


def test_compare_warns_when_the_model_saw_the_compared_trajectories(tmp_path):
    from critstep.demo import SAMPLE_DIR
    from critstep.distill.features import FeatureConfig
    from critstep.distill.persistence import in_sample_warning
    from critstep.distill.train import train_distilled
    from critstep.formats import read_trajectories
    from critstep.labels import read_labels

    trajectories = read_trajectories(SAMPLE_DIR / "trajectories.jsonl")
    labels = read_labels(SAMPLE_DIR / "labels.jsonl", trajectories)
    train = trajectories[:30]
    report = train_distilled(train, {t.id: labels[t.id] for t in train}, tmp_path / "m", features=FeatureConfig(groups=("structural",)),
                             folds=0, cache=None)
    model = report["model"]
    assert model.card["training_ids"] == sorted(t.id for t in train)
    assert in_sample_warning(tmp_path / "m", [t.id for t in trajectories[30:]]) is None
    warning = in_sample_warning(tmp_path / "m", [t.id for t in trajectories[25:35]])
    assert warning is not None and "trained on 5 of the 10" in warning


def test_a_truncated_feature_cache_entry_is_recomputed_not_a_traceback(tmp_path) -> None:
    # A cut .npz is a zip without its directory: numpy raises BadZipFile, which is not an OSError.
    from critstep.distill.features.cache import FeatureCache

    cache = FeatureCache(tmp_path, "g")
    cache.put("ab12", np.arange(1000.0))
    entry = next((tmp_path / "g").rglob("*.npz"))
    entry.write_bytes(entry.read_bytes()[:-40])
    assert cache.get("ab12") is None
