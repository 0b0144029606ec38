"""Agent Data Protocol: read, select, write back with no key the schema forbids, round trips."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from critstep.cli import cli
from critstep.formats import read_trajectories, render_record, write_trajectories
from critstep.selection import Selection, selected_steps

# The keys each ADP model allows (schema 1.5: extra="forbid" on trajectories, actions, observations).
TRAJECTORY_KEYS = {"schema_version", "id", "content", "details", "available_apis", "available_custom_tools", "available_code_languages"}
ITEM_KEYS = {
    "text_observation": {"class_", "content", "source", "name", "tool_call_id", "reward"},
    "message_action": {"class_", "content", "description", "reasoning_content", "reward"},
    "api_action": {"class_", "function", "kwargs", "description", "tool_call_id", "reasoning_content", "reward"},
    "code_action": {"class_", "language", "content", "description", "tool_call_id", "reasoning_content", "reward"},
}

RECORD = {
    "schema_version": "1.5.0",
    "id": "alfworld_demo",
    "content": [
        {"class_": "text_observation", "content": "Interact with a household to solve a task.\n\nOk? Understood?", "name": None, "source": "user"},
        {"class_": "message_action", "content": "OK. I'll follow your instructions.", "description": None},
        {"class_": "text_observation", "content": "Your task is to: put a mug in the sink.", "name": None, "source": "user"},
        {"tool_call_id": "call_000001", "class_": "api_action", "function": "go", "kwargs": {"location": "\"countertop 1\""},
         "description": "The mug is probably on the countertop."},
        {"tool_call_id": "call_000001", "class_": "text_observation", "content": "On the countertop 1, you see a mug 1.", "name": None,
         "source": "environment"},
        {"tool_call_id": "call_000002", "class_": "code_action", "language": "python", "content": "take('mug 1')", "description": ""},
        {"tool_call_id": "call_000002", "class_": "text_observation", "content": "You pick up the mug 1.", "name": None, "source": "environment",
         "reward": 0.5},
        {"class_": "message_action", "content": "<finish> </finish>", "description": "Done.", "reasoning_content": "The mug is in hand."},
    ],
    "details": {"env": "alfworld", "success": True},
}


def test_reads_actions_as_steps_and_observations_as_context(tmp_path: Path) -> None:
    (tmp_path / "adp.json").write_text(json.dumps([RECORD], indent=2))
    t = read_trajectories(tmp_path / "adp.json")[0]
    assert t.origin.format == "adp" and t.env == "alfworld" and t.id == "alfworld_demo"
    # The acknowledgement is context; the api action, the code action and the final message are steps.
    assert t.n_steps == 3 and [m.role for m in t.messages] == ["user", "assistant", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    steps = t.steps()
    assert steps[0].text == 'The mug is probably on the countertop.\ngo({"location": "\\"countertop 1\\""})'
    assert steps[0].observation_after == "On the countertop 1, you see a mug 1."
    assert steps[1].text == "python(take('mug 1'))"


def test_round_trip_is_exact_and_selection_goes_into_details(tmp_path: Path) -> None:
    (tmp_path / "adp.jsonl").write_text(json.dumps(RECORD) + "\n")
    t = read_trajectories(tmp_path / "adp.jsonl")[0]
    assert render_record(t) == RECORD  # written back as read
    record = render_record(t, Selection(t.id, [0, 2], scores=[0.9, 0.1, 0.7]))
    assert set(record) <= TRAJECTORY_KEYS
    for item in record["content"]:
        assert set(item) <= ITEM_KEYS[item["class_"]], item
    assert record["details"] == {"env": "alfworld", "success": True, "critical_steps": [0, 2], "step_scores": [0.9, 0.1, 0.7]}
    assert {k: v for k, v in record.items() if k != "details"} == {k: v for k, v in RECORD.items() if k != "details"}
    out = tmp_path / "selected.jsonl"
    write_trajectories(out, [t], {t.id: Selection(t.id, [0, 2])})
    again = read_trajectories(out)[0]
    assert selected_steps(again) == [0, 2] and again.messages == t.messages


def test_corpus_trajectories_convert_to_adp_and_back(shared: Path, tmp_path: Path) -> None:
    """OpenAI, tool-calling and ShareGPT-derived trajectories written as ADP keep every step."""
    corpus = read_trajectories(shared / "corpus.jsonl")
    envs: dict[str, list] = {}
    for t in corpus:
        if len(envs.setdefault(t.env, [])) < 5 and all(len(m.tool_calls or []) <= 1 for m in t.messages):
            envs[t.env].append(t)
    sample = [t for ts in envs.values() for t in ts]
    out = tmp_path / "as-adp.jsonl"
    write_trajectories(out, sample, {t.id: Selection(t.id, [0]) for t in sample if t.n_steps}, format="adp")
    for line in out.read_text().splitlines():
        record = json.loads(line)
        assert set(record) <= TRAJECTORY_KEYS and all(set(i) <= ITEM_KEYS[i["class_"]] for i in record["content"])
    back = read_trajectories(out)
    assert [t.id for t in back] == [t.id for t in sample]
    for a, b in zip(sample, back, strict=True):
        assert [step_view(m) for m in a.messages if m.is_step] == [step_view(m) for m in b.messages if m.is_step]
        assert selected_steps(b) == ([0] if a.n_steps else None)


def step_view(m) -> tuple:
    """What a step says: its text and its calls (arguments as parsed JSON: ADP keeps kwargs as an object)."""
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m.tool_calls or []]
    return m.content, calls


def test_select_writes_adp_in_kind(tmp_path: Path) -> None:
    (tmp_path / "adp.jsonl").write_text(json.dumps(RECORD) + "\n" + json.dumps({**RECORD, "id": "second"}) + "\n")
    result = CliRunner().invoke(cli, ["select", str(tmp_path / "adp.jsonl"), "--selector", "random", "--out", str(tmp_path / "sel.jsonl")])
    assert result.exit_code == 0, result.output
    for line in (tmp_path / "sel.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert set(record) <= TRAJECTORY_KEYS and len(record["details"]["critical_steps"]) == 1
        assert record["content"] == RECORD["content"]
