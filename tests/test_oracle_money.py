"""Nothing paid twice, nothing paid unseen: budgets against bad usage, shared caches, Ctrl-C, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from oracle_server import FakeOpenAI, Reply, oracle_server_fixture, sample_trajectories  # noqa: F401

from critstep.cli import cli
from critstep.errors import ConfigError
from critstep.labels import read_labels
from critstep.selector.oracle import OracleConfig, OracleLabeler
from critstep.selector.oracle.client import redact
from critstep.trajectory import Message, Trajectory

KEY = "sk-proj-SECRETabcdefghij0123456789"
REPO = Path(__file__).resolve().parents[1]


def trajectories(n: int, steps: int = 6) -> list[Trajectory]:
    return [Trajectory(r["id"], [Message(m["role"], m["content"]) for m in r["messages"]], {"env": r["env"]}) for r in sample_trajectories(n, steps)]


def labeler(server: FakeOpenAI, tmp_path: Path, **options) -> OracleLabeler:
    defaults = {"base_url": server.url, "api_key": KEY, "cache_path": tmp_path / "cache.jsonl", "backoff_base": 0.001, "model": "gpt-4o"}
    return OracleLabeler(OracleConfig(**{**defaults, **options}))


def corpus(tmp_path: Path, n: int, steps: int = 6) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_trajectories(n, steps)))
    return path


# --- the budget does not trust the server's usage ------------------------------------------------


@pytest.mark.parametrize("usage", [None, {"prompt_tokens": -5000, "completion_tokens": -100}, {"prompt_tokens": "many"}])
def test_missing_or_negative_usage_is_estimated_not_free(oracle_server, tmp_path, usage):
    oracle_server.queue(Reply(usage=usage))
    run = labeler(oracle_server, tmp_path, concurrency=1).label(trajectories(1))
    lab = run.labels["traj-0"]
    assert lab.extra["usage"]["estimated"] is True and lab.extra["usage"]["prompt_tokens"] > 100
    assert run.cost_usd > 0 and run.estimated_usage == 1 and "without usable token counts" in run.summary()


def test_bad_usage_cannot_stretch_a_budget(oracle_server, tmp_path):
    """A server reporting no usage is charged its estimate: the budget still stops the run."""
    oracle_server.queue(*[Reply(usage=None)] * 10)
    lab = labeler(oracle_server, tmp_path, concurrency=1)
    trajs = trajectories(10)
    one = lab._job(trajs[0]).reserve
    run = lab.label(trajs, max_cost=one * 3.5)
    assert 0 < len(run.labels) < 10 and run.cost_usd <= one * 3.5
    assert f"spent ${run.cost_usd:,.4f}" in run.stopped  # the stop message reports what was actually spent


def test_an_unpriced_model_with_a_budget_is_refused(oracle_server, tmp_path):
    path = corpus(tmp_path, 2)
    args = ["label", str(path), "--out", str(tmp_path / "l.jsonl"), "--base-url", oracle_server.url, "--model", "qwen2.5:7b",
            "--max-cost", "1", "--cache", str(tmp_path / "c.jsonl")]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 1 and "cannot be enforced: no price for 'qwen2.5:7b'" in result.output
    assert oracle_server.count() == 0 and not (tmp_path / "l.jsonl").exists()
    with pytest.raises(ConfigError, match="cannot be enforced"):
        labeler(oracle_server, tmp_path, model="qwen2.5:7b").label(trajectories(1), max_cost=5.0)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_budget_that_is_not_a_finite_amount_is_refused(oracle_server, tmp_path, value):
    args = ["label", str(corpus(tmp_path, 2)), "--out", str(tmp_path / "l.jsonl"), "--base-url", oracle_server.url, "--max-cost", value]
    result = CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 1 and "max_cost must be a finite number" in result.output and oracle_server.count() == 0


# --- the cache: endpoint in the key, shared by processes -----------------------------------------


def test_answers_from_a_local_gpt_4o_are_not_served_as_openais(oracle_server, tmp_path):
    labeler(oracle_server, tmp_path).label(trajectories(2))
    other = FakeOpenAI().start()  # another server, same model name
    try:
        run = labeler(other, tmp_path).label(trajectories(2))
        assert run.cache_hits == 0 and other.count() == 2
        rows = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
        assert {r["endpoint"] for r in rows} == {oracle_server.url, other.url} and all(r["model"] == "gpt-4o" for r in rows)
    finally:
        other.stop()


def test_two_processes_sharing_a_cache_pay_once(oracle_server, tmp_path):
    oracle_server.delay = 0.3
    path = corpus(tmp_path, n=6, steps=4)
    cache = tmp_path / "cache.jsonl"

    def start(out: str) -> subprocess.Popen:
        args = [sys.executable, "-c", "from critstep.cli import cli; cli()", "label", str(path), "--out", str(tmp_path / out),
                "--base-url", oracle_server.url, "--cache", str(cache), "--concurrency", "2"]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first, second = start("a.jsonl"), start("b.jsonl")
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert oracle_server.count() == 6  # not 12: each trajectory bought once
    assert read_labels(tmp_path / "a.jsonl").keys() == read_labels(tmp_path / "b.jsonl").keys() == {f"traj-{i}" for i in range(6)}
    assert len(cache.read_text().splitlines()) == 6


# --- Ctrl-C ------------------------------------------------------------------------------------------


def test_ctrl_c_cancels_in_flight_streams_and_keeps_what_was_answered(oracle_server, tmp_path):
    oracle_server.chunk_delay = 0.4  # a slow local server: each answer streams for ~3 s
    path = corpus(tmp_path, n=6, steps=4)
    out, cache = tmp_path / "labels.jsonl", tmp_path / "cache.jsonl"
    args = [sys.executable, "-c", "from critstep.cli import cli; cli()", "label", str(path), "--out", str(out), "--base-url", oracle_server.url,
            "--cache", str(cache), "--concurrency", "2"]  # fmt: skip
    proc = subprocess.Popen(args, env={**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # Ctrl-C reaches it even when the suite runs as a background job (which starts with SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cache.exists() and cache.read_text().strip()):
        time.sleep(0.05)
    time.sleep(0.5)  # the next answers are mid-stream
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert time.monotonic() - sent < 10, output  # not left waiting for abandoned answers
    assert proc.returncode == 130 and "interrupted" in output, output
    answered = len(cache.read_text().splitlines())
    assert 1 <= answered < 6 and len(read_labels(out)) == answered  # what was bought is written
    time.sleep(1.5)
    assert oracle_server.streams_closed_early >= 1  # the abandoned answers' connections were closed


# --- secrets --------------------------------------------------------------------------------------


def test_redaction_covers_any_eight_character_piece_of_the_key():
    assert redact(f"key {KEY} used", KEY) == "key *** used"
    assert redact("Incorrect API key provided: sk-proj-SECRETab****", KEY) == "Incorrect API key provided: *******"
    assert redact("tail ghij0123456789 here", KEY) == "tail *** here"
    assert redact("short sk-proj and SECRET stay", KEY) == "short sk-proj and SECRET stay"  # under 8 characters: not the key
    assert redact("nothing here", "abc") == "nothing here"


def test_a_server_echoing_part_of_the_key_does_not_put_it_in_the_labels(oracle_server, tmp_path):
    oracle_server.answerer = lambda body: {"plan": f"Use the key {KEY[:14]} to open the door.", "critical": [{"step": 1, "category": "critical_action", "reason": f"auth {KEY[5:20]}"}]}
    oracle_server.queue(Reply(status=400, error={"error": {"message": f"bad key prefix {KEY[:10]}", "type": "invalid_request_error"}}))
    args = ["label", str(corpus(tmp_path, 3)), "--out", str(tmp_path / "l.jsonl"), "--base-url", oracle_server.url,
            "--cache", str(tmp_path / "c.jsonl"), "--concurrency", "1"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    written = (tmp_path / "l.jsonl").read_text() + (tmp_path / "c.jsonl").read_text() + result.output
    assert "failed 1" in result.output and "bad key prefix ***" in written and "Use the key *** to open" in written
    assert not any(KEY[i : i + 8] in written for i in range(len(KEY) - 7))
