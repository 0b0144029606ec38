"""File plumbing: JSON records with their line numbers in, atomic writes out."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from critstep.errors import InputError


@dataclass(frozen=True)
class Record:
    """One top-level JSON value and where it starts in its file.

    `key` is set for records that are entries of a top-level object (`{"name": record, ...}`).
    """

    value: Any
    line: int
    key: str | None = None


def read_records(path: str | Path, on_error: Callable[[InputError], None] | None = None) -> list[Record]:
    """Read JSONL, a JSON array, or a single JSON object, each value with its line number.

    A single object is returned whole: only the format reader knows whether it is one record or
    a mapping of named records (see `expand_object`). With `on_error`, malformed JSONL lines are
    handed over and skipped instead of raised (a broken array cannot be resynchronised).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", path) from None
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped[0] == "[":
        return list(_scan_container(text, path, len(text) - len(stripped)))
    if stripped[0] == "{":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
        else:
            return [Record(value, _line_of(text, len(text) - len(stripped)))]
    return list(_scan_jsonl(text, path, on_error))


def expand_object(path: str | Path) -> list[Record]:
    """Split a top-level object into one keyed record per entry, each with its own line number."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index("{")
    return list(_scan_container(text, Path(path), start))


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _scan_jsonl(text: str, path: Path, on_error: Callable[[InputError], None] | None) -> Iterator[Record]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield Record(json.loads(line), lineno)
        except json.JSONDecodeError as e:
            error = InputError(f"malformed JSON: {e.msg} (column {e.colno})", path, lineno)
            if on_error is None:
                raise error from None
            on_error(error)


def _scan_container(text: str, path: Path, start: int) -> Iterator[Record]:
    """Walk the top-level array or object value by value, so each record knows its line."""
    decoder = json.JSONDecoder()
    is_object = text[start] == "{"
    closing = "}" if is_object else "]"
    pos = _skip_ws(text, start + 1)
    if pos < len(text) and text[pos] == closing:
        return
    while True:
        key = None
        try:
            if is_object:
                key, pos = decoder.raw_decode(text, pos)
                pos = _skip_ws(text, pos)
                if text[pos : pos + 1] != ":":
                    raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
                pos = _skip_ws(text, pos + 1)
            value_start = pos
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
        yield Record(value, _line_of(text, value_start), key)
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == closing:
            if text[pos + 1 :].strip():
                raise InputError("malformed JSON: extra data after the top-level value", path, _line_of(text, pos + 1))
            return
        raise InputError(f"malformed JSON: expected ',' or '{closing}'", path, _line_of(text, pos))


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path` and rename it into place only on success.

    An interrupted run therefore leaves either the old file or the complete new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any new file
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path, markers: Iterable[str]) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole.

    A failed write leaves any earlier output intact, and `path` is replaced only if it is absent,
    empty or an earlier output of the same kind (it holds one of `markers`).
    """
    path = Path(path)
    check_replaceable_dir(path, markers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an output directory is ordinary data
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable_dir(path: str | Path, markers: Iterable[str]) -> None:
    """Refuse to replace `path` unless it is absent, empty, or holds one of `markers` (a previous
    output of the same kind): writers swap whole directories, and must not wipe unrelated files."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise InputError("exists and is not a directory", path)
    markers = list(markers)
    if any(path.iterdir()) and not any((path / m).exists() for m in markers):
        raise InputError(
            f"is a non-empty directory without {' or '.join(markers)}: refusing to replace it; "
            "give a new or empty directory (or a previous output of this command)",
            path,
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(path: str | Path, value: Any) -> None:
    with atomic_write(path) as f:
        json.dump(value, f, ensure_ascii=False, indent=2)
        f.write("\n")
