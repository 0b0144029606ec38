"""Typed errors. The CLI turns each into one line; library users can catch them by kind."""

from __future__ import annotations

from pathlib import Path


class CritstepError(Exception):
    """Base class of every error critstep raises on purpose."""


class InputError(CritstepError):
    """Bad input data: names the file and, where known, the line it came from."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}"


class OutputError(InputError):
    """An output that cannot or must not be written: names the path (an unrelated directory, a
    full or read-only disk, an output that is also an input)."""


class ModelError(CritstepError):
    """A model reference that cannot be resolved or loaded."""


class ConfigError(CritstepError):
    """A configuration file or option that is invalid."""
