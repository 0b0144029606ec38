"""Dollars per 1,000 trajectories: tokens x price table for the oracle, seconds x $/hour locally.

A local selector's cost is what its measured wall time would cost on a rented machine of the kind
it ran on; the hourly prices live in critstep's `configs/compute_prices.yaml` (dated) so users put in theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from critstep.configs import CONFIG_DIR, resolve_config
from critstep.errors import ConfigError
from critstep.io import portable_path

DEFAULT_COMPUTE_PRICES = CONFIG_DIR / "compute_prices.yaml"
DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class ComputePrices:
    """Hourly price of one machine per device kind, and the date those prices were read."""

    usd_per_hour: dict[str, float]
    as_of: str
    path: str

    def usd(self, seconds: float, device: str) -> float:
        kind = "gpu" if device.startswith(("cuda", "gpu", "mps")) else "cpu"
        return seconds / 3600 * self.usd_per_hour[kind]


def load_compute_prices(path: str | Path | None = None) -> ComputePrices:
    path = resolve_config(path or DEFAULT_COMPUTE_PRICES)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such compute price file (pass --compute-prices FILE)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the compute prices: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'cpu' and 'gpu' entries")
    prices: dict[str, float] = {}
    for kind in DEVICES:
        entry = data.get(kind)
        value = entry.get("usd_per_hour") if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{path}: '{kind}.usd_per_hour' must be a number >= 0, got {value!r}")
        prices[kind] = float(value)
    return ComputePrices(prices, str(data.get("as_of", "undated")), portable_path(path))


def per_thousand(usd: float, n_trajectories: int) -> float | None:
    """Dollars for 1,000 trajectories at the rate measured on `n_trajectories` (None if none ran)."""
    return usd / n_trajectories * 1000 if n_trajectories else None
