"""Inputs of any size: which files a source names, how each is opened, and where shard outputs go.

A source is a file, a directory (every data file below it, sorted) or a glob of shards. Files are
JSON/JSONL as text, gzip (`.gz`) or Zstandard (`.zst`) compressed, or Parquet (the Hugging Face
datasets layout, `data/train-00000-of-00004.parquet`). Everything is read as a stream, so memory
does not grow with the size of a file or the number of files.
"""

from __future__ import annotations

import glob
import gzip
import io
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from critstep.errors import ConfigError, InputError

COMPRESSIONS = (".gz", ".zst")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
PARQUET_BATCH_ROWS = 256


def _split_suffix(path: Path) -> tuple[str, str, str]:
    """(stem, data suffix, compression) of a file name: 'a.jsonl.gz' -> ('a', '.jsonl', '.gz')."""
    name = path.name
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), "")
    name = name[: len(name) - len(compression)]
    data = next((s for s in DATA_SUFFIXES if name.endswith(s)), "")
    return name[: len(name) - len(data)], data, compression


def is_data_file(path: Path) -> bool:
    return _split_suffix(path)[1] != ""


def is_parquet(path: Path) -> bool:
    return _split_suffix(path)[1] == ".parquet"


def expand_source(source: str | Path) -> list[Path]:
    """The files a source names, in a stable order (sorted paths).

    A directory contributes every data file below it (`.jsonl`, `.json`, `.parquet`, optionally
    `.gz`/`.zst`), hidden ones left out; where it holds Parquet files, only those (the Hugging Face
    layout keeps JSON metadata beside them). A glob (`shards/part-*.jsonl.zst`) matches files.
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file() and is_data_file(f) and not _hidden(f.relative_to(path))]
        if any(is_parquet(f) for f in files):
            files = [f for f in files if is_parquet(f)]
        if not files:
            raise InputError("no data files in this directory (looked for .jsonl, .json, .parquet, optionally .gz/.zst)", text)
        return sorted(files)
    if path.exists():
        return [path]
    if glob.has_magic(text):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
        if not files:
            raise InputError("no file matches this pattern", text)
        return files
    raise InputError("no such file", text)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def source_root(source: str | Path) -> Path:
    """The directory shard names are relative to: the directory itself, a glob's fixed prefix, or
    the file's folder."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return path
    if not path.exists() and glob.has_magic(text):
        fixed = []
        for part in path.parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        return Path(*fixed) if fixed else Path(".")
    return path.parent


def shard_name(file: Path, root: Path) -> Path:
    """The stable output name of an input shard: same relative path, written as JSONL with the
    input's compression (Parquet shards become JSONL: selections add nested fields their schema lacks)."""
    try:
        relative = file.relative_to(root)
    except ValueError:
        relative = Path(file.name)
    stem, _, compression = _split_suffix(relative)
    return relative.with_name(f"{stem}.jsonl{compression}")


@contextmanager
def open_text(path: Path) -> Iterator[IO[str]]:
    """A text stream of `path`, decompressed by suffix; a UTF-8 byte-order mark is dropped."""
    compression = _split_suffix(path)[2]
    try:
        mode = path.stat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # /dev/zero would be read forever
            raise InputError("is a device, not a file", path)
        raw = open(path, "rb")  # noqa: SIM115 (closed below, with the decompressor around it)
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None
    try:
        if compression == ".gz":
            binary: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == ".zst":
            binary = _zstd().ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            binary = raw
        with io.TextIOWrapper(binary, encoding="utf-8-sig") as text:  # type: ignore[arg-type]
            yield text
    finally:
        raw.close()


@contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Errors a (compressed) text stream raises while being read, as one-line `InputError`s."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", path) from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise InputError(f"damaged or truncated gzip file ({e})", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    except Exception as e:
        if type(e).__name__ == "ZstdError":
            raise InputError(f"damaged or truncated zstd file ({e})", path) from None
        raise


def parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row number, row) of a Parquet file, a batch of rows in memory at a time.

    Arrow gives every row every struct field; a field that is null is dropped, as if absent.
    """
    pq = _parquet()
    try:
        reader = pq.ParquetFile(path)
        row = 0
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for value in batch.to_pylist():
                row += 1
                yield row, _drop_nulls(value)
    except OSError as e:  # pyarrow raises ArrowInvalid (an OSError... or ValueError) on a bad file
        raise InputError(f"not a readable Parquet file ({e})", path) from None
    except ValueError as e:
        raise InputError(f"not a readable Parquet file ({e})", path) from None


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


@contextmanager
def compressed(binary: IO[bytes], path: Path) -> Iterator[IO[str]]:
    """A UTF-8 text writer onto `binary`, compressed as the suffix of `path` says."""
    compression = _split_suffix(path)[2]
    if compression == ".gz":
        inner: Any = gzip.GzipFile(fileobj=binary, mode="wb", filename="", mtime=0)
    elif compression == ".zst":
        inner = _zstd().ZstdCompressor().stream_writer(binary, closefd=False)
    else:
        inner = binary
    text = io.TextIOWrapper(inner, encoding="utf-8", newline="\n", write_through=True)
    yield text
    text.flush()
    text.detach()
    if inner is not binary:
        inner.close()  # writes the gzip trailer / zstd frame end; the file itself stays open


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise ConfigError("reading or writing .zst needs zstandard: pip install zstandard") from None
    return zstandard


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading Parquet needs pyarrow: pip install pyarrow") from None
    return pq
