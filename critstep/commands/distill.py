"""`critstep distill`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("distill", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Train the distilled selector on oracle labels. (not built yet: issue 4)"""
    raise CritstepError("'critstep distill' is not built yet (issue 4)")
