"""The comparison table: agreement with the teacher labels and cost, as JSON and Markdown."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from critstep.compare.costs import ComputePrices, per_thousand
from critstep.compare.run import SelectorResult
from critstep.io import atomic_write, write_json
from critstep.labels import TrajectoryLabels
from critstep.trajectory import Trajectory

Evaluate = Callable[..., dict[str, Any]]


@dataclass
class Row:
    """One selector's line of the report. Cost and time are None where nothing was measured."""

    name: str
    f1: float
    precision: float
    recall: float
    kappa: float
    share_selected: float
    usd_per_1k: float | None
    wall_seconds: float | None
    device: str | None
    oracle_calls: int
    oracle_share: float
    notes: list[str] = field(default_factory=list)


def build_rows(
    results: Sequence[SelectorResult],
    gold: Mapping[str, TrajectoryLabels],
    trajectories: Mapping[str, Trajectory],
    prices: ComputePrices,
    evaluate: Evaluate,
) -> list[Row]:
    """Score every result against `gold` with the project's metrics and price its run."""
    rows = []
    for r in results:
        m = evaluate(r.selections, gold, trajectories)
        usd: float | None = None
        if r.seconds is not None:
            usd = r.oracle_usd + prices.usd(r.seconds, r.device or "cpu")
        elif r.oracle_usd:
            usd = r.oracle_usd
        rows.append(
            Row(
                name=r.name,
                f1=float(m["f1"]),
                precision=float(m["precision"]),
                recall=float(m["recall"]),
                kappa=float(m["kappa"]),
                share_selected=float(m["share_selected"]),
                usd_per_1k=None if usd is None else per_thousand(usd, r.n_trajectories),
                wall_seconds=r.seconds,
                device=r.device,
                oracle_calls=r.oracle_calls,
                oracle_share=r.oracle_share,
                notes=list(r.notes),
            )
        )
    return rows


def write_report_json(path: str | Path, rows: Sequence[Row], meta: Mapping[str, Any]) -> None:
    write_json(path, {**meta, "selectors": [asdict(r) for r in rows]})


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3g}"


def render_markdown(rows: Sequence[Row], meta: Mapping[str, Any]) -> str:
    lines = [
        "# Selector comparison",
        "",
        f"{meta['n_trajectories']} labeled trajectories ({meta['n_steps']} steps) of `{meta['trajectories']}`, "
        f"against `{meta['labels']}`; ratio {meta['ratio']}.",
        "",
        "| selector | F1 | κ | precision | recall | share selected | $ / 1k traj | wall s | oracle calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r.usd_per_1k is None, r.usd_per_1k or 0.0)):
        lines.append(
            f"| {r.name} | {r.f1:.3f} | {r.kappa:.3f} | {r.precision:.3f} | {r.recall:.3f} | {r.share_selected:.3f} | "
            f"{_usd(r.usd_per_1k)} | {_fmt(r.wall_seconds, '.2f')} | {r.oracle_calls} |"
        )
    lines += ["", "Cost: oracle tokens x the price table "
              f"(`{meta['oracle_prices']}`, as of {meta['oracle_prices_as_of']}); local wall time x $/hour "
              f"(`{meta['compute_prices']}`, as of {meta['compute_prices_as_of']}). '—' = not measured (collected predictions)."]
    if meta.get("teacher_agreement") is not None:
        lines.append(f"Teacher agreement (two teachers on the same steps): F1 {meta['teacher_agreement']}.")
    notes = [(r.name, n) for r in rows for n in r.notes]
    if notes:
        lines += ["", "Notes:"] + [f"- {name}: {n}" for name, n in notes]
    return "\n".join(lines) + "\n"


def write_report_markdown(path: str | Path, rows: Sequence[Row], meta: Mapping[str, Any]) -> None:
    with atomic_write(path) as f:
        f.write(render_markdown(rows, meta))
