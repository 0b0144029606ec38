"""`critstep select`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("select", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Select critical steps with any selector and write them back with per-message flags. (not built yet: issue 4)"""
    raise CritstepError("'critstep select' is not built yet (issue 4)")
