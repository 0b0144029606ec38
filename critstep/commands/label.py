"""`critstep label`."""

from __future__ import annotations

import click

from critstep.errors import CritstepError


@click.command("label", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Label critical steps with an LLM oracle (GPT-4o or any OpenAI-compatible server). (not built yet: issue 3)"""
    raise CritstepError("'critstep label' is not built yet (issue 3)")
