"""`critstep validate` and the CLI's error contract, through the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from critstep.cli import cli


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("validate", "label", "distill", "select", "evaluate", "tune", "merge", "compare", "demo"):
        assert f"  {name} " in result.output


def test_validate_corpus_counts(shared: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", str(shared / "corpus.jsonl")])
    assert result.exit_code == 0, result.output
    total = next(line for line in result.output.splitlines() if line.startswith("total"))
    assert total.split()[1:3] == ["1,277", "19,505"]
    assert "sciworld" in result.output and "no problems" in result.output


def test_validate_lists_every_problem_and_fails(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"id": "a", "messages": [{"role": "assistant", "content": "y"}]}\n'
        '{"id": "b", "messages": [{"role": "alien", "content": "x"}]}\n'
        '{"id": "c", "messages": [{"role": "assistant", "content": null}]}\n'
    )
    result = CliRunner().invoke(cli, ["validate", str(p)])
    assert result.exit_code == 1
    assert f"{p}:2: message 0 has unknown role 'alien'" in result.output
    assert f"{p}:3: message 0 (assistant) has neither content nor tool_calls" in result.output
    assert "2 problem(s)" in result.output


def test_library_errors_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    proc = subprocess.run(
        [sys.executable, "-m", "critstep", "models", "export", str(missing), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot load causal LM '{missing}'"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_reports_malformed_lines_and_goes_on(tmp_path: Path) -> None:
    p = tmp_path / "broken.jsonl"
    p.write_text('{"id": "a", "messages": [{"role": "assistant", "content": "y"}]}\n{"id": \n{"id": "b", "messages": [{"role": "x", "content": "y"}]}\n')
    result = CliRunner().invoke(cli, ["validate", str(p)])
    assert result.exit_code == 1
    assert f"{p}:2: malformed JSON" in result.output and f"{p}:3: message 0 has unknown role 'x'" in result.output
