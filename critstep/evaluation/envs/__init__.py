"""Live environments for `critstep eval --env NAME`, each one adapter (see `base.EnvAdapter`).

Imported lazily: an environment's own dependencies (ScienceWorld's Java simulator) load only
when that environment is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from critstep.errors import ConfigError
from critstep.evaluation.envs.base import EnvAdapter, EpisodeSpec, StepResult

# name -> (module, class)
ENVS: dict[str, tuple[str, str]] = {
    "scienceworld": ("critstep.evaluation.envs.scienceworld", "ScienceWorldAdapter"),
}


def build_env(name: str, **options: Any) -> EnvAdapter:
    if name not in ENVS:
        raise ConfigError(f"unknown environment {name!r} (known: {', '.join(ENVS)})")
    module, cls = ENVS[name]
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["ENVS", "EnvAdapter", "EpisodeSpec", "StepResult", "build_env"]
