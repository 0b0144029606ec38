"""`critstep label` end to end through real servers serving SmolLM2-135M-Instruct (slow suite).

No flag but `--base-url`: the model is found at /v1/models and the answer format is probed. Each
test skips, naming the make target that installs its server, when that server is not installed
(`make transformers-serve`, `make llama-server`, `make llama-cpp-python-server`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from real_servers import free_port, missing_reason, server_command, serving

from critstep.formats import read_trajectories, write_trajectories
from critstep.labels import read_labels

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Three of the shortest seed trajectories (qa-search, 3 steps, ~700 prompt tokens each).
SHORT = ("fireact/1632", "fireact/302", "fireact/567")


@pytest.fixture(scope="module")
def short_corpus(shared: Path, tmp_path_factory) -> Path:
    by_id = {t.id: t for t in read_trajectories(shared / "corpus.jsonl")}
    path = tmp_path_factory.mktemp("real") / "short.jsonl"
    write_trajectories(path, [by_id[i] for i in SHORT])
    return path


def label_through(name: str, corpus: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    port = free_port()
    command = server_command(name, port)
    if command is None:
        pytest.skip(missing_reason(name))
    out = tmp_path / "labels.jsonl"
    with serving(command, port, tmp_path / "server.log") as url:
        args = [sys.executable, "-m", "critstep", "label", str(corpus), "--out", str(out), "--base-url", url, "--cache", str(tmp_path / "cache.jsonl")]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.exists(), proc.stdout + proc.stderr
    labels = read_labels(out, read_trajectories(corpus), include_failed=True)
    assert set(labels) == set(SHORT), proc.stderr  # every trajectory is labeled or failed with its reason
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["oracle"]["endpoint"] == url and r["oracle"]["model"] for r in rows)
    return proc, labels


def test_llama_server_labels_with_a_strict_schema(short_corpus, tmp_path):
    proc, labels = label_through("llama-server", short_corpus, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using response_format" not in proc.stderr  # json_schema accepted: no fallback
    assert all(lab.status == "ok" for lab in labels.values()), proc.stderr


def test_llama_cpp_python_falls_back_to_json_mode_with_the_schema(short_corpus, tmp_path):
    proc, labels = label_through("llama-cpp-python", short_corpus, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rejects response_format json_schema" in proc.stderr and "using response_format json_object" in proc.stderr
    assert all(lab.status == "ok" for lab in labels.values()), proc.stderr


def test_transformers_serve_falls_back_to_text(short_corpus, tmp_path):
    proc, labels = label_through("transformers-serve", short_corpus, tmp_path)
    assert "ignored response_format json_schema" in proc.stderr and "using response_format text" in proc.stderr, proc.stderr
    # A 135M model without constrained decoding often breaks the rules: it may fail, never silently.
    assert proc.returncode == (0 if any(lab.status == "ok" for lab in labels.values()) else 1), proc.stderr
    assert all(lab.error for lab in labels.values() if lab.status != "ok")
