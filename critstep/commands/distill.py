"""`critstep distill`: train the distilled selector on teacher labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from critstep.commands._features import cache_arg, feature_config, feature_options
from critstep.commands._options import FORMAT_OPTION, input_argument, limit_option
from critstep.errors import ConfigError


@click.command("distill")
@input_argument("traj")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="Teacher labels (seed_labels.jsonl schema).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model directory to write.")
@FORMAT_OPTION
@limit_option("labeled trajectories (in the order of the labels file)")
@feature_options
@click.option("--classifier", type=click.Choice(["hgb", "logreg"]), default="hgb", show_default=True, help="Gradient boosting or logistic regression.")
@click.option("--folds", type=click.IntRange(min=0), default=5, show_default=True, help="Grouped cross-validation folds (0: skip CV).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat the cross-validation with this many different shuffles and report the spread.")
@click.option("--base", "base_dir", default=None, metavar="DIR|shipped",
              help="Adapt this trained model ('shipped': the one critstep ships) to the envs of --labels instead of training "
                   "from scratch: the model is refitted on the rows it was trained on plus these few labeled trajectories, "
                   "and each of their envs gets its own cut.")
@click.option("--ratio", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.3, show_default=True, help="Per-trajectory cap used for CV and the threshold.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--suggest", "suggest_n", type=click.IntRange(min=1), help="Then list the N unlabeled trajectories of TRAJ most worth labeling next.")
@click.option("--out-suggest", type=click.Path(dir_okay=False, path_type=Path), help="JSONL file for --suggest (rank, id, score, reason).")
def command(
    traj: str,
    labels_path: Path,
    out: Path,
    fmt: str | None,
    limit: int | None,
    embedder: str | None,
    lm: str | None,
    groups: str | None,
    max_window_tokens: int | None,
    dtype: str | None,
    device: str | None,
    cache_dir: str | None,
    no_cache: bool,
    classifier: str,
    folds: int,
    repeats: int,
    base_dir: str | None,
    ratio: float,
    seed: int,
    as_json: bool,
    suggest_n: int | None,
    out_suggest: Path | None,
) -> None:
    """Train on the labeled trajectories of TRAJ and report grouped k-fold CV by trajectory.

    \b
    Examples:
      critstep distill corpus.jsonl --labels seed_labels.jsonl --out models/distilled --repeats 3
      critstep distill my_env.jsonl --labels my_labels.jsonl --base shipped --out models/adapted

    With --base, the model is adapted to the envs of --labels (10 labeled trajectories of a new
    env are a good start; see the README); `--base shipped` names the model critstep ships.
    """
    from critstep.distill.features import FeatureExtractor
    from critstep.distill.metrics import format_report
    from critstep.distill.train import train_distilled
    from critstep.formats import read_trajectories
    from critstep.io import SUGGESTIONS_FILE, check_outputs_apart, check_replaceable_file
    from critstep.labels import read_labels
    from critstep.streams import expand_source

    if (suggest_n is None) != (out_suggest is None):
        raise ConfigError("--suggest N and --out-suggest FILE go together")
    if base_dir is not None and suggest_n is not None:
        raise ConfigError("--suggest ranks with a model trained here; run it without --base")
    from critstep.distill.persistence import default_model_dir

    package = default_model_dir().parents[2]
    if out is not None and out.resolve().is_relative_to(package.resolve()):
        raise ConfigError(f"--out {out} is inside the installed critstep package (its shipped model among it); write elsewhere")
    base_input = default_model_dir() if base_dir == "shipped" else None if base_dir is None else Path(base_dir)
    check_outputs_apart({"TRAJ": expand_source(traj), "--labels": labels_path, "--base": base_input}, {"--out-suggest": out_suggest},
                        {"--out": out})
    check_replaceable_file(out_suggest, SUGGESTIONS_FILE, "--out-suggest")
    trajectories = read_trajectories(traj, fmt)
    labels = read_labels(labels_path, trajectories)
    if limit is not None:
        labels = dict(list(labels.items())[:limit])
    if base_dir is not None:
        if (folds, repeats, seed) != (5, 1, 0):
            raise ConfigError("--base adapts without cross-validation; drop --folds/--repeats/--seed")
        _adapt(base_dir, trajectories, labels, out, ratio, device, cache_arg(cache_dir, no_cache), as_json,
               fixed=bool(embedder or lm or groups or max_window_tokens or dtype or classifier != "hgb"))
        return
    config = feature_config(embedder, lm, groups, max_window_tokens, dtype)
    click.echo(f"{len(labels)} labeled trajectories; features: {', '.join(config.groups)}", err=True)
    extractor = FeatureExtractor(config, device=device, cache=cache_arg(cache_dir, no_cache), progress=True)
    report = train_distilled(trajectories, labels, out, classifier=classifier, folds=folds, ratio=ratio, seed=seed, repeats=repeats,
                             extractor=extractor, progress=True)
    trained = report.pop("model")
    if suggest_n is not None and out_suggest is not None:
        from critstep.distill.active import suggest, trajectory_embeddings, write_suggestions
        from critstep.selector.distilled import DistilledSelector

        # the model just trained scores the unlabeled trajectories with the feature models already loaded
        model = DistilledSelector(report.get("out_dir"), model=trained, extractor=extractor)
        picks = suggest(trajectories, labels, suggest_n, model.score, lambda ts: trajectory_embeddings(extractor, ts), ratio)
        write_suggestions(out_suggest, picks)
        click.echo(f"{len(picks)} trajectories to label next written to {out_suggest}", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    cv = report.get("cv")
    if cv:
        for mode in ("default", "threshold", "count", "ratio"):
            spread = cv[mode]["spread"]
            title = f"{cv['folds']}-fold CV by trajectory, {mode} mode" + (" (each fold model's own choice)" if mode == "default" else "")
            click.echo(f"== {title} ==")
            if cv["repeats"] > 1:
                click.echo(f"micro F1 over {cv['repeats']} repeats: {spread['f1']['mean']:.3f} ± {spread['f1']['std']:.3f} "
                           f"(range {spread['f1']['min']:.3f}-{spread['f1']['max']:.3f}); first repeat:")
            click.echo(format_report(cv[mode]))
    policy = report["policy"]
    click.echo(f"default mode {policy['mode']} (threshold {policy['threshold']:.2f}, count scale {policy['count_scale']:.2f}); "
               f"model saved to {report['out_dir']}")


def _adapt(base: str, trajectories, labels, out: Path, ratio: float, device, cache, as_json: bool, fixed: bool) -> None:  # type: ignore[no-untyped-def]
    from critstep.distill.adapt import adapt_distilled
    from critstep.distill.persistence import default_model_dir

    base_dir = default_model_dir() if base == "shipped" else Path(base)
    if not base_dir.is_dir():
        raise ConfigError(f"--base {base}: no such model directory (give a directory from `critstep distill`, or 'shipped')")
    if fixed:
        raise ConfigError("--base keeps the base model's features and classifier; drop --features/--embedder/--lm/--classifier")
    report = adapt_distilled(base_dir, trajectories, labels, out, ratio=ratio, device=device, cache=cache, progress=True)
    report.pop("model")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for env, info in report["envs"].items():
        if not info["trajectories"]:
            click.echo(f"{env}: {info['why']} ({info['threshold']:.2f})")
            continue
        before = report["before"]["per_env"][env]["f1"]
        after = report["after_out_of_fold"]["per_env"][env]["f1"]
        if info["adapted"]:
            click.echo(f"{env}: {info['trajectories']} labeled trajectories; F1 base {before:.3f} -> adapted {after:.3f} "
                       "(each trajectory scored out of fold, with a cut tuned on the others)")
        else:
            click.echo(f"{env}: {info['trajectories']} labeled trajectories; F1 {before:.3f}; {info['why']}")
    if "warning" in report:
        click.echo(f"warning: {report['warning']}", err=True)
    click.echo(f"adapted model saved to {report['out_dir']}")

