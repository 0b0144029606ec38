"""Batched greedy decoding that starts from KV caches already computed, written out as a loop.

`transformers`' `generate` re-reads every prompt; here the prompts are prefixes of windows whose
forward pass was needed anyway (for the gold turns' NLL), so each prompt's keys and values are
cut from its window's cache, left-padded into one batch (rows from any windows), and only new
tokens are computed. Rows that finish leave the batch, so one long answer does not keep the
others' compute alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cache_argument() -> str:
    """The keyword under which this transformers version takes a KV cache (`cache` from 5.x, else
    `past_key_values`); the cache object itself is updated in place either way."""
    from transformers import modeling_outputs

    fields = getattr(modeling_outputs.CausalLMOutputWithPast, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


def prefix_batch(rows: Sequence[tuple[Any, int]]) -> tuple[Any, Any]:
    """A batch cache whose row b holds the first `n` positions of the one-row cache `rows[b] =
    (cache, n)` (rows may come from different windows), left-padded to the longest, and the
    matching attention mask (0 on padding)."""
    import torch
    from transformers import DynamicCache

    longest = max(n for _, n in rows)
    batch = DynamicCache()
    mask = None
    for index in range(len(rows[0][0].layers)):
        first = rows[0][0].layers[index].keys
        heads, dim = first.shape[1], first.shape[3]
        k = first.new_zeros((len(rows), heads, longest, dim))
        v = first.new_zeros((len(rows), heads, longest, dim))
        for row, (cache, n) in enumerate(rows):
            layer = cache.layers[index]
            k[row, :, longest - n :] = layer.keys[0, :, :n]
            v[row, :, longest - n :] = layer.values[0, :, :n]
        batch.update(k, v, index)
        if mask is None:
            mask = torch.zeros((len(rows), longest), dtype=torch.long, device=first.device)
            for row, (_, n) in enumerate(rows):
                mask[row, longest - n :] = 1
    return batch, mask


def greedy_decode(
    model: Any,
    cache: Any,
    attention_mask: Any,
    positions: Sequence[int],
    first_tokens: Sequence[int],
    stop_ids: set[int],
    max_new_tokens: int,
) -> list[list[int]]:
    """Continue each row greedily from its cache; returns each row's new tokens, stop token excluded.

    `first_tokens[b]` is row b's first new token (the argmax the prompt's last position already
    gave) and `positions[b]` its position id. The cache is consumed (updated in place).
    """
    import torch

    device = attention_mask.device
    rows = list(range(len(first_tokens)))
    out: list[list[int]] = [[] for _ in rows]
    tokens = torch.tensor(list(first_tokens), dtype=torch.long, device=device)
    pos = torch.tensor(list(positions), dtype=torch.long, device=device)
    mask = attention_mask
    kwarg = cache_argument()
    for step in range(max_new_tokens):
        done = [int(t) in stop_ids for t in tokens.tolist()]
        for i, row in enumerate(rows):
            if not done[i]:
                out[row].append(int(tokens[i]))
        if all(done) or step + 1 == max_new_tokens:
            break
        if any(done):
            keep = [i for i, d in enumerate(done) if not d]
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            rows = [rows[i] for i in keep]
            tokens, pos, mask = tokens[index], pos[index], mask[index]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        with torch.no_grad():
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None], use_cache=True, **{kwarg: cache}).logits
        tokens = logits[:, -1].argmax(-1)
        pos = pos + 1
    return out
