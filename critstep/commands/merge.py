"""`critstep merge`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("merge", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Merge a LoRA adapter into its base model's weights. (not built yet: issue 5)"""
    raise CritstepError("'critstep merge' is not built yet (issue 5)")
