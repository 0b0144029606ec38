"""The loss on supervised positions only: the LM head runs where a target exists, nowhere else.

With ~30% of steps selected and vocabularies of 100k+ tokens, full-sequence logits are most of a
step's activation memory. transformers' `logits_to_keep` accepts a boolean mask (from 5.21: hence the
floor in pyproject.toml), so the model's own forward (hence DDP/FSDP wrappers, PEFT, logit
soft-capping) applies the head to the gathered hidden states of the supervised positions only.
"""

from __future__ import annotations

from typing import Any

from critstep.tuner.packing import IGNORE, PackedBatch


def supervised_loss(model: Any, batch: PackedBatch) -> tuple[Any, int]:
    """(sum of token cross-entropies, number of supervised tokens) for one packed micro-batch.

    Returning the sum lets the caller normalise over a whole accumulated optimizer step.
    """
    import torch.nn.functional as F

    keep = batch.targets != IGNORE
    n = int(keep.sum())
    out = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    loss = F.cross_entropy(logits.float(), batch.targets[keep], reduction="sum")
    return loss, n
