"""An output never replaces what critstep did not write: special files, links, foreign directories."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from critstep.errors import OutputError
from critstep.io import (
    OUTPUT_MARKER,
    atomic_dir,
    atomic_write,
    check_result_paths,
    claim_output_dir,
    output_kind,
    read_result,
    write_json,
    write_result,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_a_symlink_is_followed_and_its_target_replaced(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json(link, {"a": 1})
    assert link.is_symlink()
    assert json.loads(target.read_text()) == {"a": 1}


@pytest.mark.skipif(not os.path.exists("/dev/null") or os.geteuid() != 0, reason="needs root to be able to replace /dev/null")
def test_a_device_is_written_through_never_replaced() -> None:
    with atomic_write("/dev/null") as f:
        f.write("discarded\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_full_device_is_one_clear_error() -> None:
    with pytest.raises(OutputError, match="/dev/full: cannot write"), atomic_write("/dev/full") as f:
        f.write("x" * 100_000)


def test_a_fifo_is_written_through(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_json(fifo, [1, 2])
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(got[0]) == [1, 2]


def test_a_directory_is_not_a_file_output(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"), atomic_write(tmp_path) as f:
        f.write("x")


def test_a_read_only_directory_is_one_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            write_json(tmp_path / "out.json", {})
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize("their_file", ["config.json", "model.json", "notes.txt"])
def test_a_directory_without_the_marker_is_never_replaced(tmp_path: Path, their_file: str) -> None:
    # A folder that merely looks like a model (config.json, model.json) is still the user's.
    (tmp_path / their_file).write_text("keep me")
    with pytest.raises(OutputError, match="did not write"), atomic_dir(tmp_path, "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert (tmp_path / their_file).read_text() == "keep me"
    with pytest.raises(OutputError, match="did not write"):
        claim_output_dir(tmp_path, "tune")


def test_a_marked_directory_of_the_same_kind_is_replaced_and_of_another_kind_is_not(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out, "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert output_kind(out) == "model"
    with atomic_dir(out, "model") as tmp:
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "weights"]
    with pytest.raises(OutputError, match="critstep's model output"):
        claim_output_dir(out, "tune")


def test_claim_output_dir_marks_an_empty_directory_and_keeps_its_files_on_reuse(tmp_path: Path) -> None:
    out = claim_output_dir(tmp_path / "run", "tune")
    (out / "checkpoint").mkdir()
    assert claim_output_dir(out, "tune") == out
    assert (out / "checkpoint").is_dir() and output_kind(out) == "tune"


def test_tune_refuses_an_unrelated_directory_before_loading_anything(tmp_path: Path) -> None:
    from critstep.tuner import TuneConfig, tune

    (tmp_path / "README.md").write_text("my notes")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(OutputError, match="did not write"):
        tune([], TuneConfig(model="does-not-matter"), tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes"
    assert (tmp_path / "tokenizer_config.json").read_text() == "{}"


def test_atomic_dir_replaces_the_target_of_a_symlink_and_keeps_the_link(tmp_path: Path) -> None:
    # `--out models/latest` pointing at an earlier model: rmtree refused the link with a traceback.
    with atomic_dir(tmp_path / "v1", "model") as tmp:
        (tmp / "weights").write_text("old")
    (tmp_path / "latest").symlink_to("v1")
    with atomic_dir(tmp_path / "latest", "model") as tmp:
        (tmp / "weights").write_text("new")
    assert (tmp_path / "latest").is_symlink() and (tmp_path / "v1" / "weights").read_text() == "new"


def test_atomic_dir_interrupted_while_swapping_keeps_the_earlier_output(tmp_path: Path, monkeypatch) -> None:
    import os

    out = tmp_path / "out"
    with atomic_dir(out, "model") as tmp:
        (tmp / "weights").write_text("old")
    real_replace = os.replace

    def interrupted(src, dst):
        if Path(src).name.startswith(".out.") and Path(dst) == out:  # the new directory moving in
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, "model") as tmp:
        (tmp / "weights").write_text("new")
    monkeypatch.undo()
    assert (out / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left behind


def test_dev_stdout_on_a_pipe_is_written_through(tmp_path: Path) -> None:
    """`--out /dev/stdout | ...`: the link resolves to "/proc/<pid>/fd/pipe:[n]", which is no path;
    a temporary file beside it failed with "No such file or directory"."""
    import subprocess
    import sys

    if not os.path.exists("/dev/stdout"):
        pytest.skip("no /dev/stdout on this system")
    code = "from critstep.io import write_jsonl; write_jsonl('/dev/stdout', [{'a': 1}, {'b': 2}])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line) for line in done.stdout.splitlines()] == [{"a": 1}, {"b": 2}]


def test_select_to_stdout_keeps_its_summary_out_of_the_selections(tmp_path):
    """`select --out /dev/stdout | ...`: the output is JSONL only, the summary line goes to stderr."""
    import json
    import subprocess
    import sys

    traj = tmp_path / "t.jsonl"
    traj.write_text(json.dumps({"id": "a", "messages": [
        {"role": "user", "content": "task"}, {"role": "assistant", "content": "go"},
        {"role": "user", "content": "ok"}, {"role": "assistant", "content": "done"}]}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "critstep", "select", str(traj), "--selector", "random", "--out", "/dev/stdout"],
                          capture_output=True, text=True, check=True)
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == ["a"]
    assert "random: selected" in proc.stderr


def _one_trajectory(path: Path) -> Path:
    path.write_text(json.dumps({"id": "a", "messages": [
        {"role": "user", "content": "task"}, {"role": "assistant", "content": "go"},
        {"role": "user", "content": "ok"}, {"role": "assistant", "content": "done"}]}) + "\n")
    return path


@pytest.mark.parametrize("theirs", ["my notes\n", '{"id": "x", "messages": []}\n'])
def test_select_never_replaces_a_file_it_did_not_write(tmp_path: Path, theirs: str) -> None:
    """A user's notes or own dataset at --out stays as it was; critstep's earlier selections are replaced."""
    from click.testing import CliRunner

    from critstep.cli import cli

    traj = _one_trajectory(tmp_path / "t.jsonl")
    target = tmp_path / "theirs.jsonl"
    target.write_text(theirs)
    result = CliRunner().invoke(cli, ["select", str(traj), "--selector", "random", "--out", str(target)])
    assert result.exit_code == 1 and "does not replace files it did not write" in result.output
    assert target.read_text() == theirs
    ours = tmp_path / "sel.jsonl.gz"
    for _ in range(2):  # the second run replaces the first's output
        result = CliRunner().invoke(cli, ["select", str(traj), "--selector", "random", "--out", str(ours)])
        assert result.exit_code == 0, result.output


def test_label_refuses_a_file_it_did_not_write_before_any_request(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from critstep.cli import cli

    traj = _one_trajectory(tmp_path / "t.jsonl")
    target = tmp_path / "labels.jsonl"
    target.write_text('{"note": "mine"}\n')
    result = CliRunner().invoke(cli, ["label", str(traj), "--out", str(target), "--base-url", "http://127.0.0.1:9/v1",
                                      "--model", "m", "--cache", str(tmp_path / "cache.jsonl")], env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code == 1 and "does not replace files it did not write" in result.output, result.output
    assert target.read_text() == '{"note": "mine"}\n'


# -- benchmark result files: an --out replaces only the same benchmark's earlier result ----------
def test_a_benchmark_result_replaces_its_own_earlier_result_and_is_marked(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    write_result(out, "speed", {"x": 1})
    write_result(out, "speed", {"x": 2})
    assert json.loads(out.read_text()) == {"benchmark": "speed", "x": 2}
    (tmp_path / "empty.json").write_text("")
    write_result(tmp_path / "empty.json", "speed", {})  # an empty file holds nothing to lose


def test_a_benchmark_that_adds_to_its_result_reads_none_from_an_empty_file_or_a_device(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    assert read_result(out, "speed") == {}
    out.write_text("")
    assert read_result(out, "speed") == {}
    assert read_result(os.devnull, "speed") == {}
    write_result(out, "speed", {"x": 1})
    assert read_result(out, "speed") == {"benchmark": "speed", "x": 1}


def test_a_benchmark_result_is_written_through_a_device_without_reading_it() -> None:
    check_result_paths("speed", os.devnull, os.devnull)  # reading /dev/stdout could wait on the terminal
    write_result(os.devnull, "speed", {"x": 1})


@pytest.mark.parametrize("theirs", ["my notes\n", '{"benchmark": "other"}', "[1, 2]", '{"x": 1}'])
def test_a_benchmark_never_replaces_a_file_it_did_not_write(tmp_path: Path, theirs: str) -> None:
    out = tmp_path / "speed.json"
    out.write_text(theirs)
    with pytest.raises(OutputError, match="not a result of benchmarks/speed.py"):
        write_result(out, "speed", {"x": 1})
    assert out.read_text() == theirs


def test_a_plot_is_replaced_only_beside_the_benchmarks_own_result(tmp_path: Path) -> None:
    result, plot = tmp_path / "speed.json", tmp_path / "speed.png"
    plot.write_bytes(b"their picture")
    with pytest.raises(OutputError, match="beside no result"):
        check_result_paths("speed", result, plot)
    write_json(result, {"benchmark": "speed"})
    check_result_paths("speed", result, plot)
    check_result_paths("speed", tmp_path / "new.json", tmp_path / "new.png")  # nothing there yet


@pytest.mark.parametrize("script, out, data", [("classifier_fit_time.py", "theirs.json", None), ("encoder_candidate.py", "theirs.json", "--shared"),
                                               ("cascade_budget.py", "folder", "--data")])
def test_a_benchmark_script_refuses_in_one_line_before_any_work(tmp_path: Path, script: str, out: str, data: str | None) -> None:
    import subprocess

    theirs = tmp_path / "theirs.json"
    theirs.write_text("my results\n")
    if out == "folder":  # a folder of the user's with a plot of the benchmark's name, and no result
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "cascade_budget.png").write_bytes(b"their picture")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--out", str(tmp_path / out), *([data, str(tmp_path)] if data else [])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is not replaced" in lines[0], proc.stderr
    assert theirs.read_text() == "my results\n"
    assert out != "folder" or (tmp_path / "folder" / "cascade_budget.png").read_bytes() == b"their picture"
