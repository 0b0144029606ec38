"""`critstep tune`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("tune", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """QLoRA-finetune a model with the loss on selected steps only. (not built yet: issue 5)"""
    raise CritstepError("'critstep tune' is not built yet (issue 5)")
