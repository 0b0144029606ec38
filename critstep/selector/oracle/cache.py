"""A persistent answer cache: append-only JSONL, one fsync'd line per paid answer.

Every answer is written the moment it arrives, so a run killed at any instant (kill -9 included)
loses at most the requests in flight, and a re-run pays for nothing twice. A torn last line (the
kill landed mid-write) is skipped with a warning; so is any other unreadable line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("critstep.oracle")


def cache_key(model: str, prompt_version: str, ratio: float, messages: list[dict[str, Any]]) -> str:
    """Identifies an answer: the model, the prompt version, the ratio and the exact prompt text.

    The prompt text embeds the trajectory content (as rendered), so any change to the data, the
    clipping or the prompt template makes a new key.
    """
    payload = json.dumps({"model": model, "prompt": prompt_version, "ratio": ratio, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class LabelCache:
    """Entries by key, loaded from `path` (if it exists) and appended to as answers arrive."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                    key = entry["key"]
                except (ValueError, KeyError, TypeError):
                    log.warning("%s:%d: skipping an unreadable cache line (a run was probably killed mid-write)", self.path, lineno)
                    continue
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

    @staticmethod
    def _torn_tail(fd: int) -> bool:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
