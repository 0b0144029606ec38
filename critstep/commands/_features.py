"""Feature options shared by `critstep distill` and `critstep select`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

DEFAULT_WINDOW_TOKENS = 512  # = critstep.distill.features.token.DEFAULT_WINDOW_TOKENS (kept import-free for --help)


def feature_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--embedder", default=None, help="Sentence-transformers model: built-in name (minilm), hub id or path. [default: minilm]"),
        click.option("--lm", default=None, help="Causal LM for token features: built-in (smollm2-135m), hub id or path. [default: smollm2-135m]"),
        click.option("--features", "groups", default=None,
                     help="Comma-separated feature groups from semantic,token,hidden,structural,progress. [default: semantic,structural,progress]"),
        click.option("--max-window-tokens", type=click.IntRange(min=32), default=None, help=f"Tokens per LM forward window. [default: {DEFAULT_WINDOW_TOKENS}]"),
        click.option("--dtype", default=None, help="torch dtype of both models: bfloat16 (fast on CPUs with bf16 instructions and on GPUs) or float32. [default: bfloat16]"),
        click.option("--device", default=None, help="torch device for the models (default: CUDA when present, else CPU)."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Feature cache directory (default: ~/.cache/critstep/features)."),
        click.option("--no-cache", is_flag=True, help="Neither read nor write the feature cache."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def feature_config(embedder: str | None, lm: str | None, groups: str | None, window: int | None, dtype: str | None = None) -> Any:
    """A `FeatureConfig` from the command-line options; unset options keep the defaults."""
    from dataclasses import replace

    from critstep.distill.features import FeatureConfig, parse_groups

    changes: dict[str, Any] = {"embedder": embedder, "lm": lm, "window_tokens": window, "dtype": dtype}
    changes = {k: v for k, v in changes.items() if v is not None}
    if groups:
        changes["groups"] = parse_groups(groups)
    return replace(FeatureConfig(), **changes)


def cache_arg(cache_dir: str | None, no_cache: bool) -> str | None:
    if no_cache:
        return None
    return cache_dir or "default"
