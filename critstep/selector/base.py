"""The one interface every selector implements, and the top-k rule they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from critstep.selection import DEFAULT_RATIO, Selection
from critstep.trajectory import Trajectory


class Selector(ABC):
    """Chooses the critical steps of each trajectory.

    `select` returns one `Selection` per trajectory id, never more than `step_cap(n, ratio)` steps.
    Selectors that score steps put the scores in `Selection.scores` (one per step, higher = more
    critical) so evaluation can compute threshold-free metrics.
    """

    name: str = "selector"
    # True when a trajectory's selection does not depend on which other trajectories are passed
    # with it: the input may then be streamed in batches and spread over Ray actors. The cascade
    # (a budget over the whole input) and the oracle (one cost cap, one progress bar) say False.
    streamable: bool = True

    @abstractmethod
    def select(self, trajectories: Sequence[Trajectory], ratio: float = DEFAULT_RATIO) -> dict[str, Selection]: ...
