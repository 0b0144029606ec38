"""What a labeling run reports: the offline estimate and the outcome of `OracleLabeler.label`."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from critstep.labels import TrajectoryLabels
from critstep.trajectory import Trajectory


@dataclass
class CostEstimate:
    """What labeling would cost, computed offline before any call (prompt tokens ~ chars / 4)."""

    model: str
    trajectories: int
    requests: int
    cached: int
    empty: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    batch_cost_usd: float
    price_known: bool
    prices_as_of: str

    def summary(self) -> str:
        price = f"prices as of {self.prices_as_of}" if self.price_known else f"no price for {self.model}: counted as $0"
        return (
            f"{self.trajectories:,} trajectories: {self.requests:,} to send, {self.cached:,} cached, {self.empty:,} without steps\n"
            f"estimated tokens: {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
            f"(approximation: characters / 4, no tokenizer offline; expect +-20%)\n"
            f"estimated cost with {self.model}: ${self.cost_usd:,.2f} (Batch API: ${self.batch_cost_usd:,.2f}); {price}"
        )


def reason_kind(reason: str) -> str:
    """A failure reason with its numbers blanked, so that failures of one kind count together."""
    return re.sub(r"\d+", "N", " ".join(reason.split()))[:120]


@dataclass
class LabelRun:
    """The outcome of one `label` call; `labels` holds only valid labels, `failed` the reasons.

    `oracle` (model and endpoint) goes into every record written. `cached_failures` counts
    failures served from the cache (`--retry-failed` asks again); `estimated_usage` answers whose
    server reported no usable token counts (their cost is estimated from the text).
    """

    model: str
    labels: dict[str, TrajectoryLabels] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unlabeled: list[str] = field(default_factory=list)
    stopped: str | None = None
    fatal: bool = False
    interrupted: bool = False
    price_known: bool = True
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    oracle: dict[str, str] = field(default_factory=dict)
    cached_failures: int = 0
    estimated_usage: int = 0

    def records(self, trajectories: Sequence[Trajectory]) -> list[TrajectoryLabels]:
        """Label-file records in input order: valid labels and failures, each with its usage."""
        out: list[TrajectoryLabels] = []
        for t in trajectories:
            if t.id in self.labels:
                out.append(self.labels[t.id])
            elif t.id in self.failed:
                extra: dict[str, Any] = {"usage": self.usage[t.id]} if t.id in self.usage else {}
                if self.oracle:
                    extra["oracle"] = self.oracle
                out.append(TrajectoryLabels(t.id, t.n_steps, [], status="failed", error=self.failed[t.id], extra=extra))
        return out

    @property
    def labeled_with_steps(self) -> int:
        return sum(1 for lab in self.labels.values() if lab.n_steps > 0)

    def failure_breakdown(self, limit: int = 5) -> list[tuple[int, str]]:
        """The commonest kinds of failure, most frequent first: (count, one reason of that kind)."""
        kinds: Counter[str] = Counter()
        example: dict[str, str] = {}
        for reason in self.failed.values():
            kind = reason_kind(reason)
            kinds[kind] += 1
            example.setdefault(kind, reason)
        return [(n, example[kind]) for kind, n in kinds.most_common(limit)]

    def summary(self) -> str:
        price = "" if self.price_known else f" (no price for {self.model} in the price table: counted as $0)"
        lines = [
            f"labeled {len(self.labels):,}, failed {len(self.failed):,}, unlabeled {len(self.unlabeled):,}; "
            f"{self.calls:,} API calls, {self.cache_hits:,} cache hits",
            f"tokens: {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion; cost ${self.cost_usd:,.4f}{price}",
        ]
        if self.estimated_usage:
            lines.append(f"{self.estimated_usage:,} answers came without usable token counts: their tokens are estimated (characters / 4)")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)
