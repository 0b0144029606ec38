"""`critstep compare`: selectors side by side on cost and agreement with the teacher."""

from __future__ import annotations

from pathlib import Path

import click

from critstep.commands._oracle_options import oracle_request_options
from critstep.errors import ConfigError, InputError
from critstep.formats import FORMATS

DEFAULT_SELECTORS = "distilled,cascade,perplexity,random,all"
DEFAULT_BUDGETS = ("5%", "10%", "25%", "50%")
KNOWN = ("oracle", "distilled", "cascade", "perplexity", "random", "all")


def _pairs(values: tuple[str, ...]) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--pred takes NAME=FILE, got {v!r}")
        out.append((name, Path(path)))
    return out


@click.command("compare")
@click.argument("trajectories", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Teacher labels to score against; only trajectories labeled here are compared.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.json, report.md and cost_vs_f1.png.")
@click.option("--selectors", default=DEFAULT_SELECTORS, show_default=True,
              help=f"Comma-separated selectors to run: {', '.join(KNOWN)}. 'oracle' is added when --oracle-labels is given.")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Distilled model directory (critstep distill --out) for distilled and cascade. [default: the shipped model, "
                   "or, where it was trained on the compared trajectories, the distilled selector cross-fitted over them]")
@click.option("--budget", "budgets", multiple=True, default=DEFAULT_BUDGETS, show_default=True,
              help="Cascade oracle budget, repeatable: 25% (share of trajectories), $2.50 (dollars) or 40 (calls).")
@click.option("--uncertainty", type=click.Choice(["disagreement", "margin"]), default="disagreement", show_default=True,
              help="How the cascade ranks trajectories for the oracle.")
@click.option("--oracle-labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labels the oracle already gave (critstep label --out): the oracle's point, and the cascade's "
                   "answers, without new calls. Without it the cascade calls the live oracle (cache first).")
@click.option("--oracle-model", default=None, help="Oracle model, for prices and live calls (default: gpt-4o at OpenAI; elsewhere the served model).")
@click.option("--oracle-cache", type=click.Path(dir_okay=False, path_type=Path), help="Oracle cache file (default: the critstep cache).")
@click.option("--base-url", help="OpenAI-compatible server for live oracle calls (default: OPENAI_BASE_URL, else OpenAI).")
@oracle_request_options
@click.option("--pred", "preds", multiple=True, metavar="NAME=FILE",
              help="Collect a selection made elsewhere (label file or trajectories written by critstep select); repeatable.")
@click.option("--teacher-agreement", type=float, help="F1 between two teachers, drawn as a line (e.g. 0.86).")
@click.option("--ratio", type=float, default=0.3, show_default=True, help="Share of steps a selector may choose (ATLaS: 0.3).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random selector.")
@click.option("--lm", default="smollm2-135m", show_default=True, help="Language model of the perplexity selector.")
@click.option("--device", help="cpu or cuda (default: cuda if available).")
@click.option("--compute-prices", type=click.Path(dir_okay=False, path_type=Path),
              help="CPU/GPU $/hour: a file here, else one of critstep's configs (default: configs/compute_prices.yaml).")
@click.option("--prices", type=click.Path(dir_okay=False, path_type=Path),
              help="Oracle price table: a file here, else one of critstep's configs (default: configs/prices.yaml).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Input format (default: detected per record).")
def command(
    trajectories: Path,
    labels: Path,
    out: Path,
    selectors: str,
    model_dir: Path | None,
    budgets: tuple[str, ...],
    uncertainty: str,
    oracle_labels: Path | None,
    oracle_model: str | None,
    oracle_cache: Path | None,
    base_url: str | None,
    response_format: str,
    timeout: float,
    concurrency: int,
    max_retries: int,
    preds: tuple[str, ...],
    teacher_agreement: float | None,
    ratio: float,
    seed: int,
    lm: str,
    device: str | None,
    compute_prices: Path | None,
    prices: Path | None,
    fmt: str | None,
) -> None:
    """Compare selectors on TRAJECTORIES: F1, kappa, precision, recall against --labels, dollars
    per 1,000 trajectories, wall time and share of steps selected.

    \b
    Example:
      critstep compare corpus.jsonl --labels test_labels.jsonl --model runs/distilled \\
          --oracle-labels test_labels.jsonl --teacher-agreement 0.86 --out runs/compare
    """
    from critstep.compare.pipeline import CompareOptions, run_compare
    from critstep.selector.cascade import Budget

    names = [s.strip() for s in selectors.split(",") if s.strip()]
    unknown = [s for s in names if s not in KNOWN]
    if unknown:
        raise ConfigError(f"unknown selector(s) {', '.join(unknown)} (known: {', '.join(KNOWN)})")
    if oracle_labels is not None and "oracle" not in names:
        names.insert(0, "oracle")
    if not 0 < ratio <= 1:
        raise ConfigError(f"--ratio must be in (0, 1], got {ratio}")
    if not names and not preds:
        raise InputError("nothing to compare: give --selectors or --pred")
    options = CompareOptions(
        selectors=names,
        model_dir=model_dir,
        budgets=[Budget.parse(b) for b in budgets],
        uncertainty=uncertainty,
        oracle_labels=oracle_labels,
        oracle_model=oracle_model,
        oracle_cache=oracle_cache,
        base_url=base_url,
        oracle_request={"response_format": response_format, "timeout": timeout, "concurrency": concurrency, "max_retries": max_retries},
        preds=_pairs(preds),
        teacher_agreement=teacher_agreement,
        ratio=ratio,
        seed=seed,
        lm=lm,
        device=device,
        compute_prices=compute_prices,
        prices=prices,
        format=fmt,
    )
    report = run_compare(trajectories, labels, out, options, echo=lambda m: click.echo(m, err=True))
    click.echo(report.markdown_table)
    click.echo(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'cost_vs_f1.png'}")
