"""`critstep label` end to end: the real CLI and the real openai client against the fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from oracle_server import FakeOpenAI, Reply, oracle_server_fixture, sample_trajectories  # noqa: F401

from critstep.cli import cli
from critstep.labels import read_labels

SECRET = "sk-test-SECRET-0123456789abcdef"


def corpus(tmp_path: Path, n: int = 4, steps: int = 10) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_trajectories(n, steps)))
    return path


def label(server: FakeOpenAI, tmp_path: Path, *extra: str, env: dict[str, str] | None = None, path: Path | None = None):
    args = ["label", str(path or corpus(tmp_path)), "--out", str(tmp_path / "labels.jsonl"), "--base-url", server.url,
            "--cache", str(tmp_path / "cache.jsonl"), "--backoff", "0.001", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": SECRET, **(env or {})}, catch_exceptions=False)


def all_text(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())


def test_clean_run_writes_labels_with_usage_and_a_summary(oracle_server, tmp_path):
    result = label(oracle_server, tmp_path)
    assert result.exit_code == 0, result.output
    assert "labeled 4, failed 0, unlabeled 0; 4 API calls, 0 cache hits" in result.output and "cost $" in result.output
    labels = read_labels(tmp_path / "labels.jsonl")
    assert sorted(labels) == [f"traj-{i}" for i in range(4)] and labels["traj-0"].steps == [0, 1, 2]
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"id", "n_steps", "plan", "critical", "usage", "oracle"} and rows[0]["usage"]["calls"] == 1
    assert rows[0]["oracle"] == {"model": "gpt-4o", "endpoint": oracle_server.url}  # the served model, found at /v1/models
    again = label(oracle_server, tmp_path)
    assert "0 API calls, 4 cache hits" in again.output and oracle_server.count() == 4


def test_failed_trajectories_are_recorded_with_their_reason(oracle_server, tmp_path):
    bad = Reply(content="no JSON here")
    oracle_server.queue(bad, bad)
    result = label(oracle_server, tmp_path, "--concurrency", "1", "--response-format", "json_schema")
    assert result.exit_code == 0 and "failed 1" in result.output
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r.get("status") == "failed"]
    assert len(failed) == 1 and "no valid JSON" in failed[0]["error"] and failed[0]["critical"] == []
    assert len(read_labels(tmp_path / "labels.jsonl")) == 3


def test_api_key_never_reaches_output_or_files(oracle_server, tmp_path):
    label(oracle_server, tmp_path)
    assert all(h.get("authorization") == f"Bearer {SECRET}" for _, _, _, h in oracle_server.requests)  # the key was used
    oracle_server.queue(Reply(status=401, error={"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request_error", "code": "invalid_api_key"}}))
    result = label(oracle_server, tmp_path, "--no-cache")
    assert result.exit_code == 1 and "rejected" in result.output and "***" in result.output
    batch = label(oracle_server, tmp_path, "--batch", "--poll-interval", "0", "--no-cache")
    assert batch.exit_code == 0, batch.output
    for text in (result.output, batch.output, all_text(tmp_path)):
        assert SECRET not in text


def test_no_key_for_openai_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["label", str(corpus(tmp_path)), "--out", str(tmp_path / "o.jsonl"), "--no-cache"], env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    assert result.exit_code == 1 and "no API key: set OPENAI_API_KEY" in result.output


def test_dry_run_is_offline(oracle_server, tmp_path):
    result = CliRunner().invoke(cli, ["label", str(corpus(tmp_path)), "--dry-run", "--cache", str(tmp_path / "c.jsonl")], env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert "4 to send" in result.output and "estimated cost with gpt-4o: $" in result.output and "Batch API" in result.output
    assert oracle_server.requests == []


def test_budget_stop(oracle_server, tmp_path):
    result = label(oracle_server, tmp_path, "--max-cost", "0.012", "--concurrency", "1")
    assert result.exit_code == 0
    assert "stopped early: budget of $0.01" in result.output and "left unlabeled" in result.output
    n = len(read_labels(tmp_path / "labels.jsonl"))
    assert 0 < n < 4 and oracle_server.count() == n


def test_batch_flow(oracle_server, tmp_path):
    result = label(oracle_server, tmp_path, "--batch", "--poll-interval", "0")
    assert result.exit_code == 0, result.output
    assert "submitted batch batch_1" in result.output and len(read_labels(tmp_path / "labels.jsonl")) == 4
    assert oracle_server.count() == 0 and oracle_server.count("/v1/batches") == 1
    assert not (tmp_path / "labels.jsonl.batch.json").exists()


def test_corrupt_last_cache_line_is_skipped_with_a_warning(oracle_server, tmp_path):
    label(oracle_server, tmp_path)
    with (tmp_path / "cache.jsonl").open("a") as f:
        f.write('{"key": "torn')
    result = label(oracle_server, tmp_path)
    assert result.exit_code == 0 and "unreadable cache line" in result.output and "4 cache hits" in result.output


def test_resume_after_kill_9_pays_nothing_twice(oracle_server, tmp_path):
    """Kill the CLI mid-run; the re-run sends only what was never answered (at most the one in flight)."""
    oracle_server.delay = 0.15
    path = corpus(tmp_path, n=8, steps=6)
    out, cache = tmp_path / "labels.jsonl", tmp_path / "cache.jsonl"
    args = [sys.executable, "-c", "from critstep.cli import cli; cli()", "label", str(path), "--out", str(out), "--base-url", oracle_server.url,
            "--cache", str(cache), "--concurrency", "1"]  # fmt: skip
    proc = subprocess.Popen(args, env={**os.environ, "OPENAI_API_KEY": SECRET}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 3):
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    answered = len(cache.read_text().splitlines())
    assert 3 <= answered < 8 and not out.exists()
    oracle_server.delay = 0.0
    result = label(oracle_server, tmp_path, "--concurrency", "1", path=path)
    assert result.exit_code == 0, result.output
    assert f"labeled 8, failed 0, unlabeled 0; {8 - answered} API calls, {answered} cache hits" in result.output
    assert oracle_server.count() <= 8 + 1  # at most the one request in flight at the kill is paid twice
    assert len(read_labels(out)) == 8


def test_dry_run_on_the_shared_corpus(shared):
    result = CliRunner().invoke(cli, ["label", str(shared / "corpus.jsonl"), "--dry-run", "--no-cache"], env={"OPENAI_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert "1,277 trajectories: 1,272 to send, 0 cached, 5 without steps" in result.output
