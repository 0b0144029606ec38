"""The agent as a local transformers model (CPU or GPU), optionally with a `critstep tune` adapter.

Offline, a trajectory is rendered exactly as the tuner renders it (same chat template, same turn
spans including the end-of-turn token) and cut into evaluation windows; one forward pass per
window gives every gold turn's token NLL and the KV cache from which each step is then generated
greedily, in one batch per window. Live, a conversation keeps its KV cache between turns and only
the new tokens (the last action and the observation) are computed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from critstep.errors import ConfigError, ModelError
from critstep.evaluation.agent import StepOutput, Timing
from critstep.evaluation.decode import cache_argument, greedy_decode, prefix_batch
from critstep.evaluation.windows import EvalWindow, eval_windows
from critstep.trajectory import Trajectory
from critstep.tuner.merge import apply_adapter
from critstep.tuner.modeling import auto_dtype
from critstep.tuner.render import RenderedTrajectory, load_chat_template, render_trajectory, template_source

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class _Row:
    """A step waiting to be decoded: its prompt is the first `length` positions of `cache`."""

    key: int  # which trajectory (input order)
    step: int
    cache: Any
    length: int
    first: int  # the first generated token (argmax at the prompt's last position)
    nll: float
    n_tokens: int


def resolve_dtype(name: str, device: str) -> Any:
    """float32 on CPU (bf16 NLLs are noisy and, on most CPUs, not faster), bf16 on GPUs that have it."""
    import torch

    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    return auto_dtype(device)


class LocalModel:
    """A causal LM with its tokenizer and chat template, generating agent turns greedily."""

    def __init__(self, model: Any, tokenizer: Any, chat_template: str | None = None, max_len: int = 1024, max_new_tokens: int = 128, batch_size: int = 16):
        if max_new_tokens < 1 or max_len <= max_new_tokens:
            raise ConfigError(f"max_len ({max_len}) must exceed max_new_tokens ({max_new_tokens}) >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template_source(tokenizer, chat_template)
        self.max_len = max_len
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)
        self.device = next(model.parameters()).device
        self.stop_ids = _stop_ids(model, tokenizer)
        self.timing = Timing()
        self._chat_ids: list[int] = []
        self._chat_cache: Any = None
        self._dropped_turns = 0

    @classmethod
    def load(
        cls,
        ref: str,
        adapter: str | Path | None = None,
        device: str | None = None,
        dtype: str = "auto",
        load_4bit: bool = False,
        chat_template: str | Path | None = None,
        trust_remote_code: bool = False,
        **options: Any,
    ) -> LocalModel:
        """`ref` (built-in name, hub id or path) with `adapter` (a PEFT directory) applied.

        Unquantized, the adapter is merged into the weights (faster generation); with `load_4bit`
        the base is loaded in NF4, as QLoRA trained it, and the adapter stays separate.
        """
        from transformers import AutoModelForCausalLM

        from critstep.models import causal_lm_path, default_device, load_tokenizer

        device = device or default_device()
        torch_dtype = resolve_dtype(dtype, device)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if load_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch_dtype
            )
            kwargs["device_map"] = {"": device}
        path = causal_lm_path(ref)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load causal LM {ref!r} from {path}: {e}") from None
        if not load_4bit:
            model.to(device)
        tokenizer_ref: str = ref
        if adapter is not None:
            model = apply_adapter(model, Path(adapter), merge=not load_4bit)
            if (Path(adapter) / "tokenizer_config.json").exists():  # critstep tune saves the template it trained with
                tokenizer_ref = str(adapter)
        model.eval()
        tokenizer = load_tokenizer(tokenizer_ref, trust_remote_code)
        template = load_chat_template(chat_template) if chat_template else None
        return cls(model, tokenizer, template, **options)

    # --- offline: gold turns scored, every step generated from its gold prefix ------------------

    def render(self, trajectory: Trajectory) -> RenderedTrajectory:
        return render_trajectory(trajectory, [], self.tokenizer, self.template)

    def evaluate_trajectories(self, items: Iterable[tuple[Trajectory, Sequence[int] | None]]) -> Iterator[tuple[Trajectory, list[StepOutput]]]:
        """Score and generate the given steps (None: all) of each trajectory; yields each trajectory
        with its outputs, in input order, once all its steps are generated.

        Steps wait in a queue until `batch_size` of them (from any windows and trajectories) can be
        decoded together: one decoding pass costs about the same for one row as for sixteen.
        """
        queue: list[_Row] = []
        done: dict[int, tuple[Trajectory, int, list[StepOutput]]] = {}
        next_out = 0
        for key, (trajectory, steps) in enumerate(items):
            rendered = self.render(trajectory)
            rows = [row for window in eval_windows(rendered, self.max_len, steps) for row in self._forward(key, rendered, window)]
            done[key] = (trajectory, len(rows), [])
            queue += rows
            while len(queue) >= self.batch_size:
                self._decode(queue[: self.batch_size], done)
                queue = queue[self.batch_size :]
            while next_out in done and len(done[next_out][2]) == done[next_out][1]:
                trajectory, _, outputs = done.pop(next_out)
                yield trajectory, sorted(outputs, key=lambda o: o.step)
                next_out += 1
        if queue:
            self._decode(queue, done)
        for key in sorted(done):
            trajectory, _, outputs = done[key]
            yield trajectory, sorted(outputs, key=lambda o: o.step)

    def _forward(self, key: int, rendered: RenderedTrajectory, window: EvalWindow) -> list[_Row]:
        """One pass over `window`: every gold turn's NLL, each step's first generated token, and the
        KV cache its prompt (a prefix of the window) is decoded from."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        started = time.perf_counter()
        ids = [rendered.input_ids[p] for p in window.positions]
        self.timing.prompt_tokens += len(ids)
        self.timing.truncated_steps += window.truncated
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        # Logits are needed where a gold turn token is predicted: from one before its span to one before its end.
        keep = [p for s, e in window.spans for p in range(s - 1, e - 1)]
        cache = DynamicCache()
        with torch.no_grad():
            logits = self.model(
                input_ids=input_ids,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=self.device),
                use_cache=True,
                **{cache_argument(): cache},
            ).logits[0].float()
            targets = input_ids[0, torch.tensor(keep, device=self.device) + 1]
            losses = F.cross_entropy(logits, targets, reduction="none").tolist()
        rows, offset = [], 0
        for step, (s, e) in zip(window.steps, window.spans, strict=True):
            rows.append(_Row(key, step, cache, s, int(logits[offset].argmax()), sum(losses[offset : offset + e - s]), e - s))
            offset += e - s
        self.timing.forward_s += time.perf_counter() - started
        return rows

    def _decode(self, rows: list[_Row], done: dict[int, tuple[Any, int, list[StepOutput]]]) -> None:
        started = time.perf_counter()
        lengths = [r.length for r in rows]
        batch, mask = prefix_batch([(r.cache, r.length) for r in rows])
        generated = greedy_decode(self.model, batch, mask, lengths, [r.first for r in rows], self.stop_ids, self.max_new_tokens)
        self.timing.decode_s += time.perf_counter() - started
        self.timing.generated_tokens += sum(len(g) for g in generated)
        for row, tokens in zip(rows, generated, strict=True):
            done[row.key][2].append(StepOutput(row.step, self._text(tokens), row.nll, row.n_tokens))

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    # --- live: one conversation, its KV cache kept between turns --------------------------------

    def reset_chat(self) -> None:
        self._chat_ids, self._chat_cache, self._dropped_turns = [], None, 0

    def respond(self, messages: list[dict[str, Any]]) -> str:
        """The next assistant turn of `messages` (one episode's conversation so far).

        Only what differs from the cached tokens is computed. When the conversation outgrows the
        window, the oldest turns after the system prompt and task are dropped until it fills at
        most three quarters of it, so the cached prefix then serves several turns again.
        """
        import torch
        from transformers import DynamicCache

        ids = self._fit_conversation(messages)
        started = time.perf_counter()
        common = 0
        limit = min(len(ids) - 1, len(self._chat_ids))  # at least one new token gives the next logits
        while common < limit and ids[common] == self._chat_ids[common]:
            common += 1
        if self._chat_cache is None or common == 0:
            self._chat_cache, common = DynamicCache(), 0
        elif len(self._chat_ids) > common:
            self._chat_cache.crop(common - len(self._chat_ids))
        new = torch.tensor([ids[common:]], dtype=torch.long, device=self.device)
        self.timing.prompt_tokens += len(ids) - common
        with torch.no_grad():
            logits = self.model(
                input_ids=new,
                position_ids=torch.arange(common, len(ids), device=self.device)[None],
                logits_to_keep=1,
                use_cache=True,
                **{cache_argument(): self._chat_cache},
            ).logits
        first = int(logits[0, -1].argmax())
        self.timing.forward_s += time.perf_counter() - started
        started = time.perf_counter()
        mask = torch.ones((1, len(ids)), dtype=torch.long, device=self.device)
        tokens = greedy_decode(self.model, self._chat_cache, mask, [len(ids)], [first], self.stop_ids, self.max_new_tokens)[0]
        self.timing.decode_s += time.perf_counter() - started
        self.timing.generated_tokens += len(tokens)
        fed = tokens if len(tokens) < self.max_new_tokens else tokens[:-1]  # the last new token is never fed
        self._chat_ids = ids + fed
        return self._text(tokens)

    def _render_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fit_conversation(self, messages: list[dict[str, Any]]) -> list[int]:
        head = _head_length(messages)
        room = self.max_len - self.max_new_tokens
        ids = self._render_ids(_drop_turns(messages, head, self._dropped_turns))
        if len(ids) <= room:
            return ids
        turns = (len(messages) - head) // 2  # an action and its observation
        while self._dropped_turns < turns - 1 and len(ids) > room * 3 // 4:
            self._dropped_turns += 1
            ids = self._render_ids(_drop_turns(messages, head, self._dropped_turns))
        if len(ids) > room:  # the head and the last turn alone are too long: keep their end
            ids = ids[-room:]
        return ids


def _head_length(messages: list[dict[str, Any]]) -> int:
    """System messages and the first user message (the task) stay in every prompt."""
    n = 0
    while n < len(messages) and messages[n]["role"] == "system":
        n += 1
    return min(len(messages), n + 1)


def _drop_turns(messages: list[dict[str, Any]], head: int, dropped: int) -> list[dict[str, Any]]:
    """Leave out the first `dropped` turns (action + observation) after the head, so roles keep alternating."""
    return messages[:head] + messages[head + 2 * dropped :]


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids of the tokenizer and the generation config (Llama 3 lists <|eot_id|> there)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ModelError("the tokenizer defines no end-of-sequence token: generation could not stop")
    return ids
