"""A disk cache of per-trajectory feature arrays, keyed by model + settings + content.

Embedding and LM features are the expensive part of distilling and selecting; recomputing them
for trajectories already seen (CV folds, benchmark variants, a second `select` run) is not paid
twice. One `.npz` per trajectory, written atomically, so an interrupted run resumes where it was.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from critstep.io import atomic_write
from critstep.trajectory import Trajectory


def content_key(trajectory: Trajectory, *settings: object) -> str:
    """A hash of everything the features depend on: the messages as the model sees them, the settings,
    and which message states the task where that is not the first user message (after an acknowledgement)."""
    parts: list[object] = [settings, [[m.role, m.text(), m.is_step] for m in trajectory.messages]]
    first_user = next((i for i, m in enumerate(trajectory.messages) if m.role == "user"), None)
    if trajectory.task_index != first_user:
        parts.append({"task": trajectory.task_index})
    payload = json.dumps(parts, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class FeatureCache:
    """Arrays by key under `root/<group>/`; `root=None` disables caching."""

    def __init__(self, root: str | Path | None, group: str):
        self.dir = Path(root) / group if root is not None else None

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.npz"

    def get(self, key: str) -> np.ndarray | None:
        if self.dir is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                return f["x"]
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed, not trusted

    def put(self, key: str, value: np.ndarray) -> None:
        if self.dir is None:
            return
        buf = io.BytesIO()
        np.savez(buf, x=value)
        with atomic_write(self._path(key), "wb") as f:
            f.write(buf.getvalue())
