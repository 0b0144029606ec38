"""How the command line runs torch on a CPU it may share: threads for the free cores, idle ones
asleep, and no foreign warnings.

torch parallelises each operation over an OpenMP thread pool as large as the machine, and its
OpenMP (libgomp) lets a thread that reaches a barrier spin for a while before it sleeps. An
operation ends only when its slowest thread does, so when other busy processes hold the cores,
every one of the thousands of operations of a training step waits for a thread the scheduler has
parked, while its partner burns CPU spinning. Issue 15 saw the demo's tuning stage go from ~6.5 s
to ~60 s per step on 2 cores shared with one busy process; `benchmarks/demo_under_load.py`
measures the demo's tuning under a competing process with torch's defaults and with the settings
below, side by side (3.2x faster with these on this project's loaded machine).

`configure_cpu_threads` therefore sizes the pool to the cores that are free when the command
starts and makes idle threads sleep (`OMP_WAIT_POLICY=PASSIVE`). OpenMP reads both once, when
torch loads, so the command line calls it before importing anything heavy. A user's own
`OMP_NUM_THREADS` / `OMP_WAIT_POLICY` always win; library users keep full control (nothing here
runs on `import critstep`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import MutableMapping

# Warnings about how the libraries call each other, or about optional kernels critstep cannot fetch
# offline: nothing a critstep user can act on, printed on every run. Matched by category and the
# start of the message, so any other warning still shows.
FOREIGN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # peft calls transformers 5's deprecated names (prepare_model_for_kbit_training, PeftModel)
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)
FOREIGN_LOG_LINES: dict[str, tuple[str, ...]] = {
    # bitsandbytes on AVX512-BF16 CPUs tries to download a faster 4-bit kernel from the Hub
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cores() -> float:
    """Runnable processes averaged over the last minute (the load average), 0 where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work: the usable cores minus the load, rounded, at least one."""
    cores = usable_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def cpu_share(threads: int, cores: int | None = None, load: float | None = None) -> float:
    """Cores' worth of CPU time `threads` busy threads can expect beside `load` other runnable
    ones on `cores` cores, with the scheduler sharing fairly."""
    cores = usable_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    return min(float(threads), cores * threads / (threads + load))


def configure_cpu_threads(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set OMP_NUM_THREADS to the free cores and OMP_WAIT_POLICY to PASSIVE unless the user set
    them; returns what was set. Does nothing once torch is loaded: OpenMP has read them by then."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return {}
    changes: dict[str, str] = {}
    if "OMP_WAIT_POLICY" not in environ:
        changes["OMP_WAIT_POLICY"] = "PASSIVE"
    if "OMP_NUM_THREADS" not in environ:
        changes["OMP_NUM_THREADS"] = str(free_cores())
    environ.update(changes)
    return changes


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def hush_foreign_warnings() -> None:
    """Drop the known foreign warnings listed above from this process's output (the command line
    calls it; a library user's own warning settings are left alone)."""
    for category, message in FOREIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefixes in FOREIGN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(prefixes))
