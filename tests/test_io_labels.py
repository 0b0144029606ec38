"""Atomic writes and label files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critstep.errors import InputError
from critstep.formats import read_trajectories
from critstep.io import atomic_write, read_records
from critstep.labels import read_labels, write_labels
from critstep.selection import step_cap


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


def test_records_from_object_array_and_jsonl_carry_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('[\n{"a": 1},\n\n{"b": 2}\n]')
    assert [(r.value, r.line) for r in read_records(p)] == [({"a": 1}, 2), ({"b": 2}, 4)]
    q = tmp_path / "b.jsonl"
    q.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert [r.line for r in read_records(q)] == [1, 3]


@pytest.mark.parametrize(("n", "ratio", "cap"), [(0, 0.3, 0), (1, 0.3, 1), (3, 0.3, 1), (10, 0.3, 3), (17, 0.3, 5), (20, 0.3, 6), (5, 1.0, 5)])
def test_step_cap(n: int, ratio: float, cap: int) -> None:
    assert step_cap(n, ratio) == cap


def test_seed_labels_read_and_round_trip(shared: Path, tmp_path: Path) -> None:
    corpus = read_trajectories(shared / "corpus.jsonl")
    labels = read_labels(shared / "seed_labels.jsonl", corpus)
    assert len(labels) == 306  # the shared README's counts: 5,509 steps, 976 critical
    assert sum(len(v.critical) for v in labels.values()) == 976
    assert sum(v.n_steps for v in labels.values()) == 5509
    second = read_labels(shared / "seed_labels_second.jsonl", corpus)
    assert len(second) == 44 and set(second) <= set(labels)
    out = tmp_path / "labels.jsonl"
    write_labels(out, labels.values())
    assert read_labels(out) == labels


def _labels_file(tmp_path: Path, record: dict) -> Path:
    p = tmp_path / "labels.jsonl"
    p.write_text('{"id": "ok", "n_steps": 2, "critical": []}\n' + json.dumps(record) + "\n")
    return p


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"id": "x", "n_steps": 3, "critical": [{"step": 3, "category": "critical_action"}]}, "step 3 out of range for 3 steps"),
        ({"id": "x", "n_steps": 3, "critical": [{"step": -1, "category": "critical_action"}]}, "out of range"),
        ({"id": "x", "n_steps": 3, "critical": [{"step": 1, "category": "x"}, {"step": 1, "category": "x"}]}, "unknown category"),
        ({"id": "x", "n_steps": 3, "critical": [{"step": 1, "category": "plan_creation"}] * 2}, "listed twice"),
        ({"n_steps": 3, "critical": []}, "no 'id'"),
    ],
)
def test_bad_labels_name_file_and_line(tmp_path: Path, record: dict, needle: str) -> None:
    p = _labels_file(tmp_path, record)
    with pytest.raises(InputError, match=needle) as e:
        read_labels(p)
    assert e.value.line == 2 and str(e.value).startswith(f"{p}:2:")


def test_labels_for_unknown_trajectory(tmp_path: Path) -> None:
    traj = tmp_path / "t.jsonl"
    traj.write_text('{"id": "ok", "messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    p = _labels_file(tmp_path, {"id": "ghost", "n_steps": 1, "critical": []})
    with pytest.raises(InputError, match="unknown trajectory id 'ghost'"):
        read_labels(p, read_trajectories(traj))
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "ok", "n_steps": 5, "critical": []}\n')
    with pytest.raises(InputError, match="n_steps 5 but trajectory 'ok' has 2 steps"):
        read_labels(q, read_trajectories(traj))


def test_failed_labels_are_skipped_unless_asked(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    p.write_text('{"id": "a", "n_steps": 2, "critical": []}\n{"id": "b", "n_steps": 2, "critical": [], "status": "failed", "error": "refusal"}\n')
    assert list(read_labels(p)) == ["a"]
    assert read_labels(p, include_failed=True)["b"].error == "refusal"


def test_atomic_write_gives_ordinary_permissions(tmp_path: Path) -> None:
    import os

    target = tmp_path / "report.json"
    with atomic_write(target) as f:
        f.write("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
