"""`critstep evaluate`: agreement of a selection with teacher labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from critstep.commands._options import FORMAT_OPTION


@click.command("evaluate")
@click.option("--pred", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="Selected trajectories (output of `critstep select`).")
@click.option("--gold", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="Teacher labels (seed_labels.jsonl schema).")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The distilled model that made --pred, to warn when it is scored on its own training data. [default: the shipped model]")
@click.option("--json", "as_json", is_flag=True, help="Print all metrics as JSON.")
@FORMAT_OPTION
def command(pred: Path, gold: Path, model_dir: Path | None, as_json: bool, fmt: str | None) -> None:
    """Micro F1, precision, recall and Cohen's kappa of --pred against --gold, per env and
    category; with step scores also AUROC, average precision, Brier and ECE.

    Only the labeled trajectories that --pred holds are scored (a partial prediction file
    against a larger gold file); the count of the others is reported.

    Example: critstep evaluate --pred selected.jsonl --gold seed_labels.jsonl
    """
    from critstep.distill.metrics import evaluate_selections, format_report
    from critstep.distill.persistence import default_model_dir, in_sample_warning
    from critstep.errors import InputError
    from critstep.formats import read_trajectories
    from critstep.labels import read_labels
    from critstep.selection import Selection, selected_steps

    trajectories = read_trajectories(pred, fmt)
    by_id = {t.id: t for t in trajectories}
    selections: dict[str, Selection] = {}
    for t in trajectories:
        steps = selected_steps(t)
        if steps is None:
            continue
        scores = t.metadata.get("step_scores")
        if scores is not None and (not isinstance(scores, list) or len(scores) != t.n_steps):
            where = t.origin.line if t.origin else None
            raise InputError(f"step_scores of {t.id!r} must be a list of {t.n_steps} numbers", pred, where)
        selections[t.id] = Selection(t.id, steps, scores=[float(s) for s in scores] if scores is not None else None)
    # Checked against the predicted trajectories: a step count that differs is an error naming the
    # label file's line (labels of another version of the data); labels of trajectories --pred
    # does not hold are left out and counted.
    everything = read_labels(gold)
    labels = read_labels(gold, trajectories, skip_unknown=True)
    if not labels:
        raise InputError(f"none of the {len(everything)} labeled trajectories is in {pred}", gold)
    missing = [tid for tid in labels if tid not in selections]
    if missing:
        raise InputError(f"{len(missing)} labeled trajectories have no selection in {pred} (first: {missing[0]!r})", gold)
    if len(labels) < len(everything):
        click.echo(f"scoring the {len(labels)} of {len(everything)} labeled trajectories that {pred.name} holds "
                   f"({len(everything) - len(labels)} have no prediction there)", err=True)
    warning = in_sample_warning(model_dir or default_model_dir(), list(labels), shipped=model_dir is None)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    metrics = evaluate_selections(selections, labels, by_id)
    click.echo(json.dumps(metrics, indent=2) if as_json else format_report(metrics))
