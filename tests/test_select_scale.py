"""`select` at scale: sharded outputs, --limit on select/label/distill, and the Ray Data engine
selecting exactly what the plain run selects."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.tuner_support import save_tiny_llama

from critstep.cli import cli
from critstep.distill.persistence import default_model_dir
from critstep.formats import read_trajectories
from critstep.io import OUTPUT_MARKER

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = default_model_dir()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def shards(shared: Path, tmp_path_factory) -> Path:
    """24 corpus trajectories in two shards (plain and gzip), every 10th of the first 240 lines."""
    d = tmp_path_factory.mktemp("in")
    lines = (shared / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[::10][:24]
    (d / "part-0.jsonl").write_text("".join(lines[:15]), encoding="utf-8")
    with gzip.open(d / "part-1.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(lines[15:]))
    return d


def read_dir(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): (gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes())
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != OUTPUT_MARKER}


def test_sharded_output_one_shard_per_input_shard(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel"
    code, output = run("select", str(shards), "--selector", "random", "--out", str(out), "--batch-size", "7")
    assert code == 0, output
    assert "in 24 trajectories" in output and "wrote 2 shards" in output
    assert sorted(read_dir(out)) == ["part-0.jsonl", "part-1.jsonl.gz"] and (out / OUTPUT_MARKER).exists()
    assert [t.id for t in read_trajectories(out)] == [t.id for t in read_trajectories(shards)]
    # Batching does not change a per-trajectory selector's choice; one file holds all shards alike.
    code, output = run("select", str(shards), "--selector", "random", "--out", str(tmp_path / "one.jsonl.zst"))
    assert code == 0, output
    assert [t.metadata["critical_steps"] for t in read_trajectories(tmp_path / "one.jsonl.zst")] == \
           [t.metadata["critical_steps"] for t in read_trajectories(out)]
    # A directory critstep did not write is never filled.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, output = run("select", str(shards), "--selector", "random", "--out", str(tmp_path / "mine"))
    assert code == 1 and "refusing" in output and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_limit_on_select_label_and_distill(shards: Path, shared: Path, tmp_path: Path) -> None:
    code, output = run("select", str(shards), "--selector", "all", "--limit", "20", "--out", str(tmp_path / "s"))
    assert code == 0 and "in 20 trajectories" in output, output
    assert len(read_trajectories(tmp_path / "s" / "part-1.jsonl.gz")) == 5
    code, output = run("label", str(shards), "--dry-run", "--limit", "3")
    assert code == 0 and "3 trajectories" in output, output
    code, output = run("distill", str(shared / "corpus.jsonl"), "--labels", str(shared / "seed_labels.jsonl"), "--limit", "12",
                       "--features", "structural", "--folds", "2", "--classifier", "logreg", "--out", str(tmp_path / "m"), "--no-cache")
    assert code == 0 and "12 labeled trajectories" in output, output


def test_ray_engine_without_ray_says_how_to_install(shards: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    code, output = run("select", str(shards), "--selector", "random", "--engine", "ray", "--out", str(tmp_path / "x"))
    assert code == 1 and output.strip().splitlines()[-1] == "Error: --engine ray needs Ray Data: pip install 'critstep[ray]'"
    assert not (tmp_path / "x").exists()


def test_ray_engine_refuses_whole_input_selectors_and_stray_options(shards: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="Ray is installed by `make install` (the test extra)")
    code, output = run("select", str(shards), "--selector", "random", "--num-workers", "2", "--out", str(tmp_path / "x"))
    assert code == 1 and "apply to --engine ray only" in output
    code, output = run("select", str(shards), "--selector", "oracle", "--engine", "ray", "--out", str(tmp_path / "x"))
    assert code == 1 and "needs the whole input in one process" in output


def test_ray_engine_spreads_one_input_file_over_its_actors(shared: Path, tmp_path: Path) -> None:
    """One file, 2 actors: its batches go to both (Ray Data would hand the whole file to one actor,
    and say so), and the output is the plain run's, byte for byte."""
    pytest.importorskip("ray.data", reason="Ray is installed by `make install` (the test extra)")
    import warnings

    one = tmp_path / "one.jsonl"
    one.write_text("".join((shared / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8")
    code, output = run("select", str(one), "--selector", "random", "--batch-size", "4", "--out", str(tmp_path / "plain.jsonl"))
    assert code == 0, output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, output = run("select", str(one), "--selector", "random", "--batch-size", "4", "--out", str(tmp_path / "ray.jsonl"),
                           "--engine", "ray", "--num-workers", "2")
    assert code == 0, output
    assert not [w for w in caught if "received 1 input" in str(w.message)], [str(w.message) for w in caught]
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()


def test_ray_engine_selects_what_the_plain_run_selects(shards: Path, tmp_path: Path) -> None:
    """A local Ray (2 CPUs, 2 actors) and the plain run, perplexity on a tiny LM: the token pass
    batches steps across trajectories, so equal bytes mean equal batches, not luck."""
    pytest.importorskip("ray.data", reason="Ray is installed by `make install` (the test extra)")
    lm = save_tiny_llama(tmp_path / "lm")
    common = ["--selector", "perplexity", "--lm", str(lm), "--dtype", "float32", "--device", "cpu", "--no-cache", "--batch-size", "4"]
    code, output = run("select", str(shards), *common, "--out", str(tmp_path / "plain"))
    assert code == 0, output
    code, output = run("select", str(shards), *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--num-workers", "2")
    assert code == 0, output
    assert "in 24 trajectories" in output
    assert read_dir(tmp_path / "ray") == read_dir(tmp_path / "plain")


@pytest.mark.slow
def test_ray_engine_selects_the_corpus_exactly(shared: Path, tmp_path: Path) -> None:
    """The whole corpus with the shipped distilled model (its default features computed,
    no cache): a local Ray with 2 actors against the plain run, byte for byte."""
    pytest.importorskip("ray.data", reason="Ray is installed by `make install` (the test extra)")
    common = ["--model", str(SHIPPED_MODEL), "--no-cache"]
    code, output = run("select", str(shared / "corpus.jsonl"), *common, "--out", str(tmp_path / "plain.jsonl"))
    assert code == 0, output
    code, output = run("select", str(shared / "corpus.jsonl"), *common, "--out", str(tmp_path / "ray.jsonl"),
                       "--engine", "ray", "--num-workers", "2")
    assert code == 0 and "in 1,277 trajectories" in output, output
    plain, ray = (tmp_path / "plain.jsonl").read_bytes(), (tmp_path / "ray.jsonl").read_bytes()
    assert plain == ray
    assert sum(len(json.loads(line)["critical_steps"]) for line in plain.splitlines()) > 0


def test_sharded_output_refuses_two_inputs_with_one_output_name(shared: Path, tmp_path: Path) -> None:
    """`a.json` and `a.jsonl` both map to the output shard `a.jsonl`: the second would silently
    replace the first (trajectories lost while the summary counts them)."""
    lines = (shared / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    (src / "a.json").write_text("[" + ",".join(lines[3:]) + "]", encoding="utf-8")
    code, output = run("select", str(src), "--selector", "random", "--out", str(tmp_path / "sel"))
    assert code == 1 and "would both be written to" in output and "a.json" in output, output
    assert not (tmp_path / "sel").exists()


def test_sharded_output_never_overwrites_its_input_shards(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel"
    code, output = run("select", str(shards), "--selector", "random", "--out", str(out))
    assert code == 0, output
    before = read_dir(out)
    code, output = run("select", str(out), "--selector", "random", "--seed", "3", "--out", str(out))
    assert code == 1 and "lies in --out" in output, output
    assert read_dir(out) == before


def test_sharded_output_is_replaced_whole(shards: Path, tmp_path: Path) -> None:
    """A rerun leaves no shard of the earlier run beside its own (`tune DIR` would read them all),
    and a run that fails half-way leaves the earlier output as it was."""
    from critstep.formats import TrajectoryReader
    from critstep.sharded import select_to

    out = tmp_path / "sel"
    assert run("select", str(shards), "--selector", "random", "--out", str(out))[0] == 0
    before = read_dir(out)

    def fails_on_the_second_batch(batch, calls=[]):  # noqa: B006 (counts the calls)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return {}

    with pytest.raises(RuntimeError, match="interrupted"):
        select_to(TrajectoryReader(shards), out, fails_on_the_second_batch, 16)
    assert read_dir(out) == before
    code, output = run("select", str(shards), "--selector", "random", "--limit", "5", "--out", str(out))
    assert code == 0, output
    assert sorted(read_dir(out)) == ["part-0.jsonl"] and len(read_trajectories(out)) == 5


def test_sharded_output_is_checked_before_any_selecting(shards: Path, tmp_path: Path) -> None:
    """The oracle selects the whole input before writing: a refused --out must not come after it was paid for."""
    from critstep.errors import OutputError
    from critstep.formats import TrajectoryReader
    from critstep.sharded import select_to

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")

    def paid(batch):
        raise AssertionError("selected before --out was checked")

    with pytest.raises(OutputError, match="refusing"):
        select_to(TrajectoryReader(shards), mine, paid, None)
