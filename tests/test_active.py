"""Active labeling: uncertainty x diversity suggestions, ties, empty and stepless inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from critstep.distill.active import Suggestion, suggest, trajectory_embeddings, write_suggestions
from critstep.io import read_records
from critstep.trajectory import Message, Trajectory


def make_traj(tid: str, n_steps: int) -> Trajectory:
    messages = [Message("user", f"task {tid}")]
    for k in range(n_steps):
        messages += [Message("assistant", f"step {k}"), Message("user", f"obs {k}")]
    return Trajectory(tid, messages, {"env": "test"})


def scorer_of(probs: dict[str, list[float]]):
    def score(trajectories: Sequence[Trajectory]) -> dict[str, np.ndarray]:
        return {t.id: np.asarray(probs[t.id]) for t in trajectories}

    return score


def embedder_of(vectors: dict[str, list[float]]):
    def embed(trajectories: Sequence[Trajectory]) -> np.ndarray:
        return np.array([vectors[t.id] for t in trajectories], dtype=float)

    return embed


SURE = [0.99, 0.01, 0.01]  # top-1 chosen, almost certainly right
UNSURE = [0.5, 0.5, 0.5]


def test_empty_inputs() -> None:
    trajs = [make_traj("a", 3)]
    score = scorer_of({"a": UNSURE})
    assert suggest([], [], 5, score) == []
    assert suggest(trajs, ["a"], 5, score) == []
    assert suggest(trajs, [], 0, score) == []


def test_stepless_and_labeled_are_never_suggested() -> None:
    trajs = [make_traj("empty", 0), make_traj("done", 3), make_traj("open", 3)]
    out = suggest(trajs, {"done"}, 5, scorer_of({"open": UNSURE, "done": UNSURE}))
    assert [s.id for s in out] == ["open"]


def test_uncertainty_order_and_ties_without_embedder(tmp_path) -> None:
    trajs = [make_traj("s", 3), make_traj("u1", 3), make_traj("u2", 3)]
    out = suggest(trajs, [], 3, scorer_of({"s": SURE, "u1": UNSURE, "u2": UNSURE}))
    assert [s.id for s in out] == ["u1", "u2", "s"]  # equal uncertainty: input order
    tid, score, reason = out[0]
    write_suggestions(tmp_path / "s.jsonl", out)
    lines = [r.value for r in read_records(tmp_path / "s.jsonl")]
    assert [(r["rank"], r["id"]) for r in lines] == [(1, "u1"), (2, "u2"), (3, "s")] and lines[0]["reason"] == reason
    assert isinstance(out[0], Suggestion) and tid == "u1"
    assert score == out[1].score > out[2].score
    assert "expected to differ" in reason


def test_diversity_skips_near_duplicates() -> None:
    trajs = [make_traj("dup1", 3), make_traj("dup2", 3), make_traj("other", 3)]
    probs = {"dup1": UNSURE, "dup2": UNSURE, "other": [0.7, 0.3, 0.3]}
    vectors = {"dup1": [1.0, 0.0], "dup2": [0.99, 0.01], "other": [0.0, 1.0]}
    out = suggest(trajs, [], 2, scorer_of(probs), embedder_of(vectors))
    assert [s.id for s in out] == ["dup1", "other"]
    assert "cosine distance" in out[0].reason


def test_trajectories_like_labeled_ones_wait() -> None:
    trajs = [make_traj("seen", 3), make_traj("twin", 3), make_traj("new", 3)]
    probs = {"twin": UNSURE, "new": [0.7, 0.3, 0.3], "seen": UNSURE}
    vectors = {"seen": [1.0, 0.0], "twin": [1.0, 0.0], "new": [0.0, 1.0]}
    out = suggest(trajs, ["seen"], 1, scorer_of(probs), embedder_of(vectors))
    assert [s.id for s in out] == ["new"]


def test_trajectory_embeddings_mean_pool_and_stepless() -> None:
    class Extractor:
        def embeddings(self, trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
            return [np.ones((t.n_steps, 4, 2)) * (i + 1) for i, t in enumerate(trajectories)]

    v = trajectory_embeddings(Extractor(), [make_traj("a", 2), make_traj("b", 0), make_traj("c", 1)])
    assert v.shape == (3, 2)
    assert v[0].tolist() == [1.0, 1.0] and v[1].tolist() == [0.0, 0.0] and v[2].tolist() == [3.0, 3.0]


def test_distill_suggest_cli_with_a_real_model_and_minilm_embeddings(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    import critstep.selector.distilled
    from critstep.cli import cli
    from critstep.formats import write_trajectories
    from critstep.labels import CriticalStep, TrajectoryLabels, write_labels

    trajs = [make_traj(f"t{i}", 3 + i % 5) for i in range(14)]
    labeled = [TrajectoryLabels(t.id, t.n_steps, [CriticalStep(t.n_steps - 1, "critical_action")]) for t in trajs[:8]]
    write_trajectories(tmp_path / "t.jsonl", trajs)
    write_labels(tmp_path / "l.jsonl", labeled)
    args = ["distill", str(tmp_path / "t.jsonl"), "--labels", str(tmp_path / "l.jsonl"), "--out", str(tmp_path / "m"),
            "--features", "structural", "--folds", "0", "--no-cache", "--suggest", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "go together" in result.output

    def no_reload(path):  # the model just trained ranks the trajectories; it is not read back from --out
        raise AssertionError(f"reloaded {path}")

    monkeypatch.setattr(critstep.selector.distilled, "load_model", no_reload)
    result = CliRunner().invoke(cli, [*args, "--out-suggest", str(tmp_path / "next.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [r.value for r in read_records(tmp_path / "next.jsonl")]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert len({r["id"] for r in rows}) == 4 and all(r["id"] in {t.id for t in trajs[8:]} for r in rows)
    assert all(r["score"] >= 0 and "expected to differ" in r["reason"] for r in rows)
