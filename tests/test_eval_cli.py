"""`critstep eval` offline, through the real CLI: the eval.json contract, scoring end to end
(through a fake OpenAI-compatible server that answers the gold or a wrong action), labels,
--limit, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.eval_support import shared_talkative_llama
from fixtures.tuner_support import toy_trajectories
from oracle_server import FakeOpenAI, Reply, oracle_server_fixture  # noqa: F401

from critstep.cli import cli
from critstep.evaluation.actions import parse_action
from critstep.formats import read_trajectories, write_trajectories
from critstep.labels import CriticalStep, TrajectoryLabels, write_labels

CONTRACT = ("action_match", "action_match_normalized", "nll", "n_steps")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return shared_talkative_llama(tmp_path_factory)


@pytest.fixture()
def data(tmp_path) -> tuple[Path, Path]:
    trajectories = toy_trajectories(4)
    for i, t in enumerate(trajectories):
        t.metadata["env"] = "alfworld" if i % 2 else "tau-airline"
    write_trajectories(tmp_path / "test.jsonl", trajectories)
    labels = [TrajectoryLabels(t.id, t.n_steps, [CriticalStep(1, "critical_action"), CriticalStep(3, "critical_action")]) for t in trajectories[:3]]
    write_labels(tmp_path / "labels.jsonl", labels)
    return tmp_path / "test.jsonl", tmp_path / "labels.jsonl"


def run(*args: str) -> object:
    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def test_offline_eval_writes_the_contract(tiny, data, tmp_path):
    trajectories, labels = data
    out = tmp_path / "eval"
    result = run(str(trajectories), "--model", str(tiny), "--out", str(out), "--labels", str(labels), "--max-new-tokens", "4", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    for figures in (report["overall"], report["per_env"]["alfworld"], report["per_env"]["tau-airline"]):
        assert all(key in figures for key in CONTRACT)
        assert all(key in figures["critical"] for key in CONTRACT)
    assert report["overall"]["n_steps"] == 16 and report["overall"]["critical"]["n_steps"] == 6  # 3 labeled x 2 critical steps
    assert report["overall"]["nll"] > 5  # a random model over a 49k vocabulary
    assert set(report["overall"]["ci95"]) == {"action_match", "action_match_normalized", "nll"}
    timing = report["timing"]
    assert timing["steps"] == 16 and timing["steps_per_s"] > 0 and 0 < timing["generation_share"] < 1
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16 and {p["critical"] for p in predictions} == {True, False, None}
    assert (out / "eval.md").read_text().startswith("# Agent evaluation")
    assert str(tmp_path) not in (out / "eval.json").read_text()  # no absolute paths in results
    # the same directory again is critstep's own evaluation: allowed; --limit evaluates fewer
    again = run(str(trajectories), "--model", str(tiny), "--out", str(out), "--limit", "1", "--max-new-tokens", "2", "--quiet")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "eval.json").read_text())["overall"]["n_steps"] == 4


def test_sharded_input_and_limit(tiny, data, tmp_path):
    """Like every command, eval reads a directory or glob of shards, in any supported format, and --limit cuts across shards."""
    from critstep.formats import read_trajectories

    trajectories = read_trajectories(data[0])
    shards = tmp_path / "shards"
    shards.mkdir()
    write_trajectories(shards / "part-0.jsonl", trajectories[:2])
    write_trajectories(shards / "part-1.jsonl.gz", trajectories[2:])
    result = run(str(shards), "--model", str(tiny), "--out", str(tmp_path / "eval"), "--limit", "3", "--max-new-tokens", "2", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["n_trajectories"] == 3 and report["overall"]["n_steps"] == 12


def gold_replies(trajectories_path: Path) -> list[str]:
    from critstep.formats import read_trajectories

    return [s.message.text() for t in read_trajectories(trajectories_path) for s in t.steps()]


def test_scoring_through_a_server_that_answers_gold_or_wrong(oracle_server, data, tmp_path):
    trajectories, labels = data
    replies = gold_replies(trajectories)
    oracle_server.queue(*[Reply(content=text) for text in replies])
    result = run(str(trajectories), "--model", "served", "--base-url", oracle_server.url, "--concurrency", "1", "--out", str(tmp_path / "gold"),
                 "--labels", str(labels), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "gold" / "eval.json").read_text())
    assert report["overall"]["action_match"] == 1.0 and report["overall"]["critical"]["action_match"] == 1.0
    assert report["overall"]["nll"] is None and report["backend"] == "openai-compatible"
    request = oracle_server.bodies()[1]  # step 1 of the first trajectory: its gold prefix, tool call included
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert request["temperature"] == 0

    wrong = ["go to the moon"] * len(replies)
    wrong[0] = replies[0].upper()  # a tau-airline reply in capitals: wrong exactly, right after normalization
    oracle_server.queue(*[Reply(content=text) for text in wrong])
    result = run(str(trajectories), "--model", "served", "--base-url", oracle_server.url, "--concurrency", "1", "--out", str(tmp_path / "wrong"), "--quiet")
    report = json.loads((tmp_path / "wrong" / "eval.json").read_text())
    assert report["overall"]["action_match"] == 0.0
    assert report["overall"]["action_match_normalized"] == pytest.approx(1 / 16)


def test_server_errors(oracle_server, data, tmp_path):
    trajectories, _ = data
    oracle_server.queue(Reply(status=400, error={"error": {"message": "prompt too long", "type": "invalid_request_error"}}))
    oracle_server.queue(*[Reply(content="look") for _ in range(15)])
    result = run(str(trajectories), "--model", "served", "--base-url", oracle_server.url, "--concurrency", "1", "--out", str(tmp_path / "e"), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["timing"]["generation_errors"] == 1 and report["overall"]["n_steps"] == 16  # the failed step counts as a miss
    # the server echoes a piece of the key, as OpenAI's "Incorrect API key provided: sk-...": no piece of 8+ characters is shown
    oracle_server.queue(Reply(status=401, error={"error": {"message": "Incorrect API key provided: sk-live-abcdefgh****", "type": "invalid_request_error"}}))
    with_credentials = oracle_server.url.replace("http://", "http://user:s3cr3t-t0ken@")  # userinfo never reaches the message
    result = CliRunner().invoke(cli, ["eval", str(trajectories), "--model", "served", "--base-url", with_credentials, "--concurrency", "1",
                                      "--out", str(tmp_path / "f")], env={"OPENAI_API_KEY": "sk-live-abcdefghijklmnop"})
    assert result.exit_code == 1 and "HTTP 401" in result.output and "Traceback" not in result.output
    assert "s3cr3t" not in result.output and "abcdefgh" not in result.output, result.output


def test_one_line_errors(tiny, data, tmp_path):
    trajectories, labels = data
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        ([str(trajectories), "--model", str(tiny), "--out", str(foreign)], "refusing"),
        (["--model", str(tiny), "--out", str(tmp_path / "o")], "TRAJECTORIES"),
        ([str(trajectories), "--model", str(tiny), "--out", str(tmp_path / "o"), "--tasks", "boil"], "--env"),
        ([str(trajectories), "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--adapter", str(tmp_path), "--out", str(tmp_path / "o")], "serve the adapter"),
        ([str(trajectories), "--model", str(tiny), "--out", str(tmp_path)], "lies in --out"),  # the input inside the output directory
        ([str(tmp_path / "none-*.jsonl"), "--model", str(tiny), "--out", str(tmp_path / "o")], "none-*.jsonl"),
    ]
    bad_labels = tmp_path / "bad.jsonl"
    bad_labels.write_text(json.dumps({"id": "toy/0", "n_steps": 9, "critical": []}) + "\n")
    cases.append(([str(trajectories), "--model", str(tiny), "--out", str(tmp_path / "o"), "--labels", str(bad_labels)], "count 9 steps"))
    other_labels = tmp_path / "other.jsonl"  # labels of other data: the critical-step figures would be silently missing
    other_labels.write_text(json.dumps({"id": "elsewhere/0", "n_steps": 2, "critical": []}) + "\n")
    cases.append(([str(trajectories), "--model", str(tiny), "--out", str(tmp_path / "o3"), "--labels", str(other_labels)], "no labeled trajectory"))
    no_steps = tmp_path / "no-steps.jsonl"  # nothing to generate: one line, not a traceback after the model loaded
    no_steps.write_text(json.dumps({"id": "q", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    cases.append(([str(no_steps), "--model", str(tiny), "--out", str(tmp_path / "o2")], "has an agent step"))
    for args, message in cases:
        result = CliRunner().invoke(cli, ["eval", *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert (foreign / "notes.txt").read_text() == "mine"


def test_gold_replies_parse_to_the_gold_actions(data):
    """The fake server's gold answers are the rendered gold turns: they must parse to the gold actions."""
    from critstep.formats import read_trajectories

    for t in read_trajectories(data[0]):
        for s in t.steps():
            assert parse_action(t.env, s.message.text()).normalized == parse_action(t.env, s.message.content, s.message.tool_calls).normalized


@pytest.mark.slow
def test_smollm2_on_real_corpus_trajectories(shared, tmp_path):
    """The built-in SmolLM2-135M on two seed-labeled trajectories of each main env, end to end."""
    from critstep.formats import read_trajectories
    from critstep.labels import read_labels

    corpus = read_trajectories(shared / "corpus.jsonl")
    labels = read_labels(shared / "seed_labels.jsonl", corpus)
    picked = [t for env in ("alfworld", "sciworld", "qa-search", "tau-airline") for t in [t for t in corpus if t.env == env and t.id in labels][:2]]
    write_trajectories(tmp_path / "test.jsonl", picked)
    out = tmp_path / "eval"
    result = run(str(tmp_path / "test.jsonl"), "--model", "smollm2-135m", "--out", str(out), "--labels", str(shared / "seed_labels.jsonl"),
                 "--steps-per-trajectory", "3", "--max-new-tokens", "48", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["overall"]["n_steps"] == 24 and set(report["per_env"]) == {"alfworld", "sciworld", "qa-search", "tau-airline"}
    assert 0.3 < report["overall"]["nll"] < 4.0  # a real instruct model on real agent turns
    assert report["timing"]["steps_per_s"] > 0


class DiesOnTheSecondTrajectory:
    """An agent that answers every step of the first trajectory, then stops the run (a crash, a Ctrl-C)."""

    def __init__(self) -> None:
        from critstep.evaluation.agent import Timing

        self.timing = Timing()

    def evaluate_trajectories(self, items):  # noqa: ANN001, ANN201
        from critstep.evaluation.agent import StepOutput

        for k, (trajectory, _) in enumerate(items):
            if k == 1:
                raise KeyboardInterrupt
            yield trajectory, [StepOutput(i, "look") for i in range(trajectory.n_steps)]


def test_offline_eval_keeps_the_generated_steps_when_the_run_stops(data, tmp_path, monkeypatch):
    import critstep.commands.eval as eval_command

    trajectories, _ = data
    monkeypatch.setattr(eval_command, "_agent", lambda *args: (DiesOnTheSecondTrajectory(), 0.0, {}))
    out = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["eval", str(trajectories), "--model", "m", "--out", str(out), "--quiet"])
    assert result.exit_code != 0 and not (out / "eval.json").exists()
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    first = read_trajectories(trajectories)[0]
    assert [(r["id"], r["step"]) for r in rows] == [(first.id, i) for i in range(first.n_steps)]


def test_a_live_run_does_not_write_into_an_offline_evaluation(tiny, tmp_path):
    """Offline and live runs write different files: one into the other's folder would leave a stale
    predictions.jsonl (or episodes.jsonl) beside the new eval.json, so it is refused before any work."""
    from critstep.io import claim_output_dir

    offline = claim_output_dir(tmp_path / "offline", "eval-offline")
    (offline / "predictions.jsonl").write_text("{}\n")
    result = CliRunner().invoke(cli, ["eval", "--env", "scienceworld", "--model", str(tiny), "--out", str(offline)])
    assert result.exit_code == 1 and "eval-offline" in result.output and "Traceback" not in result.output, result.output
    assert (offline / "predictions.jsonl").read_text() == "{}\n"
