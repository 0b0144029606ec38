"""Every knob of the oracle in one dataclass, shared by the library, the selector and the CLI."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from critstep.errors import ConfigError
from critstep.selection import DEFAULT_RATIO
from critstep.selector.oracle.schema import MODES

# Local servers (vLLM, Ollama, llama.cpp) accept any key, but the client insists on one.
NO_KEY = "no-key"


@dataclass
class OracleConfig:
    """How to reach the model, what to ask, and what a run may spend.

    `api_key=None` reads the variable named by `api_key_env` (OPENAI_API_KEY); `base_url=None`
    reads OPENAI_BASE_URL, else the OpenAI API. `cache_path=None` uses the critstep cache
    (`$CRITSTEP_CACHE/oracle/cache.jsonl`), shared by every run so nothing is paid twice;
    `use_cache=False` turns it off. `backoff_base` is the first retry wait in seconds, doubled
    each attempt up to `backoff_max`, unless the server sends Retry-After.

    `model=None` asks gpt-4o at OpenAI and, elsewhere, the model the server lists (one served
    model needs no name). `response_format` is `auto` (probe, fall back) or one fixed mode;
    `stream=None` streams from every server but OpenAI's. `max_consecutive_failures` failed
    attempts in a row stop the run (a circuit breaker for a dead server).
    """

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed with the config
    api_key_env: str = "OPENAI_API_KEY"
    ratio: float = DEFAULT_RATIO
    concurrency: int = 4
    max_cost: float | None = None
    cache_path: str | Path | None = None
    use_cache: bool = True
    retry_failed: bool = False
    prices_path: str | Path | None = None
    batch: bool = False
    batch_state_path: str | Path | None = None
    poll_interval: float = 30.0
    timeout: float = 120.0
    max_retries: int = 6
    response_format: str = "auto"
    stream: bool | None = None
    max_consecutive_failures: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_output_tokens: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_cost is not None and not (math.isfinite(self.max_cost) and self.max_cost >= 0):
            raise ConfigError(f"max_cost must be a finite number of dollars >= 0, got {self.max_cost}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must not be negative, got {self.max_retries}")
        if self.max_consecutive_failures < 1:
            raise ConfigError(f"max_consecutive_failures must be at least 1, got {self.max_consecutive_failures}")
        if self.response_format != "auto" and self.response_format not in MODES:
            raise ConfigError(f"unknown response format {self.response_format!r} (known: auto, {', '.join(MODES)})")

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def resolved_api_key(self) -> str:
        key = self.api_key or os.environ.get(self.api_key_env)
        if key:
            return key
        if self.resolved_base_url():
            return NO_KEY
        raise ConfigError(
            f"no API key: set {self.api_key_env} in the environment, or point --base-url (OPENAI_BASE_URL) at a local server"
        )

    def resolved_cache_path(self) -> Path | None:
        if not self.use_cache:
            return None
        if self.cache_path is not None:
            return Path(self.cache_path)
        from critstep.models import cache_dir

        return cache_dir() / "oracle" / "cache.jsonl"

    def output_tokens(self, cap: int) -> int:
        """The `max_tokens` of a request: room for the plan and `cap` entries, bounded."""
        if self.max_output_tokens is not None:
            return self.max_output_tokens
        return min(4096, 256 + 64 * cap)
