"""`critstep label`: ATLaS critical-step labels from GPT-4o or any OpenAI-compatible server."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from critstep.commands._options import FORMAT_OPTION, LIMIT_OPTION, input_argument
from critstep.errors import CritstepError
from critstep.selection import DEFAULT_RATIO


class _EchoHandler(logging.Handler):
    """Oracle log lines on stderr, warnings in yellow, through click so tests can capture them."""

    def emit(self, record: logging.LogRecord) -> None:
        color = "yellow" if record.levelno >= logging.WARNING else None
        click.secho(self.format(record), fg=color, err=True)


def _setup_logging() -> None:
    log = logging.getLogger("critstep.oracle")
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _EchoHandler) for h in log.handlers):
        log.addHandler(_EchoHandler())
    log.propagate = False


@click.command("label")
@input_argument("path")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Labels file to write (JSONL, schema of seed_labels.jsonl + usage).")
@FORMAT_OPTION
@LIMIT_OPTION
@click.option("--model", default="gpt-4o", show_default=True, help="Model name at the endpoint.")
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI).")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable holding the API key (keys are never taken on the command line).")
@click.option("--ratio", type=float, default=DEFAULT_RATIO, show_default=True, help="At most this share of a trajectory's steps is critical.")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Requests in flight at once.")
@click.option("--max-cost", type=float, default=None, help="Stop before spending more than this many dollars (requests in flight count at their worst case).")
@click.option("--max-calls", type=click.IntRange(0), default=None, help="Send at most this many trajectories to the API.")
@click.option("--dry-run", is_flag=True, help="Estimate tokens and cost offline, call nothing.")
@click.option("--batch", is_flag=True, help="Use the OpenAI Batch API (half price, answers within 24 h); resumable.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Answer cache (default: $CRITSTEP_CACHE/oracle/cache.jsonl).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the answer cache.")
@click.option("--retry-failed", is_flag=True, help="Ask again for trajectories whose cached answer was invalid.")
@click.option("--prices", "prices_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Price table: a file here, else one of critstep's configs (default: $CRITSTEP_PRICES, else configs/prices.yaml).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per request before it is retried.")
@click.option("--max-retries", type=click.IntRange(0), default=6, show_default=True, help="Retries on 429, 5xx and time-outs.")
@click.option("--backoff", "backoff_base", type=float, default=1.0, show_default=True, help="First retry wait in seconds, doubled each attempt (Retry-After wins).")
@click.option("--poll-interval", type=float, default=30.0, show_default=True, help="Seconds between Batch API status checks.")
def command(path: str, out: Path | None, fmt: str | None, limit: int | None, dry_run: bool, no_cache: bool, max_calls: int | None,
            **options: object) -> None:
    """Label the critical steps of the trajectories in PATH with an LLM (ATLaS procedure).

    \b
    Examples:
      critstep label corpus.jsonl --out labels.jsonl --dry-run
      OPENAI_API_KEY=... critstep label corpus.jsonl --out labels.jsonl --max-cost 5
      critstep label corpus.jsonl --out labels.jsonl --base-url http://localhost:11434/v1 --model qwen2.5:7b
      critstep label corpus.jsonl --out labels.jsonl --batch
      critstep label 'shards/part-0000*.jsonl.zst' --out labels-0.jsonl --cache cache/oracle.jsonl
    """
    from critstep.formats import read_trajectories
    from critstep.io import check_outputs_apart
    from critstep.labels import write_labels
    from critstep.selector.oracle import OracleConfig, OracleLabeler
    from critstep.selector.oracle.batch import default_state_path
    from critstep.streams import expand_source

    _setup_logging()
    if out is None and not dry_run:
        raise click.UsageError("--out is required (except with --dry-run)")
    batch_state = default_state_path(out) if out is not None and options["batch"] else None
    config = OracleConfig(use_cache=not no_cache, batch_state_path=batch_state, progress=True, **options)  # type: ignore[arg-type]
    trajectories = read_trajectories(path, fmt, limit=limit)
    labeler = OracleLabeler(config)
    if dry_run:
        click.echo(labeler.estimate(trajectories).summary())
        return
    assert out is not None
    if not labeler.prices.known(config.model) and config.max_cost is not None and config.resolved_base_url() is None:
        raise CritstepError(f"--max-cost cannot be enforced: no price for {config.model!r} in {labeler.prices.path}; add it there")
    check_outputs_apart({"PATH": expand_source(path), "--prices": config.prices_path},
                        {"--out": out, "--cache": config.resolved_cache_path(), "the batch state": batch_state})
    run = labeler.label(trajectories, max_calls=max_calls)
    write_labels(out, run.records(trajectories))
    click.echo(run.summary())
    click.echo(f"wrote {out} ({len(run.labels):,} labeled, {len(run.failed):,} failed)")
    if run.fatal:
        raise CritstepError(run.stopped or "the API stopped the run")
    if run.unlabeled:
        click.secho(f"{len(run.unlabeled):,} trajectories left unlabeled; run again to continue (cached answers are free)", fg="yellow", err=True)
