"""`critstep demo`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("demo", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Run the whole pipeline on the bundled sample. (not built yet: issue 7)"""
    raise CritstepError("'critstep demo' is not built yet (issue 7)")
