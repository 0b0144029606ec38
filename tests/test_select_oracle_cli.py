"""`critstep select --selector cascade|oracle` against the loopback OpenAI server, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from oracle_server import FakeOpenAI

from critstep.cli import cli
from critstep.distill.features import FeatureConfig
from critstep.distill.train import train_distilled
from critstep.formats import read_trajectories, write_trajectories
from critstep.labels import read_labels
from critstep.selection import selected_steps


@pytest.fixture()
def setup(shared: Path, tmp_path: Path, monkeypatch):
    corpus = read_trajectories(shared / "corpus.jsonl")
    labels = dict(list(read_labels(shared / "seed_labels.jsonl", corpus).items())[:20])
    trajs = [t for t in corpus if t.id in labels]
    write_trajectories(tmp_path / "traj.jsonl", trajs)
    train_distilled(trajs, labels, tmp_path / "model", features=FeatureConfig(groups=("structural",)), folds=0, cache=None)
    server = FakeOpenAI().start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    yield tmp_path, server, trajs
    server.stop()


def _select(tmp_path: Path, server: FakeOpenAI, *args: str):
    return CliRunner().invoke(cli, ["select", str(tmp_path / "traj.jsonl"), "--out", str(tmp_path / "out.jsonl"),
                                    "--base-url", server.url, "--oracle-cache", str(tmp_path / "cache.jsonl"), *args])


def test_cascade_sends_only_its_budget_to_the_oracle(setup) -> None:
    tmp_path, server, trajs = setup
    result = _select(tmp_path, server, "--selector", "cascade", "--model", str(tmp_path / "model"), "--budget", "25%", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert server.count() == 5  # 25% of 20 trajectories
    assert "5 trajectories answered by the oracle" in result.output
    written = read_trajectories(tmp_path / "out.jsonl")
    assert len(written) == 20 and all(selected_steps(t) for t in written if t.n_steps)
    assert "sk-test-secret" not in result.output + (tmp_path / "out.jsonl").read_text()


def test_oracle_selector_writes_the_teachers_steps(setup) -> None:
    tmp_path, server, trajs = setup
    result = _select(tmp_path, server, "--selector", "oracle")
    assert result.exit_code == 0, result.output
    assert server.count() == len([t for t in trajs if t.n_steps])
    written = {t.id: t for t in read_trajectories(tmp_path / "out.jsonl")}
    # The fake server answers with the first `cap` steps.
    t = next(iter(written.values()))
    assert selected_steps(t)[0] == 0


def test_cascade_needs_a_budget(setup) -> None:
    tmp_path, server, _ = setup
    result = _select(tmp_path, server, "--selector", "cascade", "--model", str(tmp_path / "model"))
    assert result.exit_code == 1 and "the cascade needs --budget" in result.output
    assert server.count() == 0
