"""The distilled model as users meet it: the shipped model and its default mode, models saved by
the previous release, damaged or hostile model files, adapting to a new env, out-of-sample scoring."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from critstep.cli import cli
from critstep.distill.adapt import ADAPT_WEIGHT, refit
from critstep.distill.features import FeatureExtractor
from critstep.distill.persistence import SHIPPED_MODEL, TrainingRows, default_model_dir, load_model
from critstep.distill.policy import MODES
from critstep.errors import ModelError
from critstep.formats import read_trajectories, write_trajectories
from critstep.labels import read_labels, write_labels
from critstep.selection import step_cap
from critstep.selector import build_selector
from critstep.selector.distilled import DistilledSelector

FORMAT1 = Path(__file__).parent / "data" / "distilled-format1"
SAMPLE = Path(__file__).resolve().parents[1] / "critstep" / "data" / "sample"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_a_model_saved_by_the_previous_release_still_loads_and_scores_alike() -> None:
    # tests/data/distilled-format1 was written by critstep 0.1 (model format 1), and expected.json
    # holds what that release computed with it on the bundled sample.
    expected = json.loads((FORMAT1 / "expected.json").read_text())
    trajectories = [t for t in read_trajectories(SAMPLE / "trajectories.jsonl") if t.id in expected["trajectories"]]
    model = load_model(FORMAT1)
    assert model.policy.mode == "threshold"  # the old model gets the new default: the mode that agrees best
    selector = DistilledSelector(FORMAT1, cache=None)
    scores = selector.score(trajectories)
    for t in trajectories:
        assert np.allclose(scores[t.id], expected["proba"][t.id], atol=1e-6)
    assert {k: v.steps for k, v in selector.select(trajectories).items()} == expected["threshold_selection"]


def _copy_with_skops(tmp_path: Path, payload: bytes) -> Path:
    d = tmp_path / "model"
    shutil.copytree(FORMAT1, d)
    (d / "model.skops").write_bytes(payload)
    return d


def test_a_pickle_or_a_dict_in_model_skops_fails_in_one_line_before_any_feature(tmp_path: Path, monkeypatch) -> None:
    import skops.io as sio

    def no_features(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("features were computed before the model was checked")

    monkeypatch.setattr(FeatureExtractor, "transform", no_features)
    monkeypatch.setattr(FeatureExtractor, "blocks", no_features)
    traj = SAMPLE / "trajectories.jsonl"
    pickled = _copy_with_skops(tmp_path / "p", pickle.dumps({"not": "a model"}))
    code, output = run("select", str(traj), "--model", str(pickled), "--out", str(tmp_path / "o.jsonl"))
    assert code == 1 and "not a skops archive" in output and "never loads pickles" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    holder = tmp_path / "d"
    holder.mkdir()
    sio.dump({"not": "a model"}, holder / "x.skops")
    as_dict = _copy_with_skops(tmp_path / "q", (holder / "x.skops").read_bytes())
    code, output = run("select", str(traj), "--model", str(as_dict), "--out", str(tmp_path / "o.jsonl"))
    assert code == 1 and "holds a dict" in output and len(output.strip().splitlines()) == 1
    with pytest.raises(ModelError, match="holds a dict"):
        DistilledSelector(as_dict)
    assert not (tmp_path / "o.jsonl").exists()


def test_damaged_model_json_is_one_line(tmp_path: Path) -> None:
    d = _copy_with_skops(tmp_path, (FORMAT1 / "model.skops").read_bytes())
    meta = json.loads((d / "model.json").read_text())
    meta["feature_names"] = meta["feature_names"][:-3]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="expects 152 features"):
        load_model(d)
    del meta["classifier"]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="cannot read the model"):
        load_model(d)
    shipped = json.loads((default_model_dir() / "model.json").read_text())
    for bad in ({"threshold": "0.3x"}, {"env_thresholds": {"tau-airline": None}}):
        (d / "model.json").write_text(json.dumps(shipped | {"policy": shipped["policy"] | bad}))
        with pytest.raises(ModelError, match="must be numbers"):  # not a numpy error once the features are paid for
            load_model(d)
    (d / "model.json").write_text(json.dumps(shipped | {"features": shipped["features"] | {"groups": ["semantic", "sentiment"]}}))
    with pytest.raises(ModelError, match="unknown feature group"):
        load_model(d)


def test_adapters_of_a_development_format_2_fail_in_one_line(tmp_path: Path) -> None:
    d = _copy_with_skops(tmp_path, (FORMAT1 / "model.skops").read_bytes())
    meta = json.loads((d / "model.json").read_text())
    meta |= {"format_version": 2, "policy": {"mode": "threshold", "threshold": meta["threshold"]}}
    (d / "model.json").write_text(json.dumps(meta))
    assert load_model(d).training is None  # format 2 without adapters loads
    (d / "model.json").write_text(json.dumps(meta | {"adapters": [{"env": "tau-airline", "file": "adapter-0.skops"}]}))
    with pytest.raises(ModelError, match="adapters .* are no longer read; adapt the base model again"):
        load_model(d)


def test_a_model_saved_before_format_4_keeps_learning_critical_against_the_rest(tmp_path: Path) -> None:
    """Its model.json has no "targets": its classifier learned critical or not, and a refit (`--base`,
    `compare`'s cross-fit) keeps that recipe rather than learning categories its rows never had."""
    d = _copy_with_skops(tmp_path, (FORMAT1 / "model.skops").read_bytes())
    meta = json.loads((d / "model.json").read_text())
    meta |= {"format_version": 3, "policy": {"mode": "threshold", "threshold": meta["threshold"]}}
    (d / "model.json").write_text(json.dumps(meta))
    clf = load_model(d).classifier
    assert clf.get_params()["targets"] == "binary" and len(clf.estimator_.classes_) == 2
    rng = np.random.default_rng(0)
    y = (rng.random(240) < 0.2).astype(int)
    groups = np.repeat([f"t{i}" for i in range(24)], 10)
    rows = TrainingRows(rng.random((240, 152)), y, groups, np.full(240, "e"), np.ones(240), 3 * y)  # format-3 rows: critical actions
    new = TrainingRows(*(a[:40] for a in rows.arrays()))
    new.groups, new.categories = np.char.add("new-", new.groups), new.y * 1  # the new labels' plans
    refitted, _ = refit(clf, rows, new)
    assert refitted.get_params()["targets"] == "binary" and refitted.estimator_.classes_.tolist() == [0, 1]


@pytest.fixture(scope="module")
def shipped_rows() -> dict[str, np.ndarray]:
    with np.load(default_model_dir() / "training.npz") as f:
        return dict(f)


@pytest.mark.parametrize("bad", ["pickled", "narrow", "short_y", "y0d", "y_fraction", "x_inf", "weight_nan", "weight_negative",
                                 "groups_int", "groups_2d", "no_rows", "corrupted", "npy", "categories_disagree", "categories_float",
                                 "categories_negative"])
def test_damaged_training_rows_fail_in_one_line_and_only_where_they_are_needed(tmp_path: Path, shipped_rows, bad: str) -> None:
    a = shipped_rows
    n = len(a["y"])
    damage = {"pickled": {"groups": np.array([{"x": 1}] * n, dtype=object)}, "narrow": {"X": a["X"][:, :5]}, "short_y": {"y": a["y"][:-1]},
              "y0d": {"y": np.array(1)}, "y_fraction": {"y": np.full(n, 0.7)}, "x_inf": {"X": np.full_like(a["X"], np.inf)},
              "weight_nan": {"weight": np.full(n, np.nan)}, "weight_negative": {"weight": -np.ones(n, dtype=np.float32)},
              "groups_int": {"groups": np.arange(n)}, "groups_2d": {"groups": a["groups"][:, None]},
              "no_rows": {k: v[:0] for k, v in a.items()}, "categories_disagree": {"categories": np.where(a["y"] == 1, 0, 3)},
              "categories_float": {"categories": a["y"] * 3.0},
              "categories_negative": {"categories": np.where(a["y"] == 1, 3, -1).astype(np.int8)}}.get(bad, {})
    d = tmp_path / "model"
    shutil.copytree(default_model_dir(), d)
    path = d / "training.npz"
    np.savez(path, **(a | damage))
    if bad == "corrupted":  # a compressed archive with flipped bytes inside a member: zlib's error, not a traceback
        data = bytearray((default_model_dir() / "training.npz").read_bytes())
        data[2000:2064] = bytes(b ^ 0xFF for b in data[2000:2064])
        path.write_bytes(bytes(data))
    if bad == "npy":  # one array saved under the archive's name
        with path.open("wb") as f:
            np.save(f, a["X"])
    model = load_model(d)  # selecting needs no training rows: the model loads and scores
    assert len(model.proba(a["X"][:3].astype(np.float64))) == 3
    expected = {"pickled": "never loads pickles", "corrupted": "not plain training rows", "npy": "not an archive"}.get(bad, "damaged training rows")
    with pytest.raises(ModelError, match=expected) as e:
        model.training_rows()
    assert ("pickle" in str(e.value)) == (bad == "pickled")


def test_training_rows_without_categories_read_as_critical_actions_only_before_format_4(tmp_path: Path, shipped_rows) -> None:
    """Format 3 saved no categories: its critical steps are read as critical actions (code 3). A
    format-4 directory whose rows lack them is damaged, and says so."""
    d = tmp_path / "model"
    shutil.copytree(default_model_dir(), d)
    np.savez(d / "training.npz", **{k: v for k, v in shipped_rows.items() if k != "categories"})
    with pytest.raises(ModelError, match="damaged training rows: no categories"):
        load_model(d).training_rows()
    meta = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps(meta | {"format_version": 3}))
    rows = load_model(d).training_rows()
    assert np.array_equal(rows.categories, 3 * shipped_rows["y"]) and np.array_equal(rows.y, shipped_rows["y"])


def test_a_model_copied_without_its_training_rows_still_selects_and_base_says_why(tmp_path: Path) -> None:
    d = tmp_path / "model"
    shutil.copytree(default_model_dir(), d)
    (d / "training.npz").unlink()
    trajectories = read_trajectories(SAMPLE / "trajectories.jsonl")[:2]
    assert DistilledSelector(d, cache=None).select(trajectories)
    with pytest.raises(ModelError, match="cannot read the training rows") as e:
        load_model(d).training_rows()
    assert "pickle" not in str(e.value)


def test_the_shipped_model_is_the_default_and_selects_in_its_own_mode() -> None:
    d = default_model_dir()
    assert d.name == SHIPPED_MODEL and (d / "model.skops").exists() and (d / "README.md").exists()
    model = load_model(d)
    assert model.policy.mode in ("threshold", "count") and model.card["training_data"]["trajectories"] == 306
    assert len(model.card["training_ids"]) == 306 and model.card["cv"]["repeats"] >= 3
    trajectories = read_trajectories(SAMPLE / "trajectories.jsonl")[:6]
    selector = build_selector("distilled", cache=None)  # no model_dir: the shipped model
    assert selector.model_dir == d
    scores = selector.score(trajectories)
    chosen = selector.select(trajectories, ratio=0.3)
    for t in trajectories:
        assert chosen[t.id].steps == model.policy.select(scores[t.id], 0.3, model.policy.mode)
        assert 1 <= len(chosen[t.id].steps) <= step_cap(t.n_steps, 0.3)
    assert set(MODES) == {"threshold", "count", "ratio"}


@pytest.fixture(scope="module")
def seed_slice(shared: Path, tmp_path_factory) -> Path:
    """12 seed trajectories (the shipped model's training data) and their labels, as files."""
    d = tmp_path_factory.mktemp("seed")
    corpus = read_trajectories(shared / "corpus.jsonl")
    labels = read_labels(shared / "seed_labels.jsonl", corpus)
    by_env: dict[str, list[str]] = {}
    for t in corpus:
        if t.id in labels and t.env in ("alfworld", "qa-search", "tau-airline") and len(by_env.setdefault(t.env, [])) < 4:
            by_env[t.env].append(t.id)
    ids = [i for v in by_env.values() for i in v]
    write_trajectories(d / "traj.jsonl", [t for t in corpus if t.id in ids])
    write_labels(d / "labels.jsonl", [labels[i] for i in ids])
    return d


def test_compare_without_model_cross_fits_where_the_shipped_model_saw_the_data(seed_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code, output = run("compare", str(seed_slice / "traj.jsonl"), "--labels", str(seed_slice / "labels.jsonl"), "--out", str(out),
                       "--selectors", "distilled,random", "--device", "cpu")
    assert code == 0, output
    assert "cross-fitting" in output
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["selectors"] if r["name"] == "distilled")
    assert any("cross-fitted" in n and "out of sample" in n for n in row["notes"])
    assert not any("in-sample" in n for n in row["notes"]) and 0.2 < row["f1"] < 1.0


def test_evaluate_scores_a_partial_file_and_warns_in_sample(seed_slice: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred.jsonl"
    code, output = run("select", str(seed_slice / "traj.jsonl"), "--out", str(pred), "--device", "cpu")
    assert code == 0, output
    half = read_trajectories(pred)[::3]
    write_trajectories(tmp_path / "part.jsonl", half)
    code, output = run("evaluate", "--pred", str(tmp_path / "part.jsonl"), "--gold", str(seed_slice / "labels.jsonl"), "--json")
    assert code == 0, output
    assert f"scoring the {len(half)} of 12 labeled trajectories" in output
    assert "training data of the shipped distilled model" in output and "in-sample" in output
    metrics = json.loads(output[output.index("{"):])
    assert metrics["n_trajectories"] == len(half)


def test_distill_base_refits_the_shipped_model_with_an_envs_labels(seed_slice: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted"
    code, output = run("distill", str(seed_slice / "traj.jsonl"), "--labels", str(seed_slice / "labels.jsonl"), "--base", "shipped",
                       "--out", str(out), "--device", "cpu")
    assert code == 0, output
    assert "tau-airline: 4 labeled trajectories; F1 base" in output and "training data of the base model" in output
    adapted, base = load_model(out), load_model(default_model_dir())
    assert set(adapted.policy.env_thresholds) == {"alfworld", "qa-search", "tau-airline"}
    assert adapted.card["adaptations"][0]["base"] == SHIPPED_MODEL and "Adaptation 1" in (out / "README.md").read_text()
    # the 12 labeled trajectories were training data of the base: their rows are replaced, weighted, not doubled
    ids = {t.id for t in read_trajectories(seed_slice / "traj.jsonl")}
    rows, base_rows = adapted.training_rows(), base.training_rows()
    new_rows = np.isin(rows.groups, list(ids))
    assert len(rows.y) == len(base_rows.y) and np.all(rows.weight[new_rows] == ADAPT_WEIGHT)
    assert np.all(rows.weight[~new_rows] == 1.0) and sorted(adapted.card["training_ids"]) == sorted(base.card["training_ids"])
    # the classifier itself was refitted: its scores differ from the base's
    X = base_rows.X[:50]
    assert not np.allclose(adapted.proba(X), base.proba(X))
    code, output = run("select", str(seed_slice / "traj.jsonl"), "--model", str(out), "--out", str(tmp_path / "s.jsonl"), "--device", "cpu")
    assert code == 0, output
    code, output = run("distill", str(seed_slice / "traj.jsonl"), "--labels", str(seed_slice / "labels.jsonl"), "--base", "nowhere",
                       "--out", str(tmp_path / "x"))
    assert code == 1 and "no such model directory" in output
    code, output = run("distill", str(seed_slice / "traj.jsonl"), "--labels", str(seed_slice / "labels.jsonl"), "--base", str(out),
                       "--out", str(out))
    assert code == 1 and "--base" in output and "Traceback" not in output and load_model(out).training_rows() is not None  # left as it was
    # nor over the shipped model, nor anywhere inside the installed package
    for target in (default_model_dir(), default_model_dir().parent / "mine"):
        code, output = run("distill", str(seed_slice / "traj.jsonl"), "--labels", str(seed_slice / "labels.jsonl"), "--base", "shipped",
                           "--out", str(target))
        assert code == 1 and "inside the installed critstep package" in output and not (default_model_dir().parent / "mine").exists()


def test_distill_base_refuses_a_model_without_training_rows_in_one_line(seed_slice: Path, tmp_path: Path) -> None:
    code, output = run("distill", str(seed_slice / "traj.jsonl"), "--labels", str(seed_slice / "labels.jsonl"), "--base", str(FORMAT1),
                       "--out", str(tmp_path / "a"), "--device", "cpu")
    assert code == 1 and "carries no training rows" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


def test_compare_cross_fit_with_a_one_class_training_fold_is_one_line(seed_slice: Path, tmp_path: Path) -> None:
    """Every step critical: a fold's training data has one class; one line naming the way out, no traceback."""
    trajectories = read_trajectories(seed_slice / "traj.jsonl")[:2]
    write_trajectories(tmp_path / "t.jsonl", trajectories)
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"id": t.id, "n_steps": len(t.steps()), "plan": "", "critical": [
        {"step": i, "category": "critical_action", "reason": ""} for i in range(len(t.steps()))]}) + "\n" for t in trajectories))
    code, output = run("compare", str(tmp_path / "t.jsonl"), "--labels", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "cmp"),
                       "--selectors", "distilled", "--device", "cpu")
    assert code == 1 and "cross-fitting the distilled selector" in output and "Traceback" not in output, output


def test_distill_base_refuses_cross_validation_options(seed_slice: Path, tmp_path: Path) -> None:
    """--base adapts without CV: --folds/--repeats/--seed would be silently ignored, so they are refused."""
    code, output = run("distill", str(seed_slice / "traj.jsonl"), "--labels", str(seed_slice / "labels.jsonl"), "--base", "shipped",
                       "--repeats", "3", "--out", str(tmp_path / "a"))
    assert code == 1 and "drop --folds/--repeats/--seed" in output and not (tmp_path / "a").exists(), output
