"""The adversary's suite: bad files in, bad places out, through the real command line.

Every case must end with exit status 1 (2 for click's own usage errors), one `Error:` line that
names the file, no traceback, and nothing the user had lost or half-written. Bad *servers* are the
oracle's tests (tests/test_oracle_*.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from critstep.cli import cli

GOOD = {"id": "t1", "messages": [{"role": "user", "content": "Find the key."}, {"role": "assistant", "content": "go to desk 1"},
                                 {"role": "user", "content": "You see a key."}, {"role": "assistant", "content": "take key"}]}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result: Result, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def jsonl(path: Path, *records: object) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def with_message(**changes: object) -> dict:
    record = json.loads(json.dumps(GOOD))
    record["messages"][1].update(changes)
    return record


# --- bad files ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "no trajectories"),
        (b"\n  \n\t\n", "no trajectories"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
        (b'{"id": "a", "messages": [}\n', ":1: malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"id": "a"}\n{"id": "b", "messages": "x"}\n', ":1: unknown format"),
        (b'"just a string"\n', "unknown format: str"),
    ],
    ids=["empty", "blank", "binary", "broken-json", "deep-nesting", "no-messages", "a-string"],
)
def test_bad_trajectory_files_are_one_line(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    assert_one_line_error(run("select", path, "--selector", "all", "--out", tmp_path / "o.jsonl"), str(path), needle)
    assert not (tmp_path / "o.jsonl").exists()
    checked = run("validate", path)  # lists every problem, one line each
    assert checked.exit_code == 1 and "Traceback" not in checked.output and needle in checked.output


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"tool_calls": "notalist"}, "message 1 (assistant): tool_calls must be a list of calls, got str"),
        ({"tool_calls": [None, 5]}, "message 1 (assistant): tool call 0 is not an object with a function, got None"),
        ({"tool_calls": [{"function": {"arguments": "{}"}}]}, "tool call 0 has no function name"),
        ({"tool_calls": [{"type": "function", "function": "search"}]}, "tool call 0 is not an object with a function"),
        ({"tool_calls": [{"function": {"name": "f", "arguments": 5}}]}, "tool call 0 (f) has arguments of type int"),
        ({"content": 42}, "has content of type int"),
        ({"role": None}, "unknown role None"),
    ],
    ids=["not-a-list", "null-and-number", "no-name", "function-a-string", "numeric-arguments", "numeric-content", "no-role"],
)
def test_malformed_messages_are_one_line_naming_file_and_line(tmp_path: Path, message: dict, needle: str) -> None:
    path = jsonl(tmp_path / "in.jsonl", GOOD | {"id": "t0"}, with_message(**message))
    assert_one_line_error(run("select", path, "--selector", "all", "--out", tmp_path / "o.jsonl"), f"{path}:2:", needle)


def test_well_formed_tool_calls_in_both_openai_layouts_are_read(tmp_path: Path) -> None:
    nested = with_message(content=None, tool_calls=[{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{\"q\": 1}"}}])
    flat = with_message(content=None, tool_calls=[{"name": "search", "arguments": {"q": 1}}]) | {"id": "t2"}
    path = jsonl(tmp_path / "in.jsonl", nested, flat)
    result = run("select", path, "--selector", "all", "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("ident", "needle"),
    [([1, 2], "'id' must be a non-empty string or an integer, got [1, 2]"), (1.5, "got 1.5"), ("", "got ''"), (True, "got True")],
)
def test_trajectory_ids_that_cannot_be_matched_are_refused(tmp_path: Path, ident: object, needle: str) -> None:
    path = jsonl(tmp_path / "in.jsonl", GOOD | {"id": ident})
    assert_one_line_error(run("select", path, "--selector", "all", "--out", tmp_path / "o.jsonl"), f"{path}:1:", needle)


def test_integer_trajectory_ids_are_their_decimal_string_and_zero_is_kept(tmp_path: Path) -> None:
    from critstep.formats import read_trajectories

    path = jsonl(tmp_path / "in.jsonl", GOOD | {"id": 0}, GOOD | {"id": 7})
    assert [t.id for t in read_trajectories(path)] == ["0", "7"]


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"id": "t1", "n_steps": 2}, "has no 'critical' list (write \"critical\": [] for a trajectory without critical steps)"),
        ({"id": 1, "n_steps": 2, "critical": []}, "'id' must be a non-empty string (the trajectory's id), got 1: write it as \"1\""),
        ({"id": ["t1"], "n_steps": 2, "critical": []}, "got ['t1']"),
        ({"id": "t1", "n_steps": True, "critical": []}, "n_steps must be a non-negative integer, got True"),
        ({"id": "t1", "n_steps": 3, "critical": []}, "n_steps 3 but trajectory 't1' has 2 steps in"),
    ],
    ids=["no-critical", "integer-id", "list-id", "bool-n-steps", "n-steps-mismatch"],
)
def test_bad_label_records_are_one_line(tmp_path: Path, record: dict, needle: str) -> None:
    traj = jsonl(tmp_path / "t.jsonl", GOOD)
    labels = jsonl(tmp_path / "labels.jsonl", record)
    pred = tmp_path / "pred.jsonl"
    assert run("select", traj, "--selector", "all", "--out", pred).exit_code == 0
    error = assert_one_line_error(run("evaluate", "--pred", pred, "--gold", labels), f"{labels}:1:", needle)
    if "n_steps 3" in needle:
        assert "label it again" in error and f"steps in {pred}" in error


def test_a_failed_label_record_may_lack_critical(tmp_path: Path) -> None:
    from critstep.labels import read_labels

    path = jsonl(tmp_path / "l.jsonl", {"id": "a", "n_steps": 2, "status": "failed", "error": "refused"}, {"id": "b", "n_steps": 1, "critical": []})
    assert list(read_labels(path)) == ["b"]
    assert list(read_labels(path, include_failed=True)) == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [("", "no labels: the file is empty"), (json.dumps({"id": "t1", "n_steps": 2, "status": "failed", "error": "x"}) + "\n", "no labels: all 1 records are failed ones")],
    ids=["empty", "all-failed"],
)
def test_empty_label_files_stop_instead_of_writing_empty_outputs(tmp_path: Path, content: str, needle: str) -> None:
    traj = jsonl(tmp_path / "t.jsonl", GOOD)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(content)
    assert_one_line_error(run("distill", traj, "--labels", labels, "--out", tmp_path / "model", "--features", "structural"), needle)
    assert not (tmp_path / "model").exists()


def test_a_device_is_not_an_input(tmp_path: Path) -> None:
    assert_one_line_error(run("select", "/dev/zero", "--selector", "all", "--out", tmp_path / "o.jsonl"), "/dev/zero: is a device")


def test_an_unreadable_input_is_one_line(tmp_path: Path, monkeypatch) -> None:
    path = jsonl(tmp_path / "in.jsonl", GOOD)
    import builtins

    import critstep.streams

    def denied(file, *args, **kwargs):  # root may read anything, so the refusal is simulated
        if Path(file).name == "in.jsonl":
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(critstep.streams, "open", denied, raising=False)
    assert_one_line_error(run("select", path, "--selector", "all", "--out", tmp_path / "o.jsonl"), f"{path}: cannot read: Permission denied")


def test_an_unanticipated_os_error_naming_a_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import critstep.formats as formats

    def broken(*args, **kwargs):
        raise IsADirectoryError(21, "Is a directory", "/somewhere/model.skops")

    monkeypatch.setattr(formats, "TrajectoryReader", broken)
    assert_one_line_error(run("select", jsonl(tmp_path / "in.jsonl", GOOD), "--selector", "all", "--out", tmp_path / "o.jsonl"),
                          "/somewhere/model.skops: Is a directory")


def test_unpaired_surrogates_are_written_back_exactly(tmp_path: Path) -> None:
    from critstep.formats import read_trajectories

    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(with_message(content="half an emoji \ud83d")) + "\n")
    out = tmp_path / "o.jsonl"
    assert run("select", path, "--selector", "all", "--out", out).exit_code == 0
    assert read_trajectories(out)[0].messages[1].content == "half an emoji \ud83d"


# --- bad outputs ----------------------------------------------------------------------------------

def test_select_refuses_to_write_over_its_input_in_any_spelling(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "corpus.jsonl", GOOD)
    before = path.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(path)
    os.link(path, tmp_path / "hard.jsonl")
    for out in (path, tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "x" / ".." / "corpus.jsonl"):
        assert_one_line_error(run("select", path, "--selector", "all", "--out", out), "--out is the input TRAJ", "refusing to overwrite it")
    assert path.read_bytes() == before


def test_label_refuses_out_equal_to_input_or_cache_before_any_call(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CRITSTEP_CACHE", str(tmp_path / "cache"))
    path = jsonl(tmp_path / "corpus.jsonl", GOOD)
    cache = tmp_path / "answers.jsonl"
    cache.write_text('{"paid": "for"}\n')
    dead = ["--base-url", "http://127.0.0.1:9/v1", "--max-retries", "0"]  # nothing listens: a call would fail, not hang
    assert_one_line_error(run("label", path, "--out", path, *dead), "--out is the input PATH")
    assert_one_line_error(run("label", path, "--out", cache, "--cache", cache, *dead), "--out and --cache are the same file")
    assert_one_line_error(run("label", path, "--out", tmp_path / "l.jsonl", "--cache", path, *dead), "--cache is the input PATH")
    assert cache.read_text() == '{"paid": "for"}\n' and json.loads(path.read_text().splitlines()[0]) == GOOD


def test_select_refuses_out_equal_to_the_oracle_cache(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "corpus.jsonl", GOOD)
    cache = tmp_path / "cache.jsonl"
    cache.write_text("{}\n")
    assert_one_line_error(
        run("select", path, "--selector", "oracle", "--oracle-cache", cache, "--out", cache, "--base-url", "http://127.0.0.1:9/v1"),
        "--out and --oracle-cache are the same file",
    )
    assert cache.read_text() == "{}\n"


def test_distill_refuses_outputs_over_its_inputs(tmp_path: Path) -> None:
    traj = jsonl(tmp_path / "t.jsonl", GOOD)
    labels = jsonl(tmp_path / "labels.jsonl", {"id": "t1", "n_steps": 2, "critical": []})
    assert_one_line_error(run("distill", traj, "--labels", labels, "--out", tmp_path / "m", "--suggest", "1", "--out-suggest", labels),
                          "--out-suggest is the input --labels")
    model = tmp_path / "model"
    model.mkdir()
    (model / ".critstep-output.json").write_text('{"kind": "distilled-selector"}')
    inside = jsonl(model / "labels.jsonl", {"id": "t1", "n_steps": 2, "critical": []})
    assert_one_line_error(run("distill", traj, "--labels", inside, "--out", model, "--features", "structural"),
                          "lies in --out, which is replaced whole")
    assert inside.exists()


def test_tune_dump_refuses_to_write_over_the_selection(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "sel.jsonl", GOOD | {"critical_steps": [0]})
    assert_one_line_error(run("tune", path, "--dump-supervised", path), "--dump-supervised is the input SELECTED")
    assert json.loads(path.read_text())["critical_steps"] == [0]


def test_compare_refuses_a_report_over_an_input(tmp_path: Path) -> None:
    traj = jsonl(tmp_path / "t.jsonl", GOOD)
    out = tmp_path / "cmp"
    out.mkdir()
    labels = jsonl(out / "report.json", {"id": "t1", "n_steps": 2, "critical": [{"step": 0, "category": "critical_action"}]})
    assert_one_line_error(run("compare", traj, "--labels", labels, "--selectors", "random", "--out", out), "--out's report.json is the input --labels")


@pytest.mark.parametrize("where", ["directory", "full-disk"])
def test_unwritable_outputs_are_one_line_and_leave_nothing(tmp_path: Path, where: str) -> None:
    path = jsonl(tmp_path / "in.jsonl", GOOD)
    if where == "directory":
        out, needle, code = tmp_path, "refusing", 1  # a directory --out is for sharded output, and this one is not critstep's
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        out, needle, code = Path("/dev/full"), "cannot write: No space left on device", 1
    assert_one_line_error(run("select", path, "--selector", "all", "--out", out), str(out), needle, code=code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# --- no foreign warnings --------------------------------------------------------------------------

def test_a_qlora_run_through_the_real_entry_point_prints_no_foreign_warnings(tmp_path: Path) -> None:
    """bitsandbytes' kernels-community line and transformers' FutureWarnings (raised by peft) came on
    every tune; they are dropped by message at the command line, every other warning still shows."""
    import subprocess
    import sys

    from fixtures.tuner_support import save_tiny_llama, toy_trajectories, write_selection

    model = save_tiny_llama(tmp_path / "tiny")
    selection = write_selection(tmp_path / "sel.jsonl", toy_trajectories(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")} | {"PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-m", "critstep", "tune", str(selection), "--model", str(model), "--mode", "qlora", "--out", str(tmp_path / "run"),
         "--max-steps", "1", "--max-seq-len", "128", "--eval-fraction", "0", "--quiet"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for foreign in ("kernels-community", "gradient_checkpointing_enable", "is_gradient_checkpointing", "FutureWarning"):
        assert foreign not in done.stderr, done.stderr[-3000:]
