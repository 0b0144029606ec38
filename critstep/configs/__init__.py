"""The configs critstep ships: price tables and tuning recipes, inside the package so that every
install (a wheel, not only a checkout) has them.

A config the user names is looked up where they are first and among the shipped ones second:
`--config configs/tune-smollm2-135m-cpu.yaml` reads `./configs/...` when that exists (a user's own
copy wins), else the shipped file of that name, from any directory and any install.
"""

from __future__ import annotations

from pathlib import Path

from critstep.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent


def shipped_configs() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """`path` if it exists from the current directory, else the shipped config it names
    (`prices.yaml`, or `configs/prices.yaml` as the README writes it)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    inner = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = CONFIG_DIR.joinpath(*inner)
    if inner and shipped.is_file():
        return shipped
    raise ConfigError(f"{path}: no such file here, nor among critstep's configs ({', '.join(shipped_configs())})")
