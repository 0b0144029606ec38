"""`critstep compare`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("compare", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Compare selectors on cost versus agreement with the teacher. (not built yet: issue 6)"""
    raise CritstepError("'critstep compare' is not built yet (issue 6)")
