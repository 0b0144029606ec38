"""Token-level step features from a small causal LM (default `smollm2-135m`).

Per step, over its tokens: mean and max negative log-likelihood and mean and max entropy of the
next-token distribution, conditioned on the trajectory prefix; the same step scored without
context; and their difference, the log of the instruction-following difficulty (IFD) of Li et al.

Cost is what matters on a laptop CPU, so the trajectory is rendered once in ChatML (system
prompt left out: it is the same for a whole dataset) with every message cut to a token budget,
then scored in windows: ONE forward pass per window, each step scored in the first window that
holds it whole with at least a quarter window of preceding context. The context-free scores are
computed once per distinct step text and batched across steps, shortest first, so padding stays
small. On CPUs with bf16 instructions, bfloat16 is ~2.5x faster than float32 for this model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from critstep.trajectory import Trajectory

NAMES = ["nll_mean", "nll_max", "entropy_mean", "entropy_max", "nll_mean_nocontext", "log_ifd", "step_tokens_log"]
DEFAULT_WINDOW_TOKENS = 512
DEFAULT_MESSAGE_TOKENS = 64  # observations (and the task) are cut to this many tokens, head kept
DEFAULT_STEP_TOKENS = 128  # steps are cut to this many tokens
DEFAULT_DTYPE = "bfloat16"


@dataclass
class Rendered:
    """A trajectory as one token sequence, with the span of each step's content tokens."""

    ids: list[int]
    spans: list[tuple[int, int]]
    step_ids: list[list[int]]
    # per step, where the messages it caused end (the next step's start, or the end): its outcome
    outcome_ends: list[int] = field(default_factory=list)


def render(
    trajectory: Trajectory, tokenizer: Any, message_tokens: int = DEFAULT_MESSAGE_TOKENS, step_tokens: int = DEFAULT_STEP_TOKENS
) -> Rendered:
    """ChatML rendering (SmolLM2's template) of the messages from the task on, each cut to its budget:
    the system prompt, or an instruction and its acknowledgement, are left out alike."""
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    step_ids: list[list[int]] = []
    outcome_ends: list[int] = []
    task = trajectory.task_index or 0
    for i, m in enumerate(trajectory.messages):
        if m.role == "system" or (i < task and not m.is_step):
            continue
        header = tokenizer(f"<|im_start|>{m.role}\n", add_special_tokens=False).input_ids
        budget = step_tokens if m.is_step else message_tokens
        body = tokenizer(m.text()[: budget * 8], add_special_tokens=False).input_ids[:budget]
        footer = tokenizer("<|im_end|>\n", add_special_tokens=False).input_ids
        ids += header
        if m.is_step:
            spans.append((len(ids), len(ids) + len(body)))
            step_ids.append(header + body)
        ids += body + footer
        if m.is_step:
            outcome_ends.append(len(ids))
        elif outcome_ends:
            outcome_ends[-1] = len(ids)
    return Rendered(ids, spans, step_ids, outcome_ends)


def windows(rendered: Rendered, window: int, spans: list[tuple[int, int]] | None = None) -> list[tuple[int, list[int]]]:
    """(start, step indices) per forward pass: each step in the first window that holds it whole
    with a quarter window of context before it (or all that exists); a longer step is cut.
    `spans` replaces the steps' own spans (e.g. a step with its outcome)."""
    spans = rendered.spans if spans is None else spans
    context = window // 4
    out: list[tuple[int, list[int]]] = []
    k = 0
    n = len(spans)
    while k < n:
        start = max(0, spans[k][0] - context)
        end = start + window
        members = [k]
        k += 1
        while k < n and spans[k][1] <= end:
            members.append(k)
            k += 1
        out.append((start, members))
    return out


def _stats(logits: Any, targets: Any) -> tuple[Any, Any]:
    """Per position: NLL of the target token and entropy of the predicted distribution."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return nll, entropy


class WindowedLM:
    """A causal LM that reads rendered trajectories in windows: the model, its tokenizer, the
    window and per-message budgets, and `tokens_processed`, the tokens fed to the model so far.
    The token and hidden-state groups read the same way and differ in what they take out."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        window_tokens: int = DEFAULT_WINDOW_TOKENS,
        message_tokens: int = DEFAULT_MESSAGE_TOKENS,
        step_tokens: int = DEFAULT_STEP_TOKENS,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.window_tokens = window_tokens
        self.message_tokens = message_tokens
        self.step_tokens = step_tokens
        self.tokens_processed = 0

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def render(self, trajectory: Trajectory) -> Rendered:
        return render(trajectory, self.tokenizer, self.message_tokens, self.step_tokens)


class TokenScorer(WindowedLM):
    """Scores steps with a causal LM; `score(trajectories)` gives one (n_steps, len(NAMES)) array each.

    `tokens_processed` counts padding too, and with `record_inputs` a list, every forward's inputs
    are appended to it, so a benchmark can replay them as bare forwards and compare this pass with
    the model's raw throughput on the same shapes.
    """

    nocontext_batch_tokens = 2048  # padded tokens per batch of the context-free pass
    record_inputs: list[dict[str, Any]] | None = None  # set to a list to record every forward's inputs

    def score(self, trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
        return [self.score_one(t) for t in trajectories]

    def score_one(self, trajectory: Trajectory) -> np.ndarray:
        import torch

        r = self.render(trajectory)
        n = len(r.spans)
        rows = np.zeros((n, len(NAMES)), dtype=np.float32)
        if n == 0:
            return rows
        with torch.inference_mode():
            for start, members in windows(r, self.window_tokens):
                end = min(len(r.ids), start + self.window_tokens)
                ids = torch.tensor([r.ids[start:end]], device=self.device)
                self._record(input_ids=ids)
                logits = self.model(input_ids=ids).logits[0]
                self.tokens_processed += end - start
                for k in members:
                    a, b = r.spans[k]
                    a, b = max(a - start, 1), min(b - start, end - start)
                    if b <= a:
                        continue
                    nll, ent = _stats(logits[a - 1 : b - 1], ids[0, a:b])
                    rows[k, 0:4] = [nll.mean().item(), nll.max().item(), ent.mean().item(), ent.max().item()]
            rows[:, 4] = self._nocontext(r.step_ids)
        rows[:, 5] = rows[:, 0] - rows[:, 4]
        rows[:, 6] = np.log1p([b - a for a, b in r.spans])
        return rows

    def _record(self, **inputs: Any) -> None:
        if self.record_inputs is not None:
            self.record_inputs.append(inputs)

    def _nocontext(self, all_step_ids: list[list[int]]) -> np.ndarray:
        """Mean NLL of each step's content given only its role header, batched by similar length;
        repeated steps (common in action-only environments) are scored once."""
        import torch

        distinct = {tuple(ids): i for i, ids in enumerate(all_step_ids)}
        step_ids = [list(k) for k in distinct]
        out = np.zeros(len(step_ids), dtype=np.float32)
        order = sorted(range(len(step_ids)), key=lambda i: len(step_ids[i]))
        header = len(self.tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        i = 0
        while i < len(order):
            longest = len(step_ids[order[i]])
            batch = [order[i]]
            i += 1
            while i < len(order) and len(step_ids[order[i]]) * (len(batch) + 1) <= self.nocontext_batch_tokens:
                batch.append(order[i])
                longest = len(step_ids[order[i]])
                i += 1
            ids = torch.full((len(batch), longest), pad, device=self.device)
            mask = torch.zeros((len(batch), longest), dtype=torch.long, device=self.device)
            for row, j in enumerate(batch):
                ids[row, : len(step_ids[j])] = torch.tensor(step_ids[j])
                mask[row, : len(step_ids[j])] = 1
            self._record(input_ids=ids, attention_mask=mask)
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            self.tokens_processed += ids.numel()
            for row, j in enumerate(batch):
                length = len(step_ids[j])
                if length <= header:
                    continue
                nll, _ = _stats(logits[row, header - 1 : length - 1], ids[row, header:length])
                out[j] = nll.mean().item()
        position = {k: j for j, k in enumerate(distinct)}
        return np.array([out[position[tuple(ids)]] for ids in all_step_ids], dtype=np.float32)
