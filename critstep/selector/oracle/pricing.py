"""Dollars from tokens: a dated, user-editable price table, and an offline token estimate.

The table is YAML (critstep's own `configs/prices.yaml` by default) so a user can fix a
price or add a model without touching code. Unknown models cost 0: that is right for local
servers, and the run summary says so, so a missing price for a paid model does not go unnoticed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from critstep.configs import CONFIG_DIR, resolve_config
from critstep.errors import ConfigError
from critstep.io import portable_path

DEFAULT_PRICES = CONFIG_DIR / "prices.yaml"
PRICE_KEYS = ("input", "output", "batch_input", "batch_output")

# No OpenAI tokenizer is available offline (tiktoken fetches its BPE files from the network), so
# prompt tokens are estimated as characters / 4, OpenAI's published rule of thumb for English,
# plus a few tokens of chat framing per message. Expect the estimate to be off by 10-20% either way.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages) + 3


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    batch_input: float
    batch_output: float


@dataclass
class PriceTable:
    """USD per `per_tokens` tokens, by model name."""

    models: dict[str, Price] = field(default_factory=dict)
    as_of: str = "unknown"
    per_tokens: int = 1_000_000
    path: str | None = None

    def price(self, model: str) -> Price | None:
        """The price of `model`: exact name, else the longest listed name it extends with '-'."""
        if model in self.models:
            return self.models[model]
        prefixes = [name for name in self.models if model.startswith(name + "-")]
        return self.models[max(prefixes, key=len)] if prefixes else None

    def known(self, model: str) -> bool:
        return self.price(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        p = self.price(model)
        if p is None:
            return 0.0
        rate_in, rate_out = (p.batch_input, p.batch_output) if batch else (p.input, p.output)
        return (prompt_tokens * rate_in + completion_tokens * rate_out) / self.per_tokens


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read the price table: `path`, else `$CRITSTEP_PRICES`, else critstep's configs/prices.yaml
    (a relative path is looked up in the current directory, then among critstep's configs)."""
    path = resolve_config(path or os.environ.get("CRITSTEP_PRICES") or DEFAULT_PRICES)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: price table not found (use --prices FILE or CRITSTEP_PRICES)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the price table: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'models' mapping")
    models: dict[str, Price] = {}
    for name, entry in data["models"].items():
        if not isinstance(entry, dict) or not {"input", "output"} <= set(entry):
            raise ConfigError(f"{path}: model {name!r} needs at least 'input' and 'output' prices")
        try:
            values = {k: float(entry[k]) for k in ("input", "output")}
            # Without batch prices the Batch API is charged at half the standard price.
            values["batch_input"] = float(entry.get("batch_input", values["input"] / 2))
            values["batch_output"] = float(entry.get("batch_output", values["output"] / 2))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: prices of {name!r} must be numbers") from None
        if any(v < 0 for v in values.values()):
            raise ConfigError(f"{path}: prices of {name!r} must not be negative")
        models[str(name)] = Price(**values)
    per_tokens = data.get("per_tokens", 1_000_000)
    if not isinstance(per_tokens, int) or per_tokens <= 0:
        raise ConfigError(f"{path}: 'per_tokens' must be a positive integer")
    return PriceTable(models, str(data.get("as_of", "unknown")), per_tokens, portable_path(path))
