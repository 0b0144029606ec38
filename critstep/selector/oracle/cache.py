"""A persistent answer cache: append-only JSONL, one fsync'd line per paid answer.

Every answer is written the moment it arrives, so a run killed at any instant (kill -9 included)
loses at most the requests in flight, and a re-run pays for nothing twice. A torn last line (the
kill landed mid-write) is skipped with a warning; so is any other unreadable line.

Several processes may share one cache (two `label` runs, `select` beside `label`). Before buying an
answer a run *claims* its key: a POSIX byte-range lock at a key-derived offset of `CACHE.lock`,
which the kernel releases when the process dies, however it dies. A run that finds a key claimed
waits for the other to finish it, then reads the answer the other paid for instead of buying it
again; runs on different trajectories never wait for each other.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no cross-process claims, one run per cache
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("critstep.oracle")

# Claim offsets are the first 7 hex digits of the key: distinct keys rarely share one, and when
# they do the only cost is that one waits for the other.
CLAIM_HEX = 7
CLAIM_POLL = 0.1

# One lock-file descriptor per path per process: POSIX locks belong to the process, and closing
# any descriptor of the file would drop all of them, so these are opened once and never closed.
_LOCK_FDS: dict[str, int] = {}
_HELD: set[tuple[str, str]] = set()
_HELD_CHANGED = threading.Condition()


def cache_key(model: str, endpoint: str, prompt_version: str, ratio: float, messages: list[dict[str, Any]]) -> str:
    """Identifies an answer: the model and the endpoint serving it, the prompt version, the ratio and the prompt.

    The prompt text embeds the trajectory content (as rendered), so any change to the data, the
    clipping or the prompt template makes a new key; so does another server under the same model name.
    """
    payload = {"model": model, "endpoint": endpoint, "prompt": prompt_version, "ratio": ratio, "messages": messages}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class LabelCache:
    """Entries by key, loaded from `path` (if it exists) and appended to as answers arrive."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._offset = 0  # bytes of the file already read
        self._torn_warned = False
        if self.path is not None and self.path.exists():
            self.refresh()

    def refresh(self) -> None:
        """Read what other processes appended since the last read (complete lines only)."""
        if self.path is None:
            return
        with self._lock:
            try:
                f = self.path.open("rb")
            except FileNotFoundError:
                return
            with f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            for raw in data[:end].splitlines():
                self._load_line(raw)
            tail = data[end:]
            if tail.strip():
                if self._complete_json(tail):
                    self._load_line(tail)
                    end = len(data)
                elif not self._torn_warned:
                    # A torn last line (or one being written right now): left for a later read.
                    log.warning("%s: skipping an unreadable cache line (a run was probably killed mid-write)", self.path)
                    self._torn_warned = True
            self._offset += end

    @staticmethod
    def _complete_json(raw: bytes) -> bool:
        try:
            json.loads(raw)
            return True
        except ValueError:
            return False

    def _load_line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            entry = json.loads(raw)
            key = entry["key"]
        except (ValueError, KeyError, TypeError):
            log.warning("%s: skipping an unreadable cache line (a run was probably killed mid-write)", self.path)
            return
        self.entries[key] = entry

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, entry: dict[str, Any]) -> None:
        """Record `entry` (which has a 'key') in memory and durably on disk before returning."""
        with self._lock:
            self.entries[entry["key"]] = entry
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if self._torn_tail(fd):
                    line = b"\n" + line  # never glue a new answer onto a torn line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    @contextmanager
    def claim(self, key: str, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold `key` against other threads and processes sharing this cache (waiting while another holds it).

        Inside, call `refresh()` and look the key up again: the holder before us may have answered it.
        """
        if self.path is None:
            yield
            return
        token = (str(self.path.resolve()), key)
        with _HELD_CHANGED:
            while token in _HELD:
                _HELD_CHANGED.wait(CLAIM_POLL)
                _check(cancel)
            _HELD.add(token)
        fd = _lock_fd(self.path)
        offset = int(key[:CLAIM_HEX], 16)
        try:
            while fd is not None:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                    break
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EAGAIN):  # no locks on this file system
                        log.warning("%s: cannot lock the cache (%s): runs sharing it may pay twice", self.path, e.strerror)
                        fd = None
                        break
                    time.sleep(CLAIM_POLL)  # another process holds the key
                    _check(cancel)
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
        finally:
            with _HELD_CHANGED:
                _HELD.discard(token)
                _HELD_CHANGED.notify_all()

    @staticmethod
    def _torn_tail(fd: int) -> bool:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        from critstep.selector.oracle.client import Cancelled

        raise Cancelled


def _lock_fd(path: Path) -> int | None:
    """The process's descriptor of `path`'s lock file, or None where claims are unavailable."""
    if fcntl is None:
        return None
    lock_path = str(path.resolve()) + ".lock"
    with _HELD_CHANGED:
        fd = _LOCK_FDS.get(lock_path)
        if fd is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                log.warning("%s: cannot create the lock file (%s): runs sharing this cache may pay twice", lock_path, e.strerror)
                return None
            _LOCK_FDS[lock_path] = fd
    return fd
