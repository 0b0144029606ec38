"""The `critstep` command line: trajectories in → selector → selected steps → tuner → adapter."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from critstep import __version__
from critstep.commands._options import FORMAT_OPTION, input_argument
from critstep.errors import CritstepError, InputError
from critstep.formats import TrajectoryReader


class CritstepGroup(click.Group):
    """Turns library errors into one clear line and a non-zero exit, not a traceback.

    An `OSError` naming a file (a read or write the code did not anticipate: permission denied, a
    directory where a file belongs, a full disk) is reported the same way.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CritstepError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            sys.exit(1)
        except OSError as e:
            if e.filename is None:
                raise
            click.secho(f"Error: {e.filename}: {e.strerror or e}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=CritstepGroup)
@click.version_option(__version__, prog_name="critstep")
def cli() -> None:
    """Select the critical steps of agent trajectories and finetune on them (ATLaS-style)."""
    from critstep.runtime import configure_cpu_threads, hush_foreign_warnings

    configure_cpu_threads()  # before any subcommand loads torch
    hush_foreign_warnings()


@cli.command()
@input_argument("path")
@FORMAT_OPTION
def validate(path: str, fmt: str | None) -> None:
    """Read PATH (a file, a directory or a quoted glob of shards), print counts per env, and list
    every problem (exit 1 if any). The input is streamed: any size fits in memory."""
    problems: list[InputError] = []
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    formats: set[str] = set()
    reader = TrajectoryReader(path, fmt, on_error=problems.append)
    for t in reader:
        if t.origin:
            formats.add(t.origin.format)
        row = stats[t.env]
        row[0] += 1
        row[1] += t.n_steps
        row[2] += t.context_chars()
        row[3] += t.step_chars()
    header = f"{'env':<16}{'trajectories':>14}{'steps':>10}{'context chars':>16}{'step chars':>14}"
    click.echo(header)
    click.echo("-" * len(header))
    for env in sorted(stats):
        n, s, c, a = stats[env]
        click.echo(f"{env:<16}{n:>14,}{s:>10,}{c:>16,}{a:>14,}")
    total = [sum(r[i] for r in stats.values()) for i in range(4)]
    click.echo("-" * len(header))
    click.echo(f"{'total':<16}{total[0]:>14,}{total[1]:>10,}{total[2]:>16,}{total[3]:>14,}")
    if not stats and not problems:
        raise InputError("no trajectories: the input holds no records", path)
    click.echo(f"format: {', '.join(sorted(formats)) or '-'}")
    if len(reader.files) > 1:
        click.echo(f"files: {len(reader.files):,}")
    if problems:
        click.secho(f"{len(problems)} problem(s):", fg="red", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        sys.exit(1)
    click.echo("no problems")


@cli.group()
def models() -> None:
    """Built-in offline models (minilm, smollm2-135m)."""


@models.command("export")
@click.argument("ref")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to write safetensors + tokenizer to.")
def models_export(ref: str, out: Path) -> None:
    """Save causal LM REF (e.g. smollm2-135m from its GGUF) as ordinary safetensors."""
    from critstep.io import check_outputs_apart
    from critstep.models import export_causal_lm

    check_outputs_apart({"REF": ref}, {}, {"--out": out})
    click.echo(f"wrote {export_causal_lm(ref, out)}")


def _register() -> None:
    from critstep.commands import compare, demo, distill, evaluate, label, merge, select, tune

    for module in (label, distill, select, evaluate, tune, merge, compare, demo):
        cli.add_command(module.command)


_register()
