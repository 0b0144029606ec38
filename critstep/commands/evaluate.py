"""`critstep evaluate`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("evaluate", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Score a selection against teacher labels. (not built yet: issue 4)"""
    raise CritstepError("'critstep evaluate' is not built yet (issue 4)")
