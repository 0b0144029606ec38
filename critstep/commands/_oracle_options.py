"""Click options of the oracle's requests, shared by `label`, `select` and `compare`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from critstep.selector.oracle.schema import MODES

RESPONSE_FORMAT_OPTION = click.option(
    "--response-format", type=click.Choice(["auto", *MODES]), default="auto", show_default=True,
    help="Oracle answer format: auto probes the server (strict JSON schema, else JSON mode, else plain text) "
         "and remembers what works; or force one.",
)  # fmt: skip
TIMEOUT_OPTION = click.option(
    "--timeout", type=click.FloatRange(0, min_open=True), default=120.0, show_default=True,
    help="Oracle: seconds to wait for the server (for a streamed answer: for its next piece). A request that "
         "times out halves the concurrency and is sent once more, later.",
)  # fmt: skip
CONCURRENCY_OPTION = click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="Oracle: requests in flight at once.")
MAX_RETRIES_OPTION = click.option(
    "--max-retries", type=click.IntRange(0), default=6, show_default=True,
    help="Oracle: retries on 429, 5xx and dropped connections (8 failures in a row stop the run).",
)  # fmt: skip


def oracle_request_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--response-format`, `--timeout`, `--concurrency`, `--max-retries`."""
    for option in (MAX_RETRIES_OPTION, CONCURRENCY_OPTION, TIMEOUT_OPTION, RESPONSE_FORMAT_OPTION):
        f = option(f)
    return f
