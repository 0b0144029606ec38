"""`critstep select`: choose critical steps with any selector and write them back as flags."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from critstep.commands._features import cache_arg, feature_options
from critstep.commands._options import FORMAT_OPTION, LIMIT_OPTION, input_argument
from critstep.commands._oracle_options import oracle_request_options
from critstep.errors import ConfigError

if TYPE_CHECKING:
    from critstep.selection import Selection
    from critstep.trajectory import Trajectory

SELECTOR_NAMES = ["distilled", "cascade", "oracle", "all", "random", "perplexity"]


@click.command("select")
@input_argument("traj")
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
@click.option("--oracle-model", default=None, help="Oracle/cascade: model at the endpoint (default: gpt-4o at OpenAI; elsewhere the served model).")
@click.option("--base-url", default=None, help="Oracle/cascade: endpoint (default: $OPENAI_BASE_URL, else OpenAI). The key comes from $OPENAI_API_KEY.")
@click.option("--oracle-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Oracle/cascade: answer cache (default: $CRITSTEP_CACHE/oracle/cache.jsonl).")
@click.option("--max-cost", type=float, default=None, help="Oracle: stop before spending more than this many dollars.")
@oracle_request_options
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output: a JSONL file (.jsonl, .jsonl.gz, .jsonl.zst) of trajectories with critical_steps, step_scores and "
                   "per-message flags, or a directory that gets one shard per input shard (same names).")
@FORMAT_OPTION
@LIMIT_OPTION
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Trajectories per batch: memory holds one batch, and both engines cut the same batches.")
@click.option("--engine", type=click.Choice(["plain", "ray"]), default="plain", show_default=True,
              help="plain: this process; ray: a Ray Data actor pool (needs critstep[ray]).")
@click.option("--address", default=None, help="Ray: cluster to join (auto, ray://head:10001); default: a local Ray on this machine.")
@click.option("--num-workers", type=click.IntRange(min=1), default=1, show_default=True, help="Ray: actors, each loading the models once.")
@click.option("--num-gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Ray: GPUs per actor (the models then run on CUDA unless --device says otherwise).")
@feature_options
def command(
    traj: str,
    name: str,
    model_dir: Path | None,
    ratio: float,
    mode: str | None,
    threshold: bool,
    seed: int,
    budget: str | None,
    uncertainty: str,
    oracle_model: str | None,
    base_url: str | None,
    oracle_cache: Path | None,
    max_cost: float | None,
    response_format: str,
    timeout: float,
    concurrency: int,
    max_retries: int,
    out: Path,
    fmt: str | None,
    limit: int | None,
    batch_size: int,
    engine: str,
    address: str | None,
    num_workers: int,
    num_gpus_per_worker: float,
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

    TRAJ is a file, a directory or a quoted glob of shards (JSON, JSONL, .gz, .zst, Parquet),
    read as a stream. OUT is a file, or a directory with one output shard per input shard.

    \b
    Examples:
      critstep select corpus.jsonl --out selected.jsonl
      critstep select corpus.jsonl --selector distilled --model models/distilled --mode ratio --out selected.jsonl
      critstep select corpus.jsonl --selector cascade --budget 10% --out cascade.jsonl
      critstep select corpus.jsonl --selector oracle --oracle-model gpt-4o --max-cost 5 --out oracle.jsonl
      critstep select corpus.jsonl --selector random --seed 1 --out random.jsonl
      critstep select 'shards/*.jsonl.zst' --model models/distilled --out selected/ --engine ray --num-workers 4

    The oracle leaves out trajectories it could not label (listed with the reason in OUT.failed.jsonl);
    the cascade keeps the distilled choice for them.
    """
    from critstep.formats import TrajectoryReader
    from critstep.io import FAILURE_REPORT, SELECTIONS_FILE, check_outputs_apart, check_replaceable_file, writes_through
    from critstep.selector import build_selector
    from critstep.sharded import is_directory_output, select_to, shard_targets

    cache = cache_arg(cache_dir, no_cache)
    if (threshold or mode) and name not in ("distilled", "cascade"):
        raise ConfigError("--mode/--threshold apply to the distilled and cascade selectors only")
    if threshold and mode not in (None, "threshold"):
        raise ConfigError(f"--threshold contradicts --mode {mode}")
    if budget is not None and name != "cascade":
        raise ConfigError("--budget applies to the cascade selector only")
    oracle = {"model": oracle_model, "base_url": base_url, "cache_path": oracle_cache, "ratio": ratio, "response_format": response_format,
              "timeout": timeout, "concurrency": concurrency, "max_retries": max_retries}
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
    if engine != "ray" and (address or num_workers != 1 or num_gpus_per_worker):
        raise ConfigError("--address/--num-workers/--num-gpus-per-worker apply to --engine ray only")
    reader = TrajectoryReader(traj, fmt, limit=limit)
    check_outputs_apart({"TRAJ": reader.files}, {"--out": out, "--oracle-cache": _oracle_cache(name, oracle_cache),
                                                 "the failure report": _failure_report(out) if name == "oracle" else None})
    if not is_directory_output(out):
        check_replaceable_file(out, SELECTIONS_FILE)
    if name == "oracle":
        check_replaceable_file(_failure_report(out), FAILURE_REPORT, "the failure report")
    selector = build_selector(name, **options)
    if engine == "ray":
        from critstep.ray_engine import RayOptions, RaySelections, import_ray

        import_ray()
        if not selector.streamable:
            raise ConfigError(f"--engine ray runs selectors that choose per trajectory; the {name} selector needs the whole input in one process")
        if is_directory_output(out):
            shard_targets(reader, out)  # refused before Ray starts, not after its start-up
        ray_options = RayOptions(address, num_workers, num_gpus_per_worker)
        with RaySelections(reader, (name, options), ratio, batch_size, ray_options) as remote:
            totals = select_to(reader, out, remote, batch_size)
    elif name == "oracle":
        left_out: set[str] = set()

        def labeled(batch: list[Trajectory]) -> dict[str, Selection]:
            selections = selector.select(batch, ratio=ratio)
            left_out.update(_report_unlabeled(selector, batch, out))
            return selections

        totals = select_to(reader, out, labeled, None, keep=lambda t: t.id not in left_out)
    else:
        totals = select_to(reader, out, lambda batch: selector.select(batch, ratio=ratio), batch_size if selector.streamable else None)
    if name == "cascade":
        run = selector.run_
        click.echo(f"cascade: {len(run.answered)} trajectories answered by the oracle, {len(run.failed)} failed, "
                   f"{len(run.unsent)} not sent; ${run.cost_usd:.4f} spent ({budget} budget)", err=writes_through(out))
    wrote = f"{len(totals.outputs):,} shards to {out}" if len(totals.outputs) > 1 or out.is_dir() else str(out)
    click.echo(f"{name}: selected {totals.chosen:,} of {totals.steps:,} steps ({totals.chosen / max(1, totals.steps):.1%}) in "
               f"{totals.trajectories:,} trajectories ({', '.join(f'{e} {n}' for e, n in sorted(totals.envs.items()))}); wrote {wrote}",
               err=writes_through(out))  # not into the selections when --out is stdout


def _oracle_cache(name: str, path: Path | None) -> Path | None:
    """The answer cache the oracle (or the cascade's oracle) appends to, if it runs."""
    if name not in ("oracle", "cascade"):
        return None
    from critstep.selector.oracle import OracleConfig

    return OracleConfig(cache_path=path).resolved_cache_path()


def _failure_report(out: Path) -> Path:
    """Where the oracle lists the trajectories it left out of OUT (beside OUT, file or directory)."""
    return out.with_name(out.name + ".failed.jsonl")


def _report_unlabeled(selector: Any, trajectories: list[Trajectory], out: Path) -> set[str]:
    """The ids the oracle could not label, listed with their reasons in OUT.failed.jsonl.

    A trajectory without a selection would make `tune` reject the whole file, so it is left out of
    OUT and listed (id, reason) beside it; `critstep label --retry-failed` asks again.
    """
    from critstep.errors import CritstepError
    from critstep.io import write_jsonl
    from critstep.selector.oracle.selector import missing_reasons

    run = selector.last_run
    click.echo(run.summary(), err=True)
    reasons = missing_reasons(run)
    report = _failure_report(out)
    if not reasons:  # an earlier run's report would mislead; it was checked to be critstep's before any work
        if report.is_file():  # never a device or pipe named as the report
            report.unlink()
        return set()
    write_jsonl(report, ({"id": t.id, "reason": reasons[t.id]} for t in trajectories if t.id in reasons))
    kept = [t for t in trajectories if t.id not in reasons]
    click.secho(f"oracle: {len(reasons):,} of {len(trajectories):,} trajectories have no labels and are left out of {out}; "
                f"ids and reasons in {report}", fg="yellow", err=True)
    if not any(t.n_steps for t in kept):
        raise CritstepError(f"the oracle labeled none of the {len(trajectories):,} trajectories; nothing written to {out} (reasons in {report})")
    return set(reasons)
