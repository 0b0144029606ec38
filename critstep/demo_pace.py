"""How long each stage of `critstep demo` should take here, said before it starts.

The reference is the demo measured on this project's 2-core CPU machine with both cores free (the
walk-through in the README): the whole sample, 30 tuning steps of <= 1,024 tokens. A stage's
expected time scales that by its amount of work and by the CPU this run can count on: the torch
threads it uses, shared fairly with the other runnable processes (the load average) on the
machine's cores. On a busy machine the user is told up front, with a quicker command to try.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_CORES = 2
REFERENCE_TRAJECTORIES = 48
REFERENCE_SEQ_LEN = 1024
# Seconds per stage on the reference machine, in the demo's order: validate, teacher labels,
# distill, select, compare, tune (per optimizer step, model loading and eval included), eval loss.
REFERENCE_SECONDS = (0.1, 0.1, 9.4, 3.0, 12.6, 6.6, 0.0)
BUSY_FACTOR = 2.5  # slower than this against the reference: say so, and offer a quicker run


@dataclass(frozen=True)
class Pace:
    """The CPU this run can count on, and what it makes of each stage."""

    threads: int
    cores: int
    load: float
    share: float  # cores' worth of CPU time: min(threads, cores * threads / (threads + load))

    @classmethod
    def here(cls) -> Pace:
        import torch

        from critstep.runtime import busy_cores, cpu_share, usable_cores

        threads, cores, load = torch.get_num_threads(), usable_cores(), busy_cores()
        return cls(threads, cores, load, cpu_share(threads, cores, load))

    @property
    def slowdown(self) -> float:
        return REFERENCE_CORES / max(self.share, 1e-3)

    def expected_seconds(self, n_trajectories: int, tune_steps: int, max_seq_len: int) -> list[float]:
        size = max(0.5, n_trajectories / REFERENCE_TRAJECTORIES)  # model loading does not shrink with the data
        work = [1.0, 1.0, size, size, size, tune_steps * min(1.0, max_seq_len / REFERENCE_SEQ_LEN), 1.0]
        return [ref * w * self.slowdown for ref, w in zip(REFERENCE_SECONDS, work, strict=True)]

    def describe(self, total_seconds: float) -> list[str]:
        lines = [f"CPU: {self.threads} torch thread(s) on {self.cores} core(s), load average {self.load:.1f}; "
                 f"expected ~{duration(total_seconds)} in all"]
        if self.slowdown >= BUSY_FACTOR:
            lines.append(f"this machine is busy: about {self.slowdown:.0f}x slower than {REFERENCE_CORES} free cores. "
                         "For a quicker look: critstep demo --limit 24 --tune-steps 5")
        return lines


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    return f"{seconds / 60:.0f} min"
