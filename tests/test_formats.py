"""Readers and writers: exact counts on real data, round trips, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critstep.errors import InputError
from critstep.formats import read_trajectories, write_trajectories
from critstep.selection import Selection, selected_steps

# (file, format, trajectories, steps): counts fixed by reading the files by hand (see raw/ README).
RAW_COUNTS = [
    ("agentinstruct_alfworld.sample.json", "sharegpt", 5, 84),
    ("agentinstruct_db.sample.json", "sharegpt", 5, 5),
    ("agentinstruct_kg.sample.json", "sharegpt", 5, 75),
    ("agentinstruct_os.sample.json", "sharegpt", 5, 34),
    ("agentinstruct_webshop.sample.json", "sharegpt", 5, 17),
    ("eto_sharegpt.sample.json", "sharegpt", 3, 12),
    ("fireact_multitask_multimethod.head40.jsonl", "openai", 40, 82),
    ("knowagent_alfworld_D0.head20.jsonl", "react", 20, 393),
    ("react_alfworld_3prompts.json", "react", 36, 478),
    ("swiftsage_sciworld_oracle.task1.first3.json", "sciworld", 3, 229),
    ("tau_bench_gpt-4o-airline.first12.json", "openai", 12, 177),
]


def test_corpus_counts(shared: Path) -> None:
    trajectories = read_trajectories(shared / "corpus.jsonl")
    assert len(trajectories) == 1277
    assert sum(t.n_steps for t in trajectories) == 19505


@pytest.mark.parametrize(("name", "fmt", "n_traj", "n_steps"), RAW_COUNTS)
def test_raw_counts(shared: Path, name: str, fmt: str, n_traj: int, n_steps: int) -> None:
    trajectories = read_trajectories(shared / "raw" / name)
    assert {t.origin.format for t in trajectories} == {fmt}
    assert (len(trajectories), sum(t.n_steps for t in trajectories)) == (n_traj, n_steps)


def test_every_raw_file_is_covered(shared: Path) -> None:
    assert sorted(p.name for p in (shared / "raw").iterdir()) == sorted(r[0] for r in RAW_COUNTS)


def test_text_logs_agree_with_corpus_normalization(shared: Path) -> None:
    """ReAct prompts are in the corpus too: the text-log reader must find the same steps."""
    corpus = {t.id: t for t in read_trajectories(shared / "corpus.jsonl")}
    for t in read_trajectories(shared / "raw" / "react_alfworld_3prompts.json"):
        twin = corpus.get(f"react-alfworld/{t.id}")
        if twin is not None:
            assert [m.content for m in t.messages if m.is_step] == [m.content for m in twin.messages if m.is_step]


def test_acknowledgement_is_context_not_step(shared: Path) -> None:
    t = read_trajectories(shared / "raw" / "eto_sharegpt.sample.json")[0]
    assert t.messages[1].role == "assistant" and t.messages[1].content == "OK"
    assert not t.messages[1].is_step
    assert t.step_message_indices[0] == 3
    # AgentInstruct os samples open with a worked example, not an acknowledgement: it is a step.
    os_t = read_trajectories(shared / "raw" / "agentinstruct_os.sample.json")[0]
    assert os_t.messages[1].is_step


def test_steps_know_their_observations(shared: Path) -> None:
    t = read_trajectories(shared / "raw" / "tau_bench_gpt-4o-airline.first12.json")[0]
    steps = t.steps()
    tool_step = next(s for s in steps if s.message.tool_calls)
    assert tool_step.observation_after is not None
    nxt = t.messages[tool_step.message_index + 1]
    assert nxt.role == "tool" and nxt.content in tool_step.observation_after
    assert steps[0].observation_before is not None and steps[0].observation_before.startswith("Hi!")


def _round_trip(path: Path, tmp_path: Path, fmt_expected: str) -> None:
    original = read_trajectories(path)
    selections = {t.id: Selection(t.id, list(range(0, t.n_steps, 3))) for t in original}
    out = tmp_path / "selected.jsonl"
    write_trajectories(out, original, selections)
    back = read_trajectories(out)
    assert [t.id for t in back] == [t.id for t in original]
    for a, b in zip(original, back, strict=True):
        assert b.origin.format == fmt_expected
        assert [(m.role, m.text()) for m in a.messages] == [(m.role, m.text()) for m in b.messages]
        assert selected_steps(b) == selections[a.id].steps
        flagged = [k for k, i in enumerate(b.step_message_indices) if b.messages[i].train]
        assert flagged == selections[a.id].steps
    # Writing what was read gives the same file: the round trip is a fixed point.
    again = tmp_path / "again.jsonl"
    write_trajectories(again, back)
    assert again.read_text() == out.read_text()


def test_round_trip_openai(shared: Path, tmp_path: Path) -> None:
    _round_trip(shared / "raw" / "tau_bench_gpt-4o-airline.first12.json", tmp_path, "openai")
    line = json.loads((tmp_path / "selected.jsonl").read_text().splitlines()[0])
    assert "traj" in line and line["critical_steps"] == [0, 3, 6, 9, 12][: len(line["critical_steps"])]
    assert all(m.get("weight") in (0, 1) for m in line["traj"] if m["role"] == "assistant")


def test_round_trip_sharegpt(shared: Path, tmp_path: Path) -> None:
    _round_trip(shared / "raw" / "eto_sharegpt.sample.json", tmp_path, "sharegpt")
    line = json.loads((tmp_path / "selected.jsonl").read_text().splitlines()[0])
    gpt = [t for t in line["conversations"] if t["from"] == "gpt"]
    assert gpt[0]["value"] == "OK" and gpt[0]["loss"] is False  # the acknowledgement never trains
    assert gpt[1]["loss"] is True


def test_round_trip_agentinstruct_keeps_role_content(shared: Path, tmp_path: Path) -> None:
    _round_trip(shared / "raw" / "agentinstruct_kg.sample.json", tmp_path, "sharegpt")
    line = json.loads((tmp_path / "selected.jsonl").read_text().splitlines()[0])
    assert {"role", "content"} <= set(line["conversations"][0])


def test_text_logs_are_written_as_openai(shared: Path, tmp_path: Path) -> None:
    _round_trip(shared / "raw" / "react_alfworld_3prompts.json", tmp_path, "openai")


def test_agentgym_loss_flags_are_read(tmp_path: Path) -> None:
    p = tmp_path / "gym.json"
    conv = [
        {"from": "human", "value": "instruction", "loss": False},
        {"from": "gpt", "value": "OK", "loss": False},
        {"from": "human", "value": "task"},
        {"from": "gpt", "value": "act 1", "loss": True},
        {"from": "human", "value": "obs"},
        {"from": "gpt", "value": "act 2", "loss": False},
    ]
    p.write_text(json.dumps([{"id": "g", "conversations": conv}]))
    (t,) = read_trajectories(p)
    assert t.n_steps == 2 and selected_steps(t) == [0]


BAD_INPUTS = [
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}]}\n{"id": "b", "messages": [\n', 2, "malformed JSON"),
    ('{"id": "a", "messages": [{"role": "wizard", "content": "x"}]}\n', 1, "unknown role 'wizard'"),
    ('\n{"id": "a", "messages": [{"role": "assistant", "content": null}]}\n', 2, "neither content nor tool_calls"),
    ('{"id": "a", "messages": [{"role": "assistant", "content": "x"}], "critical_steps": [3]}\n', 1, "out of range"),
    ('{"id": "a", "text": "no messages here"}\n', 1, "unknown format"),
    ('{"id": "a", "conversations": [{"from": "robot", "value": "x"}]}\n', 1, "unknown role 'robot'"),
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}]}\n{"id": "a", "messages": [{"role": "user", "content": "y"}]}\n', 2, "duplicate trajectory id"),
]


@pytest.mark.parametrize(("text", "line", "needle"), BAD_INPUTS)
def test_bad_input_names_file_and_line(tmp_path: Path, text: str, line: int, needle: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        read_trajectories(p)
    assert e.value.line == line
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert needle in str(e.value)


def test_json_array_errors_report_the_element_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('[\n  {"id": "a", "messages": [{"role": "user", "content": "x"}]},\n  {"id": "b", "messages": [{"role": "bot", "content": "y"}]}\n]\n')
    with pytest.raises(InputError, match=r"bad.json:3: message 0 has unknown role 'bot'"):
        read_trajectories(p)


def test_unknown_format_option(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text("")
    with pytest.raises(InputError, match="unknown format 'yaml'"):
        read_trajectories(p, format="yaml")


def test_collecting_errors_keeps_the_good_records(tmp_path: Path) -> None:
    p = tmp_path / "mixed.jsonl"
    p.write_text(
        '{"id": "a", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
        '{"id": "b", "messages": [{"role": "alien", "content": "x"}]}\n'
        '{"id": "c", "messages": [{"role": "assistant", "content": "z"}]}\n'
    )
    problems: list[InputError] = []
    good = read_trajectories(p, on_error=problems.append)
    assert [t.id for t in good] == ["a", "c"]
    assert [e.line for e in problems] == [2]
