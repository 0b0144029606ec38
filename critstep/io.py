"""File plumbing: JSON records with their line numbers in, atomic writes out."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from critstep.errors import InputError, OutputError


@dataclass(frozen=True)
class Record:
    """One top-level JSON value and where it starts in its file.

    `key` is set for records that are entries of a top-level object (`{"name": record, ...}`).
    """

    value: Any
    line: int
    key: str | None = None


TOO_DEEP = "malformed JSON: nested too deeply to read"


def read_records(path: str | Path, on_error: Callable[[InputError], None] | None = None) -> list[Record]:
    """Every record of one file (see `iter_records`), as a list."""
    return list(iter_records(path, on_error))


def iter_records(path: str | Path, on_error: Callable[[InputError], None] | None = None) -> Iterator[Record]:
    """Stream JSONL, a JSON array, a single JSON object or Parquet rows, each value with its line.

    Text may be gzip- or Zstandard-compressed (by suffix) and may start with a UTF-8 byte-order
    mark. JSONL and arrays are read value by value, so memory holds one record, not the file; a
    single top-level object is one value and is read whole. Only the format reader knows whether
    such an object is one record or a mapping of named records (see `expand_object`). Parquet rows
    carry their 1-based row number as `line`. With `on_error`, malformed JSONL lines are handed
    over and skipped instead of raised (a broken array cannot be resynchronised).
    """
    from critstep.streams import is_parquet, open_text, parquet_rows, read_errors

    path = Path(path)
    if is_parquet(path):
        for row, value in parquet_rows(path):
            yield Record(value, row)
        return
    with open_text(path) as f, read_errors(path):
        scanner = _Scanner(f, path)
        first = scanner.peek()
        if first == "":
            return
        if first == "[":
            yield from scanner.container()
            return
        if first == "{":
            head = scanner.first_line()
            try:
                value = json.loads(head)
            except (json.JSONDecodeError, RecursionError):
                # Not one record per line: a single (pretty-printed) object, read whole.
                text = head + scanner.rest()
                try:
                    value = json.loads(text)
                except RecursionError:
                    raise InputError(TOO_DEEP, path, scanner.first_value_line) from None
                except json.JSONDecodeError as e:
                    if e.msg != "Extra data":
                        raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
                    yield from _scan_jsonl(io.StringIO(text), path, on_error)
                    return
                yield Record(value, scanner.first_value_line)
                return
            yield Record(value, scanner.first_value_line)
            yield from _scan_jsonl(scanner.stream, path, on_error, start=scanner.first_value_line + 1)
            return
        yield from _scan_jsonl(scanner.remaining(), path, on_error, start=scanner.first_value_line)


def expand_object(path: str | Path) -> list[Record]:
    """Split a top-level object into one keyed record per entry, each with its own line number."""
    from critstep.streams import open_text, read_errors

    path = Path(path)
    with open_text(path) as f, read_errors(path):
        scanner = _Scanner(f, path)
        scanner.peek()
        return list(scanner.container())


def _scan_jsonl(lines: Iterable[str], path: Path, on_error: Callable[[InputError], None] | None, start: int = 1) -> Iterator[Record]:
    for lineno, line in enumerate(lines, start=start):
        if not line.strip():
            continue
        try:
            yield Record(json.loads(line), lineno)
        except (json.JSONDecodeError, RecursionError) as e:
            error = InputError(f"malformed JSON: {e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else TOO_DEEP, path, lineno)
            if on_error is None:
                raise error from None
            on_error(error)


class _Scanner:
    """A text stream read in chunks, with the line number of the current position.

    Top-level arrays and objects are walked value by value with `json.JSONDecoder.raw_decode`;
    a value cut by the end of a chunk is decoded again once more text has been read.
    """

    CHUNK = 1 << 20

    def __init__(self, stream: IO[str], path: Path):
        self.stream = stream
        self.path = path
        self.text = ""
        self.pos = 0
        self.line = 1  # line number at self.pos
        self.eof = False
        self.first_value_line = 1

    def _fill(self) -> bool:
        """Read more text; drop what was consumed. False at the end of the stream."""
        if self.eof:
            return False
        chunk = self.stream.read(self.CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def _advance(self, to: int) -> None:
        self.line += self.text.count("\n", self.pos, to)
        self.pos = to

    def _skip_ws(self) -> str:
        """Move past whitespace; the next character, or '' at the end."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self._advance(self.pos + 1)
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._fill():
                return ""

    def peek(self) -> str:
        char = self._skip_ws()
        self.first_value_line = self.line
        return char

    def first_line(self) -> str:
        """The rest of the current line (the first value's), consumed."""
        while "\n" not in self.text[self.pos :] and self._fill():
            pass
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end + 1
        head = self.text[self.pos : end]
        self._advance(end)
        self.stream = _Rest(self.text[self.pos :], self.stream)  # type: ignore[assignment]
        return head

    def rest(self) -> str:
        return self.stream.read()

    def remaining(self) -> Iterable[str]:
        """The lines from the current position on (for JSONL)."""
        return _Rest(self.text[self.pos :], self.stream)

    def _decode(self, decoder: json.JSONDecoder) -> Any:
        """The JSON value at the current position, reading more text while it is incomplete."""
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                # Only a value cut by the end of the text may be completed by more text; any other
                # error is final (reading on would pull the rest of a malformed file into memory).
                if (e.pos >= len(self.text) - 8 or e.msg.startswith("Unterminated string")) and self._fill():
                    continue
                line = self.line + self.text.count("\n", self.pos, e.pos)
                raise InputError(f"malformed JSON: {e.msg}", self.path, line) from None
            except RecursionError:
                raise InputError(TOO_DEEP, self.path, self.line) from None
            if not self.eof and _may_go_on(value, self.text[end:]) and self._fill():
                continue  # a number may go on in the next chunk ("1" of "12", "1e" of "1e5")
            self._advance(end)
            return value

    def container(self) -> Iterator[Record]:
        """Walk the top-level array or object value by value, so each record knows its line."""
        decoder = json.JSONDecoder()
        is_object = self.text[self.pos] == "{"
        closing = "}" if is_object else "]"
        self._advance(self.pos + 1)
        if self._skip_ws() == closing:
            self._advance(self.pos + 1)
            self._expect_end()
            return
        while True:
            key = None
            if is_object:
                key = self._decode(decoder)
                if self._skip_ws() != ":":
                    raise InputError("malformed JSON: Expecting ':' delimiter", self.path, self.line)
                self._advance(self.pos + 1)
                self._skip_ws()
            value_line = self.line
            value = self._decode(decoder)
            yield Record(value, value_line, key)
            char = self._skip_ws()
            if char == ",":
                self._advance(self.pos + 1)
                self._skip_ws()
                continue
            if char == closing:
                self._advance(self.pos + 1)
                self._expect_end()
                return
            raise InputError(f"malformed JSON: expected ',' or '{closing}'", self.path, self.line)

    def _expect_end(self) -> None:
        if self._skip_ws():
            raise InputError("malformed JSON: extra data after the top-level value", self.path, self.line)


def _may_go_on(value: Any, after: str) -> bool:
    """Whether a top-level number decoded at the end of the text may be cut short: only what
    could still belong to it follows (raw_decode reads "1e" at a chunk's end as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not after.strip("0123456789eE.+-")


class _Rest:
    """Lines of a stream whose first part was already read into memory."""

    def __init__(self, head: str, stream: IO[str]):
        self.head = head
        self.stream = stream

    def read(self, size: int = -1) -> str:
        if size < 0:
            head, self.head = self.head, ""
            return head + self.stream.read()
        if self.head:
            head, self.head = self.head[:size], self.head[size:]
            return head
        return self.stream.read(size)

    def __iter__(self) -> Iterator[str]:
        head, self.head = self.head, ""
        if head:
            lines = head.split("\n")
            tail = lines.pop()
            for line in lines:
                yield line + "\n"
            if tail:
                yield tail + self.stream.readline()
        yield from self.stream


# Errors of the disk, not of the program: they become one line naming the output.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}

OUTPUT_MARKER = ".critstep-output.json"
"""The file critstep leaves in every directory it writes: only such a directory is ever replaced."""


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path` and rename it into place only on success.

    An interrupted run therefore leaves either the old file or the complete new one, never half.
    A symlink is followed and its target replaced (the link stays); a device, FIFO or socket
    (`/dev/null`, `/dev/stdout`) is written through, never replaced by a regular file. A full or
    read-only disk becomes an `OutputError` naming the file.
    """
    link = Path(path)
    encoding = None if "b" in mode else "utf-8"
    if link.exists() and not link.is_file():  # by what the name opens (stat follows links)
        if link.is_dir():
            raise OutputError("is a directory, not a file", link)
        # Through the name given: /dev/stdout on a pipe resolves to "/proc/<pid>/fd/pipe:[n]",
        # which is no path, but opens as the pipe.
        with _disk_errors(link), open(link, mode, encoding=encoding) as f:
            yield f
        return
    path = Path(os.path.realpath(link))
    with _disk_errors(link):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any new file
        with _disk_errors(link):
            with os.fdopen(fd, mode, encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno not in _DISK_ERRNOS:
            raise
        raise OutputError(f"cannot write: {e.strerror}", path) from None


@contextmanager
def atomic_dir(path: str | Path, kind: str) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole.

    A failed write leaves any earlier output intact, and `path` is replaced only if it is absent,
    empty or critstep's own earlier output of the same `kind` (see `check_replaceable_dir`).
    A symlink is followed and its target replaced (the link stays), as `atomic_write` does.
    """
    link = Path(path)
    check_replaceable_dir(link, kind)  # errors name the path as the user gave it
    path = Path(os.path.realpath(link))
    with _disk_errors(link):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an output directory is ordinary data
        with _disk_errors(link):
            yield tmp
            _write_marker(tmp, kind)
            _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Move directory `new` to `path`. An earlier `path` is moved aside first and deleted only once
    `new` is in place: deleting it first, an interrupt mid-delete lost both the old and the new."""
    if not path.exists():
        os.replace(new, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    os.replace(path, aside / path.name)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside / path.name, path)
        aside.rmdir()
        raise
    shutil.rmtree(aside)


def claim_output_dir(path: str | Path, kind: str) -> Path:
    """Make `path` an output directory of `kind` that critstep fills in place (tuning runs,
    evaluations, sharded outputs): created if absent, refused unless empty or already critstep's
    output of that kind (then its files are reused or overwritten), and marked as critstep's."""
    path = Path(path)
    check_replaceable_dir(path, kind)
    with _disk_errors(path):
        path.mkdir(parents=True, exist_ok=True)
        if not (path / OUTPUT_MARKER).exists():
            _write_marker(path, kind)
    return path


def check_replaceable_dir(path: str | Path, kind: str) -> None:
    """Refuse `path` as an output directory unless it is absent, empty, or holds critstep's marker
    for `kind`: writers swap or fill whole directories, and must never touch unrelated files."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError("exists and is not a directory", path)
    if not any(path.iterdir()):
        return
    found = output_kind(path)
    if found == kind:
        return
    what = f"critstep's {found} output" if found else f"files critstep did not write (no {OUTPUT_MARKER})"
    raise OutputError(f"holds {what}: refusing to replace it with a {kind}; give a new or empty directory", path)


def output_kind(path: str | Path) -> str | None:
    """The kind recorded in the marker of a directory critstep wrote, or None."""
    try:
        value = json.loads((Path(path) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value.get("kind") if isinstance(value, dict) else None


def _write_marker(directory: Path, kind: str) -> None:
    from critstep import __version__

    (directory / OUTPUT_MARKER).write_text(json.dumps({"kind": kind, "written_by": f"critstep {__version__}"}) + "\n")


def portable_path(path: str | Path) -> str:
    """`path` as a results file or report records it: never absolute, since results travel to
    other machines. A file shipped inside critstep is named by its place in the package
    (`critstep/configs/prices.yaml`); any other absolute path becomes relative to the current
    directory (just its name where no relative path exists, e.g. across Windows drives)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    package = Path(__file__).resolve().parent
    if path.resolve().is_relative_to(package):
        return path.resolve().relative_to(package.parent).as_posix()
    try:
        return Path(os.path.relpath(path)).as_posix()
    except ValueError:
        return path.name


PathArg = str | Path | None

# What the first record of each of critstep's JSONL outputs carries: an existing file is replaced
# only when it has these fields, i.e. when critstep (or a tool writing the same schema) wrote it.
SELECTIONS_FILE = ("selections", ("critical_steps",))
LABELS_FILE = ("labels", ("id", "n_steps"))
SUGGESTIONS_FILE = ("suggestions", ("rank", "id", "score"))
FAILURE_REPORT = ("a failure report", ("id", "reason"))
SUPERVISED_DUMP = ("a supervised-text dump", ("id", "spans"))


def check_replaceable_file(path: PathArg, kind: tuple[str, tuple[str, ...]], option: str = "--out") -> None:
    """Refuse to replace an existing file that critstep did not write: it must be absent, empty, a
    device or FIFO (written through), or hold `kind`'s records. Called before any work or API call."""
    if path is None:
        return
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
    except OSError:
        return  # unreachable now: writing it will say why, in one line
    what, fields = kind
    from critstep.streams import open_text

    try:
        with open_text(path) as f:
            first = json.loads(f.readline())
    except (OSError, ValueError, EOFError, InputError):
        first = None
    if isinstance(first, dict) and all(k in first for k in fields):
        return
    raise OutputError(f"{option} exists and is not {what} written by critstep; critstep does not replace "
                      "files it did not write: remove it or choose another path", path)


def check_outputs_apart(
    inputs: dict[str, PathArg | Sequence[PathArg]], outputs: dict[str, PathArg], output_dirs: dict[str, PathArg] | None = None
) -> None:
    """Refuse a run that would write over one of its own inputs, or write two outputs to one file.

    Keys are what the user typed (`"PATH"`, `"--out"`, `"--cache"`); None values are skipped.
    Paths are compared as the files they name, after following symlinks, and by device and inode
    where both exist (so a hard link counts too). A directory written whole (`output_dirs`) is
    refused when an input lies inside it. Devices and FIFOs are written through, never replaced,
    so they are not compared. Called before any slow or paid work.
    """
    given_inputs = [(k, Path(p)) for k, v in inputs.items() if v is not None
                    for p in ([v] if isinstance(v, (str, os.PathLike)) else v)]  # a sharded input: each file
    given_outputs = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    for n, (out_name, out) in enumerate(given_outputs):
        if not _replaceable(out):
            continue
        for in_name, source in given_inputs:
            if _replaceable(source) and _same_file(out, source):
                where = "" if str(source) == str(out) else f" ({source})"
                raise OutputError(f"{out_name} is the input {in_name}{where}: refusing to overwrite it; choose another {out_name}", out)
        for other_name, other in given_outputs[n + 1 :]:
            if _replaceable(other) and _same_file(out, other):
                raise OutputError(f"{out_name} and {other_name} are the same file: give them different paths", out)
    for out_name, directory in ((k, Path(v)) for k, v in (output_dirs or {}).items() if v is not None):
        for in_name, source in given_inputs:
            if source.exists() and _inside(source, directory):
                if _same_file(source, directory):
                    raise OutputError(f"{out_name} is the input {in_name}: refusing to replace it; choose another {out_name}", directory)
                raise OutputError(
                    f"the input {in_name} ({source}) lies in {out_name}, which is replaced whole: it would be lost; choose another {out_name}",
                    directory,
                )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _same_file(a: Path, b: Path) -> bool:
    ia, ib = _identity(a), _identity(b)
    if ia is not None and ib is not None:
        return ia == ib
    return os.path.realpath(a) == os.path.realpath(b)


def writes_through(path: str | Path | None) -> bool:
    """Whether an output at `path` is a device, FIFO or socket (`/dev/stdout`, a pipe): written
    through rather than replaced, and possibly the terminal, so status lines go to stderr."""
    return path is not None and not _replaceable(Path(path))


def _replaceable(path: Path) -> bool:
    """A regular file, a directory, or nothing yet: what an output would replace (not a device or FIFO)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return True
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _inside(path: Path, directory: Path) -> bool:
    target = _identity(directory)
    real = Path(os.path.realpath(path))
    for parent in (real, *real.parents):
        if target is not None and _identity(parent) == target:
            return True
        if target is None and parent == Path(os.path.realpath(directory)):
            return True
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows (any iterable: a generator streams) atomically, gzip/zstd-compressed by suffix;
    the number written."""
    from critstep.streams import compressed

    n = 0
    with atomic_write(path, "wb") as f, compressed(f, Path(path)) as text:
        for row in rows:
            text.write(_dumps(row) + "\n")
            n += 1
    return n


def check_result_paths(benchmark: str, result: str | Path, *beside: str | Path) -> None:
    """Before a benchmark's work: refuse to replace what it did not write. `result` (its JSON) must
    be absent, empty, or an earlier result of `benchmark`; each file `beside` it (a plot) may only
    be replaced next to such a result, so a folder of the user's own files is never written over."""
    result = Path(result)
    earlier = _earlier_result(result, benchmark)
    if earlier is False:
        raise OutputError(f"exists and is not a result of benchmarks/{benchmark}.py; it is not replaced: "
                          "remove it or give another --out", result)
    for path in map(Path, beside):
        if path.exists() and not writes_through(path) and earlier is None:
            raise OutputError(f"exists beside no result of benchmarks/{benchmark}.py; it is not replaced: "
                              "remove it or give another --out", path)


def write_result(path: str | Path, benchmark: str, value: dict[str, Any]) -> None:
    """Write a benchmark's result as JSON, marked as `benchmark`'s, after `check_result_paths`."""
    check_result_paths(benchmark, path)
    write_json(path, {"benchmark": benchmark} | value)


def read_result(path: str | Path, benchmark: str) -> dict[str, Any]:
    """The earlier result that a benchmark adding to its file extends, read after
    `check_result_paths`: {} where there is none (no file, an empty one, a device)."""
    return _earlier_result(Path(path), benchmark) or {}


def _earlier_result(path: Path, benchmark: str) -> dict[str, Any] | None | Literal[False]:
    """`benchmark`'s JSON result at `path`; None where nothing would be replaced (no file, an empty
    one, a device or FIFO: written through, and never read, which could block); False for anything
    else."""
    try:
        if not path.exists() or writes_through(path) or (path.is_file() and path.stat().st_size == 0):
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return value if isinstance(value, dict) and value.get("benchmark") == benchmark else False


def write_json(path: str | Path, value: Any) -> None:
    with atomic_write(path) as f:
        f.write(_dumps(value, indent=2) + "\n")


def _dumps(value: Any, indent: int | None = None) -> str:
    """JSON with text as UTF-8; a string UTF-8 cannot hold (an unpaired surrogate, which JSON input
    may carry as an escape) keeps its escape instead, so what was read is written back exactly."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, indent=indent)
    return text
