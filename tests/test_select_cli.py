"""`critstep distill`, `select` and `evaluate` end to end on a slice of the real seed labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from critstep.cli import cli
from critstep.formats import read_trajectories, write_trajectories
from critstep.labels import read_labels, write_labels
from critstep.selection import step_cap


@pytest.fixture(scope="module")
def data(shared: Path, tmp_path_factory) -> Path:
    """30 labeled trajectories and their labels as files, plus a structural-only model."""
    d = tmp_path_factory.mktemp("cli")
    corpus = read_trajectories(shared / "corpus.jsonl")
    labels = dict(list(read_labels(shared / "seed_labels.jsonl", corpus).items())[:30])
    write_trajectories(d / "traj.jsonl", [t for t in corpus if t.id in labels])
    write_labels(d / "labels.jsonl", labels.values())
    result = CliRunner().invoke(cli, ["distill", str(d / "traj.jsonl"), "--labels", str(d / "labels.jsonl"), "--out", str(d / "model"),
                                      "--features", "structural", "--folds", "2", "--classifier", "logreg", "--cache-dir", str(d / "cache")])
    assert result.exit_code == 0, result.output
    assert "2-fold CV by trajectory, threshold mode" in result.output and "model saved" in result.output
    assert "cross-validation: 100%" in result.output and "2/2" in result.output  # the progress bar over the folds
    return d


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("extra", [[], ["--threshold"], ["--mode", "count"], ["--mode", "ratio"]])
def test_select_distilled_then_evaluate(data: Path, extra: list[str]) -> None:
    out = data / f"sel{'-'.join(extra)}.jsonl"
    code, output = run("select", str(data / "traj.jsonl"), "--selector", "distilled", "--model", str(data / "model"), "--out", str(out),
                       "--cache-dir", str(data / "cache"), *extra)
    assert code == 0, output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    trajectories = read_trajectories(out)
    assert len(records) == 30
    for rec, t in zip(records, trajectories, strict=True):
        assert 1 <= len(rec["critical_steps"]) <= step_cap(t.n_steps, 0.3) and len(rec["step_scores"]) == t.n_steps
        flags = [m.get("weight") for m in rec["messages"] if m["role"] == "assistant"]
        assert [i for i, f in enumerate(flags) if f] == rec["critical_steps"]
    code, output = run("evaluate", "--pred", str(out), "--gold", str(data / "labels.jsonl"), "--model", str(data / "model"), "--json")
    assert code == 0, output
    assert "warning: the distilled model was trained on 30 of the 30 scored trajectories: its F1 there is in-sample" in output
    metrics = json.loads(output[output.index("{"):])
    assert metrics["f1"] > 0.4 and metrics["auroc"] > 0.7 and metrics["brier"] is not None  # scored on its own training data
    assert {"per_env", "per_category_recall", "kappa", "precision", "recall", "ece"} <= set(metrics)


def test_select_baselines(data: Path) -> None:
    for name in ("random", "all"):
        out = data / f"{name}.jsonl"
        code, output = run("select", str(data / "traj.jsonl"), "--selector", name, "--seed", "2", "--out", str(out))
        assert code == 0 and "selected" in output, output
        code, output = run("evaluate", "--pred", str(out), "--gold", str(data / "labels.jsonl"))
        assert code == 0 and "F1" in output and "per category recall" in output, output
    assert json.loads((data / "all.jsonl").read_text().splitlines()[0])["critical_steps"][:3] == [0, 1, 2]


def test_helpful_errors(data: Path, tmp_path: Path) -> None:
    code, output = run("select", str(data / "traj.jsonl"), "--selector", "random", "--threshold", "--out", str(tmp_path / "x.jsonl"))
    assert code == 1 and "distilled and cascade selectors only" in output
    code, output = run("select", str(data / "traj.jsonl"), "--selector", "random", "--mode", "count", "--out", str(tmp_path / "x.jsonl"))
    assert code == 1 and "distilled and cascade selectors only" in output
    code, output = run("select", str(data / "traj.jsonl"), "--model", str(data / "model"), "--threshold", "--mode", "ratio",
                       "--out", str(tmp_path / "x.jsonl"))
    assert code == 1 and "--threshold contradicts --mode ratio" in output
    code, output = run("select", str(data / "traj.jsonl"), "--model", str(tmp_path), "--out", str(tmp_path / "x.jsonl"))
    assert code == 1 and "not a distilled model directory" in output
    bad = tmp_path / "bad_labels.jsonl"
    bad.write_text('{"id": "nope", "n_steps": 3, "critical": [{"step": 1, "category": "critical_action"}]}\n')
    code, output = run("distill", str(data / "traj.jsonl"), "--labels", str(bad), "--out", str(tmp_path / "m"), "--features", "structural")
    assert code == 1 and "bad_labels.jsonl:1" in output and "unknown trajectory id 'nope'" in output
    code, output = run("distill", str(data / "traj.jsonl"), "--labels", str(data / "labels.jsonl"), "--out", str(tmp_path / "m"), "--features", "vibes")
    assert code == 1 and "unknown feature group" in output
    code, output = run("evaluate", "--pred", str(data / "traj.jsonl"), "--gold", str(data / "labels.jsonl"))
    assert code == 1 and "no selection" in output
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "m").exists()  # nothing half-written
