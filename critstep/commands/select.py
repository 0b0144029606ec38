"""`critstep select`: choose critical steps with any selector and write them back as flags."""

from __future__ import annotations

from pathlib import Path

import click

from critstep.cli import FORMAT_OPTION
from critstep.commands._features import cache_arg, feature_options
from critstep.errors import ConfigError

SELECTOR_NAMES = ["distilled", "cascade", "oracle", "all", "random", "perplexity"]


@click.command("select")
@click.argument("traj", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--selector", "name", type=click.Choice(SELECTOR_NAMES), default="distilled", show_default=True)
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Distilled model directory (from `critstep distill`). [default: the model shipped with critstep]")
@click.option("--ratio", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.3, show_default=True, help="At most this share of each trajectory's steps (rounded down, at least 1).")
@click.option("--mode", type=click.Choice(["threshold", "count", "ratio"]), default=None,
              help="Distilled/cascade: how many steps to keep: steps above the model's tuned threshold, its learned count per "
                   "trajectory, or 'ratio' to fill the --ratio cap. [default: the model's own mode, the one that agreed best with the teacher]")
@click.option("--threshold", is_flag=True, help="Same as --mode threshold.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random selector.")
@click.option("--budget", default=None, help="Cascade: oracle budget, as 25% (share of trajectories), 40 (calls) or $2.50 (dollars).")
@click.option("--uncertainty", type=click.Choice(["disagreement", "margin"]), default="disagreement", show_default=True,
              help="Cascade: how the trajectories the distilled model is least sure of are found.")
@click.option("--oracle-model", default="gpt-4o", show_default=True, help="Oracle/cascade: model at the OpenAI-compatible endpoint.")
@click.option("--base-url", default=None, help="Oracle/cascade: endpoint (default: $OPENAI_BASE_URL, else OpenAI). The key comes from $OPENAI_API_KEY.")
@click.option("--oracle-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Oracle/cascade: answer cache (default: $CRITSTEP_CACHE/oracle/cache.jsonl).")
@click.option("--max-cost", type=float, default=None, help="Oracle: stop before spending more than this many dollars.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output JSONL: trajectories with critical_steps, step_scores and per-message flags.")
@FORMAT_OPTION
@feature_options
def command(
    traj: Path,
    name: str,
    model_dir: Path | None,
    ratio: float,
    mode: str | None,
    threshold: bool,
    seed: int,
    budget: str | None,
    uncertainty: str,
    oracle_model: str,
    base_url: str | None,
    oracle_cache: Path | None,
    max_cost: float | None,
    out: Path,
    fmt: str | None,
    embedder: str | None,
    lm: str | None,
    groups: str | None,
    max_window_tokens: int | None,
    dtype: str | None,
    device: str | None,
    cache_dir: str | None,
    no_cache: bool,
) -> None:
    """Select the critical steps of every trajectory of TRAJ and write them to OUT.

    \b
    Examples:
      critstep select corpus.jsonl --out selected.jsonl
      critstep select corpus.jsonl --selector distilled --model models/distilled --mode ratio --out selected.jsonl
      critstep select corpus.jsonl --selector cascade --budget 10% --out cascade.jsonl
      critstep select corpus.jsonl --selector oracle --oracle-model gpt-4o --max-cost 5 --out oracle.jsonl
      critstep select corpus.jsonl --selector random --seed 1 --out random.jsonl

    The oracle leaves out trajectories it could not label; the cascade keeps the distilled choice for them.
    """
    from collections import Counter

    from critstep.formats import read_trajectories, write_trajectories
    from critstep.selector import build_selector

    cache = cache_arg(cache_dir, no_cache)
    if (threshold or mode) and name not in ("distilled", "cascade"):
        raise ConfigError("--mode/--threshold apply to the distilled and cascade selectors only")
    if threshold and mode not in (None, "threshold"):
        raise ConfigError(f"--threshold contradicts --mode {mode}")
    if budget is not None and name != "cascade":
        raise ConfigError("--budget applies to the cascade selector only")
    oracle = {"model": oracle_model, "base_url": base_url, "cache_path": oracle_cache, "ratio": ratio}
    if name in ("distilled", "cascade"):
        if embedder or lm or groups or max_window_tokens or dtype:
            raise ConfigError("--embedder/--lm/--features/--max-window-tokens/--dtype are fixed by the distilled model; retrain to change them")
        options = {"model_dir": model_dir, "mode": "threshold" if threshold else mode, "device": device, "cache": cache, "progress": True}
        if name == "cascade":
            from critstep.selector.distilled import DistilledSelector
            from critstep.selector.oracle import OracleConfig

            if budget is None:
                raise ConfigError("the cascade needs --budget (e.g. 10% of the trajectories, 40 calls or $2.50)")
            options = {"distilled": DistilledSelector(**options), "budget": budget, "uncertainty": uncertainty,
                       "oracle_config": OracleConfig(**oracle)}
    elif name == "oracle":
        options = {**oracle, "max_cost": max_cost, "progress": True}
    elif name == "perplexity":
        options = {"device": device, "cache": cache, "progress": True}
        options |= {k: v for k, v in {"lm": lm, "window_tokens": max_window_tokens, "dtype": dtype}.items() if v is not None}
    elif name == "random":
        options = {"seed": seed}
    else:
        options = {}
    selector = build_selector(name, **options)
    trajectories = read_trajectories(traj, fmt)
    selections = selector.select(trajectories, ratio=ratio)
    write_trajectories(out, trajectories, selections)
    steps = sum(t.n_steps for t in trajectories)
    chosen = sum(len(s.steps) for s in selections.values())
    envs = Counter(t.env for t in trajectories)
    if name == "cascade":
        run = selector.run_
        click.echo(f"cascade: {len(run.answered)} trajectories answered by the oracle, {len(run.failed)} failed, "
                   f"{len(run.unsent)} not sent; ${run.cost_usd:.4f} spent ({budget} budget)")
    click.echo(f"{name}: selected {chosen:,} of {steps:,} steps ({chosen / max(1, steps):.1%}) in {len(trajectories):,} trajectories "
               f"({', '.join(f'{e} {n}' for e, n in sorted(envs.items()))}); wrote {out}")
