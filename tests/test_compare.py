"""`critstep compare`: the three output files, costs, collected predictions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from critstep.cli import cli
from critstep.compare.costs import load_compute_prices, per_thousand
from critstep.compare.run import read_predictions
from critstep.errors import ConfigError, InputError
from critstep.formats import write_trajectories
from critstep.io import write_jsonl
from critstep.labels import CriticalStep, TrajectoryLabels, write_labels
from critstep.selection import Selection
from critstep.trajectory import Message, Trajectory


def make_traj(i: int, n_steps: int) -> Trajectory:
    messages = [Message("system", "You are an agent."), Message("user", f"Task {i}: put the mug {i} in the sink.")]
    for k in range(n_steps):
        text = f"Thought: I should plan.\nAct: go to cabinet {k}" if k == 0 else f"Act: {'take mug' if k % 3 == 0 else 'look'} {i}-{k}"
        messages += [Message("assistant", text), Message("user", f"You see item {k * i % 7}. Nothing happens." if k % 2 else f"On the counter you see a mug {k}.")]
    return Trajectory(f"t{i}", messages, {"env": "alfworld" if i % 2 else "qa-search"})


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path, list[Trajectory]]:
    trajs = [make_traj(i, 4 + i % 6) for i in range(12)]
    labels = [TrajectoryLabels(t.id, t.n_steps, [CriticalStep(0, "plan_creation"), CriticalStep(3, "critical_action")]) for t in trajs]
    write_trajectories(tmp_path / "traj.jsonl", trajs)
    write_labels(tmp_path / "labels.jsonl", labels)
    return tmp_path / "traj.jsonl", tmp_path / "labels.jsonl", trajs


def test_compute_prices_default_and_errors(tmp_path: Path) -> None:
    prices = load_compute_prices()
    assert prices.as_of and prices.usd_per_hour["cpu"] > 0 and prices.usd_per_hour["gpu"] > prices.usd_per_hour["cpu"]
    assert prices.usd(3600, "cpu") == pytest.approx(prices.usd_per_hour["cpu"])
    assert prices.usd(1800, "cuda:0") == pytest.approx(prices.usd_per_hour["gpu"] / 2)
    assert per_thousand(0.5, 50) == pytest.approx(10.0) and per_thousand(1.0, 0) is None
    bad = tmp_path / "p.yaml"
    bad.write_text("cpu: {usd_per_hour: -1}\ngpu: {usd_per_hour: 1}\n")
    with pytest.raises(ConfigError, match="cpu.usd_per_hour"):
        load_compute_prices(bad)
    with pytest.raises(ConfigError, match="no such compute price file"):
        load_compute_prices(tmp_path / "missing.yaml")


def test_read_predictions_from_labels_and_from_selected_trajectories(dataset, tmp_path: Path) -> None:
    traj_path, labels_path, trajs = dataset
    assert read_predictions(labels_path, trajs)["t1"].steps == [0, 3]
    written = tmp_path / "selected.jsonl"
    write_trajectories(written, trajs, {t.id: Selection(t.id, [1], scores=[0.1] * t.n_steps) for t in trajs})
    preds = read_predictions(written, trajs)
    assert preds["t5"].steps == [1] and preds["t5"].scores == [0.1] * trajs[5].n_steps
    with pytest.raises(InputError, match="carries no selection") as e:
        read_predictions(traj_path, trajs)
    assert e.value.line == 1


def run_compare(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["compare", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_compare_writes_the_three_files(dataset, tmp_path: Path) -> None:
    traj_path, labels_path, trajs = dataset
    mine = tmp_path / "mine.jsonl"
    write_jsonl(mine, [{"id": t.id, "n_steps": t.n_steps, "critical": [{"step": 0, "category": "plan_creation"}]} for t in trajs])
    out = tmp_path / "cmp"
    code, output = run_compare(str(traj_path), "--labels", str(labels_path), "--out", str(out), "--selectors", "random,all",
                               "--oracle-labels", str(labels_path), "--pred", f"mine={mine}", "--teacher-agreement", "0.86")
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["selectors"]}
    assert set(rows) == {"oracle", "random", "all", "mine"}
    assert rows["oracle"]["f1"] == 1.0 and rows["oracle"]["usd_per_1k"] > 0 and rows["oracle"]["oracle_calls"] == 12
    assert rows["all"]["recall"] == 1.0 and rows["all"]["usd_per_1k"] >= 0 and rows["all"]["wall_seconds"] is not None
    assert rows["mine"]["usd_per_1k"] is None and rows["mine"]["precision"] == 1.0
    assert report["teacher_agreement"] == 0.86 and report["n_trajectories"] == 12
    md = (out / "report.md").read_text()
    assert "| oracle |" in md and "| mine |" in md and "estimated from prompt size" in md
    all_line = next(line for line in md.splitlines() if line.startswith("| all |"))
    assert "<0.001" in all_line  # microseconds of work: shown as under a tenth of a cent, not 1.8e-07
    assert (out / "cost_vs_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not in the plot (no measured cost): mine" in output


def test_compare_distilled_and_cascade_with_recorded_oracle(dataset, tmp_path: Path) -> None:
    from critstep.distill.features import FeatureConfig
    from critstep.distill.train import train_distilled

    traj_path, labels_path, trajs = dataset
    from critstep.labels import read_labels

    model = tmp_path / "model"
    train_distilled(trajs, read_labels(labels_path), model, features=FeatureConfig(groups=("structural",)), folds=0, cache=tmp_path / "fc")
    out = tmp_path / "cmp"
    code, output = run_compare(str(traj_path), "--labels", str(labels_path), "--out", str(out), "--selectors", "distilled,cascade",
                               "--model", str(model), "--oracle-labels", str(labels_path), "--budget", "0%", "--budget", "50%",
                               "--budget", "100%", "--device", "cpu")
    assert code == 0, output
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["selectors"]}
    assert {"oracle", "distilled", "cascade@0%", "cascade@50%", "cascade@100%"} == set(rows)
    assert rows["cascade@0%"]["f1"] == rows["distilled"]["f1"] and rows["cascade@0%"]["oracle_calls"] == 0
    assert rows["cascade@50%"]["oracle_calls"] == 6 and rows["cascade@100%"]["f1"] == 1.0
    assert rows["distilled"]["usd_per_1k"] < rows["cascade@50%"]["usd_per_1k"] < rows["cascade@100%"]["usd_per_1k"]


def test_compare_errors(dataset, tmp_path: Path) -> None:
    traj_path, labels_path, _ = dataset
    code, output = run_compare(str(traj_path), "--labels", str(labels_path), "--out", str(tmp_path / "o"), "--selectors", "gpt5")
    assert code == 1 and "unknown selector(s) gpt5" in output
    code, output = run_compare(str(traj_path), "--labels", str(labels_path), "--out", str(tmp_path / "o"), "--selectors", "all", "--budget", "lots")
    assert code == 1 and "cannot read budget" in output
    code, output = run_compare(str(traj_path), "--labels", str(labels_path), "--out", str(tmp_path / "o"), "--selectors", "all", "--pred", "nofile")
    assert code == 1 and "NAME=FILE" in output
    other = tmp_path / "other.jsonl"
    write_labels(other, [])
    code, output = run_compare(str(traj_path), "--labels", str(other), "--out", str(tmp_path / "o"), "--selectors", "all")
    assert code == 1 and "no labels: the file is empty" in output


def test_compare_cascade_with_the_live_loopback_oracle(dataset, tmp_path: Path, monkeypatch) -> None:
    from oracle_server import FakeOpenAI

    from critstep.distill.features import FeatureConfig
    from critstep.distill.train import train_distilled
    from critstep.labels import read_labels

    traj_path, labels_path, trajs = dataset
    train_distilled(trajs, read_labels(labels_path), tmp_path / "m", features=FeatureConfig(groups=("structural",)), folds=0, cache=None)
    server = FakeOpenAI().start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        out = tmp_path / "cmp"
        code, output = run_compare(str(traj_path), "--labels", str(labels_path), "--out", str(out), "--selectors", "cascade",
                                   "--model", str(tmp_path / "m"), "--budget", "50%", "--base-url", server.url,
                                   "--oracle-cache", str(tmp_path / "cache.jsonl"), "--device", "cpu")
        assert code == 0, output
        assert server.count() == 6
    finally:
        server.stop()
    row = json.loads((out / "report.json").read_text())["selectors"][0]
    assert row["name"] == "cascade@50%" and row["oracle_calls"] == 6 and row["oracle_share"] == 0.5
    assert "test-key" not in (out / "report.md").read_text() + (out / "report.json").read_text()
