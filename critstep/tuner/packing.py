"""Pack windows into padding-free micro-batches without cross-contamination.

A micro-batch is one row: the windows laid end to end, position ids restarting at 0 for each, and
no attention mask. transformers (5.x) reads the position-id resets as sequence boundaries and builds
a block-diagonal causal mask (sdpa, eager) or calls the varlen kernel (flash attention), so no token
attends across windows. Targets are shifted inside each window, so the last token of one window is
never asked to predict the first of the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from critstep.tuner.windows import Window

IGNORE = -100


@dataclass
class PackedBatch:
    """Tensors of shape (1, tokens): ids, positions, and next-token targets (-100 where no loss)."""

    input_ids: Any
    position_ids: Any
    targets: Any
    n_sequences: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n_supervised(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: Any) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.targets.to(device), self.n_sequences)


def pack(windows: Sequence[Window], batch_tokens: int) -> list[list[Window]]:
    """First-fit decreasing: groups of windows of at most `batch_tokens` tokens in total."""
    bins: list[list[Window]] = []
    room: list[int] = []
    for w in sorted(windows, key=len, reverse=True):
        for b, free in enumerate(room):
            if len(w) <= free:
                bins[b].append(w)
                room[b] -= len(w)
                break
        else:
            bins.append([w])
            room.append(batch_tokens - len(w))
    return bins


def collate(windows: Sequence[Window]) -> PackedBatch:
    import torch

    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for w in windows:
        ids.extend(w.input_ids)
        positions.extend(range(len(w)))
        targets.extend(w.labels[1:])
        targets.append(IGNORE)
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return PackedBatch(as_row(ids), as_row(positions), as_row(targets), len(windows))
