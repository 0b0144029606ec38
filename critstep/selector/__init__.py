"""Step selectors behind one interface (`Selector.select`): baselines, the LLM oracle, the
distilled selector and the cascade between them.

`build_selector` imports lazily so a selector's heavy dependencies load only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from critstep.errors import ConfigError
from critstep.selection import top_k
from critstep.selector.base import Selector

# name -> (module, class); each class takes its options as keyword arguments.
SELECTORS: dict[str, tuple[str, str]] = {
    "all": ("critstep.selector.baselines", "AllSelector"),
    "random": ("critstep.selector.baselines", "RandomSelector"),
    "perplexity": ("critstep.selector.baselines", "PerplexitySelector"),
    "distilled": ("critstep.selector.distilled", "DistilledSelector"),
    "oracle": ("critstep.selector.oracle", "OracleSelector"),
    "cascade": ("critstep.selector.cascade", "CascadeSelector"),
}


def build_selector(name: str, **options: Any) -> Selector:
    if name not in SELECTORS:
        raise ConfigError(f"unknown selector {name!r} (known: {', '.join(SELECTORS)})")
    module, cls = SELECTORS[name]
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["SELECTORS", "Selector", "build_selector", "top_k"]
