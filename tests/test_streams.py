"""Inputs of any size: every listed kind of file and source read with exact counts, streamed, with
one-line errors naming file and line (Parquet: row), and ids unique across shards."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from critstep.cli import cli
from critstep.errors import InputError
from critstep.formats import IdRegistry, TrajectoryReader, read_trajectories
from critstep.io import iter_records, write_jsonl
from critstep.streams import expand_source, shard_name, source_root

CORPUS_COUNTS = (1277, 19505)


def counts(source: str | Path) -> tuple[int, int]:
    trajectories = read_trajectories(source)
    return len(trajectories), sum(t.n_steps for t in trajectories)


@pytest.fixture(scope="module")
def corpus_lines(shared: Path) -> list[str]:
    return (shared / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.fixture(scope="module")
def shards(corpus_lines: list[str], tmp_path_factory) -> Path:
    """The corpus cut into 4 shards of 4 kinds (plain, gzip, zstd, Parquet) in nested folders."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d = tmp_path_factory.mktemp("shards")
    parts = [corpus_lines[i::4] for i in range(4)]  # interleaved, so every kind holds every env
    (d / "a").mkdir()
    (d / "a" / "part-0.jsonl").write_text("".join(parts[0]), encoding="utf-8")
    with gzip.open(d / "a" / "part-1.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(parts[1]))
    (d / "b").mkdir()
    (d / "b" / "part-2.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(parts[2]).encode()))
    (d / "b" / ".hidden.jsonl").write_text("not data\n")
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in parts[3]]), d / "b" / "part-3.parquet", row_group_size=100)
    return d


def test_every_kind_of_source_reads_the_corpus_exactly(shards: Path) -> None:
    # A directory with Parquet in it is read as the Hugging Face layout: Parquet files only.
    assert [p.name for p in expand_source(shards / "b")] == ["part-3.parquet"]
    by_kind = [counts(shards / "a" / "part-0.jsonl"), counts(shards / "a" / "part-1.jsonl.gz"),
               counts(shards / "b" / "part-2.jsonl.zst"), counts(shards / "b" / "part-3.parquet")]
    assert tuple(map(sum, zip(*by_kind, strict=True))) == CORPUS_COUNTS
    assert counts(f"{shards}/*/part-*") == CORPUS_COUNTS  # a glob of every kind at once
    assert counts(shards / "a") == tuple(map(sum, zip(*by_kind[:2], strict=True)))  # a directory


def test_parquet_reads_like_the_jsonl_it_came_from(shards: Path) -> None:
    from_jsonl = read_trajectories(shards / "a" / "part-0.jsonl")
    ids = {t.id for t in from_jsonl}
    assert ids.isdisjoint(t.id for t in read_trajectories(shards / "b" / "part-3.parquet"))
    # The same records through Parquet and JSONL give the same trajectories.
    import pyarrow as pa
    import pyarrow.parquet as pq

    sample = shards / "sample.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in (shards / "a" / "part-0.jsonl").read_text().splitlines()[:60]]), sample)
    for a, b in zip(from_jsonl[:60], read_trajectories(sample), strict=True):
        assert (a.id, a.messages, a.metadata) == (b.id, b.messages, b.metadata)


def test_validate_streams_a_glob_of_shards(shards: Path) -> None:
    result = CliRunner().invoke(cli, ["validate", f"{shards}/*/part-*"])
    assert result.exit_code == 0, result.output
    total = next(line for line in result.output.splitlines() if line.startswith("total"))
    assert total.split()[1:3] == ["1,277", "19,505"] and "files: 4" in result.output


def test_byte_order_mark_before_jsonl_and_array(tmp_path: Path) -> None:
    record = {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok go"}]}
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps(record) + "\n" + json.dumps({**record, "id": "b"}) + "\n").encode())
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([record, {**record, "id": "b"}], indent=1).encode())
    for name in ("bom.jsonl", "bom.json"):
        assert [t.id for t in read_trajectories(tmp_path / name)] == ["a", "b"]


def test_arrays_are_scanned_across_chunks_with_line_numbers(tmp_path: Path, monkeypatch) -> None:
    from critstep import io

    monkeypatch.setattr(io._Scanner, "CHUNK", 7)  # every value is cut by a chunk boundary
    records = [{"id": f"t{i}", "n": 12345 + i, "messages": [{"role": "assistant", "content": "x" * i}]} for i in range(5)]
    (tmp_path / "a.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    got = list(iter_records(tmp_path / "a.json"))
    assert [r.value for r in got] == records and [r.line for r in got] == [2, 3, 4, 5, 6]
    (tmp_path / "bad.json").write_text("[\n" + json.dumps(records[0]) + ",\n{\"id\": oops}\n]")
    with pytest.raises(InputError, match=r"bad.json:3: malformed JSON"):
        list(iter_records(tmp_path / "bad.json"))


def test_errors_name_file_and_line_in_compressed_and_parquet_shards(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = {"id": "a", "messages": [{"role": "assistant", "content": "x"}]}
    with gzip.open(tmp_path / "s.jsonl.gz", "wt") as f:
        f.write(json.dumps(good) + "\n" + '{"id": "b", "messages": [{"role": "alien", "content": "x"}]}\n')
    with pytest.raises(InputError, match=r"s\.jsonl\.gz:2: message 0 has unknown role 'alien'"):
        read_trajectories(tmp_path / "s.jsonl.gz")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress((json.dumps(good) + "\n").encode() * 50)[:-30])
    with pytest.raises(InputError, match=r"cut\.jsonl\.gz: damaged or truncated gzip file"):
        read_trajectories(tmp_path / "cut.jsonl.gz")
    rows = [good, {"id": "b", "messages": [{"role": "alien", "content": "x"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p\.parquet:2: message 0 has unknown role 'alien'"):  # row 2
        read_trajectories(tmp_path / "p.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"junk\.parquet: not a readable Parquet file"):
        read_trajectories(tmp_path / "junk.parquet")
    with pytest.raises(InputError, match="no file matches this pattern"):
        read_trajectories(tmp_path / "nothing-*.jsonl")


def test_duplicate_ids_across_shards_name_the_first(tmp_path: Path) -> None:
    rec = {"id": "same", "messages": [{"role": "assistant", "content": "x"}]}
    write_jsonl(tmp_path / "s0.jsonl", [{**rec, "id": "other"}, rec])
    write_jsonl(tmp_path / "s1.jsonl.zst", [rec])
    with pytest.raises(InputError, match=r"s1\.jsonl\.zst:1: duplicate trajectory id 'same' \(first on .*s0\.jsonl:2\)"):
        read_trajectories(tmp_path / "s*.jsonl*")
    problems: list[InputError] = []
    assert len(read_trajectories(tmp_path, on_error=problems.append)) == 2 and len(problems) == 1


def test_id_registry_costs_a_hash_per_id() -> None:
    registry = IdRegistry()
    stem = "knowagent-alfworld/D0/pick_and_place_simple-Pencil-None-Shelf-308/"
    for i in range(100_000):
        assert registry.add(f"{stem}{i}")
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for i in range(100_000, 300_000):
        assert registry.add(f"{stem}{i}")
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not registry.add(f"{stem}7") and not registry.add(f"{stem}299999") and len(registry) == 300_000
    assert (after - before) / 200_000 < 40  # bytes per id: a hash in a sorted array, not the string in a set


def test_limit_stops_reading_across_shards(shards: Path) -> None:
    reader = TrajectoryReader(f"{shards}/*/part-*", limit=400)
    assert len(list(reader)) == 400
    seen = [path.name for path, trajectories in TrajectoryReader(f"{shards}/*/part-*", limit=400).shards() for _ in trajectories]
    assert seen.count("part-0.jsonl") == 320 and seen.count("part-1.jsonl.gz") == 80


def test_shard_names_are_stable_and_relative(shards: Path) -> None:
    files = expand_source(f"{shards}/*/part-*")
    root = source_root(f"{shards}/*/part-*")
    assert [str(shard_name(f, root)) for f in files] == ["a/part-0.jsonl", "a/part-1.jsonl.gz", "b/part-2.jsonl.zst", "b/part-3.jsonl"]
