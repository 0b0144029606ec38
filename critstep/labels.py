"""Teacher label files: the schema of `seed_labels.jsonl`, one line per labeled trajectory.

    {"id": "...", "n_steps": 17, "plan": "...",
     "critical": [{"step": 3, "category": "critical_action", "reason": "..."}]}

The oracle adds `usage` and, for trajectories it could not label, `status: "failed"` with an
`error`; failed lines carry no labels and are skipped by readers that want labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from critstep.errors import InputError
from critstep.io import read_records, write_jsonl
from critstep.selection import CATEGORIES, Selection
from critstep.trajectory import Trajectory


@dataclass(frozen=True)
class CriticalStep:
    step: int
    category: str
    reason: str = ""


@dataclass
class TrajectoryLabels:
    id: str
    n_steps: int
    critical: list[CriticalStep]
    plan: str = ""
    status: str = "ok"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        return sorted(c.step for c in self.critical)

    def to_selection(self) -> Selection:
        return Selection(self.id, self.steps, categories={c.step: c.category for c in self.critical})

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "n_steps": self.n_steps, "plan": self.plan}
        d["critical"] = [{"step": c.step, "category": c.category, "reason": c.reason} for c in sorted(self.critical, key=lambda c: c.step)]
        if self.status != "ok":
            d["status"] = self.status
            d["error"] = self.error
        d.update(self.extra)
        return d


def parse_labels(value: Any, path: str | Path, line: int) -> TrajectoryLabels:
    if not isinstance(value, dict):
        raise InputError("label record is not an object", path, line)
    for key in ("id", "n_steps"):
        if key not in value:
            raise InputError(f"label record has no {key!r}", path, line)
    ident = value["id"]
    if not isinstance(ident, str) or not ident:
        hint = f': write it as "{ident}"' if isinstance(ident, int) and not isinstance(ident, bool) else ""
        raise InputError(f"'id' must be a non-empty string (the trajectory's id), got {ident!r}{hint}", path, line)
    n_steps = value["n_steps"]
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0:
        raise InputError(f"n_steps must be a non-negative integer, got {n_steps!r}", path, line)
    status = value.get("status", "ok")
    if "critical" not in value and status == "ok":
        # Absent is not empty: "no critical steps" must be said with "critical": [].
        raise InputError("label record has no 'critical' list (write \"critical\": [] for a trajectory without critical steps)", path, line)
    critical_raw = value.get("critical", [])
    if not isinstance(critical_raw, list):
        raise InputError("'critical' must be a list", path, line)
    critical: list[CriticalStep] = []
    seen: set[int] = set()
    for c in critical_raw:
        if not isinstance(c, dict) or not isinstance(c.get("step"), int) or isinstance(c.get("step"), bool):
            raise InputError(f"critical entry {c!r} has no integer 'step'", path, line)
        step = c["step"]
        if not 0 <= step < n_steps:
            raise InputError(f"step {step} out of range for {n_steps} steps (0-based)", path, line)
        if step in seen:
            raise InputError(f"step {step} is listed twice", path, line)
        category = c.get("category", "critical_action")
        if category not in CATEGORIES:
            raise InputError(f"step {step} has unknown category {category!r} (expected one of {', '.join(CATEGORIES)})", path, line)
        seen.add(step)
        critical.append(CriticalStep(step, category, str(c.get("reason", ""))))
    known = {"id", "n_steps", "plan", "critical", "status", "error"}
    return TrajectoryLabels(
        id=ident,
        n_steps=n_steps,
        critical=critical,
        plan=str(value.get("plan") or ""),
        status=status,
        error=value.get("error"),
        extra={k: v for k, v in value.items() if k not in known},
    )


def read_labels(
    path: str | Path,
    trajectories: Iterable[Trajectory] | None = None,
    include_failed: bool = False,
    skip_unknown: bool = False,
) -> dict[str, TrajectoryLabels]:
    """Labels by trajectory id, validated; against `trajectories` too when given.

    With trajectories, an unknown id or an `n_steps` that disagrees with the trajectory is an
    error naming the label file's line: labels for another version of the data must not be used.
    `skip_unknown` leaves labels of other trajectories out instead (scoring a part of a file).
    A file without any usable labels is an error too: nothing downstream can work from it.
    """
    by_id = {t.id: t for t in trajectories} if trajectories is not None else None
    out: dict[str, TrajectoryLabels] = {}
    records = read_records(path)
    for rec in records:
        labels = parse_labels(rec.value, path, rec.line)
        if labels.id in out:
            raise InputError(f"trajectory {labels.id!r} is labeled twice", path, rec.line)
        if by_id is not None:
            traj = by_id.get(labels.id)
            if traj is None:
                if skip_unknown:
                    continue
                raise InputError(f"labels for unknown trajectory id {labels.id!r}", path, rec.line)
            if traj.n_steps != labels.n_steps:
                raise InputError(_step_count_mismatch(labels, traj), path, rec.line)
        if labels.status == "ok" or include_failed:
            out[labels.id] = labels
    if not out and not skip_unknown:  # with skip_unknown, the caller says which trajectories it looked for
        raise InputError("no labels: the file is empty" if not records else f"no labels: all {len(records)} records are failed ones", path)
    return out


def _step_count_mismatch(labels: TrajectoryLabels, trajectory: Trajectory) -> str:
    source = f" in {trajectory.origin.path}" if trajectory.origin else ""
    return (
        f"n_steps {labels.n_steps} but trajectory {labels.id!r} has {trajectory.n_steps} steps{source} "
        "(its assistant messages, an instruction acknowledgement excepted): these labels were made for another "
        "version of the trajectory; label it again (critstep label) or remove this line"
    )


def write_labels(path: str | Path, labels: Iterable[TrajectoryLabels]) -> None:
    write_jsonl(path, (lab.to_dict() for lab in labels))


def selections_from_labels(labels: Mapping[str, TrajectoryLabels]) -> dict[str, Selection]:
    return {k: v.to_selection() for k, v in labels.items()}
