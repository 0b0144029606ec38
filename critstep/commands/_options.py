"""Click arguments and options several commands share: the input source, its format, --limit."""

from __future__ import annotations

from typing import Any

import click

from critstep.formats import FORMATS

FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default=None, help="Input format (default: detected per record)."
)

def limit_option(what: str = "trajectories of the input") -> Any:
    return click.option("--limit", type=click.IntRange(min=1), default=None, help=f"Use only the first N {what} (a trial run).")


LIMIT_OPTION = limit_option()


class SourceType(click.ParamType):
    """A file, a directory or a glob of shards that names at least one file (see `critstep.streams`)."""

    name = "source"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from critstep.errors import InputError
        from critstep.streams import expand_source

        try:
            expand_source(value)
        except InputError as e:
            self.fail(f"{value!r}: {e.message}", param, ctx)
        return str(value)


def input_argument(name: str) -> Any:
    """The input of a command: a file, a directory or a glob (quote it) of JSON/JSONL/.gz/.zst/Parquet shards."""
    return click.argument(name, type=SourceType())
