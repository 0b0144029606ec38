"""eval.json and eval.md: the figures of one evaluation, machine- and human-readable.

Inputs are recorded by name, never by absolute path, so a report can be shared as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from critstep.io import atomic_write, write_json

METRICS = (("action_match", "action match"), ("action_match_normalized", "normalized"), ("nll", "NLL"))


def display_ref(ref: str | Path | None) -> str | None:
    """A model or file reference as shown in reports: local paths by their last component."""
    if ref is None:
        return None
    path = Path(ref)
    return path.name if path.is_absolute() or path.exists() else str(ref)


def write_offline_report(out: Path, meta: dict[str, Any], summary: dict[str, Any], timing: dict[str, Any]) -> None:
    report = {"kind": "offline", **meta, **summary, "timing": timing}
    write_json(out / "eval.json", report)
    with atomic_write(out / "eval.md") as f:
        f.write(offline_markdown(report))


def offline_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Agent evaluation: {report['model']}" + (f" + {report['adapter']}" if report.get("adapter") else ""), ""]
    lines.append(f"Trajectories: `{report['trajectories']}`" + (f"; teacher labels: `{report['labels']}`" if report.get("labels") else "")
                 + f"; backend: {report['backend']}. Each step is generated greedily from the gold prefix. "
                 "Intervals: 95%, bootstrap over trajectories.")
    lines += ["", "## All steps", "", *_table(report, None)]
    if "critical" in report["overall"]:
        lines += ["", "## Teacher-critical steps", "", *_table(report, "critical")]
    t = report["timing"]
    lines += ["", f"{t['steps']} steps in {t['seconds']:.1f} s ({t['steps_per_s']:.2f} steps/s); "
              f"generation {t['generation_share']:.0%} of the time, forward passes (NLL + prompt prefill) {t['forward_share']:.0%}."]
    return "\n".join(lines) + "\n"


def _table(report: dict[str, Any], subset: str | None) -> list[str]:
    rows = [("overall", report["overall"])] + list(report["per_env"].items())
    lines = ["| env | trajectories | steps | " + " | ".join(name for _, name in METRICS) + " |",
             "|---|---:|---:|" + "---:|" * len(METRICS)]
    for env, figures in rows:
        f = figures.get(subset) if subset else figures
        if not f:
            continue
        cells = [_cell(f[key], f["ci95"].get(key)) for key, _ in METRICS]
        lines.append(f"| {env} | {f['n_trajectories']} | {f['n_steps']} | " + " | ".join(cells) + " |")
    return lines


def _cell(value: float | None, ci: list[float] | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


def write_live_report(out: Path, meta: dict[str, Any], summary: dict[str, Any], episodes: list[dict[str, Any]]) -> None:
    report = {"kind": "live", **meta, "episodes": episodes, **summary}
    write_json(out / "eval.json", report)
    with atomic_write(out / "eval.md") as f:
        f.write(live_markdown(report))


def live_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Live evaluation in {report['env']}: {report['model']}" + (f" + {report['adapter']}" if report.get("adapter") else ""), "",
             f"Step limit {report['max_steps']}; score 0-100 at the end of the episode (negative scores of failed tasks count as 0).", "",
             "| task | variation | score | success | steps | invalid actions | end |", "|---|---:|---:|---|---:|---:|---|"]
    for e in report["episodes"]:
        lines.append(f"| {e['task']} | {e['variation']} | {e['score']:.0f} | {'yes' if e['success'] else 'no'} | {e['steps']} | {e['invalid_actions']} | {e['end']} |")
    m = report["mean"]
    ci = m["score_ci95"]
    lines += ["", f"Mean over {m['episodes']} episodes: score {m['score']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
              + f", success {m['success']:.0%}, {m['steps']:.1f} steps, {m['invalid_actions']:.1f} invalid actions per episode."]
    return "\n".join(lines) + "\n"
