"""The oracle against the quirks of real open-model servers, mimicked by the loopback fake.

Each real behaviour (llama-cpp-python's 500 on json_schema, transformers serve ignoring the format
and pinning its model, llama-server's strict schemas, slow servers, dead servers, a wrong base URL)
has a test here that fails without the code that handles it. The real servers themselves run in
the slow suite (test_oracle_real_servers.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from oracle_server import FakeOpenAI, Reply, sample_trajectories

from critstep.cli import cli
from critstep.labels import read_labels
from critstep.selector.oracle import OracleConfig, OracleLabeler
from critstep.selector.oracle.client import ChatClient
from critstep.trajectory import Message, Trajectory

KEY = "sk-proj-SECRETabcdefghij0123456789"


@pytest.fixture
def fake(request):
    """`FakeOpenAI.like(param)` (a plain fake without a param), started, stopped after the test."""
    server = (FakeOpenAI.like(request.param) if getattr(request, "param", None) else FakeOpenAI()).start()
    yield server
    server.stop()


def trajectories(n: int, steps: int = 6) -> list[Trajectory]:
    return [Trajectory(r["id"], [Message(m["role"], m["content"]) for m in r["messages"]], {"env": r["env"]}) for r in sample_trajectories(n, steps)]


def labeler(server: FakeOpenAI, tmp_path: Path, **options) -> OracleLabeler:
    defaults = {"base_url": server.url, "api_key": KEY, "cache_path": tmp_path / "cache.jsonl", "backoff_base": 0.001, "timeout": 5.0}
    return OracleLabeler(OracleConfig(**{**defaults, **options}))


def corpus(tmp_path: Path, n: int = 4, steps: int = 6) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_trajectories(n, steps)))
    return path


def cli_label(server: FakeOpenAI, tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    args = ["label", str(corpus(tmp_path)), "--out", str(tmp_path / "labels.jsonl"), "--base-url", server.url,
            "--cache", str(tmp_path / "cache.jsonl"), "--backoff", "0.001", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": KEY, **(env or {})})


def formats(server: FakeOpenAI) -> list[str | None]:
    return [(b.get("response_format") or {}).get("type") for b in server.bodies()]


# --- the three servers tried in the issue, with no flags but --base-url ------------------------


@pytest.mark.parametrize("fake", ["llama-cpp-python"], indirect=True)
def test_llama_cpp_python_500_on_json_schema_means_unsupported_not_retry(fake, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="critstep.oracle"):
        run = labeler(fake, tmp_path, concurrency=4).label(trajectories(5))
    assert len(run.labels) == 5 and not run.failed
    # One probe in json_schema (a 500 naming response_format, not retried), then JSON mode with the schema
    # (a streamed answer the server ended for a waiting request is sent again, in the same format).
    sent = formats(fake)
    assert sent[0] == "json_schema" and sent[1:] == ["json_object"] * (5 + fake.interrupted)
    body = fake.bodies()[1]
    schema = body["response_format"]["schema"]
    assert schema["properties"]["critical"]["maxItems"] == 1 and schema["properties"]["critical"]["items"]["properties"]["step"]["enum"] == list(range(6))
    assert "rejects response_format json_schema" in caplog.text and "validation error" in caplog.text


@pytest.mark.parametrize("fake", ["transformers-serve"], indirect=True)
def test_transformers_serve_ignored_format_falls_back_and_its_pinned_model_is_found(fake, tmp_path):
    result = cli_label(fake, tmp_path, "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert "labeled 4, failed 0" in result.output and "serves /models/smollm2" in result.output
    # The 200 answers that ignored json_schema, then json_object, were prose around JSON: used, and the
    # format fell back to plain text; never more than one probe in flight.
    assert formats(fake) == ["json_schema", "json_object", None, None]
    assert all(b["model"] == "/models/smollm2" for b in fake.bodies())
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert rows[0]["oracle"] == {"model": "/models/smollm2", "endpoint": fake.url}


@pytest.mark.parametrize("fake", ["transformers-serve"], indirect=True)
def test_a_pinned_model_stops_the_run_at_once_with_the_servers_words(fake, tmp_path):
    result = cli_label(fake, tmp_path, "--model", "gpt-4o")
    assert result.exit_code == 1 and fake.count() == 1
    assert "Server is pinned to '/models/smollm2'; requested 'gpt-4o'" in result.output and "--model" in result.output
    assert "Traceback" not in result.output and "not OpenAI's API" in result.output  # the gpt-4o warning


@pytest.mark.parametrize("fake", ["llama-server"], indirect=True)
def test_llama_server_gets_a_strict_schema_built_per_request_and_a_stream(fake, tmp_path):
    run = labeler(fake, tmp_path).label(trajectories(2, steps=10))
    assert len(run.labels) == 2 and run.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    body = fake.bodies()[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    schema = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["json_schema"]["strict"] is True
    critical, plan = schema["properties"]["critical"], schema["properties"]["plan"]
    assert critical["maxItems"] == 3 and critical["items"]["properties"]["step"]["enum"] == list(range(10))
    assert plan["maxLength"] == 300 and critical["items"]["properties"]["reason"]["maxLength"] == 150
    assert run.labels["traj-0"].extra["usage"]["prompt_tokens"] > 0  # usage read from the stream's last chunk


def test_openai_gets_only_the_keywords_strict_mode_accepts_and_no_stream():
    client = ChatClient("gpt-4o", "k")
    body = client.body(10, 3, [{"role": "user", "content": "x"}], 100)
    schema = body["response_format"]["json_schema"]["schema"]
    text = json.dumps(schema)
    assert client.stream is False and "maxLength" not in text and "minLength" not in text
    assert schema["properties"]["critical"]["maxItems"] == 3 and schema["properties"]["critical"]["items"]["properties"]["step"]["enum"] == list(range(10))
    fine_tuned = ChatClient("ft:gpt-4o-2024-08-06:org::abc", "k").body(10, 3, [{"role": "user", "content": "x"}], 100)
    assert "maxItems" not in json.dumps(fine_tuned)  # fine-tuned models take no size keywords
    assert client.body(10, 3, [], 100, mode="json_object")["response_format"] == {"type": "json_object"}  # no unknown fields


def test_the_learned_format_is_remembered_for_the_endpoint(tmp_path):
    # streams cut for a waiting request are resent (tested apart): here they would add requests by timing
    server = FakeOpenAI.like("llama-cpp-python", interrupt_requests=False).start()
    try:
        labeler(server, tmp_path).label(trajectories(1))
        labeler(server, tmp_path / "other").label(trajectories(2))  # a second run in the same process
        assert formats(server) == ["json_schema", "json_object", "json_object", "json_object"]
    finally:
        server.stop()


def test_a_forced_format_the_server_refuses_stops_with_its_message(tmp_path):
    server = FakeOpenAI(json_object=False).start()
    try:
        result = cli_label(server, tmp_path, "--response-format", "json_object")
        assert result.exit_code == 1 and server.count() == 1
        assert "does not support --response-format json_object" in result.output and "not supported by this server" in result.output
    finally:
        server.stop()


# --- model discovery ---------------------------------------------------------------------------


def test_several_served_models_need_a_choice(tmp_path):
    server = FakeOpenAI(models=["qwen2.5:7b", "llama3.1:8b"]).start()
    try:
        result = cli_label(server, tmp_path)
        assert result.exit_code == 1 and "serves 2 models (qwen2.5:7b, llama3.1:8b): choose one with --model" in result.output
        assert server.count() == 0
    finally:
        server.stop()


def test_a_server_without_a_model_list_needs_model(tmp_path):
    server = FakeOpenAI(models=None).start()
    try:
        result = cli_label(server, tmp_path)
        assert result.exit_code == 1 and "did not list its models" in result.output and "--model" in result.output
        assert cli_label(server, tmp_path, "--model", "local").exit_code == 0
    finally:
        server.stop()


def test_unknown_model_stops_at_once(fake, tmp_path):
    fake.queue(Reply(status=404, error={"error": {"message": "model \"qwen9\" not found, try pulling it first", "type": "api_error", "code": None}}))
    result = cli_label(fake, tmp_path, "--model", "qwen9", "--concurrency", "1")
    assert result.exit_code == 1 and fake.count() == 1
    assert "model 'qwen9' cannot be used there" in result.output and "try pulling it first" in result.output


# --- slow, dead and wrong servers ----------------------------------------------------------------


def test_time_outs_lower_the_concurrency_and_are_sent_once_more_later(fake, tmp_path, caplog):
    """A server that queues requests (llama-cpp-python, transformers serve): the queued ones time out,
    go back in line behind a halved concurrency, and are answered; no 7 blind retries."""
    fake.queue(*[Reply(delay=1.0)] * 2)
    lab = labeler(fake, tmp_path, timeout=0.3, concurrency=4)
    with caplog.at_level(logging.WARNING, logger="critstep.oracle"):
        run = lab.label(trajectories(4))
    assert len(run.labels) == 4 and not run.failed and fake.count() == 4 + 2
    assert "sending 2 request(s) at a time" in caplog.text and lab._limit <= 2


@pytest.mark.parametrize("fake", ["llama-cpp-python"], indirect=True)
def test_answers_a_server_ends_for_a_waiting_request_are_sent_again_one_at_a_time(fake, tmp_path, caplog):
    """llama-cpp-python's server generates one answer at a time and, by default, ends the current
    stream (first chunk, then [DONE]) when another request waits: the empty answers are not invalid
    answers but a server that cannot take concurrent requests."""
    fake.chunk_delay = 0.05
    lab = labeler(fake, tmp_path, concurrency=4)
    with caplog.at_level(logging.WARNING, logger="critstep.oracle"):
        run = lab.label(trajectories(6))
    assert len(run.labels) == 6 and not run.failed
    assert fake.interrupted >= 1 and lab._limit == 1
    assert "ended a streamed answer unfinished" in caplog.text and "1 request(s) at a time" in caplog.text


def test_an_answer_ended_unfinished_while_running_alone_fails_with_advice(fake, tmp_path):
    fake.queue(*[Reply(unfinished=True)] * 2)  # another client's request, say: ours ran alone
    run = labeler(fake, tmp_path, concurrency=1).label(trajectories(1))
    assert fake.count() == 2 and "twice: the server ends an answer when another request waits" in run.failed["traj-0"]
    assert "--interrupt_requests False" in run.failed["traj-0"]


def test_a_trajectory_timing_out_twice_fails_with_advice(fake, tmp_path):
    fake.delay = 1.0
    run = labeler(fake, tmp_path, timeout=0.3, concurrency=1, model="gpt-4o").label(trajectories(1), max_calls=1)
    assert fake.count() == 2 and "twice: the server is too slow for this timeout (raise --timeout" in run.failed["traj-0"]
    assert run.calls == 0  # nothing answered, nothing paid


def test_a_dead_server_trips_the_circuit_breaker(fake, tmp_path):
    fake.queue(*[Reply(status=503)] * 50)
    lab = labeler(fake, tmp_path, concurrency=2, max_consecutive_failures=5)
    waits: list[float] = []
    lab.client.sleep = waits.append
    run = lab.label(trajectories(6))
    assert run.fatal and "failed 5 requests in a row" in run.stopped and "HTTP 503" in run.stopped
    assert fake.count() <= 6 and not run.labels and len(run.unlabeled) + len(run.failed) == 6


def test_a_huge_retry_after_is_not_slept_silently(fake, tmp_path):
    fake.queue(Reply(status=429, headers={"Retry-After": "3600"}))
    lab = labeler(fake, tmp_path, concurrency=1)
    waits: list[float] = []
    lab.client.sleep = waits.append
    run = lab.label(trajectories(2))
    assert run.fatal and "asks to wait 3,600 s" in run.stopped and waits == []


def test_long_waits_are_announced(fake, tmp_path, caplog):
    fake.queue(Reply(status=503, headers={"Retry-After": "45"}))
    lab = labeler(fake, tmp_path, concurrency=1)
    lab.client.sleep = lambda s: None
    with caplog.at_level(logging.WARNING, logger="critstep.oracle"):
        run = lab.label(trajectories(1))
    assert list(run.labels) == ["traj-0"] and "retry 1/6 in 45.0 s after HTTP 503" in caplog.text


def test_an_html_page_is_a_wrong_base_url_in_one_line(fake, tmp_path):
    page = b"<!DOCTYPE html><html><body>llama.cpp web UI</body></html>"
    fake.queue(*[Reply(raw=page)] * 3)
    result = cli_label(fake, tmp_path, "--concurrency", "1")
    assert result.exit_code == 1 and fake.count() == 1 and "Traceback" not in result.output
    assert "answered with an HTML page" in result.output and "ends in /v1" in result.output
    streamless = labeler(fake, tmp_path, stream=False, model="m").label(trajectories(1))
    assert streamless.fatal and "HTML page" in streamless.stopped


def test_batch_without_a_files_api_is_one_line(tmp_path):
    server = FakeOpenAI(files=False).start()
    try:
        result = cli_label(server, tmp_path, "--batch")
        assert result.exit_code == 1 and "has no OpenAI Files/Batch API (HTTP 404" in result.output and "drop --batch" in result.output
        assert "Traceback" not in result.output
    finally:
        server.stop()


@pytest.mark.parametrize("value", ["-1", "0"])
def test_a_timeout_that_is_not_positive_is_refused(fake, tmp_path, value):
    result = cli_label(fake, tmp_path, "--timeout", value)
    assert result.exit_code == 2 and "--timeout" in result.output and fake.count() == 0


def test_stream_options_refused_is_dropped(fake, tmp_path):
    fake.queue(Reply(status=400, error={"error": {"message": "unknown field stream_options", "type": "invalid_request_error"}}))
    run = labeler(fake, tmp_path, concurrency=1).label(trajectories(2))
    assert len(run.labels) == 2 and "stream_options" not in fake.bodies()[-1]


# --- failures: reported, and exit codes ----------------------------------------------------------


def test_every_trajectory_failing_exits_non_zero_with_the_reasons(fake, tmp_path):
    fake.answerer = lambda body: {"plan": "<the sub-goals>", "critical": []}
    result = cli_label(fake, tmp_path, "--response-format", "json_schema")
    assert result.exit_code == 1 and "no trajectory was labeled: all 4 sent failed" in result.output
    assert "4 x invalid answer after one repair request: 'plan' is a placeholder" in result.output
    assert len(read_labels(tmp_path / "labels.jsonl", include_failed=True)) == 4  # the reasons are kept
    again = cli_label(fake, tmp_path, "--response-format", "json_schema")
    assert "4 of the failures are answers cached by earlier runs: --retry-failed asks again" in again.output


def test_select_oracle_leaves_out_failed_trajectories_and_tune_reads_the_rest(fake, tmp_path):
    from critstep.tuner.data import load_selection

    path = corpus(tmp_path, n=4)
    fake.queue(Reply(content="no JSON"), Reply(content="still no JSON"))
    args = ["select", str(path), "--selector", "oracle", "--out", str(tmp_path / "sel.jsonl"), "--base-url", fake.url,
            "--oracle-cache", str(tmp_path / "c.jsonl"), "--concurrency", "1", "--response-format", "json_schema"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    kept = load_selection(tmp_path / "sel.jsonl")  # tune's reader: no trajectory without a selection
    assert [t.id for t in kept] == ["traj-1", "traj-2", "traj-3"]
    report = [json.loads(line) for line in (tmp_path / "sel.jsonl.failed.jsonl").read_text().splitlines()]
    assert report == [{"id": "traj-0", "reason": report[0]["reason"]}] and "no valid JSON" in report[0]["reason"]
    assert "left out of" in result.output
    # A run where nothing fails removes the earlier report, so it cannot mislead.
    rerun = CliRunner().invoke(cli, [*args[:-6], "--oracle-cache", str(tmp_path / "fresh.jsonl")], env={"OPENAI_API_KEY": KEY})
    assert rerun.exit_code == 0, rerun.output
    assert not (tmp_path / "sel.jsonl.failed.jsonl").exists() and len(load_selection(tmp_path / "sel.jsonl")) == 4


def test_select_oracle_into_shards_leaves_out_failed_trajectories_beside_the_directory(fake, tmp_path):
    records = sample_trajectories(4)
    shards = tmp_path / "in"
    shards.mkdir()
    for i, part in enumerate((records[:2], records[2:])):
        (shards / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    fake.queue(Reply(content="no JSON"), Reply(content="still no JSON"))
    out = tmp_path / "selected"
    args = ["select", str(shards), "--selector", "oracle", "--out", str(out), "--base-url", fake.url,
            "--oracle-cache", str(tmp_path / "c.jsonl"), "--concurrency", "1", "--response-format", "json_schema"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    written = {p.name: [json.loads(line)["id"] for line in p.read_text().splitlines()] for p in sorted(out.glob("*.jsonl"))}
    assert written == {"part-0.jsonl": ["traj-1"], "part-1.jsonl": ["traj-2", "traj-3"]}
    report = [json.loads(line) for line in (tmp_path / "selected.failed.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report] == ["traj-0"] and "in 3 trajectories" in result.output
