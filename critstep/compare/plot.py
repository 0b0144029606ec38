"""Cost versus F1: one labelled point per selector on a log-scale dollar axis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from critstep.compare.report import Row
from critstep.io import atomic_write

FLOOR_USD = 0.001  # dollars per 1,000 trajectories


def plot_cost_vs_f1(path: str | Path, rows: Sequence[Row], teacher_agreement: float | None = None) -> list[str]:
    """Write the PNG; returns the names left out for having no measured cost.

    Costs under a tenth of a cent per 1,000 trajectories (the `all` and `random` baselines) are
    drawn at that floor and labelled "<$0.001": a log axis would otherwise stretch over decades
    that mean nothing to anyone choosing a selector.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.usd_per_1k is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    placed: list[tuple[float, float]] = []
    for r in shown:
        cost = r.usd_per_1k or 0.0
        x = max(cost, FLOOR_USD)
        marker = "s" if r.oracle_calls and r.oracle_share >= 1 else ("D" if r.oracle_calls else "o")
        ax.scatter([x], [r.f1], s=45, marker=marker, zorder=3)
        label = r.name if cost >= FLOOR_USD else f"{r.name} (<${FLOOR_USD:g})"
        # Labels of points that sit close together are stacked downwards instead of overprinted.
        near = sum(1 for px, py in placed if abs(math.log10(px / x)) < 0.3 and abs(py - r.f1) < 0.05)
        placed.append((x, r.f1))
        ax.annotate(label, (x, r.f1), textcoords="offset points", xytext=(6, 4 - 11 * near), fontsize=8)
    if teacher_agreement is not None:
        ax.axhline(teacher_agreement, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"teacher agreement {teacher_agreement:g}", (0.01, teacher_agreement), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 4), fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("dollars per 1,000 trajectories (log scale)")
    ax.set_ylabel("F1 against the teacher labels")
    ax.set_ylim(0, 1.05)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Selector cost versus agreement with the teacher")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=130)
    plt.close(fig)
    return [r.name for r in rows if r.usd_per_1k is None]
